"""CLIPTokenizer: OpenAI CLIP's byte-level BPE in pure Python.

The algorithm (spec §4.4): clean the text (``ftfy`` when installed, else a BERT-style cleaner), lower-case it,
split it with one regex into words, digits and symbol runs, map each piece's UTF-8 bytes onto 256 printable
characters, and merge symbol pairs by rank, with ``</w>`` marking the end of each piece. Specials are
``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407, also unk and pad).

Speed comes from three things the reference lacks: a cache from raw piece straight to ids, skipping ``ftfy``
for plain printable ASCII (where it changes nothing), and one pass per batch without per-call bookkeeping.

The layers below: :mod:`clipfast.bpe` (vocabulary files, byte alphabet, the merge), :mod:`clipfast.text_cleaning`,
:mod:`clipfast.tokenization_utils` (``BatchEncoding``, call plan, padding, truncation) and
:mod:`clipfast.tokenization_base` (``TokenizerBase``, shared with :class:`~clipfast.CLIPTokenizerFast`).

Example:
    >>> tok = CLIPTokenizer.from_openai_vocab()
    >>> tok(["a photo of a cat", "a dog"], padding=True)["input_ids"]
    [[49406, 320, 1125, 539, 320, 2368, 49407], [49406, 320, 1929, 49407, 49407, 49407, 49407]]
"""

from __future__ import annotations

import os
import re as std_re
from functools import lru_cache
from typing import Any

from clipfast.bpe import (BOS_TOKEN, EOS_TOKEN, MERGES_NAME, NUM_MERGES, SPLIT_PATTERN, TOKENIZER_JSON,  # noqa: F401
                          VOCAB_NAME, bytes_to_unicode, convert_openai_vocab, merge_symbols, openai_vocab_path,
                          read_openai_vocab, read_tokenizer_json, read_vocab_files, split_patterns, write_vocab_files)
from clipfast.errors import InputError
from clipfast.tensor_utils import tensors_to  # noqa: F401
from clipfast.text_cleaning import _load_ftfy, basic_clean, needs_cleaning, openai_clean  # noqa: F401
from clipfast.tokenization_base import (ADDED_TOKENS_NAME, SPECIAL_MAP_NAME, TOKENIZER_CONFIG_NAME,  # noqa: F401
                                        TokenizerBase)
from clipfast.tokenization_utils import (CLIP_MAX_LENGTH, NO_LIMIT, PADDINGS, TRUNCATIONS,  # noqa: F401
                                         BatchEncoding, CallPlan, _to_py, _token_content, added_token_entry,
                                         clean_up_tokenization, pad_rows, truncate_ids)

# (the names above that this module does not use are kept importable from clipfast.tokenization, where they were)


@lru_cache(maxsize=1)
def _patterns() -> tuple[Any, Any, Any]:
    """(slow split regex, ASCII split regex, needs-cleaning test), compiled on first use."""
    return (*split_patterns(), needs_cleaning())



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
        result = merge_symbols(piece, self.bpe_ranks)
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
