"""CLIPTokenizer: OpenAI CLIP's byte-level BPE in pure Python, and the call/pad/truncate logic both tokenizers share.

The algorithm (spec §4.4): clean the text (``ftfy`` when installed, else a BERT-style cleaner), lower-case it,
split it with one regex into words, digits and symbol runs, map each piece's UTF-8 bytes onto 256 printable
characters, and merge symbol pairs by rank, with ``</w>`` marking the end of each piece. Specials are
``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407, also unk and pad).

Speed comes from three things the reference lacks: a cache from raw piece straight to ids, skipping ``ftfy``
for plain printable ASCII (where it changes nothing), and one pass per batch without per-call bookkeeping.

Example:
    >>> tok = CLIPTokenizer.from_openai_vocab()
    >>> tok(["a photo of a cat", "a dog"], padding=True)["input_ids"]
    [[49406, 320, 1125, 539, 320, 2368, 49407], [49406, 320, 1929, 49407, 49407, 49407, 49407]]
"""

from __future__ import annotations

import gzip
import html
import json
import logging
import os
import re as std_re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable

from clipfast import hub
from clipfast.errors import CheckpointError, InputError

logger = logging.getLogger(__name__)

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
VOCAB_NAME = "vocab.json"
MERGES_NAME = "merges.txt"
TOKENIZER_JSON = "tokenizer.json"
CONFIG_NAME = "tokenizer_config.json"
SPECIAL_MAP_NAME = "special_tokens_map.json"
ADDED_TOKENS_NAME = "added_tokens.json"
NO_LIMIT = int(1e30)  # the reference's model_max_length when no config gives one
CLIP_MAX_LENGTH = 77
NUM_MERGES = 49152 - 256 - 2  # merges the reference reads from merges.txt (spec §4.2)
# the reference's pre-split regex (spec §4.4), used case-insensitively; the fast pipeline drops the two specials
SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_SLOW_PATTERN = r"<\|startoftext\|>|<\|endoftext\|>|" + SPLIT_PATTERN
# The same split for lower-cased printable ASCII, where \p{L} is [a-z] and \p{N} is [0-9]; std `re` is faster.
_ASCII_PATTERN = r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^ \t\n\ra-z0-9]+"
# Characters outside this set may be changed by ftfy (entities after '&', control chars, anything non-ASCII).
_NEEDS_CLEANING = r"[^\t\n\r\x20-\x25\x27-\x7e]"
_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")
PADDINGS = ("longest", "max_length", "do_not_pad")
TRUNCATIONS = ("longest_first", "only_first", "only_second", "do_not_truncate")


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
# BatchEncoding


class BatchEncoding(dict):
    """The tokenizers' output: a dict (``input_ids``, ``attention_mask``, ...) with attribute access.

    Like transformers' class: ``enc.input_ids``, ``enc["input_ids"]``, ``enc.to("cuda")`` (returns itself),
    ``enc.data``; fast tokenizers also keep the ``tokenizers`` encodings for ``tokens()`` / ``word_ids()``.
    """

    def __init__(self, data: dict[str, Any] | None = None, encoding: list[Any] | None = None,
                 tensor_type: str | None = None, prepend_batch_axis: bool = False) -> None:
        super().__init__(data or {})
        self._encodings = encoding
        if prepend_batch_axis:
            for key, value in self.items():
                self[key] = [value]
        if tensor_type is not None:
            self.convert_to_tensors(tensor_type)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_encodings":
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"'BatchEncoding' object has no attribute {name!r}") from None

    def __getstate__(self) -> dict[str, Any]:
        return {"encodings": None}  # tokenizers' encodings are not needed after a pickle round trip

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._encodings = state.get("encodings")

    @property
    def data(self) -> BatchEncoding:
        """The dict itself (transformers keeps the same mapping under ``.data``)."""
        return self

    @property
    def encodings(self) -> list[Any] | None:
        """The ``tokenizers.Encoding`` of each row (fast tokenizers only), else None."""
        return self._encodings

    @property
    def is_fast(self) -> bool:
        """Whether a fast tokenizer produced this (``tokens()`` / ``word_ids()`` work)."""
        return self._encodings is not None

    def tokens(self, batch_index: int = 0) -> list[str]:
        """Token strings of one row (fast tokenizers only)."""
        return self._encoding(batch_index).tokens

    def word_ids(self, batch_index: int = 0) -> list[int | None]:
        """Index of the word each token came from, None for special tokens (fast tokenizers only)."""
        return self._encoding(batch_index).word_ids

    def sequence_ids(self, batch_index: int = 0) -> list[int | None]:
        """0 or 1 for tokens of the first or second text, None for special tokens (fast tokenizers only)."""
        return self._encoding(batch_index).sequence_ids

    def _encoding(self, batch_index: int) -> Any:
        if self._encodings is None:
            raise InputError("tokens()/word_ids() need the output of a fast tokenizer (CLIPTokenizerFast).")
        return self._encodings[batch_index]

    def convert_to_tensors(self, tensor_type: str | None) -> BatchEncoding:
        """Turn every list value into a torch tensor (``"pt"``) or a NumPy array (``"np"``), in place."""
        if tensor_type is None:
            return self
        convert = _tensor_converter(str(getattr(tensor_type, "value", tensor_type)))
        for key, value in self.items():
            try:
                self[key] = convert(value)
            except (ValueError, TypeError, RuntimeError) as exc:
                raise InputError(
                    f"Cannot make a tensor of {key!r}: the rows have different lengths or types ({exc}). Pass "
                    "padding=True (and truncation=True) to get rectangular batches.") from exc
        return self

    def to(self, *args: Any, **kwargs: Any) -> BatchEncoding:
        """Move tensors to a device and/or cast the floating ones (``pixel_values``) to a dtype, with
        ``Tensor.to``'s arguments: ids and masks keep their integer dtype. Returns self, as transformers does."""
        tensors_to(self, args, kwargs)
        return self


