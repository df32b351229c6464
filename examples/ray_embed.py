"""clipfast's Ray Data building blocks in a pipeline of your own: embed images and their captions, then search.

    pip install 'clipfast[ray]'
    python examples/ray_embed.py                                  # examples/cat.jpg and a few captions
    python examples/ray_embed.py --model MODEL --images 'photos/*.jpg' --workers 2

Any ``ray.data`` source works the same way: ``read_parquet`` of a table of URLs (rename the URL column to
``image``), ``read_images`` (decoded arrays), ``read_binary_files`` (bytes, in a column named ``bytes``).
"""

from __future__ import annotations

import argparse
import glob
import logging
import os

import numpy as np
import ray

from clipfast.ray import EmbedImages, EmbedTexts

HERE = os.path.dirname(os.path.abspath(__file__))
CAPTIONS = ["a photo of a cat", "a photo of a dog", "a red car", "a bowl of soup"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="openai/clip-vit-base-patch32", help="hub id or local folder")
    parser.add_argument("--images", default=os.path.join(HERE, "*.jpg"), help="a glob of image files")
    parser.add_argument("--workers", type=int, default=1, help="model actors per step")
    parser.add_argument("--address", default="local", help="a Ray cluster to join (default: start one here)")
    args = parser.parse_args()
    paths = sorted(glob.glob(args.images))
    if not paths:
        parser.error(f"no images match {args.images!r}")

    # address="local" starts a fresh Ray even when an old cluster left its address in /tmp/ray
    ray.init(address=args.address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    ray.data.DataContext.get_current().enable_progress_bars = False
    model = os.path.abspath(args.model) if os.path.exists(args.model) else args.model
    pool = ray.data.ActorPoolStrategy(size=args.workers)
    gpus = 1 if ray.cluster_resources().get("GPU") else 0

    # paths (bytes or decoded arrays work too); the other columns pass through
    images = ray.data.from_items([{"image": path, "name": os.path.basename(path)} for path in paths])
    # on_error="drop": an unreadable file is left out instead of failing the job
    images = images.map_batches(EmbedImages, fn_constructor_kwargs={"model": model, "on_error": "drop"},
                                compute=pool, num_gpus=gpus, batch_size=64)
    texts = ray.data.from_items([{"text": caption} for caption in CAPTIONS])
    texts = texts.map_batches(EmbedTexts, fn_constructor_kwargs={"model": model}, compute=pool, num_gpus=gpus,
                              batch_size=256)

    image_rows = images.take_all()
    text_rows = texts.take_all()
    text_vectors = np.stack([row["text_embedding"] for row in text_rows])  # (captions, dim), L2-normalised
    for row in image_rows:
        scores = text_vectors @ np.asarray(row["image_embedding"])
        best = int(scores.argmax())
        print(f"{row['name']}: {text_rows[best]['text']!r} (cosine {scores[best]:.3f})")
    ray.shutdown()


if __name__ == "__main__":
    main()
