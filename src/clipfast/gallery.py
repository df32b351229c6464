"""What ``clipfast serve``'s web page shows: an index's items, their thumbnails, and the page's own files.

:class:`Gallery` wraps an opened index (:func:`clipfast.index.open_index`) with what the server needs beyond
search: a record's metadata, the stored vector of a row ("more like this"), and the local image file of a row,
for thumbnails. Thumbnails are only ever made from files the index names: a request names a row or an id, never
a path. Ids that are URLs are never fetched.

The page (``index.html``, ``app.js``, ``style.css``) is package data in ``clipfast/web/``, served from a fixed
table of names: no CDN, no build step.
"""

from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from clipfast.errors import InputError

THUMBNAIL_SIZE = 256  # pixels on the longer side
_THUMB_CACHE_SIZE = 512  # thumbnails kept in memory (about 10-20 KB each)
# the page's files: URL path -> (file in clipfast/web, content type); nothing else is served from disk
WEB_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
             "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
             "/static/style.css": ("style.css", "text/css; charset=utf-8")}


def web_file(name: str) -> bytes:
    """The bytes of one of the page's files (``index.html``, ``app.js``, ``style.css``)."""
    return resources.files("clipfast").joinpath("web", name).read_bytes()


class Gallery:
    """An opened index, plus the lookups the server's search and thumbnails need.

    Args:
        index: what :func:`clipfast.index.open_index` returned.
        folder: the index folder (relative image paths are looked up from the working directory, then from it).
    """

    def __init__(self, index: Any, folder: str | os.PathLike | None = None) -> None:
        self.index = index
        self.folder = None if folder is None else Path(folder)
        meta = getattr(index, "meta", {}) or {}
        # what the rows are: "text" (captions, no thumbnails) or "image"; index.kind is the search method
        self.kind = "text" if meta.get("kind") == "text" or getattr(index, "column", None) == "text_embedding" \
            else "image"
        self.method = getattr(index, "kind", "exact")
        self.model = meta.get("model")
        self.dim = int(getattr(index, "dim", None) or meta.get("dim") or np.asarray(index.vectors).shape[1])
        self._rows: dict[str, int] | None = None
        self._cache: OrderedDict[int, bytes | None] = OrderedDict()
        self._cache_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.index) if hasattr(self.index, "__len__") else len(self.index.ids)

    def search_records(self, vector: np.ndarray, k: int) -> list[dict[str, Any]]:
        """``[{"id", "score", "row", ...metadata}]`` of the ``k`` nearest items, best first."""
        if hasattr(self.index, "search_records"):
            return [_plain(record) for record in self.index.search_records(vector, k=k)]
        from clipfast.index import top_k

        return [{"id": self.index.ids[row], "score": score, "row": row}
                for row, score in top_k(self.index.vectors, vector, k)]

    def row_of(self, item_id: str) -> int | None:
        """The row of an indexed id, or None."""
        if hasattr(self.index, "row_of"):
            return self.index.row_of(item_id)
        if self._rows is None:
            self._rows = {value: row for row, value in reversed(list(enumerate(self.index.ids)))}
        return self._rows.get(item_id)

    def record(self, row: int) -> dict[str, Any]:
        """The id and metadata of one row."""
        if hasattr(self.index, "record"):
            return _plain(self.index.record(row))
        return {"id": self.index.ids[row], "row": row}

    def vector(self, row: int) -> np.ndarray:
        """The stored (L2-normalised) vector of one row, float32; an InputError for a row without one."""
        if hasattr(self.index, "vector"):
            return np.asarray(self.index.vector(row), dtype=np.float32)
        if not 0 <= row < len(self):
            raise InputError(f"row {row} is out of range: the index has {len(self)} rows.")
        return np.asarray(self.index.vectors[row], dtype=np.float32)

    def image_source(self, row: int) -> Path | None:
        """The local image file of one row, or None (a text index, an id that is a URL, a file that is gone)."""
        if self.kind == "text":
            return None
        try:
            record = self.record(row)
        except (InputError, IndexError):  # not a row of this index
            return None
        value = record.get("path") or record.get("id")
        if not isinstance(value, str) or "://" in value:
            return None
        path = Path(value)
        candidates = [path] if path.is_absolute() else [Path.cwd() / path] + (
            [self.folder / path, self.folder.parent / path] if self.folder is not None else [])
        return next((candidate for candidate in candidates if candidate.is_file()), None)

    def thumbnail(self, row: int) -> bytes | None:
        """A JPEG of one row's image, at most ``THUMBNAIL_SIZE`` pixels a side (cached), or None."""
        with self._cache_lock:
            if row in self._cache:
                self._cache.move_to_end(row)
                return self._cache[row]
        source = self.image_source(row)
        data = None if source is None else _jpeg_thumbnail(source)
        with self._cache_lock:
            self._cache[row] = data
            while len(self._cache) > _THUMB_CACHE_SIZE:
                self._cache.popitem(last=False)
        return data


def open_gallery(source: Any, dim: int) -> Gallery:
    """A :class:`Gallery` over an index folder (or an opened index) whose vectors have ``dim`` dimensions."""
    from clipfast.index import open_index

    folder = source if isinstance(source, (str, os.PathLike)) else None
    gallery = Gallery(open_index(source) if folder is not None else source, folder)
    if gallery.dim != dim:
        raise InputError(f"The index {os.fspath(folder) if folder else ''!r} holds {gallery.dim}-dimensional "
                         f"embeddings (model {gallery.model!r}); this model's are {dim}-dimensional. Serve it with "
                         "the model that built it.")
    return gallery


def _jpeg_thumbnail(path: Path) -> bytes | None:
    """The image at ``path`` decoded, shrunk and re-encoded as JPEG (never its raw bytes), or None."""
    from PIL import Image

    from clipfast.errors import ClipfastError
    from clipfast.image_io import load_image

    try:
        image = load_image(str(path))
    except (ClipfastError, OSError):
        return None
    image = image.convert("RGB")
    image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def _plain(record: dict[str, Any]) -> dict[str, Any]:
    """A record with NumPy scalars as Python numbers (JSON-ready)."""
    return {key: value.item() if isinstance(value, np.generic) else value for key, value in record.items()}
