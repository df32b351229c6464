"""clipfast vs transformers vs open_clip on the model itself: cold start, image and text encoder throughput.

All libraries load the same full-size ViT-B/32 random-weight checkpoint (written once by transformers into
a temp folder; open_clip's copy goes through ``clipfast.convert.hf_to_openai``) and run with the same threads;
calls are interleaved. On CPU the run first measures the float32 matmul rate (best of 2048^3 and 4096^3
products), the roofline that the image-encoder rows' "% of roofline" refers to.

    python benchmarks/bench_model.py [--quick] [--device cpu|cuda] [--dtype float32|bfloat16|float16]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, report  # noqa: E402

COLD = {
    "clipfast": "import clipfast; clipfast.CLIPModel.from_pretrained({path!r})",
    "transformers": "import transformers; transformers.CLIPModel.from_pretrained({path!r})",
}


def make_checkpoint(folder: Path, arch: str = "B/32") -> Path:
    """A full-size random CLIP checkpoint saved by transformers (config.json + model.safetensors)."""
    import transformers

    sizes = {"B/32": {}, "L/14": dict(text_config=dict(hidden_size=768, intermediate_size=3072,
                                                      num_attention_heads=12, projection_dim=768),
                                     vision_config=dict(hidden_size=1024, intermediate_size=4096,
                                                        num_attention_heads=16, num_hidden_layers=24, patch_size=14,
                                                        projection_dim=768), projection_dim=768)}[arch]
    path = folder / arch.replace("/", "")
    if not (path / "model.safetensors").exists():
        transformers.CLIPModel(transformers.CLIPConfig(**sizes)).save_pretrained(path)
    return path


def cold_start(path: Path, repeats: int) -> list[dict[str, object]]:
    """Wall time of a fresh interpreter that imports the library and loads the checkpoint."""
    def run(lib: str):
        return lambda: subprocess.run([sys.executable, "-c", COLD[lib].format(path=str(path))], check=True,
                                      capture_output=True)
    times = interleaved({lib: run(lib) for lib in COLD}, repeats=repeats, warmup=1)
    return [{"path": "import + from_pretrained (B/32)", "batch": "-", "unit": "s",
             "clipfast": times["clipfast"], "transformers": times["transformers"], "speedup": times["transformers"] / times["clipfast"]}]


def cpu_fp32_peak_gflops() -> float:
    """This CPU's float32 matmul rate, GFLOP/s: the best of 2048^3 and 4096^3 products (3 timed calls each)."""
    best = 0.0
    for size in (2048, 4096):
        a, b = torch.randn(size, size), torch.randn(size, size)
        a @ b
        for _ in range(3):
            start = time.perf_counter()
            a @ b
            best = max(best, 2 * size**3 / (time.perf_counter() - start) / 1e9)
    return best


def encoders(path: Path, device: str, dtype: torch.dtype, batches: list[int], repeats: int) -> list[dict]:
    """Images/s and texts/s of each library's encoders on the same weights."""
    import transformers
    from bench_gpu import image_call, image_gflop, open_clip_model, text_call  # (bench_gpu imports this file)

    import clipfast

    ours = clipfast.CLIPModel.from_pretrained(path, torch_dtype=dtype, device_map=device)
    ref = transformers.CLIPModel.from_pretrained(path, torch_dtype=dtype, attn_implementation="sdpa").to(device)
    models = {"clipfast": ours}
    if device == "cpu" and dtype == torch.float32:  # the opt-in MKL weight packing, on its own copy
        models["clipfast packed"] = clipfast.CLIPModel.from_pretrained(path).eval().set_cpu_weight_packing()
    models["transformers"] = ref
    try:
        models["open_clip"] = open_clip_model(path, "B/32", dtype, device)
    except ImportError:
        pass
    peak = cpu_fp32_peak_gflops() if device == "cpu" and dtype == torch.float32 else None
    gflop = image_gflop(ours.config)
    rows = []
    for batch in batches:
        pixels = torch.randn(batch, 3, 224, 224, device=device, dtype=dtype)
        cases = [("image encoder", pixels, image_call)]
        for length in (16, 77):
            ids = torch.randint(0, 49406, (batch, length), device=device)
            ids[:, -1] = 49407
            cases.append((f"text encoder T={length}", ids, text_call))
        # captions tokenized with padding="max_length": 16 real tokens, padded with EOS to 77, with a mask
        # (open_clip has no mask: its row above, at T=77, is what it does with such captions)
        ids = torch.full((batch, 77), 49407, device=device)
        ids[:, :15] = torch.randint(0, 49406, (batch, 15), device=device)
        mask = (torch.arange(77, device=device) < 16).long().expand(batch, 77)
        cases.append(("text encoder 16 tokens padded to 77", ids,
                      lambda name, m, x, mask=mask: None if name == "open_clip" else
                      m.get_text_features(input_ids=x, attention_mask=mask)))
        for case, x, fn in cases:
            def call(name, fn=fn, x=x):
                with torch.inference_mode():
                    fn(name, models[name], x)
                if device == "cuda":
                    torch.cuda.synchronize()
            names = [n for n in models if not (n == "open_clip" and case.endswith("padded to 77"))]
            times = interleaved({n: (lambda n=n: call(n)) for n in names}, repeats=repeats)
            row = {"path": f"{case} {str(dtype).removeprefix('torch.')}", "batch": batch, "unit": "items/s"}
            row.update({n: batch / times.get(n, float("nan"))
                        for n in ("clipfast", "clipfast packed", "transformers", "open_clip") if n in models})
            row["speedup"] = times["transformers"] / times["clipfast"]
            if "clipfast packed" in times:
                row["packed speedup"] = times["transformers"] / times["clipfast packed"]
            row["vs open_clip"] = times.get("open_clip", float("nan")) / times["clipfast"]
            if peak is not None:
                best = max(row["clipfast"], row.get("clipfast packed", 0.0))
                row["% of roofline (best)"] = 100 * gflop * best / peak if case == "image encoder" else ""
            rows.append(row)
    if peak is not None:
        print(f"float32 matmul roofline: {peak:.0f} GFLOP/s; image encoder {gflop:.2f} GFLOP/image")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--skip-cold", action="store_true")
    args = parser.parse_args()
    repeats = 3 if args.quick else 7
    with tempfile.TemporaryDirectory() as tmp:
        path = make_checkpoint(Path(tmp))
        rows = [] if args.skip_cold else cold_start(path, repeats)
        rows += encoders(path, args.device, getattr(torch, args.dtype), [int(b) for b in args.batches.split(",")],
                         repeats)
    report(f"model_{args.device}_{args.dtype}", rows)


if __name__ == "__main__":
    start = time.time()
    main()
    print(f"done in {time.time() - start:.0f} s")
