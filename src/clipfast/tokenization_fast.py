"""CLIPTokenizerFast: CLIP's tokenizer on the Rust ``tokenizers`` library, built as transformers builds it.

Pipeline (spec §4.5): NFC, whitespace runs -> one space, lower-case; keep the matches of CLIP's split regex; map
bytes to the byte alphabet; BPE with the ``</w>`` end-of-word suffix; ``<|startoftext|> A <|endoftext|>``
(pairs ``<bos> A <eos> <eos> B <eos>``); byte-level decoding with ``</w>`` turned into spaces. Padding and
truncation run in Rust over the whole batch. The shared call logic lives in :mod:`clipfast.tokenization_base`.

Example:
    >>> tok = CLIPTokenizerFast.from_openai_vocab()
    >>> tok("a photo of a cat", return_offsets_mapping=True)["offset_mapping"]
    [(0, 0), (0, 1), (2, 7), (8, 10), (11, 12), (13, 16), (0, 0)]
"""

from __future__ import annotations

import os
import threading
from typing import Any

from clipfast.errors import CheckpointError, InputError
from clipfast.bpe import (BOS_TOKEN, EOS_TOKEN, MERGES_NAME, NUM_MERGES, SPLIT_PATTERN, TOKENIZER_JSON, VOCAB_NAME,
                          read_tokenizer_json, read_vocab_files)
from clipfast.tokenization_base import TokenizerBase
from clipfast.tokenization_utils import CallPlan, _to_py, _token_content, added_token_entry, logger

# The Rust backend holds its truncation/padding settings, and refuses ("Already borrowed") to be reconfigured
# while another thread encodes with it; without a lock, concurrent calls with different settings could also read
# each other's. One lock for every fast tokenizer: calls are short, and encode_batch uses every core anyway.
_BACKEND_LOCK = threading.RLock()


def build_backend(vocab: dict[str, int], merges: list[tuple[str, str]], unk_token: str = EOS_TOKEN,
                  bos_token: str = BOS_TOKEN, eos_token: str = EOS_TOKEN,
                  added: list[tuple[str, bool]] | None = None) -> Any:
    """The ``tokenizers.Tokenizer`` transformers 4.57 builds for CLIP (the same tokenizer.json, component for
    component). ``added``: (content, special) of tokens added after the vocabulary, in id order; they are added
    first, so that they keep their ids even when bos/eos/unk are among them."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                                   end_of_word_suffix="</w>", fuse_unk=False, unk_token=unk_token))
    backend.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    backend.decoder = decoders.ByteLevel()
    for content, special in added or []:
        token = AddedToken(content, special=special, normalized=not special or content in vocab)
        if special:
            backend.add_special_tokens([token])
        else:
            backend.add_tokens([token])
    # the reference's specials are normalized (so "<|ENDOFTEXT|>" is matched after lower-casing)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=True)
                                for t in dict.fromkeys((bos_token, eos_token, unk_token))
                                if backend.token_to_id(t) is None or t in vocab])
    # (sep, cls) passed by position: tokenizers 0.23 renamed the keywords sep/cls to sep_token/cls_token
    backend.post_processor = processors.RobertaProcessing(
        (eos_token, backend.token_to_id(eos_token)), (bos_token, backend.token_to_id(bos_token)),
        add_prefix_space=False, trim_offsets=False)
    return backend


def _load_backend(tokenizer_file: str | os.PathLike) -> Any:
    """A tokenizer.json; files written before transformers 4.17 (another pre-tokenizer) are rebuilt from their
    vocabulary, since their ids differ from CLIP's (transformers issue #12648)."""
    from tokenizers import Tokenizer, pre_tokenizers

    try:
        backend = Tokenizer.from_file(os.fspath(tokenizer_file))
    except Exception as exc:  # tokenizers raises plain Exception for unreadable files
        raise CheckpointError(f"{os.fspath(tokenizer_file)!r} is not a valid tokenizer.json: {exc}") from exc
    if isinstance(backend.pre_tokenizer, pre_tokenizers.Sequence):
        return backend
    logger.warning(f"{os.fspath(tokenizer_file)!r} was written by a CLIP tokenizer older than transformers 4.17, "
                   "which split text differently; rebuilding the current pipeline from its vocabulary.")
    vocab, merges = read_tokenizer_json(tokenizer_file)
    return build_backend(vocab, merges[:NUM_MERGES])


