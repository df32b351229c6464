"""Bulk embedding's Parquet layout, read for search: one embedding column as shards or by position.

``DIR/part-*.parquet`` (columns ``id``, ``image_embedding`` and/or ``text_embedding`` as
fixed_size_list<float32>[dim], null where an image failed, plus passed-through columns) and
``DIR/_clipfast.json`` ({"model", "dim", "columns", ...}). :class:`Store` is the interface the search side of
``clipfast.index`` reads both layouts through; :class:`ParquetStore` implements it for this one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from clipfast.errors import InputError

PARQUET_META = "_clipfast.json"
PARQUET_PARTS = "part-*.parquet"
DEFAULT_COLUMN = "image_embedding"
_EMBEDDING_NAMES = {"image_embedding", "text_embedding"}


class Store:
    """The vectors of one embedding column, the ids and metadata of their rows.

    A *position* counts the rows that have a vector (what FAISS labels); a *row* counts every row of the dataset
    (the two differ where the Parquet layout holds a null embedding for an image that failed).
    """

    dim: int
    meta: dict[str, Any]
    column: str | None

    def __len__(self) -> int:
        raise NotImplementedError

    def blocks(self, size: int = 1 << 16) -> Iterator[tuple[int, np.ndarray]]:
        """(first position, float32 (rows, dim)) shards, in position order."""
        raise NotImplementedError

    def take(self, positions: np.ndarray) -> np.ndarray:
        """Float32 (len(positions), dim): the vectors at ``positions``, in that order."""
        raise NotImplementedError

    def rows(self, positions: np.ndarray) -> np.ndarray:
        """Dataset rows of positions."""
        return np.asarray(positions, dtype=np.int64)

    def position(self, row: int) -> int | None:
        """The position of a dataset row, None when the row has no vector (or does not exist)."""
        return row if 0 <= row < len(self) else None

    def record(self, row: int) -> dict[str, Any]:
        """``{"id": ..., **metadata}`` of a dataset row."""
        raise NotImplementedError

    def row_of(self, item_id: str) -> int | None:
        """The dataset row of ``item_id`` when it has a vector in this column, else None."""
        raise NotImplementedError

    def fingerprint(self) -> dict[str, Any]:
        """What changes when the collection changes (an index built before is then stale)."""
        raise NotImplementedError


class ParquetStore(Store):
    """``part-*.parquet`` + ``_clipfast.json`` (bulk embedding's layout), one embedding column of it.

    Shards are read one record batch at a time; ``take`` reads the whole column into memory once (n·dim·4 bytes),
    which searching needs anyway to re-score candidates with the stored vectors.
    """

    def __init__(self, folder: Path, column: str | None) -> None:
        import pyarrow.parquet as pq

        self.meta = parquet_meta(folder)
        columns = list(self.meta.get("columns") or [])
        if column is None:
            column = DEFAULT_COLUMN if DEFAULT_COLUMN in columns or not columns else columns[0]
        if columns and column not in columns:
            raise InputError(f"column={column!r} is not an embedding column of {str(folder)!r}; it has {columns}.")
        self.column, self.dim = column, int(self.meta["dim"])
        self.files = sorted(folder.glob(PARQUET_PARTS))
        self._embedding_columns = set(columns) | {column}
        counts, valid = [], []
        for path in self.files:
            try:
                handle = pq.ParquetFile(path)
            except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
                raise InputError(f"Cannot read {str(path)!r}: {exc}.") from None
            if column not in handle.schema_arrow.names:
                raise InputError(f"{str(path)!r} has no column {column!r}; it has {handle.schema_arrow.names}.")
            counts.append(handle.metadata.num_rows)
            valid.append(None if _no_nulls(handle, column) else _valid_mask(handle, column))
        self._starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        masks = [np.ones(c, bool) if v is None else v for c, v in zip(counts, valid)]
        self._rows = np.flatnonzero(np.concatenate(masks)) if masks else np.zeros(0, np.int64)
        self._vectors: np.ndarray | None = None
        self._tables: dict[int, Any] = {}
        self._by_id: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self._rows)

    def blocks(self, size: int = 1 << 16) -> Iterator[tuple[int, np.ndarray]]:
        import pyarrow.parquet as pq

        if self._vectors is not None:
            for start in range(0, len(self), size):
                yield start, self._vectors[start:start + size]
            return
        position = 0
        for path in self.files:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=size, columns=[self.column]):
                block = _fixed_vectors(batch.column(0), self.dim, path)
                yield position, block
                position += len(block)

    @property
    def vectors(self) -> np.ndarray:
        if self._vectors is None:
            blocks = [block for _, block in self.blocks()]
            self._vectors = np.concatenate(blocks) if blocks else np.zeros((0, self.dim), np.float32)
        return self._vectors

    def take(self, positions: np.ndarray) -> np.ndarray:
        return self.vectors[np.asarray(positions, dtype=np.int64)]

    def rows(self, positions: np.ndarray) -> np.ndarray:
        return self._rows[np.asarray(positions, dtype=np.int64)]

    def position(self, row: int) -> int | None:
        found = int(np.searchsorted(self._rows, row))
        return found if found < len(self._rows) and self._rows[found] == row else None

    @property
    def ids(self) -> list[str]:
        return [self.record(int(row))["id"] for row in self._rows]

    def record(self, row: int) -> dict[str, Any]:
        import pyarrow.parquet as pq

        if not 0 <= row < self._starts[-1]:
            raise InputError(f"row {row} is out of range: the collection has {int(self._starts[-1])} rows.")
        part = int(np.searchsorted(self._starts, row, side="right")) - 1
        if part not in self._tables:
            names = pq.ParquetFile(self.files[part]).schema_arrow.names
            keep = [name for name in names if name not in self._embedding_columns and name not in _EMBEDDING_NAMES]
            self._tables[part] = pq.read_table(self.files[part], columns=keep)
        values = self._tables[part].slice(row - int(self._starts[part]), 1).to_pylist()[0]
        return {"id": str(values.pop("id", row)), **values}

    def row_of(self, item_id: str) -> int | None:
        if self._by_id is None:
            self._by_id = {self.record(int(row))["id"]: int(row) for row in self._rows}
        return self._by_id.get(item_id)

    def fingerprint(self) -> dict[str, Any]:
        return {"rows": len(self), "files": [[p.name, p.stat().st_size] for p in self.files]}




def parquet_meta(folder: Path) -> dict[str, Any]:
    path = folder / PARQUET_META
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"Cannot read {str(path)!r}: {exc}.") from None
    if not isinstance(meta, dict) or "dim" not in meta:
        raise InputError(f"{str(path)!r} is not bulk embedding's {PARQUET_META} (it lacks 'dim').")
    return meta


def _no_nulls(handle: Any, column: str) -> bool:
    """Whether every row group's statistics say the column has no nulls (then no data is read to know it)."""
    meta = handle.metadata
    for group in range(meta.num_row_groups):
        chunk = meta.row_group(group)
        for i in range(chunk.num_columns):
            col = chunk.column(i)
            if col.path_in_schema.split(".")[0] == column:
                stats = col.statistics
                if stats is None or not stats.has_null_count or stats.null_count:
                    return False
    return True


def _valid_mask(handle: Any, column: str) -> np.ndarray:
    """Rows whose embedding is not null, reading the column one batch at a time."""
    masks = [np.asarray(batch.column(0).is_valid()) for batch in handle.iter_batches(columns=[column])]
    return np.concatenate(masks) if masks else np.zeros(0, bool)


def _fixed_vectors(array: Any, dim: int, path: Path) -> np.ndarray:
    """Float32 (valid rows, dim) from a fixed_size_list<float32>[dim] column chunk, leaving null rows out."""
    import pyarrow as pa

    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if not pa.types.is_fixed_size_list(array.type) or array.type.list_size != dim:
        raise InputError(f"{str(path)!r}: the embedding column is {array.type}, not fixed_size_list<float>[{dim}].")
    values = array.values.slice(array.offset * dim, len(array) * dim)
    vectors = values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(len(array), dim)
    return vectors if array.null_count == 0 else vectors[np.asarray(array.is_valid())]
