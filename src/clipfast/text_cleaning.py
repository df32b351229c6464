"""Text cleaning before CLIP's BPE: OpenAI's (ftfy, HTML entities, whitespace) and the reference's fallback without
ftfy (a BERT-style cleaner).

transformers' ``CLIPTokenizer`` runs ``ftfy.fix_text`` (when installed) and lower-cases; OpenAI's and open_clip's
tokenizers also unescape HTML entities twice and fold whitespace runs (:func:`openai_clean`). Printable ASCII
without ``&`` is left as it is by all of them except for whitespace, which lets the tokenizers skip the cleaning
there.

Example:
    >>> basic_clean("Naïve  CAFÉ\t")
    'naïve café'
"""

from __future__ import annotations

import html
import logging
import re
import unicodedata
from functools import lru_cache
from typing import Any, Callable

from clipfast.errors import InputError

logger = logging.getLogger("clipfast.tokenization")  # the tokenizers' logger, whichever module logs

# Characters outside this set may be changed by ftfy (entities after '&', control chars, anything non-ASCII).
_NEEDS_CLEANING = r"[^\t\n\r\x20-\x25\x27-\x7e]"


@lru_cache(maxsize=1)
def needs_cleaning() -> Any:
    """The compiled test for characters that cleaning may change (see ``_NEEDS_CLEANING``)."""
    return re.compile(_NEEDS_CLEANING)



def openai_clean(text: str) -> str:
    """OpenAI's and open_clip's text cleaning (``basic_clean`` + ``whitespace_clean``): ftfy, HTML entities
    unescaped twice, whitespace runs to one space. ``text_cleaning="openai"`` applies it before tokenizing, so the
    ids equal theirs where transformers' cleaning differs (``&amp;``, ligatures, mojibake).

    Example:
        >>> openai_clean("Tom &amp;amp; Jerry\t ")
        'Tom & Jerry'
    """
    if needs_cleaning().search(text) is None:  # printable ASCII without '&': only the whitespace changes
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
