"""GPU sweep: clipfast vs transformers image encoder (and text encoder for B/32), bf16/fp16, sdpa/flash, batch 1-1024.

Full-size ViT-B/32 and ViT-L/14 shapes with random weights (``bench_model.make_checkpoint``); both libraries load
the same folder and are timed interleaved, with CUDA synchronisation. Configurations run in priority order under
a wall-clock budget, and the JSON is rewritten after every row, so a run cut short still leaves its numbers.
An out-of-memory batch is recorded and ends that configuration's sweep.

    python benchmarks/bench_gpu.py [--out DIR] [--budget-s 300] [--quick]
    python benchmarks/bench_gpu.py --dry-run          # CPU, tiny model, float32: checks the script itself
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import make_checkpoint  # noqa: E402
from common import interleaved, machine  # noqa: E402

# (arch, dtype, attention) in the order they are worth the budget
PLAN = [("B/32", "bfloat16", "sdpa"), ("L/14", "bfloat16", "sdpa"), ("B/32", "bfloat16", "flash_attention_2"),
        ("B/32", "float16", "sdpa"), ("L/14", "bfloat16", "flash_attention_2"), ("L/14", "float16", "sdpa"),
        ("B/32", "float16", "flash_attention_2"), ("L/14", "float16", "flash_attention_2")]
BATCHES = [1, 8, 32, 128, 256, 512, 1024]


def image_gflop(config: Any) -> float:
    """Forward GFLOP per image of a ViT tower (matmuls only: patch conv, 12 d² per token per layer, attention)."""
    v = config.vision_config
    tokens = (v.image_size // v.patch_size) ** 2 + 1
    d, layers, inner = v.hidden_size, v.num_hidden_layers, v.intermediate_size
    per_layer = 2 * tokens * (4 * d * d + 2 * d * inner) + 4 * tokens * tokens * d
    patch = 2 * (tokens - 1) * 3 * v.patch_size**2 * d
    return (layers * per_layer + patch + 2 * d * config.projection_dim) / 1e9


def tiny_checkpoint(folder: Path) -> Path:
    """A small random checkpoint for --dry-run."""
    import transformers

    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    config = transformers.CLIPConfig(text_config=dict(small), vision_config=dict(small, image_size=64, patch_size=16),
                                     projection_dim=32)
    path = folder / "tiny"
    transformers.CLIPModel(config).save_pretrained(path)
    return path


def load_pair(path: Path, dtype: torch.dtype, attn: str, device: str) -> tuple[Any, Any, str | None]:
    """Both models on ``device``; transformers' is None (with the reason) when it cannot use ``attn``."""
    import transformers

    import clipfast

    ours = clipfast.CLIPModel.from_pretrained(path, torch_dtype=dtype, attn_implementation=attn).to(device).eval()
    try:
        ref = transformers.CLIPModel.from_pretrained(path, torch_dtype=dtype, attn_implementation=attn)
        return ours, ref.to(device).eval(), None
    except (ImportError, ValueError) as err:  # flash_attention_2 needs the flash_attn package in transformers
        return ours, None, f"{type(err).__name__}: {str(err)[:160]}"


def sweep(ours: Any, ref: Any, label: dict[str, Any], batches: list[int], repeats: int, deadline: float,
          rows: list[dict[str, Any]], save: Any) -> None:
    """Image encoder (and, for B/32, text encoder at 16 tokens) at each batch until OOM or the deadline."""
    device, dtype = ours.device, ours.dtype
    size = ours.config.vision_config.image_size
    gflop = image_gflop(ours.config)
    for batch in batches:
        if time.time() > deadline:
            rows.append(dict(label, batch=batch, note="budget spent"))
            break
        ids = torch.randint(0, 49406, (batch, 16), device=device)
        ids[:, -1] = 49407
        cases = {"image": lambda m, x=torch.randn(batch, 3, size, size, device=device, dtype=dtype):
                 m.get_image_features(pixel_values=x)}
        if label["arch"] != "L/14":
            cases["text T=16"] = lambda m, ids=ids: m.get_text_features(input_ids=ids)
        try:
            for what, fn in cases.items():
                rows.append(dict(label, path=what, batch=batch, **measure(ours, ref, fn, batch, repeats,
                                                                        gflop if what == "image" else None)))
                save()
        except torch.cuda.OutOfMemoryError:
            rows.append(dict(label, batch=batch, note="out of memory"))
            torch.cuda.empty_cache()
            break


def measure(ours: Any, ref: Any, fn: Any, batch: int, repeats: int, gflop: float | None) -> dict[str, Any]:
    """Items/s of each model on one case, interleaved; TFLOP/s of ours for the image encoder."""
    def call(model: Any) -> None:
        with torch.inference_mode():
            fn(model)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    candidates = {"clipfast": lambda: call(ours)}
    if ref is not None:
        candidates["transformers"] = lambda: call(ref)
    times = interleaved(candidates, repeats=repeats, warmup=2)
    out: dict[str, Any] = {name: batch / t for name, t in times.items()}
    if ref is not None:
        out["speedup"] = times["transformers"] / times["clipfast"]
    if gflop is not None:
        out["clipfast TFLOP/s"] = gflop * batch / times["clipfast"] / 1e3
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--budget-s", type=float, default=300, help="stop starting new measurements after this")
    parser.add_argument("--quick", action="store_true", help="3 repeats instead of 5")
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny model, float32 sdpa, batches 1,2")
    args = parser.parse_args()
    deadline = time.time() + args.budget_s
    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA GPU; use --dry-run to check the script on CPU.")
    plan = [("tiny", "float32", "sdpa")] if args.dry_run else PLAN
    batches = [1, 2] if args.dry_run else [int(b) for b in args.batches.split(",")]
    rows: list[dict[str, Any]] = []
    out = Path(args.out) / ("gpu_dry_run.json" if args.dry_run else "gpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        out.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2) + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        for arch, dtype_name, attn in plan:
            if time.time() > deadline:
                rows.append({"arch": arch, "dtype": dtype_name, "attn": attn, "note": "budget spent"})
                continue
            path = tiny_checkpoint(Path(tmp)) if arch == "tiny" else make_checkpoint(Path(tmp), arch)
            ours, ref, why = load_pair(path, getattr(torch, dtype_name), attn, device)
            label = {"arch": arch, "dtype": dtype_name, "attn": attn, **({"transformers": why} if why else {})}
            sweep(ours, ref, label, batches, 3 if args.quick or args.dry_run else 5, deadline, rows, save)
            del ours, ref
            if device == "cuda":
                torch.cuda.empty_cache()
    save()
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
