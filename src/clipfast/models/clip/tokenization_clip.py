"""Alias of ``clipfast.tokenization``, at the module path of ``transformers.models.clip.tokenization_clip``."""

from clipfast.tokenization import *  # noqa: F401,F403