class CLIPTokenizerFast(TokenizerBase):
    """CLIP's tokenizer on the ``tokenizers`` library, id for id identical to transformers' ``CLIPTokenizerFast``.

    Args:
        vocab_file, merges_file: vocab.json and merges.txt (used when there is no tokenizer_file).
        tokenizer_file: a tokenizer.json written by transformers (4.17 or later) or by this class.
        unk_token, bos_token, eos_token, pad_token: special tokens (CLIP pads with ``<|endoftext|>``).
        vocab, merges: the vocabulary in memory instead of files.
        model_max_length: 77 for CLIP checkpoints (from tokenizer_config.json); unlimited when not given.

    Example:
        >>> tok = CLIPTokenizerFast.from_openai_vocab()
        >>> tok(["a photo of a cat", "a dog"], padding=True, return_tensors="pt")["input_ids"].shape
        torch.Size([2, 7])
    """

    is_fast = True
    vocab_files_names = {"vocab_file": VOCAB_NAME, "merges_file": MERGES_NAME, "tokenizer_file": TOKENIZER_JSON}

    def __init__(self, vocab_file: str | os.PathLike | None = None, merges_file: str | os.PathLike | None = None,
                 tokenizer_file: str | os.PathLike | None = None, unk_token: Any = EOS_TOKEN,
                 bos_token: Any = BOS_TOKEN, eos_token: Any = EOS_TOKEN, pad_token: Any = EOS_TOKEN, *,
                 vocab: dict[str, int] | None = None, merges: list[tuple[str, str]] | None = None,
                 added_tokens: dict[int, str] | None = None, tokenizer_object: Any = None, **kwargs: Any) -> None:
        self.errors = kwargs.pop("errors", "replace")
        from_slow = kwargs.pop("from_slow", False)
        self._init_common(bos_token, eos_token, unk_token, pad_token, kwargs)
        self._backend_key: tuple[Any, ...] | None = None
        specials = set(self.all_special_tokens)
        # (content, special) of the stored added tokens in id order: added in that order, they keep their ids
        stored = [(content, special or content in specials) for _, (content, special)
                  in sorted((int(i), added_token_entry(t)) for i, t in (added_tokens or {}).items()) if content]
        if tokenizer_object is not None:
            self._tokenizer = tokenizer_object
        elif tokenizer_file is not None and not from_slow:
            self._tokenizer = _load_backend(tokenizer_file)
        else:
            if vocab is None or merges is None:
                if vocab_file is None or merges_file is None:
                    raise InputError("CLIPTokenizerFast needs tokenizer_file, or vocab_file and merges_file (or "
                                     "vocab= and merges=); CLIPTokenizerFast.from_openai_vocab() builds OpenAI's.")
                vocab, merges = read_vocab_files(vocab_file, merges_file)
            self._tokenizer = build_backend(vocab, merges, self.unk_token or EOS_TOKEN, self.bos_token or BOS_TOKEN,
                                            self.eos_token or EOS_TOKEN, added=stored)
        known = set(self._tokenizer.get_vocab(with_added_tokens=True))
        for content, special in stored:  # tokens a tokenizer.json lacks (an added_tokens.json next to it)
            if content not in known:
                self._add_tokens([content], special=special)
        self._on_specials_changed()

    @classmethod
    def _from_files(cls, files: dict[str, str | None], init: dict[str, Any]) -> CLIPTokenizerFast:
        """tokenizer.json when present (unless ``from_slow=True``), else vocab.json + merges.txt."""
        return cls(files[VOCAB_NAME], files[MERGES_NAME], files[TOKENIZER_JSON], **init)

    @property
    def backend_tokenizer(self) -> Any:
        """The underlying ``tokenizers.Tokenizer``."""
        return self._tokenizer

    # vocabulary ------------------------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Size of the base vocabulary (49408), without added tokens."""
        return self._tokenizer.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        """Token -> id for the vocabulary and the added tokens."""
        return self._tokenizer.get_vocab(with_added_tokens=True)

    def get_added_vocab(self) -> dict[str, int]:
        """Token -> id of the added tokens (specials included)."""
        return {t.content: i for i, t in self._tokenizer.get_added_tokens_decoder().items()}

    def _added_tokens_decoder(self) -> dict[int, str]:
        return {i: t.content for i, t in self._tokenizer.get_added_tokens_decoder().items()}

    def _base_vocab(self) -> dict[str, int]:
        return self._tokenizer.get_vocab(with_added_tokens=False)

    def _added_is_special(self, index: int, content: str) -> bool:
        """As the backend marks it (``add_tokens(..., special_tokens=True)`` makes a special token that is not
        listed in ``all_special_tokens``, as in the reference)."""
        token = self._tokenizer.get_added_tokens_decoder().get(index)
        return super()._added_is_special(index, content) if token is None else bool(token.special)

    def _token_normalized(self, content: str) -> bool:
        """As the backend matches the token (tokenizer.json may say either)."""
        index = self._tokenizer.token_to_id(content)
        token = self._tokenizer.get_added_tokens_decoder().get(index) if index is not None else None
        return super()._token_normalized(content) if token is None else bool(token.normalized)

    def _add_tokens(self, tokens: list[Any], special: bool) -> int:
        """Add to the Rust backend (non-special tokens are matched after normalisation, as the reference's)."""
        from tokenizers import AddedToken

        items = [t if isinstance(t, AddedToken) else AddedToken(_token_content(t), special=special,
                                                                 normalized=not special)
                 for t in tokens if _token_content(t)]
        with _BACKEND_LOCK:
            if special:  # like the reference's fast tokenizer, not listed in all_special_tokens (the slow one does)
                return self._tokenizer.add_special_tokens(items)
            return self._tokenizer.add_tokens(items)

    def _on_specials_changed(self) -> None:
        """New special tokens become added tokens of the backend; the cached padding config is stale."""
        from tokenizers import AddedToken

        known = self.get_added_vocab()
        missing = [t for t in self.all_special_tokens if t not in known]
        with _BACKEND_LOCK:
            if missing:
                self._tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=True) for t in missing])
            self._backend_key = None

    def _token_id(self, token: str) -> int | None:
        index = self._tokenizer.token_to_id(token)
        if index is None and self.unk_token is not None:
            index = self._tokenizer.token_to_id(self.unk_token)
        return index

    def convert_ids_to_tokens(self, ids: Any, skip_special_tokens: bool = False) -> Any:
        """Id (or list of ids) -> token string(s) (None for an id outside the vocabulary, as the reference)."""
        ids = _to_py(ids)  # tensors and arrays (0-d or 1-d) as Python ints
        if isinstance(ids, int):
            return self._tokenizer.id_to_token(int(ids))
        special = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._tokenizer.id_to_token(int(i)) for i in ids if int(i) not in special]

    # text -> ids -----------------------------------------------------------------------------------------------

    def _configure(self, plan: CallPlan) -> None:
        """Set the backend's truncation and padding for this call (skipped when unchanged since the last call)."""
        key = (plan.truncation, plan.max_length, plan.stride, self.truncation_side, plan.padding, plan.padding_side,
               plan.pad_to_multiple_of, self.pad_token, self.pad_token_id)
        if key == self._backend_key:
            return
        backend = self._tokenizer
        if plan.truncation == "do_not_truncate":
            backend.no_truncation()
        else:
            backend.enable_truncation(plan.max_length, stride=plan.stride, strategy=plan.truncation,
                                      direction=self.truncation_side)
        if plan.padding == "do_not_pad":
            backend.no_padding()
        else:
            backend.enable_padding(length=plan.max_length if plan.padding == "max_length" else None,
                                   direction=plan.padding_side, pad_id=self.pad_token_id or 0,
                                   pad_type_id=self.pad_token_type_id, pad_token=self.pad_token,
                                   pad_to_multiple_of=plan.pad_to_multiple_of)
        self._backend_key = key

    def _run_backend(self, items: list[Any], plan: CallPlan) -> list[Any]:
        """Encode a batch in Rust (``encode_batch_fast`` is not used: it is no faster here and drops tokens)."""
        try:
            return self._tokenizer.encode_batch(items, add_special_tokens=plan.add_special_tokens,
                                                is_pretokenized=plan.split_words)
        except Exception as exc:  # tokenizers raises plain Exception (e.g. max_length too small for the specials)
            raise InputError(f"The tokenizers backend refused the input: {exc}") from exc

    @staticmethod
    def _unbatch(data: dict[str, list[Any]]) -> dict[str, Any]:
        """First row of each field; like the reference's fast tokenizer, ``length`` stays a one-item list."""
        return {k: v[0] if v and isinstance(v[0], list) else v for k, v in data.items()}

    def _encode_batch(self, texts: list[Any], pairs: list[Any] | None, plan: CallPlan
                      ) -> tuple[dict[str, list[Any]], list[Any]]:
        """Encode, truncate and pad the whole batch in Rust, then read the asked fields."""
        if plan.single and pairs is not None and not pairs[0]:
            pairs = None  # the reference's fast tokenizer drops an empty pair of a single text ("" or [])
        with _BACKEND_LOCK:  # this call's settings, and no other thread's, while it encodes
            self._configure(plan)
            encodings = self._run_backend(texts if pairs is None else list(zip(texts, pairs)), plan)
        data: dict[str, list[Any]] = {"input_ids": [e.ids for e in encodings]}
        if plan.token_type_ids:
            data["token_type_ids"] = [e.type_ids for e in encodings]
        if plan.attention_mask:
            data["attention_mask"] = [e.attention_mask for e in encodings]
        if plan.special_tokens_mask:
            data["special_tokens_mask"] = [e.special_tokens_mask for e in encodings]
        if plan.offsets:
            data["offset_mapping"] = [e.offsets for e in encodings]
        if plan.length:
            data["length"] = [len(e.ids) for e in encodings]
        self._warn_if_too_long(map(len, data["input_ids"]), plan)
        return data, encodings

    def tokenize(self, text: str, pair: str | None = None, add_special_tokens: bool = False,
                 **kwargs: Any) -> list[str]:
        """Text -> token strings (e.g. ``['a</w>', 'photo</w>']``), without special tokens by default."""
        return self(text, pair, add_special_tokens=add_special_tokens, **kwargs).tokens()

    # ids -> text -----------------------------------------------------------------------------------------------

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """The backend's byte-level decoder on the tokens (``</w>`` kept, as the reference's fast tokenizer)."""
        return self._tokenizer.decoder.decode(tokens)

    def _decode_ids(self, ids: list[int], skip_special_tokens: bool) -> str:
        """Backend decode, then ``</w>`` -> space and strip (the reference's wrapper, tokenizers#872)."""
        text = self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
        return text.replace("</w>", " ").strip()

    # files -----------------------------------------------------------------------------------------------------

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str, ...]:
        """Write vocab.json and merges.txt from the backend's BPE model; returns their paths."""
        if not os.path.isdir(save_directory):
            raise InputError(f"Vocabulary path ({save_directory}) should be a directory.")
        return tuple(self._tokenizer.model.save(save_directory, name=filename_prefix))

    def _save_extra(self, save_directory: str, filename_prefix: str | None) -> tuple[str, ...]:
        """tokenizer.json, written without this session's padding/truncation settings."""
        path = os.path.join(save_directory, (f"{filename_prefix}-" if filename_prefix else "") + TOKENIZER_JSON)
        with _BACKEND_LOCK:
            self._tokenizer.no_truncation()
            self._tokenizer.no_padding()
            self._backend_key = None
            self._tokenizer.save(path)
        return (path,)
