"""Shared test data for the tokenizer tests: Hub-format files built by transformers from OpenAI's vocabulary
(:func:`hub_dir`, for parity tests) or by clipfast from its shipped copy (:func:`shipped_dir`), a corpus of
>= 10,000 varied texts, and the tiny model folder the CLI and server tests load (:func:`write_tiny_clip`).
Everything is built once per process and cached."""

from __future__ import annotations

import ast
import gzip
import importlib.util
import json
import os
import random
import tempfile
from functools import lru_cache
from pathlib import Path

from helpers import has_reference, reference

# the pure-Python and the Hub vocabularies are the same 48,894 merges; OpenAI's file has a header line
_NUM_MERGES = 49152 - 256 - 2


def _openai_gz() -> Path:
    """OpenAI's bpe_simple_vocab_16e6.txt.gz: open_clip's copy when installed, else the data file clipfast ships
    (the same bytes: test_shipped_gz_is_open_clips_copy), read here as data, not through clipfast's code."""
    spec = importlib.util.find_spec("open_clip")
    if spec is not None and spec.origin:
        return Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz"
    import clipfast

    return Path(clipfast.__file__).parent / "data" / "bpe_simple_vocab_16e6.txt.gz"


@lru_cache(maxsize=1)
def hub_dir() -> str:
    """A folder laid out like openai/clip-vit-base-patch32's tokenizer files (vocab.json, merges.txt,
    tokenizer.json, tokenizer_config.json, special_tokens_map.json), written by transformers from open_clip's gz.

    vocab/merges are built here independently of clipfast (spec §4.2), so that clipfast's converter is tested
    against them. Skips the calling test without transformers.
    """
    transformers = reference("transformers")
    lines = gzip.open(_openai_gz()).read().decode("utf-8").split("\n")[1 : _NUM_MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    rest = [b for b in range(256) if b not in keep]
    symbols = [chr(b) for b in keep] + [chr(256 + i) for i in range(len(rest))]
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    raw = tempfile.mkdtemp(prefix="clip_raw_vocab_")
    with open(os.path.join(raw, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(tokens)}, f, ensure_ascii=False)
    with open(os.path.join(raw, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    out = tempfile.mkdtemp(prefix="clip_hub_tokenizer_")
    transformers.CLIPTokenizerFast(os.path.join(raw, "vocab.json"), os.path.join(raw, "merges.txt"),
                                   model_max_length=77).save_pretrained(out)
    return out


@lru_cache(maxsize=1)
def shipped_dir() -> str:
    """A folder of tokenizer files that clipfast writes from the vocabulary it ships (vocab.json, merges.txt,
    tokenizer.json, tokenizer_config.json with model_max_length 77, special_tokens_map.json): what the tests of
    clipfast's own behaviour load, with no reference library installed."""
    import clipfast

    out = tempfile.mkdtemp(prefix="clip_shipped_tokenizer_")
    clipfast.CLIPTokenizerFast.from_openai_vocab().save_pretrained(out)
    return out


_SUBJECTS = ["a cat", "two dogs", "an old man", "the Eiffel Tower", "a red car", "children", "a bowl of ramen",
             "a woman in a blue dress", "an astronaut", "a café in Paris", "3 zebras", "a 1960s poster", "the moon"]
_ACTIONS = ["sitting on", "running along", "playing with", "next to", "under", "jumping over", "painted on",
            "eating", "looking at", "in front of", "flying above", "isn't near", "we'll see"]
_PLACES = ["a wooden table", "the beach at sunset", "a snowy mountain", "New York City", "a crowded market",
           "the kitchen", "a field of flowers", "a rainy street", "Tokyo", "São Paulo", "the garden", "space"]
_STYLES = ["", ", photo", ", oil painting", ", 4k, highly detailed", " by Greg Rutkowski", ", trending on artstation",
           " (close-up)", "!", "?", "...", " -- black & white", " #nofilter", ", 35mm f/1.8"]
_ODD = ["naïve café résumé", "Ünïcödé façade", "crème brûlée", "Straße", "İstanbul", "ﬁne ﬂour", "x\u0303y xãy",
        "😊😂👍🏽 🇫🇷", "❤️ love", "生活的真谛是", "東京タワー", "한국어 텍스트", "ภาษาไทย ปี ด", "Привет мир",
        "مرحبا بالعالم", "שלום", "Ελληνικά", "&amp; rock &lt;3", "<b>&amp;</b> cats", "&quot;hi&quot; &#39;x&#39;",
        "line\x85next", "tab\there", "cr\r\nlf", "a\u2028b\u2029c", "nbsp\xa0x", "zero\u200bwidth", "lrm\u200eand\u200f",
        "vt\x0bff\x0c", "nul\x00ctl\x01\x1f", "\ufeffbom", "replacement\ufffd", "don't can't won't I'm you're",
        "should've they'd we'll it's", "'s 't 're 've 'm 'll 'd", "A\n'll 11p223RF☆ho!!to?'d'd''d of a cat to-$''d.",
        "3.14159 1,000,000 2024-01-01 12:30pm", "$100 €50 £20 ¥1000", "!!!???...,,,;;;", "<|startoftext|>x",
        "a<|endoftext|>b", "<|ENDOFTEXT|> caps", "<s>hi</s>", "ÃƒÂ© mojibake Ã©", "ＦＵＬＬＷＩＤＴＨ", "",
        "   ", "\n\n", "x" * 300, "supercalifragilisticexpialidocious", "e-mail: user@example.com",
        "https://example.com/a?b=c&d=e", "C++ & C# -> Rust", "¯\\_(ツ)_/¯", "½ ¼ ² ³ ° ± ×", "™ © ®", "“quoted” ‘x’",
        "em—dash en–dash", "…", "١٢٣ ४५६ 七八九", "Ⅻ ⅷ", "ǅ ǆ ﬀ", "🎉" * 40]


def _captions(rng: random.Random, n: int) -> list[str]:
    """Caption-like texts from templates, with random case changes."""
    out = []
    for _ in range(n):
        text = f"{rng.choice(_SUBJECTS)} {rng.choice(_ACTIONS)} {rng.choice(_PLACES)}{rng.choice(_STYLES)}"
        if rng.random() < 0.2:
            text = text.upper() if rng.random() < 0.5 else text.title()
        out.append(text)
    return out


def _package_dir(name: str) -> Path | None:
    """The folder of an installed package, without importing it (None when it is not installed)."""
    spec = importlib.util.find_spec(name)
    return Path(spec.origin).parent if spec is not None and spec.origin else None


def _prose(limit: int) -> list[str]:
    """Docstring paragraphs from installed packages (transformers, ftfy, json, email; more of the standard
    library when transformers is missing, so the corpus keeps its size on a plain install)."""
    transformers, ftfy, stdlib = _package_dir("transformers"), _package_dir("ftfy"), Path(ast.__file__).parent
    roots = [transformers / "models" / "clip", transformers / "utils"] if transformers else []
    roots += [root for root in (ftfy, Path(json.__file__).parent, stdlib / "email") if root is not None]
    if transformers is None:
        roots += [stdlib / name for name in ("asyncio", "concurrent/futures", "http", "urllib", "logging")]
    out: list[str] = []
    for root in roots:
        for path in sorted(root.glob("*.py")):
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, OSError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Module, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node)
                    if doc:
                        out += [p.strip() for p in doc.split("\n\n") if p.strip()]
                if len(out) >= limit:
                    return out
    return out


def _mixed(rng: random.Random, pool: list[str], n: int) -> list[str]:
    """Random mixtures of odd strings, words and whitespace."""
    seps = [" ", "  ", "\n", "\t", "", " \u3000 ", "\r\n"]
    return ["".join(rng.choice(pool) + rng.choice(seps) for _ in range(rng.randint(1, 5))) for _ in range(n)]


@lru_cache(maxsize=1)
def corpus() -> tuple[str, ...]:
    """>= 10,000 varied texts: captions, prose, punctuation, numbers, contractions, accents, emoji, CJK, Thai,
    HTML entities, odd whitespace and control characters. Deterministic."""
    rng = random.Random(0)
    texts = list(_ODD)
    texts += _captions(rng, 6500)
    texts += _prose(2500)
    texts += _mixed(rng, _ODD + _SUBJECTS + _PLACES, 1500)
    texts += ["".join(chr(rng.randint(32, 0x2FFF)) for _ in range(rng.randint(1, 30))) for _ in range(500)]
    texts += [str(rng.randint(0, 10**12)) + rng.choice([" items", "%", "px", ".5", ""]) for _ in range(200)]
    return tuple(texts)


TINY_TEXT = dict(vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=77)
TINY_VISION = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                   num_attention_heads=4)


def write_tiny_clip(folder: Path) -> Path:
    """A tiny random CLIPModel (32x32 images, projection 16) with the real tokenizer files and a matching
    preprocessor_config.json, saved into ``folder``: what a CLI or server test loads by path. transformers
    writes it when installed (so the folder is the reference's own); else clipfast writes the same files."""
    import torch

    torch.manual_seed(0)
    if has_reference("transformers"):
        import transformers as library

        tokenizer = library.CLIPTokenizerFast.from_pretrained(hub_dir())
    else:
        import clipfast as library

        tokenizer = library.CLIPTokenizerFast.from_openai_vocab()
    config = library.CLIPConfig(text_config=dict(TINY_TEXT), vision_config=dict(TINY_VISION), projection_dim=16)
    library.CLIPModel(config).save_pretrained(folder)
    library.CLIPProcessor(
        image_processor=library.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer).save_pretrained(folder)
    return folder
