"""Alias of ``clipfast.tokenization_fast``, at the module path of ``transformers.models.clip.tokenization_clip_fast``."""

from clipfast.tokenization_fast import *  # noqa: F401,F403
