"""Alias of ``clipfast.processing``, at the module path of ``transformers.models.clip.processing_clip``."""

from clipfast.processing import *  # noqa: F401,F403
