"""``TokenizerBase``: what CLIPTokenizer and CLIPTokenizerFast share above their vocabulary: special tokens, the
call (``__call__`` / ``encode`` / ``batch_encode_plus``), decoding, and the tokenizer files
(tokenizer_config.json, special_tokens_map.json, added_tokens.json) as transformers reads and writes them.

Subclasses supply the vocabulary (``_token_id``, ``convert_ids_to_tokens``, ``vocab_size``), ``_encode_batch``,
``_decode_ids`` and ``save_vocabulary``.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Iterable

from clipfast import hub
from clipfast.bpe import MERGES_NAME, TOKENIZER_JSON, VOCAB_NAME, read_openai_vocab
from clipfast.errors import CheckpointError, InputError
from clipfast.text_cleaning import _openai_cleaned
from clipfast.tokenization_utils import (CLIP_MAX_LENGTH, NO_LIMIT, _SPECIAL_KEYS, BatchEncoding, CallPlan,
                                         _as_batch, _padding_strategy, _to_py, _token_content, _token_list,
                                         _truncation_strategy, clean_up_tokenization)

logger = logging.getLogger("clipfast.tokenization")  # the tokenizers' logger, whichever module logs

TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
SPECIAL_MAP_NAME = "special_tokens_map.json"
ADDED_TOKENS_NAME = "added_tokens.json"



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
            >>> from clipfast import CLIPTokenizer
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
            >>> from clipfast import CLIPTokenizer
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
            >>> from clipfast import CLIPTokenizer
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
            >>> from clipfast import CLIPTokenizer
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
            >>> from clipfast import CLIPTokenizer
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
        names = (VOCAB_NAME, MERGES_NAME, TOKENIZER_JSON, TOKENIZER_CONFIG_NAME, SPECIAL_MAP_NAME, ADDED_TOKENS_NAME)
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
        config_file = os.path.join(save_directory, prefix + TOKENIZER_CONFIG_NAME)
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
    if files[TOKENIZER_CONFIG_NAME]:
        init.update(hub.read_json(files[TOKENIZER_CONFIG_NAME]))  # type: ignore[arg-type]
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