def tensors_to(data: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """``Tensor.to(*args, **kwargs)`` on the floating tensors of the mapping ``data`` and only the device part on the
    others (``model(**inputs.to("cuda", torch.float16))`` must keep integer ids), in place."""
    import torch

    device = kwargs.get("device")
    if device is None and args and not isinstance(args[0], torch.dtype):
        if not isinstance(args[0], (str, int, torch.device)):
            raise InputError(f".to() takes a device and/or a dtype, got {args[0]!r}.")
        device = args[0]
    for key, value in list(data.items()):
        if isinstance(value, torch.Tensor) and torch.is_floating_point(value):
            data[key] = value.to(*args, **kwargs)
        elif isinstance(value, torch.Tensor) and device is not None:
            data[key] = value.to(device=device, non_blocking=kwargs.get("non_blocking", False))


def _tensor_converter(tensor_type: str) -> Callable[[Any], Any]:
    """The function that turns a (nested) list into the asked tensor type; torch is imported only here."""
    import numpy as np

    if tensor_type == "np":
        return lambda v: v if isinstance(v, np.ndarray) else _np_array(v, ragged_ok=True)
    if tensor_type == "pt":
        import torch

        return lambda v: v if isinstance(v, torch.Tensor) else torch.from_numpy(_np_array(v))
    raise InputError(f"return_tensors={tensor_type!r} is not supported; use 'pt', 'np' or None.")


def _np_array(value: Any, ragged_ok: bool = False) -> Any:
    """A rectangular int64 (or float, for non-int data) array. Ragged rows raise ValueError, or with ``ragged_ok``
    become a 1-D object array of per-row arrays (what transformers 4.57 returns for ``return_tensors="np"``)."""
    import numpy as np

    if ragged_ok and _is_ragged(value):
        rows = np.empty(len(value), dtype=object)
        rows[:] = [_np_array(row) for row in value]
        return rows
    try:
        array = np.array(value)
    except ValueError as exc:  # NumPy >= 1.24 refuses ragged nested lists outright
        raise ValueError("ragged rows") from exc
    if array.dtype == object:
        raise ValueError("ragged rows")
    return array.astype(np.int64) if array.dtype.kind in "iub" or array.size == 0 else array


def _is_ragged(value: Any) -> bool:
    """Whether ``value`` is a list of rows (lists) that do not all have the same length."""
    return (isinstance(value, (list, tuple)) and bool(value) and all(isinstance(r, (list, tuple)) for r in value)
            and len({len(r) for r in value}) > 1)


# ---------------------------------------------------------------------------------------------------------------
# call planning shared by both tokenizers


@dataclass
class CallPlan:
    """Padding and truncation of one call, resolved as the reference does (see ``TokenizerBase._plan``)."""

    padding: str  # "longest" | "max_length" | "do_not_pad"
    truncation: str  # "longest_first" | "only_first" | "only_second" | "do_not_truncate"
    max_length: int | None
    pad_to_multiple_of: int | None
    padding_side: str
    stride: int = 0
    add_special_tokens: bool = True
    split_words: bool = False
    token_type_ids: bool = False
    attention_mask: bool = True
    special_tokens_mask: bool = False
    offsets: bool = False
    length: bool = False
    verbose: bool = True
    single: bool = False  # one text (not a batch): the reference's single-text path differs in corner cases


def _token_content(token: Any) -> str | None:
    """A special token given as str, AddedToken, or a tokenizer_config dict -> its string."""
    if token is None or isinstance(token, str):
        return token
    if isinstance(token, dict):
        return token.get("content")
    return str(getattr(token, "content", token))


def added_token_entry(value: Any) -> tuple[str | None, bool]:
    """An added token as stored (a string, an AddedToken, or a tokenizer_config ``added_tokens_decoder`` dict) ->
    (content, whether it is marked special)."""
    return _token_content(value), bool(value.get("special")) if isinstance(value, dict) else bool(
        getattr(value, "special", False))


def _token_list(value: Any) -> list[str]:
    """``additional_special_tokens`` as strings: from a list of strings / AddedTokens / dicts, or from one dict
    whose ``content`` is a list (how clipfast 0.x wrote special_tokens_map.json)."""
    if value is None:
        return []
    items = [value] if isinstance(value, (str, dict)) or hasattr(value, "content") else list(value)
    out: list[str] = []
    for item in items:
        content = _token_content(item)
        out += [c for c in (content if isinstance(content, list) else [content]) if isinstance(c, str) and c]
    return list(dict.fromkeys(out))


def _as_batch(text: Any, text_pair: Any, split_words: bool) -> tuple[list[Any], list[Any] | None, bool]:
    """Validate the inputs and return (texts, pairs or None, whether the input was a batch)."""
    if text is None:
        raise InputError("You need to specify either `text` or `text_target`: got text=None.")
    batched = _is_batch(text, split_words)
    texts = list(text) if batched else [text]
    if not texts:
        raise InputError("text is an empty batch; pass at least one text (an empty string is fine).")
    if text_pair is None:
        pairs = None
        if not split_words and any(isinstance(t, (list, tuple)) for t in texts):
            texts, pairs = _split_pair_items(texts)
    elif batched:
        if isinstance(text_pair, str) or not isinstance(text_pair, (list, tuple)):
            raise InputError("when tokenizing batches of text, `text_pair` must be a list or tuple with the same "
                             f"length as `text`; got {type(text_pair).__name__}.")
        if len(text_pair) != len(texts):
            raise InputError(f"batch length of `text`: {len(texts)} does not match batch length of `text_pair`: "
                             f"{len(text_pair)}.")
        pairs = list(text_pair)
    else:
        pairs = [text_pair]
    for name, items in (("text", texts), ("text_pair", pairs or [])):
        for i, item in enumerate(items):
            _check_item(item, f"{name}[{i}]" if batched else name, split_words)
    return texts, pairs, batched


def _is_batch(text: Any, split_words: bool) -> bool:
    """str -> single; list of str -> batch (or one pre-split text); list of lists -> batch of pre-split texts."""
    if isinstance(text, str):
        return False
    if not isinstance(text, (list, tuple)):
        raise InputError("text input must be of type `str` (single example), `list[str]` (batch) or "
                         f"`list[list[str]]` (pre-split words); got {type(text).__name__}.")
    if split_words:
        return bool(text) and isinstance(text[0], (list, tuple))
    return True


def _split_pair_items(texts: list[Any]) -> tuple[list[Any], list[Any]]:
    """A batch of ``(text, text_pair)`` 2-tuples, as the reference accepts; other nesting is an error."""
    if not all(isinstance(t, (list, tuple)) and len(t) == 2 for t in texts):
        raise InputError("A batch must be a list of strings (or of (text, text_pair) pairs); got nested lists. "
                         "For words already split, pass is_split_into_words=True.")
    return [t[0] for t in texts], [t[1] for t in texts]


def _check_item(item: Any, where: str, split_words: bool) -> None:
    """Every text is a str (or, pre-split, a list of str); anything else is a clear InputError."""
    if split_words and isinstance(item, (list, tuple)):
        bad = [w for w in item if not isinstance(w, str)]
        if not bad:
            return
        raise InputError(f"{where} holds a {type(bad[0]).__name__} ({bad[0]!r}); pre-split words must be str.")
    if not isinstance(item, str):
        raise InputError(f"{where} is a {type(item).__name__} ({item!r:.60}); each text must be a str.")


def _to_py(ids: Any) -> Any:
    """Token ids from a tensor / array / list into plain Python ints (or nested lists)."""
    if hasattr(ids, "tolist"):
        return ids.tolist()
    if isinstance(ids, (list, tuple)):
        return [_to_py(i) for i in ids]
    return int(ids)


def clean_up_tokenization(text: str) -> str:
    """Re-join the spaces the reference's ``clean_up_tokenization_spaces`` removes (``" ,"`` -> ``","``)."""
    for old, new in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                     (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(old, new)
    return text


# ---------------------------------------------------------------------------------------------------------------
# the shared base


class TokenizerBase:
    """What CLIPTokenizer and CLIPTokenizerFast share: special tokens, ``__call__``, padding, truncation, tensors,
    decoding and file I/O. Subclasses supply the vocabulary and ``_encode_batch``."""

    model_input_names = ["input_ids", "attention_mask"]
    is_fast = False
    pad_token_type_id = 0

    def convert_tokens_to_ids(self, tokens: Any) -> Any:
        """Token (or list of tokens) -> id; unknown tokens give the unk id. Note ``"cat"`` != ``"cat</w>"``."""
        if tokens is None:
            return None
        if isinstance(tokens, str):
            return self._token_id(tokens)
        return [self._token_id(t) for t in tokens]

    @classmethod
    def from_openai_vocab(cls, path: str | os.PathLike | None = None, **kwargs: Any) -> Any:
        """The tokenizer of OpenAI's CLIP, from ``bpe_simple_vocab_16e6.txt.gz`` (the copy in clipfast by default).

        Example:
            >>> CLIPTokenizer.from_openai_vocab()("a photo of a cat").input_ids
            [49406, 320, 1125, 539, 320, 2368, 49407]
        """
        vocab, merges = read_openai_vocab(path)
        kwargs.setdefault("model_max_length", CLIP_MAX_LENGTH)
        return cls(vocab=vocab, merges=merges, **kwargs)

    def _init_common(self, bos_token: Any, eos_token: Any, unk_token: Any, pad_token: Any,
                     kwargs: dict[str, Any]) -> None:
        """Store the settings every tokenizer has; unknown config keys are kept in ``init_kwargs``."""
        self._special: dict[str, str | None] = {"bos_token": _token_content(bos_token),
                                                "eos_token": _token_content(eos_token),
                                                "unk_token": _token_content(unk_token),
                                                "pad_token": _token_content(pad_token)}
        self.additional_special_tokens: list[str] = _token_list(kwargs.pop("additional_special_tokens", None))
        self.model_max_length = int(kwargs.pop("model_max_length", None) or NO_LIMIT)
        self.padding_side = kwargs.pop("padding_side", "right")
        self.truncation_side = kwargs.pop("truncation_side", "right")
        self.clean_up_tokenization_spaces = bool(kwargs.pop("clean_up_tokenization_spaces", False))
        self.text_cleaning = kwargs.pop("text_cleaning", None)
        if self.text_cleaning not in (None, "openai"):
            raise InputError(f"text_cleaning={self.text_cleaning!r} is not known; use None (transformers' cleaning) "
                             "or 'openai' (OpenAI's and open_clip's).")
        self.name_or_path = str(kwargs.pop("name_or_path", ""))
        if "model_input_names" in kwargs:
            self.model_input_names = list(kwargs.pop("model_input_names"))
        self.init_kwargs = kwargs
        self._warned: set[str] = set()

    # special tokens ------------------------------------------------------------------------------------------

    def _get_special(key: str) -> property:  # type: ignore[misc]  # noqa: N805 - builds class properties
        def get(self: TokenizerBase) -> str | None:
            return self._special[key]

        def set_(self: TokenizerBase, value: Any) -> None:
            self._special[key] = _token_content(value)
            self._on_specials_changed()

        def get_id(self: TokenizerBase) -> int | None:
            token = self._special[key]
            return None if token is None else self.convert_tokens_to_ids(token)

        def set_id(self: TokenizerBase, value: int | None) -> None:
            set_(self, None if value is None else self.convert_ids_to_tokens(int(value)))

        return property(get, set_), property(get_id, set_id)  # type: ignore[return-value]

    bos_token, bos_token_id = _get_special("bos_token")
    eos_token, eos_token_id = _get_special("eos_token")
    unk_token, unk_token_id = _get_special("unk_token")
    pad_token, pad_token_id = _get_special("pad_token")
    del _get_special

    def _on_specials_changed(self) -> None:
        """Hook for subclasses whose caches depend on the special tokens."""

    @property
    def special_tokens_map(self) -> dict[str, Any]:
        """The special tokens that are set, by role (as in special_tokens_map.json)."""
        out: dict[str, Any] = {k: v for k, v in self._special.items() if v is not None}
        if self.additional_special_tokens:
            out["additional_special_tokens"] = list(self.additional_special_tokens)
        return out

    @property
    def all_special_tokens(self) -> list[str]:
        """Distinct special tokens in role order (bos, eos, unk, pad, additional)."""
        tokens = [t for t in (*self._special.values(), *self.additional_special_tokens) if t is not None]
        return list(dict.fromkeys(tokens))

    @property
    def all_special_ids(self) -> list[int]:
        """Ids of ``all_special_tokens``."""
        return self.convert_tokens_to_ids(self.all_special_tokens)

    def add_special_tokens(self, special_tokens_dict: dict[str, Any]) -> int:
        """Set special tokens by role (``{"pad_token": "[PAD]"}``), adding new ones to the vocabulary."""
        new: list[str] = []
        for key, value in special_tokens_dict.items():
            if key == "additional_special_tokens":
                self.additional_special_tokens = _token_list(value)
                new += self.additional_special_tokens
            elif key in _SPECIAL_KEYS:
                self._special[key] = _token_content(value)
                new.append(self._special[key])  # type: ignore[arg-type]
            else:
                raise InputError(f"Unknown special token role {key!r}; use one of {list(_SPECIAL_KEYS)} or "
                                 "'additional_special_tokens'.")
        added = self._add_tokens(new, special=True)
        self._on_specials_changed()
        return added

    def add_tokens(self, new_tokens: Any, special_tokens: bool = False) -> int:
        """Add tokens (str, AddedToken or a list of them) after the vocabulary; returns how many are new.

        Example:
            >>> tok = CLIPTokenizer.from_openai_vocab()
            >>> tok.add_tokens(["<cat-toy>"]), len(tok)
            (1, 49409)
        """
        if new_tokens is None:
            return 0
        items = new_tokens if isinstance(new_tokens, (list, tuple)) else [new_tokens]
        for item in items:
            if not isinstance(item, str) and not hasattr(item, "content"):
                raise InputError(f"Token {item!r} is not a string but a {type(item).__name__}.")
        return self._add_tokens(items, special=special_tokens)

    def _add_tokens(self, tokens: list[Any], special: bool) -> int:
        raise NotImplementedError

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        """2 for one text (bos, eos), 4 for a pair (bos a eos eos b eos)."""
        return 4 if pair else 2

    def build_inputs_with_special_tokens(self, token_ids_0: list[int], token_ids_1: list[int] | None = None
                                         ) -> list[int]:
        """``[bos] a [eos]``, or for a pair ``[bos] a [eos] [eos] b [eos]``."""
        bos, eos = [self.bos_token_id], [self.eos_token_id]
        if token_ids_1 is None:
            return bos + token_ids_0 + eos
        return bos + token_ids_0 + eos + eos + token_ids_1 + eos

    def get_special_tokens_mask(self, token_ids_0: list[int], token_ids_1: list[int] | None = None,
                                already_has_special_tokens: bool = False) -> list[int]:
        """1 where ``build_inputs_with_special_tokens`` puts a special token, else 0 (or, for ids that already
        have them, 1 for every special id)."""
        if already_has_special_tokens:
            if token_ids_1 is not None:
                raise InputError("You should not supply a second sequence if the provided sequence of ids is "
                                 "already formatted with special tokens for the model.")
            special = set(self.all_special_ids)
            return [1 if i in special else 0 for i in token_ids_0]
        if token_ids_1 is None:
            return [1] + [0] * len(token_ids_0) + [1]
        return [1] + [0] * len(token_ids_0) + [1, 1] + [0] * len(token_ids_1) + [1]

    def create_token_type_ids_from_sequences(self, token_ids_0: list[int], token_ids_1: list[int] | None = None
                                             ) -> list[int]:
        """All zeros, as long as the sequence with special tokens (CLIP has no segment embeddings)."""
        extra = 2 if token_ids_1 is None else len(token_ids_1) + 4
        return [0] * (len(token_ids_0) + extra)

    # the call --------------------------------------------------------------------------------------------------

    def __call__(self, text: Any = None, text_pair: Any = None, add_special_tokens: bool = True,
                 padding: bool | str = False, truncation: bool | str | None = None, max_length: int | None = None,
                 stride: int = 0, is_split_into_words: bool = False, pad_to_multiple_of: int | None = None,
                 padding_side: str | None = None, return_tensors: str | None = None,
                 return_token_type_ids: bool | None = None, return_attention_mask: bool | None = None,
                 return_overflowing_tokens: bool = False, return_special_tokens_mask: bool = False,
                 return_offsets_mapping: bool = False, return_length: bool = False, verbose: bool = True,
                 **kwargs: Any) -> BatchEncoding:
        """Tokenize one text, a batch, or pairs; pad, truncate (keeping bos/eos) and return a BatchEncoding.

        Arguments and defaults are transformers' (spec §4.7).

        Example:
            >>> tok = CLIPTokenizer.from_openai_vocab()
            >>> tok("a photo of a cat", padding="max_length", max_length=8).input_ids
            [49406, 320, 1125, 539, 320, 2368, 49407, 49407]
        """
        if return_overflowing_tokens:
            raise InputError("return_overflowing_tokens=True is not supported by clipfast; use truncation=True.")
        if kwargs.get("text_target") is not None or kwargs.get("text_pair_target") is not None:
            raise InputError("text_target is for sequence-to-sequence models; CLIP has no targets.")
        texts, pairs, batched = _as_batch(text, text_pair, is_split_into_words)
        if self.text_cleaning == "openai":
            texts, pairs = _openai_cleaned(texts), _openai_cleaned(pairs)
        plan = self._plan(padding, truncation, max_length, pad_to_multiple_of, padding_side, verbose)
        plan.stride, plan.add_special_tokens, plan.split_words = stride, add_special_tokens, is_split_into_words
        plan.token_type_ids = bool(return_token_type_ids) if return_token_type_ids is not None else (
            "token_type_ids" in self.model_input_names)
        plan.attention_mask = bool(return_attention_mask) if return_attention_mask is not None else (
            "attention_mask" in self.model_input_names)
        plan.special_tokens_mask, plan.offsets, plan.length = (
            return_special_tokens_mask, return_offsets_mapping, return_length)
        plan.single = not batched
        data, encodings = self._encode_batch(texts, pairs, plan)
        if not batched and return_tensors is None:
            return BatchEncoding(self._unbatch(data), encoding=encodings)
        return BatchEncoding(data, encoding=encodings, tensor_type=return_tensors)

    @staticmethod
    def _unbatch(data: dict[str, list[Any]]) -> dict[str, Any]:
        """The first (only) row of each field, for a single text without return_tensors."""
        return {k: v[0] for k, v in data.items()}

    def _plan(self, padding: Any, truncation: Any, max_length: int | None, pad_to_multiple_of: int | None,
              padding_side: str | None, verbose: bool) -> CallPlan:
        """Resolve padding/truncation/max_length exactly as transformers 4.57 does, warnings included."""
        if max_length is not None and padding is False and truncation is None:
            # the reference's backward-compatible rule: max_length alone turns truncation on
            self._warn_once(verbose, "truncation-implicit",
                            "Truncation was not explicitly activated but `max_length` is provided a specific value, "
                            "please use `truncation=True` to explicitly truncate examples to max length. Defaulting "
                            "to 'longest_first' truncation strategy.")
            truncation = "longest_first"
        pad = _padding_strategy(padding)
        trunc = _truncation_strategy(truncation)
        if padding is True and max_length is not None and trunc == "do_not_truncate" and verbose:
            logger.warning("`max_length` is ignored when `padding`=`True` and there is no truncation strategy. "
                           "To pad to max length, use `padding='max_length'`.")
        if max_length is None:
            if pad == "max_length":
                if self.model_max_length >= NO_LIMIT:
                    self._warn_once(verbose, "pad-no-max", "Asking to pad to max_length but no maximum length is "
                                    "provided and the model has no predefined maximum length. Default to no padding.")
                    pad = "do_not_pad"
                else:
                    max_length = self.model_max_length
            if trunc != "do_not_truncate":
                if self.model_max_length >= NO_LIMIT:
                    self._warn_once(verbose, "trunc-no-max", "Asking to truncate to max_length but no maximum "
                                    "length is provided and the model has no predefined maximum length. Default to "
                                    "no truncation.")
                    trunc = "do_not_truncate"
                else:
                    max_length = self.model_max_length
        self._check_plan(pad, trunc, max_length, pad_to_multiple_of, padding_side)
        return CallPlan(pad, trunc, max_length, pad_to_multiple_of, padding_side or self.padding_side)

    def _check_plan(self, pad: str, trunc: str, max_length: int | None, pad_to_multiple_of: int | None,
                    padding_side: str | None) -> None:
        """Errors the reference raises for impossible padding requests, with the fix in the message."""
        if pad != "do_not_pad" and (self.pad_token is None or (self.pad_token_id or 0) < 0):
            raise InputError("Asking to pad but the tokenizer does not have a padding token. Set one, e.g. "
                             "`tokenizer.pad_token = tokenizer.eos_token`.")
        if (trunc != "do_not_truncate" and pad != "do_not_pad" and pad_to_multiple_of and max_length is not None
                and max_length % pad_to_multiple_of):
            raise InputError("Truncation and padding are both activated but truncation length "
                             f"({max_length}) is not a multiple of pad_to_multiple_of ({pad_to_multiple_of}).")
        side = padding_side or self.padding_side
        if side not in ("left", "right"):
            raise InputError(f"padding_side={side!r} is invalid; use 'right' (CLIP's) or 'left'.")

    def _warn_once(self, verbose: bool, key: str, message: str) -> None:
        """Log ``message`` the first time ``key`` happens on this tokenizer (as the reference does)."""
        if verbose and key not in self._warned:
            self._warned.add(key)
            logger.warning(message)

    def _warn_if_too_long(self, lengths: Iterable[int], plan: CallPlan) -> None:
        """The reference's warning for rows longer than ``model_max_length`` when nothing limits them."""
        if plan.max_length is not None or not plan.verbose or self.model_max_length in (0, NO_LIMIT):
            return
        longest = next((n for n in lengths if n > self.model_max_length), 0)  # the first, as the reference
        if longest:
            self._warn_once(True, "too-long",
                            "Token indices sequence length is longer than the specified maximum sequence length for "
                            f"this model ({longest} > {self.model_max_length}). Running this sequence through the "
                            "model will result in indexing errors")

    def _encode_batch(self, texts: list[Any], pairs: list[Any] | None, plan: CallPlan
                      ) -> tuple[dict[str, list[Any]], list[Any] | None]:
        raise NotImplementedError

    def encode(self, text: Any, text_pair: Any = None, add_special_tokens: bool = True, **kwargs: Any) -> Any:
        """The ``input_ids`` of one text (a list, or a (1, N) tensor with ``return_tensors``).

        Example:
            >>> CLIPTokenizer.from_openai_vocab().encode("hello world")
            [49406, 3306, 1002, 49407]
        """
        return self(text, text_pair=text_pair, add_special_tokens=add_special_tokens, **kwargs)["input_ids"]

    def encode_plus(self, text: Any, text_pair: Any = None, **kwargs: Any) -> BatchEncoding:
        """One text (or pair) -> BatchEncoding; same as calling the tokenizer."""
        return self(text, text_pair=text_pair, **kwargs)

    def batch_encode_plus(self, batch_text_or_text_pairs: list[Any], **kwargs: Any) -> BatchEncoding:
        """A batch of texts or (text, pair) tuples -> BatchEncoding; same as calling the tokenizer."""
        return self(list(batch_text_or_text_pairs), **kwargs)

    # decoding --------------------------------------------------------------------------------------------------

    def decode(self, token_ids: Any, skip_special_tokens: bool = False,
               clean_up_tokenization_spaces: bool | None = None, **kwargs: Any) -> str:
        """Ids -> text: ``</w>`` becomes a space, bytes are decoded as UTF-8 (bad bytes replaced).

        Example:
            >>> CLIPTokenizer.from_openai_vocab().decode([49406, 3306, 1002, 49407], skip_special_tokens=True)
            'hello world'
        """
        ids = _to_py(token_ids)
        ids = [ids] if isinstance(ids, int) else ids
        text = self._decode_ids(ids, skip_special_tokens)
        clean = self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None else clean_up_tokenization_spaces
        return clean_up_tokenization(text) if clean else text

    def batch_decode(self, sequences: Any, skip_special_tokens: bool = False,
                     clean_up_tokenization_spaces: bool | None = None, **kwargs: Any) -> list[str]:
        """``decode`` for each row of a batch (list of lists, 2-D tensor or array)."""
        return [self.decode(seq, skip_special_tokens, clean_up_tokenization_spaces) for seq in _to_py(sequences)]

    def _decode_ids(self, ids: list[int], skip_special_tokens: bool) -> str:
        raise NotImplementedError

    def _token_id(self, token: str) -> int | None:
        raise NotImplementedError

    def convert_ids_to_tokens(self, ids: Any, skip_special_tokens: bool = False) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name_or_path={self.name_or_path!r}, vocab_size={self.vocab_size}, "
                f"model_max_length={self.model_max_length}, padding_side={self.padding_side!r}, "
                f"special_tokens={self.special_tokens_map})")

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    # files -----------------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *init_inputs: Any,
                        subfolder: str = "", revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                        local_files_only: bool = False, token: str | bool | None = None, **kwargs: Any) -> Any:
        """Load from a folder or a Hub id (``subfolder=`` for diffusers-style repos), as transformers does.

        Reads tokenizer_config.json and special_tokens_map.json, then vocab.json + merges.txt or tokenizer.json.

        Example:
            >>> tok = CLIPTokenizer.from_pretrained("openai/clip-vit-base-patch32")  # doctest: +SKIP
        """
        kwargs.pop("use_fast", None)
        kwargs.pop("trust_remote_code", None)
        where = dict(subfolder=subfolder, revision=revision, cache_dir=cache_dir,
                     local_files_only=local_files_only, token=token)
        names = (VOCAB_NAME, MERGES_NAME, TOKENIZER_JSON, CONFIG_NAME, SPECIAL_MAP_NAME, ADDED_TOKENS_NAME)
        files = {n: hub.resolve_file(pretrained_model_name_or_path, n, required=False, **where) for n in names}
        if not (files[TOKENIZER_JSON] or (files[VOCAB_NAME] and files[MERGES_NAME])):
            place = os.path.join(os.fspath(pretrained_model_name_or_path), subfolder)
            raise CheckpointError(f"No tokenizer files in {place!r}: expected vocab.json + merges.txt or "
                                  "tokenizer.json (diffusers-style repos keep them in subfolder='tokenizer').")
        init = _config_kwargs(files)
        init.update(kwargs)
        init.setdefault("name_or_path", os.fspath(pretrained_model_name_or_path))
        return cls._from_files(files, init)

    @classmethod
    def _from_files(cls, files: dict[str, str | None], init: dict[str, Any]) -> Any:
        raise NotImplementedError

    def save_pretrained(self, save_directory: str | os.PathLike, legacy_format: bool | None = None,
                        filename_prefix: str | None = None, **kwargs: Any) -> tuple[str, ...]:
        """Write tokenizer_config.json, special_tokens_map.json and the vocabulary files (loadable by transformers
        4.x and 5.x); returns the paths written."""
        if kwargs.get("push_to_hub"):
            raise InputError("push_to_hub is not supported; save locally and upload with huggingface_hub.")
        if os.path.isfile(save_directory):
            raise InputError(f"save_directory {os.fspath(save_directory)!r} is a file; pass a folder.")
        os.makedirs(save_directory, exist_ok=True)
        prefix = f"{filename_prefix}-" if filename_prefix else ""
        config_file = os.path.join(save_directory, prefix + CONFIG_NAME)
        map_file = os.path.join(save_directory, prefix + SPECIAL_MAP_NAME)
        _write_json(config_file, self._config_dict())
        _write_json(map_file, {k: [self._token_dict(t, special=None) for t in v] if isinstance(v, list)
                               else self._token_dict(v, special=None) for k, v in self.special_tokens_map.items()})
        return (config_file, map_file, *self.save_vocabulary(os.fspath(save_directory), filename_prefix),
                *self._save_extra(os.fspath(save_directory), filename_prefix))

    def _save_extra(self, save_directory: str, filename_prefix: str | None) -> tuple[str, ...]:
        """Files beyond vocab/merges (the fast tokenizer writes tokenizer.json)."""
        return ()

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str, ...]:
        raise NotImplementedError

    def _added_tokens_decoder(self) -> dict[int, str]:
        raise NotImplementedError

    def _token_normalized(self, content: str) -> bool:
        """Whether an added token is matched after normalisation: special tokens added beyond the vocabulary are
        matched as written, the rest (and CLIP's own bos/eos) after it, as in the reference."""
        return not (content in self.all_special_tokens and content not in self._base_vocab())

    def _base_vocab(self) -> Any:
        raise NotImplementedError

    def _added_is_special(self, index: int, content: str) -> bool:
        """Whether the added token ``content`` (id ``index``) is special (skipped by ``skip_special_tokens``)."""
        return content in self.all_special_tokens

    def _token_dict(self, content: str, special: bool | None) -> dict[str, Any]:
        """An added token as transformers serialises it."""
        return _added_token_dict(content, special, normalized=self._token_normalized(content))

    def _config_dict(self) -> dict[str, Any]:
        """tokenizer_config.json as transformers 4.57 writes it (special tokens as strings, added tokens by id)."""
        config: dict[str, Any] = {
            "added_tokens_decoder": {str(i): self._token_dict(t, special=self._added_is_special(i, t))
                                     for i, t in sorted(self._added_tokens_decoder().items())},
            **{k: v for k, v in self._special.items() if v is not None},
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
            "errors": getattr(self, "errors", "replace"),
            "extra_special_tokens": {},
            "model_max_length": self.model_max_length,
            "tokenizer_class": "CLIPTokenizer",
        }
        if self.additional_special_tokens:
            config["additional_special_tokens"] = list(self.additional_special_tokens)
        if self.padding_side != "right":
            config["padding_side"] = self.padding_side
        if self.text_cleaning is not None:
            config["text_cleaning"] = self.text_cleaning
        return config


