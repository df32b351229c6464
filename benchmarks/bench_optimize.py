"""What the opt-in CPU speed-ups of ``clipfast.optimize`` buy and cost, on a full-size ViT-B/32 (random weights).

- int8: ``quantize_int8`` vs float32, images/s and texts/s, and the cosine of its embeddings to float32.
- bf16: a bfloat16 model as loaded (true bf16 compute) vs ``cpu_bf16_as_fp32`` (bf16 weights, fp32 compute; with
  and without a cached fp32 copy) vs float32: time, weight memory, cosine to float32 and to true bf16.
- bf16 also times ``cpu_bf16_matmuls`` (a float32 model whose encoder matmuls run in bf16 on AMX / AVX512-BF16).
- compile: ``optimize.compile`` vs eager: first-call (compilation) time and steady images/s.

Calls are interleaved round by round. ``--no-native-bf16`` reruns the bf16 part with oneDNN capped to AVX2
(``ONEDNN_MAX_CPU_ISA=AVX2``), which emulates a CPU without AVX512-BF16/AMX on one that has them.

    python benchmarks/bench_optimize.py [--quick] [--parts int8,bf16,compile] [--no-native-bf16]
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import make_checkpoint  # noqa: E402
from common import interleaved, report  # noqa: E402


def inputs(batch: int, length: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Random pixels and token ids ending in <|endoftext|> (49407), the shapes a real batch has."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 49406, (batch, length), generator=gen)
    ids[:, -1] = 49407
    return torch.randn(batch, 3, 224, 224, generator=gen), ids


def encode(model: torch.nn.Module, pixels: torch.Tensor | None, ids: torch.Tensor | None) -> torch.Tensor:
    """Image (or text) embeddings, no autograd."""
    with torch.inference_mode():
        if pixels is not None:
            return model.get_image_features(pixel_values=pixels)
        return model.get_text_features(input_ids=ids)


def deviation(a: torch.Tensor, b: torch.Tensor) -> float:
    """1 - the smallest row-wise cosine similarity (0 = same directions); reads better than 0.99996."""
    return 1.0 - float(torch.cosine_similarity(a.float(), b.float(), dim=-1).min())


def weight_mb(model: torch.nn.Module) -> float:
    """Parameters plus buffers in MB (a cached fp32 copy is a buffer; int8 layers keep theirs as packed params)."""
    tensors = {id(t): t for t in model.parameters()}
    tensors.update({id(b): b for b in model.buffers() if b is not None})
    for module in model.modules():
        packed = getattr(module, "_packed_params", None)
        if packed is not None and hasattr(packed, "_weight_bias"):
            for t in packed._weight_bias():
                if t is not None:
                    tensors[id(t)] = t
    return sum(t.numel() * t.element_size() for t in tensors.values()) / 1e6


def timed_rows(label: str, candidates: dict[str, Callable[[], object]], base: str, items: int,
               repeats: int) -> list[dict[str, object]]:
    """One row per candidate: items/s and the speed-up over ``base``, all from one interleaved run."""
    times = interleaved(candidates, repeats=repeats)
    return [{"path": f"{label} {name}", "items/s": items / t, "speedup": times[base] / t} for name, t in times.items()]


def bench_int8(fp32: torch.nn.Module, batch: int, repeats: int) -> list[dict[str, object]]:
    """quantize_int8 vs float32 on the image encoder and the text encoder (16 tokens)."""
    from clipfast.optimize import quantize_int8

    int8 = quantize_int8(copy.deepcopy(fp32))
    pixels, ids = inputs(batch)
    rows = []
    for what, px, tok in (("image", pixels, None), ("text T=16", None, ids)):
        rows_part = timed_rows(f"{what} b={batch}", {"fp32": lambda: encode(fp32, px, tok),
                                                     "int8": lambda: encode(int8, px, tok)}, "fp32", batch, repeats)
        rows_part[1]["1-cos vs fp32"] = deviation(encode(int8, px, tok), encode(fp32, px, tok))
        rows_part[0]["1-cos vs fp32"] = 0.0
        rows += rows_part
    for row in rows:
        row.setdefault("1-cos vs fp32", 0.0)
        row["weights MB"] = weight_mb(int8 if row["path"].endswith("int8") else fp32)
    return rows


def bench_bf16(fp32: torch.nn.Module, batch: int, repeats: int, true_bf16: bool) -> list[dict[str, object]]:
    """True bf16, bf16 weights computed in fp32 (on the fly / cached copy), fp32 with bf16 matmuls, and fp32."""
    from clipfast.optimize import cpu_bf16_as_fp32, cpu_bf16_matmuls, cpu_has_native_bf16

    models = {"fp32": fp32, "fp32 + cpu_bf16_matmuls": cpu_bf16_matmuls(copy.deepcopy(fp32)),
              "bf16->fp32 on the fly": cpu_bf16_as_fp32(copy.deepcopy(fp32).bfloat16()),
              "bf16->fp32 cached": cpu_bf16_as_fp32(copy.deepcopy(fp32).bfloat16(), cache=True)}
    if true_bf16:
        models["true bf16"] = copy.deepcopy(fp32).bfloat16()
    pixels, _ = inputs(batch)
    feed = {name: pixels if name.startswith("fp32") else pixels.bfloat16() for name in models}
    label = f"image b={batch} ({'native' if cpu_has_native_bf16() else 'no native'} bf16)"
    rows = timed_rows(label, {n: (lambda m=m, n=n: encode(m, feed[n], None)) for n, m in models.items()}, "fp32",
                      batch, repeats)
    ref = {n: encode(m, feed[n], None) for n, m in models.items()}
    for row, name in zip(rows, models):
        row["1-cos vs fp32"] = deviation(ref[name], ref["fp32"])
        row["1-cos vs true bf16"] = deviation(ref[name], ref["true bf16"]) if true_bf16 else float("nan")
        row["weights MB"] = weight_mb(models[name])
    return rows


def bench_compile(fp32: torch.nn.Module, batch: int, repeats: int) -> list[dict[str, object]]:
    """optimize.compile vs eager on the image encoder: compile time of the first call, then steady speed."""
    from clipfast.optimize import compile

    compiled = compile(copy.deepcopy(fp32))
    pixels, _ = inputs(batch)
    first = {}
    for name, model in (("eager", fp32), ("compiled", compiled)):
        start = time.perf_counter()
        out = encode(model, pixels, None)
        first[name] = time.perf_counter() - start
    rows = timed_rows(f"image b={batch}", {"eager": lambda: encode(fp32, pixels, None),
                                           "compiled": lambda: encode(compiled, pixels, None)}, "eager", batch,
                      repeats)
    for row, name in zip(rows, ("eager", "compiled")):
        row["first call s"] = first[name]
        row["1-cos vs fp32"] = deviation(out, encode(fp32, pixels, None)) if name == "compiled" else 0.0
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--parts", default="int8,bf16,compile")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--bf16-batch", type=int, default=8, help="true bf16 without hardware support is slow")
    parser.add_argument("--no-native-bf16", action="store_true", help="emulate a CPU without native bf16")
    args = parser.parse_args()
    if args.no_native_bf16 and os.environ.get("ONEDNN_MAX_CPU_ISA") != "AVX2":
        env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2")  # read by oneDNN once, at start: rerun the process
        raise SystemExit(subprocess.call([sys.executable, *sys.argv], env=env))
    repeats = 2 if args.quick else 5
    parts = args.parts.split(",")
    import clipfast

    with tempfile.TemporaryDirectory() as tmp:
        fp32 = clipfast.CLIPModel.from_pretrained(make_checkpoint(Path(tmp))).eval()
    suffix = "_no_native_bf16" if args.no_native_bf16 else ""
    if "int8" in parts:
        report("optimize_int8", bench_int8(fp32, args.batch, repeats))
    if "bf16" in parts:
        report(f"optimize_bf16{suffix}", bench_bf16(fp32, args.bf16_batch, max(1, repeats // 2), true_bf16=True))
    if "compile" in parts:
        report("optimize_compile", bench_compile(fp32, args.batch, repeats))


if __name__ == "__main__":
    start = time.time()
    main()
    print(f"done in {time.time() - start:.0f} s")
