"""Alias of ``clipfast.image_processing``, at the module path of ``transformers.models.clip.image_processing_clip``."""

from clipfast.image_processing import *  # noqa: F401,F403
