"""The few exception classes clipfast raises, each with a message that says what to do.

They subclass the built-in exception a transformers user would catch (``OSError`` for files,
``ValueError`` for bad values), so existing ``except`` clauses keep working.
"""

from __future__ import annotations


class ClipfastError(Exception):
    """Base class of every error clipfast raises on purpose."""


class CheckpointError(ClipfastError, OSError):
    """A checkpoint folder, file or hub id cannot be used (missing, corrupt, wrong model type)."""


class OfflineError(CheckpointError):
    """Files are needed from the Hub, but the Hub cannot be reached (offline mode or no network)."""


class ImageLoadError(ClipfastError, ValueError):
    """An image cannot be read: wrong type, missing or corrupt file, failed download."""


class InputError(ClipfastError, ValueError):
    """A call got an argument of the wrong type, shape or value."""


class InputTypeError(InputError, TypeError):
    """An input of the wrong type, e.g. a list or NumPy array where a torch tensor is expected (also a TypeError,
    which is what code written against transformers may catch)."""


class InputIndexError(InputError, IndexError):
    """An index outside its table: a token id past the vocabulary, a position past the position table (also an
    IndexError, which transformers raises there)."""
