"""What both CLIP tokenizers share below the tokenizer itself: the ``BatchEncoding`` output, the plan of one call
(padding, truncation, return options) resolved as transformers does, input checks, and the truncation and padding
of id lists.

Example:
    >>> plan = CallPlan("max_length", "longest_first", 5, None, "right")
    >>> data = {"input_ids": [[49406, 320, 49407]]}
    >>> pad_rows(data, plan, pad_id=49407)
    >>> data
    {'input_ids': [[49406, 320, 49407, 49407, 49407]], 'attention_mask': [[1, 1, 1, 0, 0]]}
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from clipfast.errors import InputError
from clipfast.tensor_utils import tensors_to

logger = logging.getLogger("clipfast.tokenization")  # the tokenizers' logger, whichever module logs

NO_LIMIT = int(1e30)  # the reference's model_max_length when no config gives one
CLIP_MAX_LENGTH = 77
_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")
PADDINGS = ("longest", "max_length", "do_not_pad")
TRUNCATIONS = ("longest_first", "only_first", "only_second", "do_not_truncate")


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
