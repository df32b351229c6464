"""Alias of ``clipfast.modeling``, at the module path of ``transformers.models.clip.modeling_clip``."""

from clipfast.modeling import *  # noqa: F401,F403
