"""CLIP's vocabulary and byte-level BPE: the byte alphabet, the vocabulary files, the pre-split regex and the merge.

The vocabulary (spec §4.2) is 256 byte symbols, the same with ``</w>`` (end of a word), one token per merge, and
the two specials ``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407). It comes from OpenAI's
``bpe_simple_vocab_16e6.txt.gz`` (a copy ships with clipfast) or from the Hub's vocab.json + merges.txt or
tokenizer.json.

Example:
    >>> vocab, merges = read_openai_vocab()
    >>> ranks = {pair: rank for rank, pair in enumerate(merges)}
    >>> [vocab[t] for t in merge_symbols("photo", ranks)]
    [1125]
"""

from __future__ import annotations

import gzip
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from clipfast import hub
from clipfast.errors import CheckpointError

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
VOCAB_NAME = "vocab.json"
MERGES_NAME = "merges.txt"
TOKENIZER_JSON = "tokenizer.json"
NUM_MERGES = 49152 - 256 - 2  # merges the reference reads from merges.txt (spec §4.2)
# the reference's pre-split regex (spec §4.4), used case-insensitively; the fast pipeline drops the two specials
SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_SLOW_PATTERN = r"<\|startoftext\|>|<\|endoftext\|>|" + SPLIT_PATTERN
# The same split for lower-cased printable ASCII, where \p{L} is [a-z] and \p{N} is [0-9]; std `re` is faster.
_ASCII_PATTERN = r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^ \t\n\ra-z0-9]+"


@lru_cache(maxsize=1)
def split_patterns() -> tuple[Any, Any]:
    """(the reference's split regex, case-insensitive; its ASCII twin in std ``re``), compiled on first use."""
    import re

    import regex

    return regex.compile(_SLOW_PATTERN, regex.IGNORECASE), re.compile(_ASCII_PATTERN)


# ---------------------------------------------------------------------------------------------------------------
# vocabulary files



@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """The byte alphabet: printable bytes map to themselves, the other 68 to U+0100 onwards (space -> 'Ġ').

    Dict order is vocabulary order (ids 0-255): the three printable ranges first, then the remapped bytes.
    """
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


def openai_vocab_path() -> str:
    """Path of ``bpe_simple_vocab_16e6.txt.gz`` (OpenAI, MIT licence) shipped inside clipfast."""
    return str(Path(__file__).parent / "data" / "bpe_simple_vocab_16e6.txt.gz")


def read_openai_vocab(path: str | os.PathLike | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocab and merges from OpenAI's gz file, identical to the Hub's vocab.json / merges.txt (spec §4.2).

    Example:
        >>> vocab, merges = read_openai_vocab()
        >>> len(vocab), len(merges), vocab["photo</w>"], merges[0]
        (49408, 48894, 1125, ('i', 'n'))
    """
    with gzip.open(path or openai_vocab_path(), "rb") as f:
        lines = f.read().decode("utf-8").split("\n")[1 : NUM_MERGES + 1]  # line 0 is a header
    merges = [_merge_pair(line) for line in lines]
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS_TOKEN, EOS_TOKEN]
    return {t: i for i, t in enumerate(tokens)}, merges


def convert_openai_vocab(save_directory: str | os.PathLike, path: str | os.PathLike | None = None) -> tuple[str, str]:
    """Write ``vocab.json`` and ``merges.txt`` (the Hub files) built from OpenAI's gz vocabulary.

    Example:
        >>> convert_openai_vocab("my_tokenizer")  # doctest: +SKIP
        ('my_tokenizer/vocab.json', 'my_tokenizer/merges.txt')
    """
    vocab, merges = read_openai_vocab(path)
    return write_vocab_files(vocab, merges, save_directory)


def _merge_pair(line: str) -> tuple[str, str]:
    """One ``"left right"`` merges line as a pair, with a clear error for a corrupt file."""
    parts = line.split()
    if len(parts) != 2:
        raise CheckpointError(f"Bad merges line {line!r}: expected two space-separated symbols.")
    return parts[0], parts[1]


def read_vocab_files(vocab_file: str | os.PathLike, merges_file: str | os.PathLike
                     ) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Read ``vocab.json`` and ``merges.txt`` as the reference does (header skipped, at most 48,894 merges)."""
    vocab = hub.read_json(os.fspath(vocab_file))
    with open(merges_file, encoding="utf-8") as f:
        lines = f.read().strip().split("\n")[1 : NUM_MERGES + 1]
    return vocab, [_merge_pair(line) for line in lines if line.strip()]


def read_tokenizer_json(path: str | os.PathLike) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocab and merges from the BPE model inside a ``tokenizer.json`` (merges as strings or as pairs)."""
    model = hub.read_json(os.fspath(path)).get("model") or {}
    if model.get("type", "BPE") != "BPE" or "vocab" not in model:
        raise CheckpointError(f"{os.fspath(path)!r} does not hold a BPE model with a vocabulary.")
    merges = [tuple(m) if isinstance(m, list) else _merge_pair(m) for m in model.get("merges", [])]
    return dict(model["vocab"]), merges  # type: ignore[arg-type]


def write_vocab_files(vocab: dict[str, int], merges: Iterable[tuple[str, str]], save_directory: str | os.PathLike,
                      filename_prefix: str | None = None) -> tuple[str, str]:
    """Write vocab.json (indent 2, sorted keys, non-ASCII kept) and merges.txt as the reference's slow tokenizer."""
    prefix = f"{filename_prefix}-" if filename_prefix else ""
    vocab_file = os.path.join(save_directory, prefix + VOCAB_NAME)
    merges_file = os.path.join(save_directory, prefix + MERGES_NAME)
    with open(vocab_file, "w", encoding="utf-8") as f:
        f.write(json.dumps(vocab, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    with open(merges_file, "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return vocab_file, merges_file


# ---------------------------------------------------------------------------------------------------------------
# the merge


def merge_symbols(piece: str, ranks: dict[tuple[str, str], int]) -> tuple[str, ...]:
    """BPE of one byte-mapped piece: merge the lowest-ranked adjacent pair everywhere until none is left.

    The last symbol carries ``</w>``.

    Example:
        >>> merge_symbols("aab", {("a", "a"): 0, ("aa", "b</w>"): 1})
        ('aab</w>',)
    """
    symbols = [*piece[:-1], piece[-1] + "</w>"]
    while len(symbols) > 1:
        best, best_rank = -1, len(ranks)
        for i in range(len(symbols) - 1):
            rank = ranks.get((symbols[i], symbols[i + 1]))
            if rank is not None and rank < best_rank:
                best, best_rank = i, rank
        if best < 0:
            break
        first, second = symbols[best], symbols[best + 1]
        merged, i, n = [], 0, len(symbols)
        while i < n:  # every non-overlapping occurrence, left to right
            if i < n - 1 and symbols[i] == first and symbols[i + 1] == second:
                merged.append(first + second)
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return tuple(symbols)
