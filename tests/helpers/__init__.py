"""Shared test helpers: tiny configs, tiny model folders, test photos, a loopback HTTP server, a Hub stand-in.

``reference(name)`` imports a reference library (transformers, open_clip, torchvision) or skips the calling
test with the reason, so the suite also runs on a plain ``pip install -e .`` without them.
"""

from __future__ import annotations

import importlib.util
from types import ModuleType

import pytest

REFERENCE_LIBRARIES = ("transformers", "open_clip", "torchvision")


def has_reference(name: str) -> bool:
    """Whether the reference library ``name`` is installed (without importing it)."""
    return importlib.util.find_spec(name) is not None


def reference(name: str) -> ModuleType:
    """Import the reference library ``name`` or skip the test that asked for it."""
    return pytest.importorskip(name, reason=f"{name} is a reference library for parity tests: "
                                            "pip install -e '.[test]' installs it")


def needs(*names: str) -> pytest.MarkDecorator:
    """A skip marker for tests (or whole modules, as ``pytestmark``) that need these reference libraries."""
    missing = [name for name in names if not has_reference(name)]
    return pytest.mark.skipif(bool(missing), reason=f"needs the reference libraries {', '.join(missing)} "
                                                    "(pip install -e '.[test]')")
