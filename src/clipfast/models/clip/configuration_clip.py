"""Alias of ``clipfast.configuration``, at the module path of ``transformers.models.clip.configuration_clip``."""

from clipfast.configuration import *  # noqa: F401,F403
