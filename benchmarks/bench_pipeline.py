"""Zero-shot pipeline: classify local photos against 10 labels, clipfast vs transformers, same checkpoint.

    python benchmarks/bench_pipeline.py [--images 64] [--batch-size 16] [--repeats 2]

The checkpoint is a full-size ViT-B/32 with random weights written by transformers, with the OpenAI tokenizer
(built from open_clip's copy of the vocabulary) and the default CLIP image processor.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, report  # noqa: E402

LABELS = ["cat", "dog", "car", "tree", "house", "person", "bird", "boat", "flower", "mountain"]


def make_folder(folder: Path) -> Path:
    """A Hub-layout checkpoint: config.json, model.safetensors, tokenizer and preprocessor files."""
    import transformers

    from clipfast.tokenization import convert_openai_vocab

    vocab = folder / "vocab"
    vocab.mkdir()
    convert_openai_vocab(vocab)
    tokenizer = transformers.CLIPTokenizerFast(str(vocab / "vocab.json"), str(vocab / "merges.txt"),
                                               model_max_length=77)
    path = folder / "clip"
    transformers.CLIPModel(transformers.CLIPConfig()).save_pretrained(path)
    transformers.CLIPProcessor(image_processor=transformers.CLIPImageProcessor(),
                               tokenizer=tokenizer).save_pretrained(path)
    return path


def make_photos(folder: Path, count: int) -> list[str]:
    """640x480 JPEGs cut from scikit-image's sample photos."""
    from PIL import Image
    from skimage import data

    sources = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), data.hubble_deep_field()]
    paths = []
    for i in range(count):
        image = Image.fromarray(sources[i % len(sources)]).convert("RGB").resize((640, 480))
        path = folder / f"photo_{i:03d}.jpg"
        image.rotate(i % 4 * 90).resize((640, 480)).save(path, quality=90)
        paths.append(str(path))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    import transformers

    import clipfast

    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_folder(Path(tmp))
        photos = make_photos(Path(tmp), args.images)
        ours = clipfast.pipeline("zero-shot-image-classification", model=str(folder), device=device)
        ref = transformers.pipeline("zero-shot-image-classification", model=str(folder), device=device)
        rows = []
        for batch_size in (None, args.batch_size):  # None: each library's default (transformers: 1, ours: 32)
            kwargs = {} if batch_size is None else {"batch_size": batch_size}
            top_ours = [r[0]["label"] for r in ours(photos, candidate_labels=LABELS, **kwargs)]
            top_ref = [r[0]["label"] for r in ref(photos, candidate_labels=LABELS, **kwargs)]
            agree = sum(a == b for a, b in zip(top_ours, top_ref)) / len(photos)
            times = interleaved({
                "clipfast": lambda: ours(photos, candidate_labels=LABELS, **kwargs),
                "transformers": lambda: ref(photos, candidate_labels=LABELS, **kwargs),
            }, repeats=args.repeats, warmup=0)
            rows.append({
                "path": f"zero-shot pipeline, {args.images} JPEGs x {len(LABELS)} labels",
                "batch": "default" if batch_size is None else batch_size, "unit": "images/s",
                "clipfast": args.images / times["clipfast"], "transformers": args.images / times["transformers"],
                "speedup": times["transformers"] / times["clipfast"], "top-1 agreement": agree})
    report(f"pipeline_{device}", rows)


if __name__ == "__main__":
    main()