def _strategy(name: str, value: Any, if_true: str, if_false: str, choices: Iterable[str]) -> str:
    """A padding / truncation argument as its strategy name: True, False/None, a string or an enum member."""
    if value is True:
        return if_true
    if value is False or value is None:
        return if_false
    text = str(getattr(value, "value", value))
    if text not in choices:
        raise InputError(f"{name}={value!r} is invalid; use True, False or one of {list(choices)}.")
    return text


def _padding_strategy(padding: Any) -> str:
    """True -> "longest", False -> "do_not_pad", strings (or enum members) checked against the choices."""
    return _strategy("padding", padding, "longest", "do_not_pad", PADDINGS)


def _truncation_strategy(truncation: Any) -> str:
    """True -> "longest_first", False/None -> "do_not_truncate", strings checked against the choices."""
    return _strategy("truncation", truncation, "longest_first", "do_not_truncate", TRUNCATIONS)


def _added_token_dict(content: str, special: bool | None, normalized: bool = True) -> dict[str, Any]:
    """An AddedToken as transformers serialises it (``special`` omitted in special_tokens_map.json)."""
    out: dict[str, Any] = {"content": content, "lstrip": False, "normalized": normalized, "rstrip": False,
                           "single_word": False}
    if special is not None:
        out["special"] = special
    return out


