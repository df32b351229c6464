"""Embedding collections on disk and their search: exact, or through a FAISS index built by :func:`build`.

Two layouts are read. ``clipfast embed`` writes (and :class:`IndexWriter` appends to)::

    OUT/meta.json        {"model": ..., "kind": "image" | "text", "dim": 512, "dtype": "float32", ...}
    OUT/embeddings.npy   float32 (rows, dim), a plain .npy file (np.load(..., mmap_mode="r") reads it)
    OUT/ids.jsonl        one {"id": ...} per row, in row order

and bulk embedding writes a Parquet dataset (``part-*.parquet`` + ``_clipfast.json``, see clipfast.collection).
``clipfast index`` / :func:`build` adds ``OUT/index.faiss`` (``index.<column>.faiss`` per embedding column when
there are several) and ``OUT/index.json``; :func:`open_index` then searches through it (clipfast.ann), re-scoring
the candidates with the stored vectors so that every score is an exact cosine.

Writes are resumable and survive a kill at any point. Each chunk is appended in this order, each step fsynced:
the vectors, then the .npy header's row count, then the ids. ``ids.jsonl`` is therefore the commit record: a row
exists once its id line is complete. On open, a torn id line and any vectors beyond the last id are cut off.
Index files are written under temporary names and renamed after ``index.json.tmp``; ``index.json`` last.

Example:
    >>> with IndexWriter("out", {"model": "m", "kind": "text", "dim": 2}) as w:  # doctest: +SKIP
    ...     w.append(["a cat"], np.array([[0.6, 0.8]], dtype=np.float32))
    >>> build("out", memory="1GB")                                                 # doctest: +SKIP
    >>> open_index("out").search(np.array([0.6, 0.8]), k=1)                        # doctest: +SKIP
    [('a cat', 1.0)]
"""

from __future__ import annotations

import json
import os
import struct
import sys
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from clipfast.collection import DEFAULT_COLUMN, PARQUET_META, PARQUET_PARTS
from clipfast.collection import ParquetStore as _ParquetStore
from clipfast.collection import Store as _Store
from clipfast.collection import parquet_meta as _parquet_meta
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


# ---------------------------------------------------------------------------------------------------------------
# reading a collection, in either layout: vectors shard by shard (never all at once) or by position


class _NpyStore(_Store):
    """``meta.json`` + ``embeddings.npy`` (memory-mapped) + ``ids.jsonl``: positions and rows are the same."""

    def __init__(self, folder: Path) -> None:
        self.meta, self.column = read_meta(folder), None
        self.dim = int(self.meta["dim"])
        self.ids, _ = _complete_ids(folder / IDS)
        path = folder / VECTORS
        if not self.ids and _no_header(path):
            self.vectors = np.zeros((0, self.dim), dtype=np.float32)  # nothing stored yet
            return
        try:
            vectors = np.load(path, mmap_mode="r")
        except (OSError, ValueError, EOFError) as exc:
            raise InputError(f"{str(folder)!r} is damaged: cannot read {VECTORS} ({exc}). Run embed again to "
                             "resume, or remove the folder.") from None
        if vectors.ndim != 2 or vectors.shape[0] < len(self.ids):
            raise InputError(f"{str(folder)!r} is damaged: {len(self.ids)} ids but vectors of shape {vectors.shape}.")
        self.vectors = vectors[:len(self.ids)]
        self._by_id: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def blocks(self, size: int = 1 << 16) -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, len(self.ids), size):
            yield start, np.asarray(self.vectors[start:start + size], dtype=np.float32)

    def take(self, positions: np.ndarray) -> np.ndarray:
        unique, inverse = np.unique(np.asarray(positions, dtype=np.int64), return_inverse=True)
        return np.asarray(self.vectors[unique], dtype=np.float32)[inverse]  # sorted reads from the memory map

    def record(self, row: int) -> dict[str, Any]:
        return {"id": self.ids[row]}

    def row_of(self, item_id: str) -> int | None:
        if getattr(self, "_by_id", None) is None:
            self._by_id = {item: row for row, item in enumerate(self.ids)}
        return self._by_id.get(item_id)

    def fingerprint(self) -> dict[str, Any]:
        return {"rows": len(self.ids)}


