"""GPU sweep: clipfast vs transformers vs open_clip image encoder (and B/32 text encoder), bf16/fp16, sdpa/flash,
batch 1-1024, eager and (opt-in) ``clipfast.optimize.compile``.

Full-size ViT-B/32 and ViT-L/14 shapes with random weights (``bench_model.make_checkpoint``); the three libraries
load the same weights (open_clip's through ``clipfast.convert.hf_to_openai``) and are timed interleaved, with CUDA
synchronisation. The run first measures the chip's bf16 matmul rate (8192^3), the roofline the "% of roofline"
column divides by. Configurations run in priority order under a wall-clock budget and the JSON is rewritten after
every row, so a run cut short still leaves its numbers. An out-of-memory batch ends that configuration's sweep.

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
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import make_checkpoint  # noqa: E402
from common import interleaved, machine  # noqa: E402

# (arch, dtype, attention, batches, compiled) in the order they are worth the budget
PLAN = [("B/32", "bfloat16", "sdpa", [1, 8, 32, 128, 256, 512, 1024], False),
        ("B/32", "bfloat16", "sdpa", [256, 1024], True),
        ("B/32", "bfloat16", "flash_attention_2", [256, 1024], False),
        ("L/14", "bfloat16", "sdpa", [1, 32, 256], False),
        ("B/32", "float16", "sdpa", [256], False),
        ("L/14", "bfloat16", "flash_attention_2", [256], False),
        ("L/14", "bfloat16", "sdpa", [256], True)]
SHORT_PLAN = [("B/32", "bfloat16", "sdpa", [1, 32, 256, 1024], False), ("B/32", "bfloat16", "sdpa", [256], True),
              ("L/14", "bfloat16", "sdpa", [256], False)]
OPEN_CLIP_NAMES = {"B/32": "ViT-B-32", "L/14": "ViT-L-14"}


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


def bf16_peak_tflops(device: str) -> float | None:
    """The chip's bf16 matmul rate on an 8192^3 product (mean of 10 after 3 warm-ups): the roofline."""
    if device != "cuda":
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ a
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        a @ a
    torch.cuda.synchronize()
    return 2 * 8192**3 * 10 / (time.perf_counter() - start) / 1e12


def load_models(path: Path, arch: str, dtype: torch.dtype, attn: str, device: str,
                compiled: bool) -> tuple[dict[str, Any], dict[str, str]]:
    """clipfast, transformers and open_clip models on ``device``, and why any of them is missing."""
    import transformers

    import clipfast

    models: dict[str, Any] = {}
    why: dict[str, str] = {}
    ours = clipfast.CLIPModel.from_pretrained(path, torch_dtype=dtype, attn_implementation=attn).to(device).eval()
    if compiled:
        from clipfast.optimize import compile as compile_model

        ours = compile_model(ours)
    models["clipfast"] = ours
    try:
        ref = transformers.CLIPModel.from_pretrained(path, torch_dtype=dtype, attn_implementation=attn)
        models["transformers"] = ref.to(device).eval()
    except (ImportError, ValueError) as err:  # flash_attention_2 needs the flash_attn package in transformers
        why["transformers"] = f"{type(err).__name__}: {str(err)[:160]}"
    if arch in OPEN_CLIP_NAMES and attn == "sdpa" and not compiled:
        try:
            models["open_clip"] = open_clip_model(path, arch, dtype, device)
        except ImportError as err:
            why["open_clip"] = f"ImportError: {err}"
    return models, why


def open_clip_model(path: Path, arch: str, dtype: torch.dtype, device: str) -> Any:
    """open_clip's model of ``arch`` holding the checkpoint's weights (quick_gelu, as OpenAI's CLIP)."""
    import open_clip
    from safetensors.torch import load_file

    from clipfast.convert import hf_to_openai

    model = open_clip.create_model(OPEN_CLIP_NAMES[arch], pretrained=None, force_quick_gelu=True)
    state = {k: v for k, v in load_file(str(path / "model.safetensors")).items() if not k.endswith("position_ids")}
    model.load_state_dict(hf_to_openai(state), strict=True)
    return model.to(device, dtype).eval()


def open_clip_preprocess() -> Any:
    """open_clip's eval transform for OpenAI's ViT models (torchvision on PIL: bicubic resize of the short side,
    center crop, to tensor, normalize): what ``create_model_and_transforms("ViT-B-32")`` returns."""
    import open_clip
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    return open_clip.image_transform(224, is_train=False, mean=OPENAI_DATASET_MEAN, std=OPENAI_DATASET_STD)


def image_call(name: str, model: Any, pixels: torch.Tensor) -> Any:
    """The image-embedding call of each library."""
    if name == "open_clip":
        return model.encode_image(pixels)
    return model.get_image_features(pixel_values=pixels)


def text_call(name: str, model: Any, ids: torch.Tensor) -> Any:
    """The text-embedding call of each library (open_clip always takes 77 tokens, zero-padded, as its tokenizer
    gives them)."""
    if name == "open_clip":
        return model.encode_text(torch.nn.functional.pad(ids, (0, 77 - ids.shape[1])))
    return model.get_text_features(input_ids=ids)


