"""Images/s from 640x480 JPEG files on disk to ``pixel_values`` (decode included), batches of 64.

Runs, interleaved round by round: transformers' CLIPImageProcessor (its reference path: PIL open + convert +
processor), open_clip's eval transform (when installed), our CLIPImageProcessor and our CLIPImageProcessorFast
called on each batch's file paths (each image loaded and preprocessed in one task on the thread pool), the same
fed PIL images by ``load_images`` (loading, then preprocessing), CLIPImageProcessorFast fed by
``iter_image_batches`` (one batch prepared ahead), and CLIPImageProcessorFast on CUDA when there is a GPU.
Prints a table with ratios to the reference and writes benchmarks/results/image_processing.json.

    python benchmarks/bench_image_processing.py [--images 256] [--batch 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "benchmarks")]
from common import benchmark_jpegs  # noqa: E402


def _reference_runner():
    import transformers
    from PIL import Image

    processor = transformers.CLIPImageProcessor()

    def run(paths, batch):
        for start in range(0, len(paths), batch):
            images = []
            for path in paths[start:start + batch]:
                with Image.open(path) as image:
                    images.append(image.convert("RGB"))
            processor(images, return_tensors="pt")["pixel_values"]

    return run


def _open_clip_runner():
    """open_clip's eval transform (torchvision on PIL: bicubic resize, center crop, to tensor, normalize), one image
    at a time and stacked, as its users call it; None without open_clip."""
    import torch
    from bench_gpu import open_clip_preprocess
    from PIL import Image

    try:
        preprocess = open_clip_preprocess()
    except ImportError:
        return None

    def run(paths, batch):
        for start in range(0, len(paths), batch):
            torch.stack([preprocess(Image.open(path)) for path in paths[start:start + batch]])

    return run


def _ours_runner(cls_name: str, device: str | None = None, preload: bool = False):
    """Our processor called on each batch's paths, or (``preload``) on the PIL images ``load_images`` returns."""
    import clipfast.image_processing as ip
    from clipfast.image_io import load_images

    processor = getattr(ip, cls_name)()
    kwargs = {"device": device} if device else {}

    def run(paths, batch):
        for start in range(0, len(paths), batch):
            chunk = [str(path) for path in paths[start:start + batch]]
            processor(load_images(chunk) if preload else chunk, return_tensors="pt", **kwargs)["pixel_values"]
        if device == "cuda":
            import torch

            torch.cuda.synchronize()

    return run


def _iter_runner(cls_name: str):
    """The processor fed by ``iter_image_batches``: load + preprocess fused per image on the pool, one batch ahead."""
    import clipfast.image_processing as ip
    from clipfast.image_io import iter_image_batches

    processor = getattr(ip, cls_name)()

    def run(paths, batch):
        for _ in iter_image_batches(paths, processor, batch_size=batch):
            pass

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import torch

    runners = {"transformers CLIPImageProcessor": _reference_runner(),
               "clipfast CLIPImageProcessor": _ours_runner("CLIPImageProcessor"),
               "clipfast CLIPImageProcessorFast (cpu)": _ours_runner("CLIPImageProcessorFast"),
               "clipfast CLIPImageProcessorFast (cpu, load_images first)": _ours_runner("CLIPImageProcessorFast",
                                                                                       preload=True),
               "clipfast CLIPImageProcessorFast (cpu, iter_image_batches)": _iter_runner("CLIPImageProcessorFast")}
    if torch.cuda.is_available():
        runners["clipfast CLIPImageProcessorFast (cuda)"] = _ours_runner("CLIPImageProcessorFast", "cuda")
    open_clip_run = _open_clip_runner()
    if open_clip_run is not None:
        runners["open_clip preprocess (torchvision)"] = open_clip_run
    with tempfile.TemporaryDirectory() as folder:
        paths = benchmark_jpegs(Path(folder), args.images)
        for run in runners.values():  # warm-up: imports, caches, thread pools
            run(paths[:args.batch], args.batch)
        best = {name: float("inf") for name in runners}
        for _ in range(args.rounds):
            for name, run in runners.items():
                start = time.perf_counter()
                run(paths, args.batch)
                best[name] = min(best[name], time.perf_counter() - start)
    base = args.images / best["transformers CLIPImageProcessor"]
    rows = {name: {"images_per_s": round(args.images / t, 1), "ratio_vs_reference": round(args.images / t / base, 2)}
            for name, t in best.items()}
    width = max(map(len, rows))
    print(f"{'processor':<{width}}  images/s  vs reference")
    for name, row in rows.items():
        print(f"{name:<{width}}  {row['images_per_s']:>8.1f}  {row['ratio_vs_reference']:>6.2f}x")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    meta = {"images": args.images, "batch": args.batch, "rounds": args.rounds, "size": "640x480 JPEG q90",
            "torch_threads": torch.get_num_threads(), "device": torch.cuda.get_device_name() if torch.cuda.is_available()
            else "cpu"}
    (out / "image_processing.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
