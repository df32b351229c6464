"""Tokenizer throughput: clipfast vs transformers 4.57 (slow vs slow, fast vs fast) vs open_clip, interleaved.

Each round tokenizes the same batch of captions (batched, padding=True, truncation=True, return_tensors="pt")
with every tokenizer in turn; the table gives the median over rounds (the first, cold round is reported apart).
open_clip's tokenizer (its SimpleTokenizer, when open_clip is installed) always returns 77 columns; it is called
as its users call it, ``tokenizer(texts)``. Results go to benchmarks/results/tokenizers.json.

    python benchmarks/bench_tokenizers.py --texts 20000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

_WORDS = ("a an the two three several old young small large red blue green golden wooden shiny happy tired "
          "cat dog man woman child children car bus train bicycle horse bird tree flower mountain river beach street "
          "kitchen table chair window building city market field forest sky sunset snow rain boat plate pizza "
          "sitting standing running walking playing eating holding looking riding flying parked next to on in under "
          "near behind with of at by while and photo picture painting close-up view").split()
_TAILS = ("", ".", ", 4k photo", " in the background.", " on a sunny day", "!", " -- oil painting, trending on "
          "artstation", " (black & white)", " at night")


def captions(n: int, seed: int = 0) -> list[str]:
    """Caption-like texts of 5-25 words (some capitalised, some with punctuation and numbers)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(5, 25))]
        if rng.random() < 0.2:
            words.insert(rng.randrange(len(words)), str(rng.randint(1, 1999)))
        text = " ".join(words) + rng.choice(_TAILS)
        out.append(text[0].upper() + text[1:] if rng.random() < 0.7 else text)
    return out


def build(folder: str) -> dict[str, Any]:
    """Our and the reference's tokenizers, from the same vocab.json / merges.txt (OpenAI's vocabulary)."""
    import transformers

    from clipfast import CLIPTokenizer, CLIPTokenizerFast
    from clipfast.tokenization import convert_openai_vocab

    vocab, merges = convert_openai_vocab(folder)
    return {
        "clipfast slow": CLIPTokenizer(vocab, merges, model_max_length=77),
        "transformers slow": transformers.CLIPTokenizer(vocab, merges, model_max_length=77),
        "clipfast fast": CLIPTokenizerFast(vocab, merges, model_max_length=77),
        "transformers fast": transformers.CLIPTokenizerFast(vocab, merges, model_max_length=77),
    }


def open_clip_tokenizer() -> Any | None:
    """open_clip's tokenizer for OpenAI's ViT-B/32 vocabulary, or None without open_clip."""
    try:
        import open_clip
    except ImportError:
        return None
    return open_clip.get_tokenizer("ViT-B-32")


def _up_to_eot(ids: list[int], eot: int = 49407) -> list[int]:
    """Ids up to and including the end-of-text token (padding differs: EOS for transformers, 0 for open_clip)."""
    return ids[:ids.index(eot) + 1] if eot in ids else ids


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "tokenizers.json"))
    args = parser.parse_args()
    texts = captions(args.texts)
    with tempfile.TemporaryDirectory() as folder:
        toks = build(folder)
    kwargs = dict(padding=True, truncation=True, return_tensors="pt")
    first = {name: toks[name](texts[:4], **kwargs)["input_ids"].tolist() for name in toks}
    if len({json.dumps(v) for v in first.values()}) != 1:
        raise SystemExit("tokenizers disagree on the benchmark texts")
    calls: dict[str, Callable[[], Any]] = {name: (lambda tok=tok: tok(texts, **kwargs)) for name, tok in toks.items()}
    theirs = open_clip_tokenizer()
    if theirs is not None:
        ours = [_up_to_eot(ids) for ids in first["clipfast fast"]]
        if [_up_to_eot(ids) for ids in theirs(texts[:4]).tolist()] != ours:
            raise SystemExit("open_clip's tokenizer disagrees with ours on the benchmark texts")
        calls["open_clip"] = lambda: theirs(texts)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(args.rounds + 1):  # round 0 is cold (empty BPE caches)
        for name, call in calls.items():
            times[name].append(timed(call))
    rows = {name: {"cold_s": t[0], "median_s": statistics.median(t[1:]),
                   "texts_per_s": len(texts) / statistics.median(t[1:])} for name, t in times.items()}
    ratios = {kind: rows[f"transformers {kind}"]["median_s"] / rows[f"clipfast {kind}"]["median_s"]
              for kind in ("slow", "fast")}
    cold = {kind: rows[f"transformers {kind}"]["cold_s"] / rows[f"clipfast {kind}"]["cold_s"]
            for kind in ("slow", "fast")}
    print(f"{len(texts)} captions, batched, padding=True, truncation=True, return_tensors='pt'; "
          f"median of {args.rounds} warm rounds")
    print(f"{'tokenizer':<20}{'texts/s':>12}{'median s':>11}{'cold s':>9}")
    for name, row in rows.items():
        print(f"{name:<20}{row['texts_per_s']:>12,.0f}{row['median_s']:>11.3f}{row['cold_s']:>9.3f}")
    for kind in ("slow", "fast"):
        print(f"speed-up {kind}: {ratios[kind]:.2f}x warm, {cold[kind]:.2f}x cold")
    if "open_clip" in rows:
        ratios["fast vs open_clip"] = rows["open_clip"]["median_s"] / rows["clipfast fast"]["median_s"]
        ratios["slow vs open_clip"] = rows["open_clip"]["median_s"] / rows["clipfast slow"]["median_s"]
        print(f"vs open_clip: fast {ratios['fast vs open_clip']:.2f}x, slow {ratios['slow vs open_clip']:.2f}x warm")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"texts": len(texts), "rounds": args.rounds, "cpu_count": os.cpu_count(), "results": rows,
                   "speedup_warm": ratios, "speedup_cold": cold}, f, indent=2)


if __name__ == "__main__":
    main()
