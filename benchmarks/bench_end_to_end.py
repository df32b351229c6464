"""End to end: a folder of JPEG files -> L2-normalised image embeddings, clipfast vs transformers vs open_clip.

All three hold the same full-size ViT-B/32 random weights (written by transformers; converted to open_clip's keys
with ``clipfast.convert.hf_to_openai``) and run with the same torch threads, interleaved call by call:

- clipfast: ``iter_image_batches`` (decode + preprocess on a thread pool, next batch prepared ahead) ->
  ``CLIPModel.get_image_features`` with the opt-in float32 CPU weight packing (``set_cpu_weight_packing()``;
  it does nothing on GPUs or in other dtypes).
- transformers: PIL open + convert -> its ``CLIPImageProcessor`` -> its ``CLIPModel.get_image_features``.
- open_clip: PIL open -> its own preprocess transform (torchvision) -> ``encode_image``.

    python benchmarks/bench_end_to_end.py [--quick] [--images 64] [--batch 32] [--device cpu|cuda]
        [--dtype float32] [--ours-dtype bfloat16]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gpu import open_clip_model, open_clip_preprocess  # noqa: E402
from bench_model import make_checkpoint  # noqa: E402
from bench_pipeline import make_photos  # noqa: E402
from common import interleaved, report  # noqa: E402

Embedder = Callable[[list[str]], torch.Tensor]


def batched(embed_batch: Embedder, batch: int) -> Embedder:
    """Embed a list of paths batch by batch and stack the normalised rows."""
    if getattr(embed_batch, "whole_list", False):  # it batches (and overlaps) by itself
        return lambda paths: embed_batch(paths, batch)  # type: ignore[call-arg]

    def run(paths: list[str]) -> torch.Tensor:
        with torch.inference_mode():
            out = [F.normalize(embed_batch(paths[i:i + batch]).float(), dim=-1) for i in range(0, len(paths), batch)]
        return torch.cat(out)
    return run


def clipfast_embedder(path: Path, device: str, dtype: torch.dtype, fast: bool) -> Embedder:
    """Our path: ``iter_image_batches`` (decode + preprocess per image on the pool, the next batch prepared while
    the model runs; the fast processor resizes on ``device``), then our model."""
    import clipfast
    from clipfast.image_io import iter_image_batches

    model = clipfast.CLIPModel.from_pretrained(path, torch_dtype=dtype).to(device).eval().set_cpu_weight_packing()
    processor = clipfast.CLIPImageProcessorFast() if fast else clipfast.CLIPImageProcessor()
    kwargs = {"device": device} if fast else {}

    def embed_all(paths: list[str], batch: int) -> torch.Tensor:
        out = []
        with torch.inference_mode():
            for _, pixels in iter_image_batches(paths, processor, batch_size=batch, prefetch=1, **kwargs):
                features = model.get_image_features(pixel_values=pixels.to(device, dtype, non_blocking=True))
                out.append(F.normalize(features.float(), dim=-1))
        return torch.cat(out)
    embed_all.whole_list = True  # type: ignore[attr-defined]
    return embed_all


def transformers_embedder(path: Path, device: str, dtype: torch.dtype) -> Embedder:
    """The reference path as its docs show it: PIL images -> CLIPImageProcessor -> CLIPModel."""
    import transformers
    from PIL import Image

    model = transformers.CLIPModel.from_pretrained(path, torch_dtype=dtype, attn_implementation="sdpa").to(device)
    processor = transformers.CLIPImageProcessor()

    def embed(paths: list[str]) -> torch.Tensor:
        images = [Image.open(p).convert("RGB") for p in paths]
        pixels = processor(images, return_tensors="pt")["pixel_values"]
        return model.get_image_features(pixel_values=pixels.to(device, dtype))
    return embed


def open_clip_embedder(path: Path, device: str, dtype: torch.dtype) -> Embedder:
    """open_clip's ViT-B-32 with our weights (quick_gelu, as OpenAI's and transformers' CLIP) and its preprocess."""
    from PIL import Image

    model, preprocess = open_clip_model(path, "B/32", dtype, device), open_clip_preprocess()

    def embed(paths: list[str]) -> torch.Tensor:
        pixels = torch.stack([preprocess(Image.open(p)) for p in paths])
        return model.encode_image(pixels.to(device, dtype))
    return embed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one timed round")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--ours-dtype", default=None,
                        help="clipfast's dtype when it should differ from the references' (e.g. bfloat16 on AMX CPUs)")
    parser.add_argument("--arch", default="B/32", choices=["B/32"], help="open_clip's config is ViT-B-32")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    ours_dtype = getattr(torch, args.ours_dtype or args.dtype)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_checkpoint(Path(tmp), args.arch)
        photos = make_photos(Path(tmp), args.images)
        embedders = {"clipfast": clipfast_embedder(ckpt, args.device, ours_dtype, fast=args.device == "cuda"),
                     "transformers": transformers_embedder(ckpt, args.device, dtype),
                     "open_clip": open_clip_embedder(ckpt, args.device, dtype)}
        runs = {name: batched(fn, args.batch) for name, fn in embedders.items()}
        outputs = {name: run(photos) for name, run in runs.items()}
        times = interleaved({name: (lambda run=run: (run(photos), sync())) for name, run in runs.items()},
                            repeats=1 if args.quick else 3)
    row: dict[str, object] = {"path": f"JPEG folder -> normalized embeddings ({args.images} x 640x480, "
                              f"{args.arch}, {args.dtype}"
                              + (f", clipfast in {args.ours_dtype}" if ours_dtype != dtype else "") + ")",
                              "batch": args.batch, "unit": "images/s",
                              "device": args.device}
    row.update({name: args.images / t for name, t in times.items()})
    row["speedup"] = times["transformers"] / times["clipfast"]
    row["speedup vs open_clip"] = times["open_clip"] / times["clipfast"]
    for name in ("transformers", "open_clip"):
        # 1 - the smallest cosine between our and their embedding of the same photo (0 = same)
        row[f"1-cos vs {name}"] = 1.0 - float((outputs["clipfast"] * outputs[name]).sum(-1).min())
    suffix = f"_ours_{args.ours_dtype}" if ours_dtype != dtype else ""
    report(f"end_to_end_{args.device}_{args.dtype}{suffix}", [row])


if __name__ == "__main__":
    start = time.time()
    main()
    print(f"done in {time.time() - start:.0f} s")