def _write_json(path: str, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def _config_kwargs(files: dict[str, str | None]) -> dict[str, Any]:
    """Constructor kwargs from tokenizer_config.json, overridden by special_tokens_map.json, plus the legacy
    added_tokens.json, as the reference merges them."""
    init: dict[str, Any] = {}
    if files[CONFIG_NAME]:
        init.update(hub.read_json(files[CONFIG_NAME]))  # type: ignore[arg-type]
    if files[SPECIAL_MAP_NAME]:
        for key, value in hub.read_json(files[SPECIAL_MAP_NAME]).items():  # type: ignore[arg-type]
            if key in _SPECIAL_KEYS or key == "additional_special_tokens":
                init[key] = value
    added = {int(i): t for i, t in (init.pop("added_tokens_decoder", None) or {}).items()}  # str or dict
    if files[ADDED_TOKENS_NAME]:
        for token, index in hub.read_json(files[ADDED_TOKENS_NAME]).items():  # type: ignore[union-attr]
            added.setdefault(int(index), token)  # the config's entries know more (the special flag)
    init["added_tokens"] = added
    for key in ("tokenizer_class", "auto_map", "processor_class", "tokenizer_file", "special_tokens_map_file",
                "backend", "extra_special_tokens", "name_or_path"):
        init.pop(key, None)
    return init


# ---------------------------------------------------------------------------------------------------------------
# truncation and padding of id lists (used by the pure-Python tokenizer; the fast one does this in Rust)


def truncate_ids(ids: list[int], pair: list[int] | None, remove: int, strategy: str, side: str
                 ) -> tuple[list[int], list[int] | None]:
    """Remove ``remove`` ids following the reference's rules; an impossible request is logged, not applied."""
    if remove <= 0:
        return ids, pair
    if strategy == "only_first" or (strategy == "longest_first" and pair is None):
        if len(ids) > remove:
            return _cut(ids, remove, side), pair
        logger.error(f"We need to remove {remove} to truncate the input but the first sequence has a length "
                     f"{len(ids)}.")
        return ids, pair
    if strategy == "longest_first" and pair is not None:
        # take from the longer sequence until both are equal, then alternately (the first one gets the odd token)
        first = min(abs(len(pair) - len(ids)), remove)
        rest = remove - first
        if len(ids) > len(pair):
            from_ids, from_pair = first + rest // 2, rest - rest // 2
        else:
            from_ids, from_pair = rest // 2, first + rest - rest // 2
        return _cut(ids, from_ids, side), _cut(pair, from_pair, side)
    if strategy == "only_second" and pair is not None:
        if len(pair) > remove:
            return ids, _cut(pair, remove, side)
        logger.error(f"We need to remove {remove} to truncate the input but the second sequence has a length "
                     f"{len(pair)}.")
    return ids, pair


def _cut(ids: list[int], n: int, side: str) -> list[int]:
    """Drop ``n`` ids from the right (CLIP's default) or the left."""
    if n <= 0:
        return ids
    return ids[:-n] if side == "right" else ids[n:]


def pad_rows(data: dict[str, list[list[int]]], plan: CallPlan, pad_id: int, pad_type_id: int = 0) -> None:
    """Add ``attention_mask`` and pad every row (ids with ``pad_id``, masks with 0, special mask with 1), in place."""
    rows = data["input_ids"]
    target = None
    if plan.padding == "longest":
        target = max(map(len, rows), default=0)
    elif plan.padding == "max_length":
        target = plan.max_length
    if target is not None and plan.pad_to_multiple_of and target % plan.pad_to_multiple_of:
        target = (target // plan.pad_to_multiple_of + 1) * plan.pad_to_multiple_of
    if plan.attention_mask:
        data["attention_mask"] = [[1] * len(r) for r in rows]
    if target is None:
        return
    fills = {"input_ids": pad_id, "token_type_ids": pad_type_id, "special_tokens_mask": 1, "attention_mask": 0}
    left = plan.padding_side == "left"
    for key, fill in fills.items():
        if key in data:
            data[key] = [r if len(r) >= target else ([fill] * (target - len(r)) + r if left
                                                     else r + [fill] * (target - len(r))) for r in data[key]]


# ---------------------------------------------------------------------------------------------------------------
# text cleaning


@lru_cache(maxsize=1)
def _patterns() -> tuple[Any, Any, Any]:
    """(slow split regex, ASCII split regex, needs-cleaning test), compiled on first use."""
    import regex

    return (regex.compile(_SLOW_PATTERN, regex.IGNORECASE), std_re.compile(_ASCII_PATTERN),
            std_re.compile(_NEEDS_CLEANING))


def openai_clean(text: str) -> str:
    """OpenAI's and open_clip's text cleaning (``basic_clean`` + ``whitespace_clean``): ftfy, HTML entities
    unescaped twice, whitespace runs to one space. ``text_cleaning="openai"`` applies it before tokenizing, so the
    ids equal theirs where transformers' cleaning differs (``&amp;``, ligatures, mojibake).

    Example:
        >>> openai_clean("Tom &amp;amp; Jerry\t ")
        'Tom & Jerry'
    """
    if _patterns()[2].search(text) is None:  # printable ASCII without '&': only the whitespace changes
        return " ".join(text.split())
    try:
        import ftfy
    except ImportError:
        raise InputError("text_cleaning='openai' needs ftfy (pip install ftfy), as OpenAI's tokenizer does.") from None
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.split())


def _openai_cleaned(items: list[Any] | None) -> list[Any] | None:
    """:func:`openai_clean` over a batch of texts or of pre-split word lists."""
    if items is None:
        return None
    return [[openai_clean(w) for w in item] if isinstance(item, (list, tuple)) else openai_clean(item)
            for item in items]


def _load_ftfy() -> Callable[[str], str] | None:
    """ftfy.fix_text when ftfy is importable; None selects the reference's fallback cleaner."""
    try:
        import ftfy
    except ImportError:
        logger.info("ftfy is not installed; using the BERT-style fallback cleaner instead of ftfy.")
        return None
    return ftfy.fix_text


def _is_cjk(cp: int) -> bool:
    """CJK ideograph blocks, which the fallback cleaner surrounds with spaces."""
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or 0x2A700 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def basic_clean(text: str) -> str:
    """The reference's cleaner without ftfy: drop NUL/U+FFFD/control chars, whitespace -> space, space out CJK
    ideographs, NFC, lower-case each word (accents kept), single spaces."""
    out = []
    for ch in text:
        cp = ord(ch)
        if ch in " \t\n\r":
            out.append(" ")
            continue
        category = unicodedata.category(ch)
        if cp == 0 or cp == 0xFFFD or category.startswith("C"):
            continue
        out.append(" " if category == "Zs" else f" {ch} " if _is_cjk(cp) else ch)
    return " ".join(word.lower() for word in unicodedata.normalize("NFC", "".join(out)).split())


# ---------------------------------------------------------------------------------------------------------------
# the pure-Python tokenizer


class CLIPTokenizer(TokenizerBase):
    """CLIP's byte-level BPE tokenizer in pure Python, id for id identical to transformers' ``CLIPTokenizer``.

    Args:
        vocab_file: path of vocab.json (token -> id).
        merges_file: path of merges.txt (``#version`` header, then merges in rank order).
        errors: how bad UTF-8 is handled when decoding (``bytes.decode`` errors).
        unk_token, bos_token, eos_token, pad_token: special tokens (CLIP pads with ``<|endoftext|>``).
        vocab, merges: the vocabulary in memory instead of files.
        model_max_length: 77 for CLIP checkpoints (from tokenizer_config.json); unlimited when not given.

    Example:
        >>> tok = CLIPTokenizer.from_openai_vocab()
        >>> tok.tokenize("Hello world!")
        ['hello</w>', 'world</w>', '!</w>']
    """

    vocab_files_names = {"vocab_file": VOCAB_NAME, "merges_file": MERGES_NAME}

    def __init__(self, vocab_file: str | os.PathLike | None = None, merges_file: str | os.PathLike | None = None,
                 errors: str = "replace", unk_token: Any = EOS_TOKEN, bos_token: Any = BOS_TOKEN,
                 eos_token: Any = EOS_TOKEN, pad_token: Any = EOS_TOKEN, *, vocab: dict[str, int] | None = None,
                 merges: list[tuple[str, str]] | None = None, added_tokens: dict[int, str] | None = None,
                 **kwargs: Any) -> None:
        if vocab is None or merges is None:
            if vocab_file is None or merges_file is None:
                raise InputError("CLIPTokenizer needs vocab_file and merges_file (or vocab= and merges=); "
                                 "CLIPTokenizer.from_openai_vocab() builds OpenAI's.")
            vocab, merges = read_vocab_files(vocab_file, merges_file)
        self.encoder: dict[str, int] = dict(vocab)
        self.decoder: dict[int, str] = {i: t for t, i in self.encoder.items()}
        self.bpe_ranks: dict[tuple[str, str], int] = {tuple(m): r for r, m in enumerate(merges)}  # type: ignore[misc]
        self.errors = errors
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self._byte_table = {b: c for b, c in self.byte_encoder.items()}  # latin-1 code point -> symbol
        self._fix_text = _load_ftfy()
        self._added: dict[str, int] = {}
        self._added_ids: dict[int, str] = {}
        self._added_re: Any = None
        self._init_common(bos_token, eos_token, unk_token, pad_token, kwargs)
        for index, token in sorted((int(i), t) for i, t in (added_tokens or {}).items()):
            content = _token_content(token)
            if content:
                self._register(content, index)
        self._add_tokens(self.all_special_tokens, special=True)
        self._reset_caches()

    @classmethod
    def _from_files(cls, files: dict[str, str | None], init: dict[str, Any]) -> CLIPTokenizer:
        """vocab.json + merges.txt, or the BPE model inside tokenizer.json when only that was saved (v5)."""
        if files[VOCAB_NAME] and files[MERGES_NAME]:
            return cls(files[VOCAB_NAME], files[MERGES_NAME], **init)
        vocab, merges = read_tokenizer_json(files[TOKENIZER_JSON])  # type: ignore[arg-type]
        return cls(vocab=vocab, merges=merges[:NUM_MERGES], **init)

    # vocabulary ------------------------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Size of the base vocabulary (49408), without added tokens."""
        return len(self.encoder)

    def __len__(self) -> int:
        return len(set(self.encoder) | set(self._added))

    def get_vocab(self) -> dict[str, int]:
        """Token -> id for the vocabulary and the added tokens."""
        return {**self.encoder, **self._added}

    def get_added_vocab(self) -> dict[str, int]:
        """Token -> id of the added tokens (specials included)."""
        return dict(self._added)

    def _register(self, content: str, index: int) -> None:
        self._added[content] = index
        self._added_ids[index] = content

    def _add_tokens(self, tokens: list[Any], special: bool) -> int:
        """Register tokens (ids after the vocabulary unless already in it); returns how many ids are new."""
        count = 0
        size = len(self.get_vocab())
        for token in tokens:
            content = _token_content(token)
            if not content or content in self._added:
                continue
            index = self.encoder.get(content)
            if index is None:
                index, count = size + count, count + 1
            self._register(content, index)
            if special and content not in self.all_special_tokens:
                self.additional_special_tokens.append(content)
        self._reset_caches()
        return count

    def _reset_caches(self) -> None:
        """Piece caches and the added-token splitter depend on the vocabulary: rebuild them."""
        self._ids_cache: dict[str, list[int]] = {}
        self._bpe_cache: dict[str, tuple[str, ...]] = {}
        for special in (BOS_TOKEN, EOS_TOKEN):  # the split regex yields these whole; the reference maps them as-is
            self._bpe_cache[special] = (special,)
        contents = sorted(self._added, key=len, reverse=True)
        self._added_re = std_re.compile("(" + "|".join(map(std_re.escape, contents)) + ")") if contents else None

    def _on_specials_changed(self) -> None:
        self._add_tokens([t for t in self.all_special_tokens if t not in self._added], special=True)

    def _token_id(self, token: str) -> int:
        index = self._added.get(token)
        if index is None:
            index = self.encoder.get(token)
        if index is None:
            unk = self._special["unk_token"]
            index = self._added.get(unk) if unk in self._added else self.encoder.get(unk)  # type: ignore[arg-type]
        return index  # type: ignore[return-value]

    def convert_ids_to_tokens(self, ids: Any, skip_special_tokens: bool = False) -> Any:
        """Id (or list of ids) -> token string(s) (None for an id outside the vocabulary, as the reference)."""
        ids = _to_py(ids)  # tensors and arrays (0-d or 1-d) as Python ints
        if isinstance(ids, int):
            return self._id_token(int(ids))
        special = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._id_token(int(i)) for i in ids if int(i) not in special]

    def _id_token(self, index: int) -> str | None:
        """The token of one id; None for an id outside the vocabulary, as the reference."""
        token = self._added_ids.get(index)
        return self.decoder.get(index) if token is None else token

    def _added_tokens_decoder(self) -> dict[int, str]:
        return dict(self._added_ids)

    def _base_vocab(self) -> dict[str, int]:
        return self.encoder

    # text -> ids -----------------------------------------------------------------------------------------------

    def bpe(self, piece: str) -> tuple[str, ...]:
        """BPE of one byte-mapped piece: merge the lowest-ranked adjacent pair everywhere until none is left.

        The last symbol carries ``</w>``. Results are cached per piece.
        """
        cached = self._bpe_cache.get(piece)
        if cached is not None:
            return cached
        symbols = [*piece[:-1], piece[-1] + "</w>"]
        ranks = self.bpe_ranks
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
        result = tuple(symbols)
        if len(self._bpe_cache) > 500_000:  # bound memory on endless unique input
            self._bpe_cache.clear()
        self._bpe_cache[piece] = result
        return result

    def _piece_ids(self, piece: str) -> list[int]:
        """Ids of one pre-split piece (raw text), through the byte alphabet and BPE; cached."""
        mapped = piece.encode("utf-8").decode("latin-1").translate(self._byte_table)
        if piece in (BOS_TOKEN, EOS_TOKEN):
            mapped = piece
        ids = [self._token_id(t) for t in self.bpe(mapped)]
        if len(self._ids_cache) > 500_000:
            self._ids_cache.clear()
        self._ids_cache[piece] = ids
        return ids

    def _pieces(self, segment: str) -> list[str]:
        """Clean ``segment`` as the reference does and split it into pieces (words, single digits, symbol runs)."""
        slow_re, ascii_re, needs_cleaning = _patterns()
        if not needs_cleaning.search(segment):
            # printable ASCII without '&': ftfy and the fallback cleaner change nothing but whitespace
            return ascii_re.findall(segment.lower())
        if self._fix_text is None:
            return slow_re.findall(basic_clean(segment))
        # whitespace_clean is not needed: the split never matches whitespace
        return slow_re.findall(self._fix_text(segment).lower())

    def _segments(self, text: str) -> list[tuple[str, int | None]]:
        """Split out added tokens (matched exactly, longest first): [(text, None) | (token, id), ...]."""
        if self._added_re is None or not self._added_re.search(text):
            return [(text, None)]
        parts = self._added_re.split(text)
        return [(p, self._added[p] if i % 2 else None) for i, p in enumerate(parts) if p]

    def _text_ids(self, text: str) -> list[int]:
        """All ids of one text, without special tokens."""
        ids: list[int] = []
        cache = self._ids_cache
        for segment, added_id in self._segments(text):
            if added_id is not None:
                ids.append(added_id)
                continue
            for piece in self._pieces(segment):
                hit = cache.get(piece)
                ids += hit if hit is not None else self._piece_ids(piece)
        return ids

    def _input_ids(self, item: Any, split_words: bool) -> list[int]:
        """A text, or a list of words (pre-split: each word is tokenized alone, as the reference does)."""
        if split_words and isinstance(item, (list, tuple)):
            return [i for word in item for i in self._text_ids(word)]
        return self._text_ids(item)

    def tokenize(self, text: str, pair: str | None = None, add_special_tokens: bool = False,
                 **kwargs: Any) -> list[str]:
        """Text -> token strings (e.g. ``['a</w>', 'photo</w>']``), without special tokens by default."""
        if not isinstance(text, str):
            raise InputError(f"tokenize() takes a str; got {type(text).__name__}.")
        if self.text_cleaning == "openai":
            text = openai_clean(text)
        tokens: list[str] = []
        for segment, added_id in self._segments(text):
            if added_id is not None:
                tokens.append(segment)
                continue
            for piece in self._pieces(segment):
                mapped = piece if piece in (BOS_TOKEN, EOS_TOKEN) else (
                    piece.encode("utf-8").decode("latin-1").translate(self._byte_table))
                tokens.extend(self.bpe(mapped))
        if add_special_tokens:
            tokens = [self.bos_token, *tokens, self.eos_token]  # type: ignore[list-item]
        return tokens

    def _encode_batch(self, texts: list[Any], pairs: list[Any] | None, plan: CallPlan
                      ) -> tuple[dict[str, list[Any]], None]:
        """Ids per row, truncated and wrapped in special tokens, then padded (the reference's slow path)."""
        if plan.offsets:
            raise InputError("return_offsets_mapping is not available with the pure-Python CLIPTokenizer; use "
                             "CLIPTokenizerFast.")
        if plan.token_type_ids and not plan.add_special_tokens:
            raise InputError("Asking to return token_type_ids while setting add_special_tokens to False results in "
                             "an undefined behavior. Set add_special_tokens=True or return_token_type_ids=None.")
        firsts = [self._input_ids(t, plan.split_words) for t in texts]
        seconds = None if pairs is None else [self._input_ids(t, plan.split_words) for t in pairs]
        rows, masks = self._finish_rows(firsts, seconds, plan)
        self._warn_if_too_long(map(len, rows), plan)
        data: dict[str, list[Any]] = {"input_ids": rows}
        if plan.token_type_ids:
            data["token_type_ids"] = [[0] * len(r) for r in rows]
        if plan.special_tokens_mask:
            data["special_tokens_mask"] = masks
        pad_id = self.pad_token_id if self.pad_token is not None else 0
        if plan.single:
            # the reference pads a single text inside prepare_for_model (an empty one not at all) and measures
            # ``length`` after padding; a batch gets its lengths first and is padded afterwards
            if rows[0]:
                pad_rows(data, plan, pad_id, self.pad_token_type_id)
            elif plan.attention_mask:
                data["attention_mask"] = [[]]
            if plan.length:
                data["length"] = [len(data["input_ids"][0])]
            return data, None
        if plan.length:
            data["length"] = [len(r) for r in rows]
        pad_rows(data, plan, pad_id, self.pad_token_type_id)
        return data, None

    def _finish_rows(self, firsts: list[list[int]], seconds: list[list[int]] | None, plan: CallPlan
                     ) -> tuple[list[list[int]], list[list[int]]]:
        """Truncate each row (room kept for bos/eos) and add the special tokens; also the special-token masks."""
        rows, masks = [], []
        limit = plan.max_length if plan.truncation != "do_not_truncate" else None
        bos, eos = self.bos_token_id, self.eos_token_id
        for i, ids in enumerate(firsts):
            pair = None if seconds is None else seconds[i]
            extra = self.num_special_tokens_to_add(pair is not None) if plan.add_special_tokens else 0
            total = len(ids) + (len(pair) if pair is not None else 0) + extra
            if limit and total > limit:
                ids, pair = truncate_ids(ids, pair, total - limit, plan.truncation, self.truncation_side)
            if not plan.add_special_tokens:
                rows.append(ids + pair if pair is not None else ids)
                masks.append([0] * len(rows[-1]))
            elif pair is None:
                rows.append([bos, *ids, eos])
                masks.append(self.get_special_tokens_mask(ids) if plan.special_tokens_mask else [])
            else:
                rows.append(self.build_inputs_with_special_tokens(ids, pair))
                masks.append(self.get_special_tokens_mask(ids, pair) if plan.special_tokens_mask else [])
        return rows, masks

    # ids -> text -----------------------------------------------------------------------------------------------

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """Join tokens, map symbols back to bytes, decode UTF-8 (``errors``), ``</w>`` -> space, strip."""
        text = "".join(tokens)
        data = bytearray()
        for ch in text:
            byte = self.byte_decoder.get(ch)
            if byte is None:
                data += ch.encode("utf-8")  # a character outside the byte alphabet (an added token)
            else:
                data.append(byte)
        return data.decode("utf-8", errors=self.errors).replace("</w>", " ").strip()

    def _decode_ids(self, ids: list[int], skip_special_tokens: bool) -> str:
        """As the reference: added non-special tokens are kept verbatim, runs between them are byte-decoded,
        and the parts are joined with spaces."""
        specials = set(self.all_special_tokens)
        verbatim = {t for t in self._added if t not in specials}
        verbatim |= {t for t in self.additional_special_tokens if self._token_id(t) >= self.vocab_size}
        parts: list[str] = []
        run: list[str] = []
        tokens = self.convert_ids_to_tokens(ids, skip_special_tokens=skip_special_tokens)
        if None in tokens:
            index = next(i for i in ids if self._id_token(int(i)) is None)
            raise InputError(f"Token id {index} is not in the vocabulary (ids 0..{len(self) - 1}).")
        for token in tokens:
            if skip_special_tokens and token in specials:
                continue
            if token in verbatim:
                if run:
                    text = self.convert_tokens_to_string(run)
                    parts += [text] if text else []
                    run = []
                parts.append(token)
            else:
                run.append(token)
        if run:
            parts.append(self.convert_tokens_to_string(run))
        return " ".join(parts)

    # files -----------------------------------------------------------------------------------------------------

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str, ...]:
        """Write vocab.json and merges.txt (the reference's format); returns their paths."""
        if not os.path.isdir(save_directory):
            raise InputError(f"Vocabulary path ({save_directory}) should be a directory.")
        merges = [pair for pair, _ in sorted(self.bpe_ranks.items(), key=lambda kv: kv[1])]
        return write_vocab_files(self.encoder, merges, save_directory, filename_prefix)
