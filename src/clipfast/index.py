"""An embedding index on disk: L2-normalised vectors in ``embeddings.npy``, their ids in ``ids.jsonl``.

The folder is written by ``clipfast embed`` and read by ``clipfast search``::

    OUT/meta.json        {"model": ..., "kind": "image" | "text", "dim": 512, "dtype": "float32", ...}
    OUT/embeddings.npy   float32 (rows, dim), a plain .npy file (np.load(..., mmap_mode="r") reads it)
    OUT/ids.jsonl        one {"id": ...} per row, in row order

Writes are resumable and survive a kill at any point. Each chunk is appended in this order, each step fsynced:
the vectors, then the .npy header's row count, then the ids. ``ids.jsonl`` is therefore the commit record: a row
exists once its id line is complete. On open, a torn id line and any vectors beyond the last id are cut off.

Example:
    >>> with IndexWriter("out", {"model": "openai/clip-vit-base-patch32", "kind": "text", "dim": 2}) as w:  # doctest: +SKIP
    ...     w.append(["a cat"], np.array([[0.6, 0.8]], dtype=np.float32))
    >>> index = open_index("out"); index.search(np.array([0.6, 0.8]), k=1)                               # doctest: +SKIP
    [('a cat', 1.0)]
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from clipfast.errors import InputError

META = "meta.json"
VECTORS = "embeddings.npy"
IDS = "ids.jsonl"
LOCK = ".lock"
FORMAT = "clipfast-index"

_MAGIC = b"\x93NUMPY\x01\x00"
# a fixed header size, so that the row count can be rewritten in place as rows are appended
_HEADER_SIZE = 128
_ROW_BYTES_DTYPE = np.dtype("<f4")


def _npy_header(rows: int, dim: int) -> bytes:
    """A version 1.0 .npy header for float32 (rows, dim), space-padded to exactly ``_HEADER_SIZE`` bytes."""
    body = "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }" % (rows, dim)
    length = _HEADER_SIZE - len(_MAGIC) - 2
    return _MAGIC + struct.pack("<H", length) + (body.ljust(length - 1) + "\n").encode("latin1")


def _fsync(handle: Any) -> None:
    handle.flush()
    os.fsync(handle.fileno())


def _write_atomic(path: Path, data: bytes) -> None:
    """Write a whole file via a temporary name and rename, so readers see the old or the new file, never half."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        _fsync(handle)
    os.replace(tmp, path)


def read_meta(folder: str | os.PathLike) -> dict[str, Any]:
    """The ``meta.json`` of an index folder; a clear error when ``folder`` is not an index."""
    path = Path(folder) / META
    if not path.is_file():
        raise InputError(f"{os.fspath(folder)!r} is not a clipfast index (no {META}); create one with "
                         "`clipfast embed ... --out FOLDER`.")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"Cannot read {str(path)!r}: {exc}.") from None
    missing = [key for key in ("model", "kind", "dim") if not isinstance(meta, dict) or key not in meta]
    if missing:
        raise InputError(f"{str(path)!r} is not a clipfast index's meta.json (it lacks {missing}); it is written by "
                         "`clipfast embed`.")
    return meta


def _complete_ids(path: Path) -> tuple[list[str], int]:
    """Ids of the complete lines of ``ids.jsonl`` and the byte length they take (a torn last line is left out)."""
    ids: list[str] = []
    size = 0
    if not path.exists():
        return ids, size
    with open(path, "rb") as handle:
        for line in handle:
            if not line.endswith(b"\n"):
                break
            try:
                ids.append(json.loads(line)["id"])
            except (ValueError, KeyError, TypeError):
                break
            size += len(line)
    return ids, size