def _open_store(folder: Path, column: str | None) -> _Store:
    """The store of either layout; a clear error when ``folder`` is neither."""
    if (folder / META).is_file():
        if column not in (None, "embedding", "embeddings"):
            raise InputError(f"column={column!r}: {str(folder)!r} (embeddings.npy) has one embedding column; "
                             "leave --column out.")
        return _NpyStore(folder)
    if (folder / PARQUET_META).is_file() or any(folder.glob(PARQUET_PARTS)):
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise InputError(f"{str(folder)!r} is a Parquet dataset; reading it needs pyarrow: "
                             "`pip install pyarrow`.") from None
        return _ParquetStore(folder, column)
    return _NpyStore(folder)  # read_meta raises "not a clipfast index"


def embedding_columns(folder: str | os.PathLike) -> list[str | None]:
    """The embedding columns of a collection: ``[None]`` for embeddings.npy, the Parquet layout's column names."""
    folder = Path(folder)
    if (folder / META).is_file():
        return [None]
    if (folder / PARQUET_META).is_file():
        return list(_parquet_meta(folder).get("columns") or [DEFAULT_COLUMN])
    read_meta(folder)  # the usual "not a clipfast index" error
    return [None]  # pragma: no cover


# ---------------------------------------------------------------------------------------------------------------
# exact search and re-scoring


def _check_queries(queries: Any, dim: int) -> tuple[np.ndarray, bool]:
    """(float32 (n, dim) unit queries, whether one 1-D query was given); wrong shapes are clear errors."""
    array = np.asarray(queries, dtype=np.float32)
    single = array.ndim == 1
    if single:
        array = array[None, :]
    if array.ndim != 2:
        raise InputError(f"queries must be a 1-D vector or a 2-D array (n, dim), got shape {array.shape}.")
    if array.shape[1] != dim:
        raise InputError(f"The query has {array.shape[1]} dimensions but the index has {dim}: embed the query with "
                         "the model the collection was embedded with.")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise InputError("A query is zero or not finite; cosine similarity needs a non-zero, finite vector.")
    return array / norms, single


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}.")
    return int(k)


def _sorted(positions: np.ndarray, scores: np.ndarray, k: int) -> list[tuple[int, float]]:
    """Best ``k`` of one query's (position, score) pairs: by score, ties by position."""
    order = np.lexsort((positions, -scores))[:k]
    return [(int(positions[i]), float(scores[i])) for i in order]