def sweep(models: dict[str, Any], label: dict[str, Any], batches: list[int], repeats: int, deadline: float,
          peak: float | None, rows: list[dict[str, Any]], save: Callable[[], None]) -> None:
    """Image encoder (and, for B/32 uncompiled, text encoder at 16 tokens) at each batch until OOM or deadline."""
    ours = models["clipfast"]
    device, dtype = ours.device, ours.dtype
    size = ours.config.vision_config.image_size
    gflop = image_gflop(ours.config)
    for batch in batches:
        if time.time() > deadline:
            rows.append(dict(label, batch=batch, note="budget spent"))
            break
        pixels = torch.randn(batch, 3, size, size, device=device, dtype=dtype)
        ids = torch.randint(0, 49406, (batch, 16), device=device)
        ids[:, -1] = 49407
        cases = {"image": image_call}
        if label["arch"] != "L/14" and not label["compiled"]:
            cases["text T=16"] = text_call
        try:
            for what, call in cases.items():
                inputs = pixels if what == "image" else ids
                fns = {name: (lambda name=name, m=m: call(name, m, inputs)) for name, m in models.items()}
                rows.append(dict(label, path=what, batch=batch, **measure(fns, batch, repeats,
                                                                        gflop if what == "image" else None, peak)))
                save()
        except torch.cuda.OutOfMemoryError:
            rows.append(dict(label, batch=batch, note="out of memory"))
            torch.cuda.empty_cache()
            break


def measure(fns: dict[str, Callable[[], Any]], batch: int, repeats: int, gflop: float | None,
            peak: float | None) -> dict[str, Any]:
    """Items/s of each library on one case, interleaved; ratios to ours; TFLOP/s and % of roofline of ours."""
    def timed(fn: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
        return run
    times = interleaved({name: timed(fn) for name, fn in fns.items()}, repeats=repeats, warmup=2)
    out: dict[str, Any] = {name: batch / t for name, t in times.items()}
    for other in ("transformers", "open_clip"):
        if other in times:
            out[f"speedup vs {other}"] = times[other] / times["clipfast"]
    if gflop is not None:
        tflops = gflop * batch / times["clipfast"] / 1e3
        out["clipfast TFLOP/s"] = tflops
        if peak:
            out["% of roofline"] = 100 * tflops / peak
    return out


def profile(path: Path, out: Path, batch: int = 256) -> None:
    """Top GPU kernels of one bf16 B/32 image forward at ``batch``, ours and transformers', to profile.txt."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    models, _ = load_models(path, "B/32", torch.bfloat16, "sdpa", "cuda", False)
    pixels = torch.randn(batch, 3, 224, 224, device="cuda", dtype=torch.bfloat16)
    lines = []
    for name in ("clipfast", "transformers"):
        with torch.inference_mode():
            for _ in range(3):
                image_call(name, models[name], pixels)
            torch.cuda.synchronize()
            with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    image_call(name, models[name], pixels)
                torch.cuda.synchronize()
        lines += [f"== {name}, B/32 bf16 sdpa, batch {batch}, 5 forwards",
                  prof.key_averages().table(sort_by="cuda_time_total", row_limit=25)]
    (out / "profile.txt").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--budget-s", type=float, default=300, help="stop starting new measurements after this")
    parser.add_argument("--quick", action="store_true", help="3 repeats instead of 5")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny model, float32 sdpa, batches 1,2")
    parser.add_argument("--short", action="store_true", help="B/32 bf16 at 1/32/256/1024, compiled, L/14 at 256")
    parser.add_argument("--profile", action="store_true", help="only write the B/32 kernel profile (CUDA)")
    args = parser.parse_args()
    if args.profile:
        with tempfile.TemporaryDirectory() as tmp:
            profile(make_checkpoint(Path(tmp), "B/32"), Path(args.out))
        return
    deadline = time.time() + args.budget_s
    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA GPU; use --dry-run to check the script on CPU.")
    plan = [("tiny", "float32", "sdpa", [1, 2], False), ("tiny", "float32", "sdpa", [2], True)] if args.dry_run \
        else SHORT_PLAN if args.short else PLAN
    rows: list[dict[str, Any]] = []
    out = Path(args.out) / ("gpu_dry_run.json" if args.dry_run else "gpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    peak = bf16_peak_tflops(device)
    info = {"machine": machine(), "bf16 matmul TFLOP/s (8192^3)": peak}

    def save() -> None:
        out.write_text(json.dumps({**info, "rows": rows}, indent=2) + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        for arch, dtype_name, attn, batches, compiled in plan:
            label = {"arch": arch, "dtype": dtype_name, "attn": attn, "compiled": compiled}
            if time.time() > deadline:
                rows.append(dict(label, note="budget spent"))
                continue
            path = tiny_checkpoint(Path(tmp)) if arch == "tiny" else make_checkpoint(Path(tmp), arch)
            models, why = load_models(path, arch, getattr(torch, dtype_name), attn, device, compiled)
            sweep(models, dict(label, **why), batches, 3 if args.quick or args.dry_run else 5, deadline, peak,
                  rows, save)
            del models
            if device == "cuda":
                torch.cuda.empty_cache()
    save()
    print(f"bf16 matmul peak: {peak} TFLOP/s")
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