class IndexWriter:
    """Appends (id, vector) rows to an index folder, resuming whatever a previous run completed.

    ``done`` holds the ids already stored; callers skip those. The folder is locked while open, so two runs
    cannot interleave their rows.
    """

    def __init__(self, folder: str | os.PathLike, meta: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = _lock(self.folder / LOCK)
        try:
            self.meta = self._check_meta(meta)
            self.dim = int(self.meta["dim"])
            ids, id_bytes = _complete_ids(self.folder / IDS)
            self._vectors, self._ids = self._recover(ids, id_bytes)
        except BaseException:
            self._lock.close()  # a refused or damaged index must not stay locked
            raise
        self.rows = len(ids)
        self.done = set(ids)

    def _check_meta(self, meta: dict[str, Any]) -> dict[str, Any]:
        """Create meta.json, or check that this run matches the one that started the index."""
        path = self.folder / META
        if not path.exists():
            meta = {"format": FORMAT, "version": 1, "dtype": "float32", "normalized": True, **meta}
            _write_atomic(path, json.dumps(meta, indent=2).encode("utf-8"))
            return meta
        old = read_meta(self.folder)
        for key in ("model", "kind", "dim"):
            if key in meta and old.get(key) != meta[key]:
                raise InputError(f"{str(self.folder)!r} holds {old.get('kind')} embeddings of model "
                                 f"{old.get('model')!r} (dim {old.get('dim')}); this run has {key} {meta[key]!r}. "
                                 "Use the same --model and input kind to resume, or a new --out.")
        return old

    def _recover(self, ids: list[str], id_bytes: int) -> tuple[Any, Any]:
        """Open both files for appending, cutting them back to the last complete row."""
        row_bytes = self.dim * _ROW_BYTES_DTYPE.itemsize
        vectors_path, ids_path = self.folder / VECTORS, self.folder / IDS
        if not ids and _no_header(vectors_path):
            _write_atomic(vectors_path, _npy_header(0, self.dim))  # new, or killed before its first header
        if not vectors_path.exists():
            raise InputError(f"{str(vectors_path)!r} is missing but {str(ids_path)!r} lists {len(ids)} rows; "
                             "the index is damaged. Remove the folder and run embed again.")
        stored = max(0, vectors_path.stat().st_size - _HEADER_SIZE) // row_bytes
        if stored < len(ids):
            raise InputError(f"{str(vectors_path)!r} holds {stored} rows but {str(ids_path)!r} lists {len(ids)}; "
                             "the index is damaged. Remove the folder and run embed again.")
        vectors = open(vectors_path, "r+b")
        try:
            vectors.truncate(_HEADER_SIZE + len(ids) * row_bytes)  # vectors written after the last committed id
            vectors.seek(0)
            vectors.write(_npy_header(len(ids), self.dim))
            _fsync(vectors)
            id_file = open(ids_path, "ab")
        except BaseException:
            vectors.close()
            raise
        id_file.truncate(id_bytes)  # a torn last line
        return vectors, id_file

    def append(self, ids: list[str], vectors: np.ndarray) -> None:
        """Store one chunk: vectors, then the header's row count, then the ids (the commit), each fsynced."""
        vectors = np.ascontiguousarray(vectors, dtype=_ROW_BYTES_DTYPE)
        if vectors.shape != (len(ids), self.dim):
            raise InputError(f"expected vectors of shape ({len(ids)}, {self.dim}), got {vectors.shape}.")
        self._vectors.seek(0, os.SEEK_END)
        self._vectors.write(vectors.tobytes())
        _fsync(self._vectors)
        self._vectors.seek(0)
        self._vectors.write(_npy_header(self.rows + len(ids), self.dim))
        _fsync(self._vectors)
        self._ids.write("".join(_id_line(i) for i in ids).encode("utf-8"))
        _fsync(self._ids)
        self.rows += len(ids)
        self.done.update(ids)

    def close(self) -> None:
        for handle in (self._vectors, self._ids, self._lock):
            handle.close()

    def __enter__(self) -> "IndexWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _no_header(path: Path) -> bool:
    """Whether ``embeddings.npy`` is missing or shorter than its header (a run killed before writing it)."""
    return not path.exists() or path.stat().st_size < _HEADER_SIZE


def _id_line(item_id: str) -> str:
    """One ids.jsonl line. An id that UTF-8 cannot encode (a file name with undecodable bytes, which Python holds
    as lone surrogates) is written with JSON escapes, which read back to the same string."""
    line = json.dumps({"id": item_id}, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = json.dumps({"id": item_id}, ensure_ascii=True)
    return line + "\n"


def _lock(path: Path) -> Any:
    """Hold an exclusive lock on ``path`` (POSIX); a second writer fails at once with a clear message."""
    handle = open(path, "a+b")
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; run one embed per folder
        return handle
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise InputError(f"Another `clipfast embed` is writing {str(path.parent)!r}; wait for it to finish.") from None
    return handle


@dataclass
class Index:
    """A read-only index: ``ids[i]`` is the id of ``vectors[i]`` (a memory map; nothing is loaded up front)."""

    ids: list[str]
    vectors: np.ndarray
    meta: dict[str, Any]

    def search(self, query: np.ndarray, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` ids most similar to ``query`` (cosine), best first."""
        return [(self.ids[row], score) for row, score in top_k(self.vectors, query, k)]


def open_index(folder: str | os.PathLike) -> Index:
    """Open what ``clipfast embed`` wrote; rows not yet committed by an id line (a run in progress) are left out."""
    meta = read_meta(folder)
    ids, _ = _complete_ids(Path(folder) / IDS)
    path = Path(folder) / VECTORS
    if not ids and _no_header(path):
        return Index(ids, np.zeros((0, int(meta["dim"])), dtype=np.float32), meta)  # nothing stored yet
    try:
        vectors = np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"{os.fspath(folder)!r} is damaged: cannot read {VECTORS} ({exc}). Run embed again to "
                         "resume, or remove the folder.") from None
    if vectors.ndim != 2 or vectors.shape[0] < len(ids):
        raise InputError(f"{os.fspath(folder)!r} is damaged: {len(ids)} ids but vectors of shape {vectors.shape}.")
    return Index(ids, vectors[:len(ids)], meta)


def top_k(vectors: np.ndarray, query: np.ndarray, k: int, block: int = 1 << 16) -> list[tuple[int, float]]:
    """Exact top-k rows of ``vectors @ query``, best first, reading ``block`` rows at a time (bounded memory).

    Example:
        >>> top_k(np.eye(3, dtype=np.float32), np.array([0, 1, 0], dtype=np.float32), 2)
        [(1, 1.0), (0, 0.0)]
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}.")
    query = np.asarray(query, dtype=np.float32).reshape(-1)
    best_rows = np.empty(0, dtype=np.int64)
    best_scores = np.empty(0, dtype=np.float32)
    for start in range(0, vectors.shape[0], block):
        scores = np.asarray(vectors[start:start + block], dtype=np.float32) @ query  # (block,)
        rows = np.arange(start, start + len(scores))
        if len(scores) > k:
            keep = np.argpartition(-scores, k - 1)[:k]
            rows, scores = rows[keep], scores[keep]
        best_rows = np.concatenate([best_rows, rows])
        best_scores = np.concatenate([best_scores, scores])
        if len(best_scores) > k:
            keep = np.argpartition(-best_scores, k - 1)[:k]
            best_rows, best_scores = best_rows[keep], best_scores[keep]
    order = np.lexsort((best_rows, -best_scores))  # by score, ties by row
    return [(int(best_rows[i]), float(best_scores[i])) for i in order]


def write_parquet(index: Index, path: str | os.PathLike) -> None:
    """Export an index as one Parquet file (columns ``id`` and ``embedding``; meta in the schema), atomically."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError("Writing Parquet needs pyarrow: `pip install pyarrow`, or give --out a folder "
                         "for .npy + .jsonl.") from None
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(np.asarray(index.vectors).reshape(-1)),
                                                  int(index.vectors.shape[1]))
    table = pa.table({"id": pa.array(index.ids, pa.string()), "embedding": embedding})
    table = table.replace_schema_metadata({"clipfast": json.dumps(index.meta)})
    tmp = Path(os.fspath(path) + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def expand_ids(items: Iterable[str]) -> list[str]:
    """Drop repeated ids, keeping the first occurrence's position."""
    return list(dict.fromkeys(items))