def _exact(store: _Store, queries: np.ndarray, k: int, exclude: np.ndarray | None = None
           ) -> list[list[tuple[int, float]]]:
    """Exact top-``k`` positions per query, scanning the store shard by shard; ``exclude[i]`` is never returned."""
    count = len(queries)
    best_pos = np.zeros((count, 0), dtype=np.int64)
    best = np.zeros((count, 0), dtype=np.float32)
    block = max(1024, min(1 << 16, (1 << 24) // max(1, count)))  # bounds the (queries, block) score matrix
    for start, vectors in store.blocks(block):
        scores = queries @ vectors.T  # (queries, block)
        if exclude is not None:
            inside = (exclude >= start) & (exclude < start + len(vectors))
            scores[np.flatnonzero(inside), exclude[inside] - start] = -np.inf
        positions = np.arange(start, start + len(vectors))[None, :]  # (1, block)
        if scores.shape[1] > k:  # keep each block's best k before merging: memory stays (queries, 2k)
            keep = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            positions, scores = np.take_along_axis(np.broadcast_to(positions, scores.shape), keep, 1), \
                np.take_along_axis(scores, keep, 1)
        else:
            positions = np.broadcast_to(positions, scores.shape)
        best_pos, best = np.concatenate([best_pos, positions], 1), np.concatenate([best, scores], 1)
        if best.shape[1] > k:
            keep = np.argpartition(-best, k - 1, axis=1)[:, :k]
            best_pos, best = np.take_along_axis(best_pos, keep, 1), np.take_along_axis(best, keep, 1)
    results = []
    for pos, scores in zip(best_pos, best):
        finite = np.isfinite(scores)
        results.append(_sorted(pos[finite], scores[finite], k))
    return results


def _rescore(store: _Store, queries: np.ndarray, labels: np.ndarray, k: int, where: str,
             exclude: np.ndarray | None = None) -> list[list[tuple[int, float]]]:
    """Exact cosines of each query's candidate positions (-1 = none), best ``k`` first."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.max() >= len(store) or labels.min() < -1):
        raise InputError(f"{where} returned rows outside the collection ({len(store)} rows): the index file is "
                         "damaged or belongs to another collection. Rebuild it with `clipfast index`.")
    unique = np.unique(labels[labels >= 0])
    vectors = store.take(unique)
    results = []
    for i, row in enumerate(labels):
        row = np.unique(row[row >= 0])
        if exclude is not None:
            row = row[row != exclude[i]]
        scores = vectors[np.searchsorted(unique, row)] @ queries[i]
        results.append(_sorted(row, scores, k))
    return results


# ---------------------------------------------------------------------------------------------------------------
# the index: search API over either layout, with or without FAISS

ANN_META = "index.json"
ANN_FORMAT = "clipfast-ann"


def _ann_file(column: str | None, columns: list[str | None]) -> str:
    """``index.faiss`` for a collection with one embedding column, ``index.<column>.faiss`` with several."""
    return "index.faiss" if len(columns) <= 1 or column is None else f"index.{column}.faiss"


def _key(column: str | None) -> str:
    return column or "embedding"


class Index:
    """An embedding collection opened for search (see :func:`open_index`)."""

    def __init__(self, folder: Path, store: _Store, ann_index: Any = None, record: dict[str, Any] | None = None,
                 problem: str | None = None) -> None:
        self.folder, self._store, self._ann, self.ann = folder, store, ann_index, record
        self._problem = problem  # why the FAISS index cannot be used (faiss missing), raised when it is needed

    @property
    def meta(self) -> dict[str, Any]:
        return self._store.meta

    @property
    def dim(self) -> int:
        return self._store.dim

    @property
    def column(self) -> str | None:
        return self._store.column

    @property
    def kind(self) -> str:
        """The FAISS index kind used by ``search`` (flat, hnsw, ivf, ivfpq), or ``exact`` without one."""
        return self.ann["kind"] if self.ann else "exact"

    @property
    def ids(self) -> list[str]:
        return self._store.ids

    @property
    def vectors(self) -> np.ndarray:
        return self._store.vectors  # type: ignore[attr-defined]  (both stores have it)

    def __len__(self) -> int:
        return len(self._store)

    def _positions(self, queries: np.ndarray, k: int, exact: bool) -> list[list[tuple[int, float]]]:
        if len(self._store) == 0:
            return [[] for _ in queries]
        if exact or self.ann is None:
            return _exact(self._store, queries, k)
        if self._problem:
            raise InputError(self._problem)
        from clipfast import ann

        labels = ann.candidates(self._ann, queries, k * int(self.ann["search"].get("rerank", 1)))
        return _rescore(self._store, queries, labels, k, where=str(self.folder / self.ann["file"]))

    def search(self, queries: Any, k: int = 10, exact: bool = False) -> Any:
        """The ``k`` ids most similar to each query, best first, as (id, exact cosine) pairs.

        ``queries`` is one 1-D vector (one list back) or a 2-D array (one list per row). Uses the FAISS index
        when the folder has one, unless ``exact``.
        """
        k = _check_k(k)
        array, single = _check_queries(queries, self.dim)
        results = []
        for hits in self._positions(array, k, exact):
            rows = self._store.rows(np.array([p for p, _ in hits], dtype=np.int64))
            results.append([(self._id(int(row)), score) for row, (_, score) in zip(rows, hits)])
        return results[0] if single else results

    def search_records(self, query: Any, k: int = 10, exact: bool = False) -> list[dict[str, Any]]:
        """Like :meth:`search` for one 1-D query, as dicts ``{"id", "score", "row", **metadata}``."""
        array, single = _check_queries(query, self.dim)
        if not single:
            raise InputError(f"search_records takes one 1-D query, got shape {np.shape(query)}; use search().")
        hits = self._positions(array, _check_k(k), exact)[0]
        rows = self._store.rows(np.array([p for p, _ in hits], dtype=np.int64))
        return [{**self.record(int(row)), "score": score, "row": int(row)} for row, (_, score) in zip(rows, hits)]

    def _id(self, row: int) -> str:
        return self._store.ids[row] if isinstance(self._store, _NpyStore) else self._store.record(row)["id"]

    def row_of(self, item_id: str) -> int | None:
        """The row of ``item_id`` when it is searchable (has a vector in this column), else None."""
        return self._store.row_of(item_id)

    def vector(self, row: int) -> np.ndarray:
        """The stored (L2-normalised) float32 vector of a row ("more like this"); an error for a row without one."""
        position = None if isinstance(row, bool) else self._store.position(int(row))
        if position is None:
            raise InputError(f"row {row!r} has no vector in this collection ({len(self)} searchable rows"
                             + (f", column {self.column!r})." if self.column else ")."))
        return np.asarray(self._store.take(np.array([position]))[0], dtype=np.float32)

    def record(self, row: int) -> dict[str, Any]:
        """``{"id": ..., **passed-through metadata}`` of a row."""
        if isinstance(self._store, _NpyStore) and not 0 <= row < len(self._store):
            raise InputError(f"row {row} is out of range: the collection has {len(self._store)} rows.")
        return self._store.record(int(row))


def open_index(folder: str | os.PathLike, mmap: bool = False, column: str | None = None) -> Index:
    """Open a collection for search: embeddings.npy + ids.jsonl, or bulk embedding's Parquet dataset.

    When ``clipfast index`` built a FAISS index for the column, ``search`` uses it (``mmap=True`` maps its file
    instead of reading it: IVF lists are read from disk as they are probed). ``column`` picks the Parquet layout's
    embedding column (default ``image_embedding``). Rows not yet committed by a running embed are left out.
    """
    folder = Path(folder)
    store = _open_store(folder, column)
    record = _ann_record(folder, store)
    if record is None:
        return Index(folder, store)
    try:
        from clipfast import ann

        ann.require_faiss()
    except InputError as exc:
        return Index(folder, store, None, record, problem=f"{str(folder)!r} has a FAISS index ({record['file']}) "
                     f"but: {exc}")
    return Index(folder, store, _load_ann(folder, store, record, mmap), record)


def _read_ann_json(path: Path) -> dict[str, Any] | None:
    """index.json (or its temporary twin): None when absent or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == ANN_FORMAT else None


def _matches(folder: Path, record: dict[str, Any], full: bool) -> bool:
    """Whether the index file is the one ``record`` describes (size, and its CRC-32 when ``full``)."""
    path = folder / str(record.get("file", ""))
    try:
        if path.stat().st_size != record.get("file_bytes"):
            return False
        return not full or _crc32(path) == record.get("crc32")
    except OSError:
        return False


def _ann_record(folder: Path, store: _Store) -> dict[str, Any] | None:
    """The index.json entry of this store's column, None when no index was built for it."""
    path = folder / ANN_META
    data = _read_ann_json(path)
    files = sorted(p.name for p in folder.glob("index*.faiss"))
    if data is None:
        if path.exists() or files:
            raise InputError(f"{str(folder)!r} holds {files or 'no index file'} but {ANN_META} is missing or "
                             "damaged: rebuild with `clipfast index`, or search with --exact.")
        return None
    record = data.get("indexes", {}).get(_key(store.column))
    if record is None:
        return None
    if not _matches(folder, record, full=False):
        # killed between renaming the new index file and renaming index.json: the new record is in the temp file
        pending = (_read_ann_json(folder / (ANN_META + ".tmp")) or {}).get("indexes", {}).get(_key(store.column))
        if pending is not None and _matches(folder, pending, full=False):
            record = pending
    built, now = record.get("collection", {}), store.fingerprint()
    if built != now:
        raise InputError(f"{str(folder / str(record.get('file')))!r} was built for {built.get('rows')} rows but the "
                         f"collection now has {now.get('rows')} (or other files): rebuild it with `clipfast index "
                         f"{folder}`, or search with --exact.")
    return record


def _load_ann(folder: Path, store: _Store, record: dict[str, Any], mmap: bool) -> Any:
    """Read the FAISS index, checking it is the file index.json describes; damage is a clear error."""
    from clipfast import ann

    path = folder / str(record["file"])
    damaged = (f"{str(path)!r} is damaged or truncated (it does not match {ANN_META}): rebuild it with "
               f"`clipfast index {folder}`, or search with --exact.")
    if not path.is_file():
        raise InputError(f"{str(path)!r} named by {ANN_META} is missing: rebuild it with `clipfast index {folder}`,"
                         " or search with --exact.")
    # memory-mapped opening must not read the whole file: the size and the first MiB are checked instead
    if not _matches(folder, record, full=not mmap) or (mmap and _crc32(path, 1 << 20) != record.get("head_crc32")):
        raise InputError(damaged)
    try:
        index = ann.read(path, mmap=mmap)
    except (RuntimeError, MemoryError, ValueError):
        raise InputError(damaged) from None
    if int(index.ntotal) != len(store) or int(index.d) != store.dim:
        raise InputError(f"{str(path)!r} holds {index.ntotal} vectors of dim {index.d}, the collection "
                         f"{len(store)} of dim {store.dim}: rebuild it with `clipfast index {folder}`.")
    ann.set_params(index, record["kind"], record.get("search", {}))
    return index


def _crc32(path: Path, limit: int | None = None) -> int:
    """CRC-32 of a file (or of its first ``limit`` bytes), read in 4 MiB pieces."""
    crc, left = 0, limit if limit is not None else -1
    with open(path, "rb") as handle:
        while left:
            piece = handle.read(1 << 22 if left < 0 else min(1 << 22, left))
            if not piece:
                break
            crc = zlib.crc32(piece, crc)
            left = left - len(piece) if left > 0 else left
    return crc


# ---------------------------------------------------------------------------------------------------------------
# building


def build(folder: str | os.PathLike, memory: str | int = "4GB", kind: str = "auto", recall: float = 0.95,
          column: str | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Build the FAISS index of each embedding column (or of ``column``) and write ``index.json``; returns it.

    ``memory`` bounds the index files (``"4GB"``; MB and GB mean MiB and GiB), shared between columns by rows.
    The index is chosen by :func:`clipfast.ann.choose`, trained on a sample, filled shard by shard, then its
    search parameters are tuned on held-out vectors until recall@10 against exact search reaches ``recall``.
    Files are written under temporary names and renamed at the end: an interrupted build leaves the previous
    index intact, and its leftovers are removed by the next build.
    """
    from clipfast import ann

    folder = Path(folder)
    budget = ann.parse_memory(memory)
    if isinstance(recall, bool) or not isinstance(recall, (int, float)) or not 0 < recall <= 1:
        raise InputError(f"recall={recall!r} must be a number in (0, 1], e.g. 0.95.")
    columns = embedding_columns(folder)
    if column is not None and column not in columns:
        raise InputError(f"column={column!r} is not an embedding column of {str(folder)!r}; it has {columns}.")
    stores = [_open_store(folder, col) for col in ([column] if column is not None else columns)]
    total = sum(len(store) for store in stores)
    if total == 0:
        raise InputError(f"{str(folder)!r} holds no embeddings: there is nothing to index. Embed something first.")
    ann.require_faiss()
    _finish_or_clean(folder)
    old = _read_ann_json(folder / ANN_META) or {}
    data = {"format": ANN_FORMAT, "version": 1, "indexes": dict(old.get("indexes", {}))}
    for store in stores:
        share = max(1, budget * len(store) // total) if len(stores) > 1 else budget
        name = _ann_file(store.column, columns)
        data["indexes"][_key(store.column)] = _build_one(folder, store, name, share, kind, float(recall), log)
    _commit(folder, data)
    return data


def _build_one(folder: Path, store: _Store, name: str, budget: int, kind: str, recall: float,
               log: Callable[[str], None] | None) -> dict[str, Any]:
    """Build, tune and write one index under ``name + '.tmp'``; returns its index.json record."""
    import time

    from clipfast import ann

    say = log or (lambda message: None)
    rows = len(store)
    if rows == 0:
        raise InputError(f"Column {store.column!r} of {str(folder)!r} holds no embeddings: nothing to index.")
    plan = ann.choose(rows, store.dim, budget, kind)
    label = f"{store.column}: " if store.column else ""
    say(f"{label}{plan.factory} for {rows} vectors of dim {store.dim} (about {ann.human(plan.estimated_bytes)}, "
        f"budget {ann.human(budget)})")
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    index = ann.new_index(plan)
    trained = np.zeros(0, dtype=np.int64)
    if plan.train_rows:
        trained = np.sort(rng.choice(rows, plan.train_rows, replace=False))
        say(f"{label}training on {len(trained)} vectors")
        ann.train(index, store.take(trained))
    train_s = time.perf_counter() - start
    for first, block in store.blocks():
        ann.add(index, block)
        say(f"{label}added {first + len(block)}/{rows}")
    add_s = time.perf_counter() - start - train_s
    say(f"{label}tuning search parameters for recall@10 >= {recall}")
    tuning, chosen, queries = _tune(store, index, plan, trained, recall, rng)
    tune_s = time.perf_counter() - start - train_s - add_s
    tmp = folder / (name + ".tmp")
    ann.write(index, tmp)
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    return {"file": name, "column": store.column, "kind": plan.kind, "factory": plan.factory, "rows": rows,
            "dim": store.dim, "params": {"nlist": plan.nlist, "m": plan.m, "nbits": plan.nbits,
                                         "train_rows": len(trained)},
            "search": chosen["search"], "recall_target": recall, "recall@1": chosen["recall@1"],
            "recall@10": chosen["recall@10"], "recall_reached": chosen["recall@10"] >= recall,
            "recall_queries": queries, "tuning": tuning,
            "build_seconds": {"train": round(train_s, 3), "add": round(add_s, 3), "tune": round(tune_s, 3),
                              "total": round(time.perf_counter() - start, 3)},
            "memory": {"budget_bytes": budget, "estimated_bytes": plan.estimated_bytes,
                       "index_bytes": tmp.stat().st_size, "peak_rss_bytes": _peak_rss()},
            "file_bytes": tmp.stat().st_size, "crc32": _crc32(tmp), "head_crc32": _crc32(tmp, 1 << 20),
            "collection": store.fingerprint(), "faiss": ann.describe(index)}


def _tune(store: _Store, index: Any, plan: Any, trained: np.ndarray, recall: float, rng: np.random.Generator
          ) -> tuple[list[dict[str, Any]], dict[str, Any], int]:
    """Try search parameters cheapest first until recall@10 (vs exact, held-out vectors as queries) reaches
    ``recall``; returns the table of tries, the chosen one and the number of queries.

    Queries are stored vectors not used for training where possible; each query's own row is left out of both
    the exact and the approximate results, so recall is that of its neighbours.
    """
    import time

    from clipfast import ann

    rows = len(store)
    spare = np.setdiff1d(np.arange(rows), trained) if rows - len(trained) >= 100 else np.arange(rows)
    chosen_rows = np.sort(rng.choice(spare, min(500, len(spare)), replace=False))
    queries = store.take(chosen_rows)
    k = min(10, rows - 1)
    if k < 1:  # one vector: nothing to compare with
        return [], {"search": {"rerank": 1}, "recall@1": 1.0, "recall@10": 1.0}, 0
    truth = [[pos for pos, _ in hits] for hits in _exact(store, queries, k, exclude=chosen_rows)]
    tuning: list[dict[str, Any]] = []

    def evaluate(name: str, value: int, rerank: int) -> dict[str, Any]:
        params = {name: value} if name else {}
        ann.set_params(index, plan.kind, params)
        began = time.perf_counter()
        labels = ann.candidates(index, queries, k * rerank + 1)
        hits = _rescore(store, queries, labels, k, where="the new index", exclude=chosen_rows)
        seconds = time.perf_counter() - began
        found = [[pos for pos, _ in row] for row in hits]
        entry = {"search": {**params, "rerank": rerank},
                 "recall@1": round(float(np.mean([f[:1] == t[:1] for f, t in zip(found, truth)])), 4),
                 "recall@10": round(float(np.mean([len(set(f) & set(t)) / k for f, t in zip(found, truth)])), 4),
                 "ms_per_query": round(1000 * seconds / len(queries), 4)}
        tuning.append(entry)
        return entry

    best: dict[str, Any] | None = None
    for name, values, reranks in ann.sweep(plan):
        for value in values:
            entry = evaluate(name, value, reranks[-1])
            best = entry if best is None or entry["recall@10"] > best["recall@10"] else best
            if entry["recall@10"] >= recall:
                for rerank in reranks[:-1]:  # the fewest candidates that still reach the target
                    smaller = evaluate(name, value, rerank)
                    if smaller["recall@10"] >= recall:
                        entry = smaller
                        break
                ann.set_params(index, plan.kind, entry["search"])
                return tuning, entry, len(queries)
    assert best is not None
    ann.set_params(index, plan.kind, best["search"])
    return tuning, best, len(queries)


def _peak_rss() -> int | None:
    """Peak resident memory of this process in bytes (None where the platform cannot tell)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # macOS counts bytes, Linux KiB


def _commit(folder: Path, data: dict[str, Any]) -> None:
    """index.json.tmp, then each index file renamed into place, then index.json: the previous pair stays valid
    until the last rename, and a kill after the index files are renamed is rolled forward by the reader."""
    tmp = folder / (ANN_META + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(json.dumps(data, indent=2).encode("utf-8"))
        _fsync(handle)
    for record in data["indexes"].values():
        staged = folder / (record["file"] + ".tmp")
        if staged.exists():
            os.replace(staged, folder / record["file"])
    os.replace(tmp, folder / ANN_META)


def _finish_or_clean(folder: Path) -> None:
    """Before a build: roll a half-committed build forward, then delete what interrupted builds left."""
    pending = _read_ann_json(folder / (ANN_META + ".tmp"))
    if pending and all(_matches(folder, r, full=True) for r in pending.get("indexes", {}).values()):
        os.replace(folder / (ANN_META + ".tmp"), folder / ANN_META)
    for leftover in [*folder.glob("index*.faiss.tmp"), folder / (ANN_META + ".tmp")]:
        leftover.unlink(missing_ok=True)


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
