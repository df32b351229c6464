"""``clipfast.models.clip``: the same public names as ``transformers.models.clip``."""

from clipfast import __getattr__ as __getattr__  # noqa: F401  (lazy, like the top-level package)
