"""Bulk embedding into a Parquet dataset: sources cut into partitions, each embedded and written as one part file.

This is the engine-independent half of ``clipfast embed SOURCES --out DIR`` (the Ray engine in
:mod:`clipfast.ray` runs the same :class:`PartitionEmbedder` on a cluster). Sources:

* image files, folders (recursive) and globs; the id is the path as found, starting from the folder as given;
* Parquet / CSV tables with a column of image paths or http(s) URLs (relative paths are relative to the table's
  folder), an optional text column and an optional id column; every column passes through to the output;
* webdataset tar shards (``shard-{000..099}.tar``, local or http(s)): images by extension, captions from ``.txt``
  or the ``caption`` / ``text`` field of ``.json``; the id is the sample key.

Output, in ``DIR``::

    part-000000.parquet ...  id (string), image_embedding / text_embedding (fixed_size_list<float32>[dim],
                             L2-normalised, null where an image failed), passed-through columns
    _clipfast.json           {"model", "dim", "dtype", "sources", "counts", "columns", "format": "parquet", ...}
    _errors.parquet          id, source, reason: one row per image that could not be read

Each part file is written whole (a temporary name, then a rename) and is never rewritten: a rerun of the same
command embeds only the partitions without a part file, so a killed run resumes where it stopped.

Example:
    >>> plan = plan_sources(["photos/", "captions.parquet"])                 # doctest: +SKIP
    >>> summary = embed_local(plan, "out", model="openai/clip-vit-base-patch32")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import json
import math
import os
import re
import sys
import tarfile
import time
import uuid
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Iterable, Iterator, NamedTuple

from clipfast.constants import IMAGE_EXTENSIONS
from clipfast.errors import ImageLoadError, InputError
from clipfast.workers import POOL_SIZE_LIMIT, Lane

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

META_NAME = "_clipfast.json"
ERRORS_NAME = "_errors.parquet"
PART_PATTERN = "part-{:06d}.parquet"
FORMAT = "parquet"
TABLE_EXTENSIONS = (".parquet", ".csv")
SHARD_EXTENSIONS = (".tar",)
IMAGE_COLUMNS = ("url", "image", "path")  # the default image column: the first of these that a table has
MIN_PARTITION, MAX_PARTITION = 100, 10_000  # automatic partition sizes: about 100 partitions, within these bounds
_METADATA_KEY = b"clipfast"  # each part file's summary (counts, errors) in its Parquet key-value metadata
_TEMP_PREFIX = ".tmp-"


# ---------------------------------------------------------------------------------------------------------------
# the plan: every source cut into partitions, each a JSON-able description a worker anywhere can read


@dataclasses.dataclass(frozen=True)
class Partition:
    """One unit of work and of resumption: its rows are embedded together into ``part-{index:06d}.parquet``.

    ``kind`` is "files" (``ids`` and ``paths``), "table" (rows ``offset`` to ``offset + length`` of the table at
    ``path``) or "shard" (the tar at ``path``). ``source`` is the argument it came from, as given.
    """

    index: int
    kind: str
    source: str
    path: str = ""
    ids: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    offset: int = 0
    length: int = 0
    image_column: str | None = None
    text_column: str | None = None
    id_column: str | None = None

    @property
    def name(self) -> str:
        return PART_PATTERN.format(self.index)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Partition":
        data = dict(data)
        data["ids"], data["paths"] = tuple(data.get("ids") or ()), tuple(data.get("paths") or ())
        return cls(**data)


@dataclasses.dataclass
class Plan:
    """Partitions of all sources, the embedding columns they produce and a fingerprint of the whole plan (a rerun
    resumes an output only when its plan is the same)."""

    sources: list[str]
    partitions: list[Partition]
    partition_size: int
    columns: list[str]

    @property
    def fingerprint(self) -> str:
        # where files lie (absolute paths) is left out: the same command from another folder resumes the same run
        parts = [{k: v for k, v in p.to_dict().items() if k not in ("path", "paths")} for p in self.partitions]
        text = json.dumps(parts + [self.columns], sort_keys=True)
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def plan_sources(items: Iterable[str], image_column: str | None = None, text_column: str | None = None,
                 id_column: str | None = None, partition_size: int | None = None) -> Plan:
    """Cut SOURCES (files, folders, globs, image URLs, Parquet/CSV tables, webdataset shards with brace patterns)
    into partitions. ``partition_size`` rows per partition for files and tables (default: about 100 partitions,
    between 100 and 10,000 rows each); a shard is one partition.

    Example:
        >>> plan_sources(["shards/data-{000..009}.tar"]).partitions[0].kind   # doctest: +SKIP
        'shard'
    """
    items = list(items)
    if partition_size is not None and partition_size < 1:
        raise InputError(f"partition_size must be at least 1, got {partition_size}.")
    files: list[tuple[str, str]] = []  # (id, path to read), from every files/folder/glob/URL argument
    tables: list[tuple[str, str, int, tuple[str | None, str | None, str | None]]] = []
    shards: list[tuple[str, str]] = []
    missing = []
    for item in items:
        found = _classify(item, image_column, text_column, id_column, files, tables, shards)
        if not found:
            missing.append(item)
    if missing:
        raise InputError(f"No such file, folder, glob match, table or shard: {', '.join(map(repr, missing))}. "
                         "Give image files, folders, globs, http(s) URLs, .parquet/.csv tables or .tar shards.")
    files = list(dict.fromkeys(files))
    rows = len(files) + sum(length for _, _, length, _ in tables)
    size = partition_size or min(MAX_PARTITION, max(MIN_PARTITION, math.ceil(rows / 100)))
    partitions: list[Partition] = []
    for start in range(0, len(files), size):
        chunk = files[start:start + size]
        partitions.append(Partition(len(partitions), "files", "files", ids=tuple(i for i, _ in chunk),
                                    paths=tuple(p for _, p in chunk)))
    for source, path, length, (image, text, ident) in tables:
        for start in range(0, length, size):
            partitions.append(Partition(len(partitions), "table", source, path=path, offset=start,
                                        length=min(size, length - start), image_column=image, text_column=text,
                                        id_column=ident))
    for source, path in shards:
        partitions.append(Partition(len(partitions), "shard", source, path=path, text_column=text_column))
    columns = _embedding_columns(partitions)
    if not columns:
        raise InputError("Nothing to embed: the sources have no images and no text column.")
    return Plan(items, partitions, size, columns)


def _classify(item: str, image_column: str | None, text_column: str | None, id_column: str | None,
              files: list, tables: list, shards: list) -> bool:
    """Add what ``item`` names to the files, tables or shards lists; False when it names nothing."""
    expanded = expand_braces(item)
    found = False
    for name in expanded:
        lower = name.lower().split("?")[0]
        is_url = name.startswith(("http://", "https://"))
        if lower.endswith(SHARD_EXTENSIONS):
            paths = [name] if is_url or os.path.isfile(name) else sorted(glob.glob(name))
            shards.extend((name if is_url else path, path if is_url else os.path.abspath(path)) for path in paths)
            found = found or bool(paths)
        elif not is_url and lower.endswith(TABLE_EXTENSIONS) and os.path.isfile(name):
            columns = resolve_columns(name, image_column, text_column, id_column)
            tables.append((name, os.path.abspath(name), table_rows(name), columns))
            found = True
        else:
            matches = image_files(name)
            files.extend(matches)
            found = found or bool(matches)
    return found


def _embedding_columns(partitions: list[Partition]) -> list[str]:
    columns = []
    if any(p.kind != "table" or p.image_column for p in partitions):
        columns.append("image_embedding")
    if any(p.text_column for p in partitions):
        columns.append("text_embedding")
    return columns


_BRACE = re.compile(r"\{([^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """Expand ``{000..099}`` ranges (zero padding kept) and ``{a,b}`` lists, as webdataset and the shell do.

    Example:
        >>> expand_braces("shard-{00..02}.tar")
        ['shard-00.tar', 'shard-01.tar', 'shard-02.tar']
    """
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    body = match.group(1)
    numeric = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numeric:
        first, last = numeric.groups()
        width = len(first) if first.startswith("0") or len(first) == len(last) else 0
        step = 1 if int(last) >= int(first) else -1
        choices = [str(n).zfill(width) for n in range(int(first), int(last) + step, step)]
    elif "," in body:
        choices = body.split(",")
    else:  # a literal {word}: leave it, expand the rest
        head, tail = pattern[:match.end()], pattern[match.end():]
        return [head + rest for rest in expand_braces(tail)]
    head, tail = pattern[:match.start()], pattern[match.end():]
    return [out for choice in choices for out in expand_braces(head + choice + tail)]


def image_files(item: str) -> list[tuple[str, str]]:
    """(id, path to read) for an image file, folder (recursive, image extensions only), glob or http(s) URL; the
    id is the path as found, starting from the folder as given (a URL is its own id)."""
    if item.startswith(("http://", "https://")):
        return [(item, item)]
    if os.path.isfile(item):
        return [(os.path.normpath(item), os.path.abspath(item))]
    if os.path.isdir(item):
        return [(path, os.path.abspath(path)) for path in _walk_images(item)]
    if glob.has_magic(item):
        found = []
        for match in sorted(glob.glob(item, recursive=True)):
            found.extend(image_files(match) if os.path.isdir(match) else [(os.path.normpath(match),
                                                                           os.path.abspath(match))])
        return found
    return []


def _walk_images(folder: str) -> list[str]:
    """Image files under ``folder``, in a sorted walk so that runs are repeatable."""
    paths = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        paths.extend(os.path.normpath(os.path.join(root, name)) for name in sorted(names)
                     if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS)
    return paths


# ---------------------------------------------------------------------------------------------------------------
# tables


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise InputError("Parquet tables and output need pyarrow: `pip install pyarrow` "
                         "(or `pip install 'clipfast[ray]'`).") from None
    return pyarrow


def table_columns(path: str) -> list[str]:
    """Column names of a Parquet or CSV table."""
    pa = _pyarrow()
    if path.lower().endswith(".parquet"):
        return list(pa.parquet.read_schema(path).names)
    return list(_read_csv(os.path.abspath(path), os.path.getsize(path)).column_names)


def table_rows(path: str) -> int:
    """Number of rows of a Parquet (from its footer) or CSV table."""
    pa = _pyarrow()
    if path.lower().endswith(".parquet"):
        return pa.parquet.ParquetFile(path).metadata.num_rows
    return _read_csv(os.path.abspath(path), os.path.getsize(path)).num_rows


@lru_cache(maxsize=2)
def _read_csv(path: str, size: int) -> "pa.Table":
    """A whole CSV table (kept for the next partitions of the same file; ``size`` invalidates a changed one)."""
    pa = _pyarrow()
    import pyarrow.csv

    try:
        # an empty field is a missing value (no caption), not an empty text to embed
        return pyarrow.csv.read_csv(path, convert_options=pyarrow.csv.ConvertOptions(strings_can_be_null=True))
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"Cannot read the CSV table {path!r}: {exc}.") from None


def read_table_slice(path: str, offset: int, length: int) -> "pa.Table":
    """Rows ``offset`` to ``offset + length`` of a table; for Parquet only the row groups that hold them are read."""
    pa = _pyarrow()
    if not path.lower().endswith(".parquet"):
        return _read_csv(path, os.path.getsize(path)).slice(offset, length)
    parquet = pa.parquet.ParquetFile(path)
    groups, first, start = [], None, 0
    for group in range(parquet.metadata.num_row_groups):
        rows = parquet.metadata.row_group(group).num_rows
        if start + rows > offset and start < offset + length:
            groups.append(group)
            first = start if first is None else first
        start += rows
    if not groups:
        return parquet.schema_arrow.empty_table()
    return parquet.read_row_groups(groups).slice(offset - first, length)


def resolve_columns(path: str, image_column: str | None, text_column: str | None,
                    id_column: str | None) -> tuple[str | None, str | None, str | None]:
    """(image column, text column, id column) of a table, checked against the columns it has.

    The image column defaults to the first of url / image / path; the id column to the table's ``id`` column when
    it has one, else the image column (the path or URL as written)."""
    names = table_columns(path)

    def check(column: str | None, option: str) -> None:
        if column is not None and column not in names:
            raise InputError(f"{option} {column!r} is not a column of {path!r}; its columns are {names}.")

    for column, option in ((image_column, "--image-column"), (text_column, "--text-column"),
                           (id_column, "--id-column")):
        check(column, option)
    image = image_column or next((c for c in IMAGE_COLUMNS if c in names), None)
    if image is None and text_column is None:
        raise InputError(f"{path!r} has none of the columns {list(IMAGE_COLUMNS)}: name its image column with "
                         f"--image-column (its columns are {names}), or give --text-column to embed texts only.")
    clash = [c for c in ("image_embedding", "text_embedding") if c in names]
    if clash:
        raise InputError(f"{path!r} already has the column(s) {clash}, which the output adds; rename them.")
    ident = id_column or ("id" if "id" in names else image)
    if ident is None:
        raise InputError(f"{path!r} has no image column and no id column: give --id-column.")
    return image, text_column, ident


# ---------------------------------------------------------------------------------------------------------------
# reading a partition: chunks of rows with their image sources and texts


class Chunk(NamedTuple):
    """Up to a batch of rows: ids, what to load per image (path, URL, bytes or None), what errors name per image,
    texts (or None), and the columns passed through (an Arrow table, one row per id, or None)."""

    ids: list[str]
    images: list[Any] | None
    sources: list[str] | None
    texts: list[Any] | None
    extra: "pa.Table | None"


def read_partition(part: Partition, chunk_rows: int = 64, timeout: float | None = None) -> Iterator[Chunk]:
    """The rows of ``part`` in chunks of ``chunk_rows``, read lazily (a shard is streamed, never held whole)."""
    if part.kind == "files":
        for start in range(0, len(part.ids), chunk_rows):
            ids = list(part.ids[start:start + chunk_rows])
            yield Chunk(ids, list(part.paths[start:start + chunk_rows]), ids, None, None)
    elif part.kind == "table":
        table = read_table_slice(part.path, part.offset, part.length)
        for start in range(0, table.num_rows, chunk_rows):
            yield _table_chunk(table.slice(start, chunk_rows), part)
    elif part.kind == "shard":
        yield from _shard_chunks(part, chunk_rows, timeout)
    else:
        raise InputError(f"unknown partition kind {part.kind!r}")


def _table_chunk(table: "pa.Table", part: Partition) -> Chunk:
    """One chunk of a table: ids as strings, image paths made absolute against the table's folder."""
    ids = [None if v is None else str(v) for v in table.column(part.id_column).to_pylist()]
    missing = [i for i, v in enumerate(ids) if v is None]
    if missing:
        raise InputError(f"{part.source!r} has an empty id in row {part.offset + missing[0]} "
                         f"(column {part.id_column!r}): every row needs an id.")
    images = sources = None
    if part.image_column:
        written = table.column(part.image_column).to_pylist()
        folder = os.path.dirname(part.path)
        images = [_resolve(v, folder) for v in written]
        sources = [v if isinstance(v, str) else f"{part.source} row {part.offset}" for v in written]
    texts = table.column(part.text_column).to_pylist() if part.text_column else None
    extra = table.drop_columns(["id"]) if "id" in table.column_names else table
    return Chunk(ids, images, sources, texts, extra)


def _resolve(value: Any, folder: str) -> Any:
    """A table's image field: URLs and absolute paths as they are, relative paths against the table's folder,
    bytes as they are."""
    if not isinstance(value, str) or value.startswith(("http://", "https://")) or os.path.isabs(value):
        return value
    return os.path.join(folder, value)


def _open_shard(path: str, timeout: float | None) -> Any:
    """A binary stream of a shard: a local file or an http(s) download (streamed, with a timeout)."""
    if not path.startswith(("http://", "https://")):
        return open(path, "rb")
    import urllib.request

    from clipfast.image_io import DEFAULT_TIMEOUT

    request = urllib.request.Request(path, headers={"User-Agent": "clipfast"})
    return urllib.request.urlopen(request, timeout=DEFAULT_TIMEOUT if timeout is None else timeout)


def _shard_chunks(part: Partition, chunk_rows: int, timeout: float | None) -> Iterator[Chunk]:
    """Samples of a webdataset shard in chunks; a shard that cannot be read (404, truncated) ends in a chunk whose
    single row is that failure, under the shard's name."""
    rows: list[tuple[str, Any, str, Any]] = []
    try:
        with _open_shard(part.path, timeout) as stream:
            for key, image, member, caption in _samples(tarfile.open(fileobj=stream, mode="r|*")):
                rows.append((key, image, f"{part.source}:{member}", caption))
                if len(rows) == chunk_rows:
                    yield _shard_chunk(rows, part)
                    rows = []
    except (OSError, tarfile.TarError, EOFError) as exc:
        reason = f"cannot read the shard: {type(exc).__name__}: {exc}"
        rows.append((f"{os.path.basename(part.source)}", ImageLoadError(reason), part.source, None))
    if rows:
        yield _shard_chunk(rows, part)


def _shard_chunk(rows: list[tuple[str, Any, str, Any]], part: Partition) -> Chunk:
    import pyarrow as pa

    captions = [caption for _, _, _, caption in rows]
    extra = pa.table({"caption": pa.array(captions, pa.string()), "shard": pa.array([part.source] * len(rows))})
    return Chunk([key for key, _, _, _ in rows], [image for _, image, _, _ in rows],
                 [source for _, _, source, _ in rows], captions if part.text_column else None, extra)


def _samples(tar: tarfile.TarFile) -> Iterator[tuple[str, Any, str, str | None]]:
    """(key, image bytes or an ImageLoadError, image member name, caption) per sample of a streamed tar.

    As webdataset does, a sample is a run of consecutive members sharing a key: the member name up to the first
    dot of its base name."""
    key, files = None, {}
    for member in tar:
        if not member.isfile():
            continue
        folder, base = os.path.split(member.name)
        stem, _, ext = base.partition(".")
        if stem == "" or base.startswith("._"):  # hidden files and macOS resource forks are not samples
            continue
        member_key = os.path.join(folder, stem)
        if member_key != key and key is not None:
            yield _sample(key, files)
            files = {}
        key = member_key
        files[ext.lower()] = (member.name, tar.extractfile(member).read())
    if key is not None:
        yield _sample(key, files)


def _sample(key: str, files: dict[str, tuple[str, bytes]]) -> tuple[str, Any, str, str | None]:
    image_ext = next((ext for ext in files if "." + ext.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS), None)
    caption = None
    if "txt" in files:
        caption = files["txt"][1].decode("utf-8", "replace").strip()
    elif "json" in files:
        try:
            fields = json.loads(files["json"][1])
        except ValueError:
            fields = {}
        caption = next((fields[f] for f in ("caption", "text") if isinstance(fields, dict)
                        and isinstance(fields.get(f), str)), None)
    if image_ext is None:
        return key, ImageLoadError(f"sample {key!r} has no image member (found {sorted(files)})"), key, caption
    name, data = files[image_ext]
    return key, data, name, caption


# ---------------------------------------------------------------------------------------------------------------
# embedding a partition


def load_model(model: str, device: str | None = None, dtype: str | None = None) -> Any:
    """The zero-shot pipeline whose embedding helpers every engine uses (cuda when available, else the CPU)."""
    import torch

    import clipfast

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return clipfast.pipeline("zero-shot-image-classification", model=model, device=device, torch_dtype=dtype)


def load_one(source: Any, timeout: float | None = None) -> Any:
    """The RGB image of a path, URL or bytes (as every engine decodes it), or the ImageLoadError saying why not.
    A NumPy (H, W, C) uint8 array becomes a PIL image first, so that arrays take the path that files take."""
    from clipfast.image_io import DEFAULT_TIMEOUT, load_image

    if isinstance(source, ImageLoadError):
        return source
    if source is None:
        return ImageLoadError("the image field is empty")
    try:
        if type(source).__module__ == "numpy":
            from PIL import Image

            source = Image.fromarray(source)
        return load_image(source, timeout=DEFAULT_TIMEOUT if timeout is None else timeout)
    except ImageLoadError as exc:
        return exc
    except (TypeError, ValueError) as exc:  # an array PIL cannot take
        return ImageLoadError(f"cannot read this image value: {exc}")


def as_float32(vectors: Any) -> "np.ndarray":
    """Model outputs as float32 NumPy, L2-normalised again when the model ran in a lower precision."""
    import numpy as np

    array = vectors.float().cpu().numpy()
    if vectors.dtype != array.dtype and str(vectors.dtype) != "torch.float32":
        array = array / np.linalg.norm(array, axis=1, keepdims=True)
    return np.ascontiguousarray(array, dtype=np.float32)


class PartitionEmbedder:
    """Embeds whole partitions and writes each as one part file of ``out``; one per process (a Ray actor holds one).

    Calling it with a :class:`Partition` returns its summary (rows, embedded, failed). Images of the next chunk
    are decoded on a thread pool while the model embeds the current one.
    """

    def __init__(self, model: str, out: str, columns: list[str], device: str | None = None,
                 dtype: str | None = None, batch_size: int = 32, decode_threads: int | None = None,
                 timeout: float | None = None) -> None:
        self.clip = load_model(model, device, dtype)
        self.out, self.columns, self.batch_size, self.timeout = out, columns, batch_size, timeout
        self.dim = int(self.clip.model.config.projection_dim)
        # decodes run on clipfast's one thread pool, at most this many at once
        self.decodes = Lane(decode_threads or POOL_SIZE_LIMIT)

    def __call__(self, part: Partition) -> dict[str, Any]:
        started = time.monotonic()
        done = os.path.join(self.out, part.name)
        if os.path.exists(done):  # a retried task whose first attempt finished: never rewrite a part file
            summary = part_summary(done)
            return {k: summary.get(k, 0) for k in ("partition", "rows", "embedded", "failed")} | {"seconds": 0.0}
        pieces, errors = [], []
        chunks = read_partition(part, self.batch_size, self.timeout)
        pending = self._decode(next(chunks, None))
        while pending is not None:
            chunk, loaded = pending
            pending = self._decode(next(chunks, None))  # the next chunk decodes while this one is embedded
            piece, failed = self._embed(chunk, [f.result() for f in loaded] if loaded else None)
            pieces.append(piece)
            errors.extend(failed)
        summary = write_part(self.out, part, pieces, errors, self.columns, self.dim)
        return dict(summary, seconds=time.monotonic() - started)

    def _decode(self, chunk: Chunk | None) -> tuple[Chunk, list | None] | None:
        if chunk is None:
            return None
        if chunk.images is None or "image_embedding" not in self.columns:
            return chunk, None
        return chunk, [self.decodes.submit(load_one, image, self.timeout) for image in chunk.images]

    def _embed(self, chunk: Chunk, images: list | None) -> tuple[dict[str, Any], list[dict[str, str]]]:
        """One chunk's output columns and its failures."""
        import numpy as np

        n = len(chunk.ids)
        ok = np.ones(n, dtype=bool)
        out: dict[str, Any] = {}
        errors = []
        if images is not None:
            ok = np.array([not isinstance(image, ImageLoadError) for image in images], dtype=bool)
            errors = [{"id": chunk.ids[i], "source": str(chunk.sources[i]), "reason": _one_line(images[i])}
                      for i in np.flatnonzero(~ok)]
            vectors = np.zeros((n, self.dim), dtype=np.float32)
            if ok.any():
                vectors[ok] = as_float32(self.clip.image_embeddings([images[i] for i in np.flatnonzero(ok)]))
            out["image_embedding"] = (vectors, ok)
        if chunk.texts is not None and "text_embedding" in self.columns:
            has_text = np.array([isinstance(t, str) for t in chunk.texts], dtype=bool)
            vectors = np.zeros((n, self.dim), dtype=np.float32)
            if has_text.any():
                vectors[has_text] = as_float32(self.clip.text_embeddings([chunk.texts[i]
                                                                          for i in np.flatnonzero(has_text)]))
            out["text_embedding"] = (vectors, has_text)
            keep = np.ones(n, dtype=bool)  # a row whose image failed keeps its text embedding
        else:
            keep = ok
        return {"ids": [chunk.ids[i] for i in np.flatnonzero(keep)], "keep": keep, "vectors": out,
                "extra": chunk.extra}, errors

    def close(self) -> None:
        """Nothing to release: the thread pool is clipfast's shared one, and every decode was awaited."""


def _one_line(message: Any) -> str:
    return " ".join(str(message).split())


# ---------------------------------------------------------------------------------------------------------------
# the output folder


def _embedding_array(vectors: "np.ndarray", valid: "np.ndarray", dim: int) -> "pa.Array":
    import numpy as np
    import pyarrow as pa

    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim,
                                             mask=pa.array(~np.asarray(valid, dtype=bool)))


def write_part(out: str, part: Partition, pieces: list[dict[str, Any]], errors: list[dict[str, str]],
               columns: list[str], dim: int) -> dict[str, Any]:
    """Write one partition's rows as ``part-{index}.parquet``: a temporary file, then a rename, so a part file is
    whole or absent. Its counts and errors ride in the file's metadata, which :func:`finish_output` gathers."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for piece in pieces:
        keep = np.flatnonzero(piece["keep"])
        arrays = {"id": pa.array(piece["ids"], pa.string())}
        for column in columns:
            vectors, valid = piece["vectors"].get(column, (np.zeros((len(piece["keep"]), dim), np.float32),
                                                           np.zeros(len(piece["keep"]), bool)))
            arrays[column] = _embedding_array(vectors[keep], valid[keep], dim)
        table = pa.table(arrays)
        if piece["extra"] is not None:
            extra = piece["extra"].take(pa.array(keep, pa.int64()))
            for name in extra.column_names:
                table = table.append_column(name, extra.column(name))
        tables.append(table)
    table = pa.concat_tables(tables) if tables else _empty_table(columns, dim)
    primary = table.column(columns[0])
    summary = {"partition": part.index, "source": part.source, "rows": table.num_rows,
               "embedded": table.num_rows - primary.null_count, "failed": len(errors), "errors": errors}
    table = table.replace_schema_metadata({_METADATA_KEY: json.dumps(summary, ensure_ascii=True)})
    final = os.path.join(out, part.name)
    temp = os.path.join(out, f"{_TEMP_PREFIX}{part.name}.{uuid.uuid4().hex[:8]}")
    pq.write_table(table, temp)
    os.replace(temp, final)
    return {k: v for k, v in summary.items() if k != "errors"}


def _empty_table(columns: list[str], dim: int) -> "pa.Table":
    import pyarrow as pa

    fields = [pa.field("id", pa.string())] + [pa.field(c, pa.list_(pa.float32(), dim)) for c in columns]
    return pa.schema(fields).empty_table()


def part_summary(path: str) -> dict[str, Any]:
    """The counts and errors a part file carries in its metadata (only the footer is read)."""
    import pyarrow.parquet as pq

    metadata = pq.read_schema(path).metadata or {}
    return json.loads(metadata.get(_METADATA_KEY, b"{}"))


def prepare_output(out: str, plan: Plan, meta: dict[str, Any]) -> list[Partition]:
    """Create ``out`` (or check that it holds an earlier run of the same plan and model) and return the partitions
    still to do; temporary files of a killed run are removed."""
    _pyarrow()
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, META_NAME)
    if os.path.exists(path):
        old = read_output_meta(out)
        for key, value in (("model", meta["model"]), ("dim", meta["dim"]), ("plan", plan.fingerprint)):
            stored = old.get("plan", {}).get("fingerprint") if key == "plan" else old.get(key)
            if stored != value:
                what = "sources or options" if key == "plan" else f"{key} ({stored!r}, now {value!r})"
                raise InputError(f"{out!r} holds the output of a run with other {what}; rerun the same command "
                                 "to resume it, or give a new --out.")
    elif any(name != ".lock" and not name.startswith(_TEMP_PREFIX) for name in os.listdir(out)):
        raise InputError(f"{out!r} exists and is not a clipfast Parquet output; give a new or empty --out.")
    for name in os.listdir(out):
        if name.startswith(_TEMP_PREFIX):
            os.remove(os.path.join(out, name))
    write_output_meta(out, plan, meta, counts=None)
    return [p for p in plan.partitions if not os.path.exists(os.path.join(out, p.name))]


def write_output_meta(out: str, plan: Plan, meta: dict[str, Any], counts: dict[str, int] | None) -> None:
    """``_clipfast.json``, written whole (temporary file, then rename)."""
    body = {"format": FORMAT, "version": 1, **meta, "dtype": "float32", "normalized": True,
            "sources": plan.sources, "columns": plan.columns, "counts": counts,
            "status": "complete" if counts is not None else "running",
            "plan": {"fingerprint": plan.fingerprint, "partitions": len(plan.partitions),
                     "partition_size": plan.partition_size}}
    _write_whole(os.path.join(out, META_NAME), json.dumps(body, indent=2, ensure_ascii=False).encode("utf-8"))


def _write_whole(path: str, data: bytes) -> None:
    folder, name = os.path.split(path)
    temp = os.path.join(folder, f"{_TEMP_PREFIX}{name}.{uuid.uuid4().hex[:8]}")
    with open(temp, "wb") as handle:
        handle.write(data)
    os.replace(temp, path)


def read_output_meta(out: str) -> dict[str, Any]:
    """``_clipfast.json`` of a Parquet output folder."""
    try:
        with open(os.path.join(out, META_NAME), encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError) as exc:
        raise InputError(f"Cannot read {os.path.join(out, META_NAME)!r}: {exc}.") from None


def finish_output(out: str, plan: Plan, meta: dict[str, Any]) -> dict[str, int]:
    """Gather every part file's counts and errors into ``_errors.parquet`` and ``_clipfast.json``; returns the
    counts. Runs after every run, so a resumed output reports the whole job."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    counts = {"partitions": 0, "rows": 0, "embedded": 0, "failed": 0}
    errors: list[dict[str, str]] = []
    for part in plan.partitions:
        path = os.path.join(out, part.name)
        if not os.path.exists(path):
            continue
        summary = part_summary(path)
        counts["partitions"] += 1
        for key in ("rows", "embedded", "failed"):
            counts[key] += int(summary.get(key, 0))
        errors.extend(summary.get("errors", []))
    schema = pa.schema([("id", pa.string()), ("source", pa.string()), ("reason", pa.string())])
    table = pa.Table.from_pylist(errors, schema=schema)
    temp = os.path.join(out, f"{_TEMP_PREFIX}{ERRORS_NAME}.{uuid.uuid4().hex[:8]}")
    pq.write_table(table, temp)
    os.replace(temp, os.path.join(out, ERRORS_NAME))
    complete = counts["partitions"] == len(plan.partitions)
    write_output_meta(out, plan, meta, counts if complete else None)
    return counts


def output_meta(model: str, clip: Any | None = None, dim: int | None = None, model_dtype: str = "float32"
                ) -> dict[str, Any]:
    """The model facts ``_clipfast.json`` records (a local model folder as an absolute path)."""
    if clip is not None:
        dim = int(clip.model.config.projection_dim)
        model_dtype = str(clip.model.dtype).removeprefix("torch.")
    return {"model": os.path.abspath(model) if os.path.exists(model) else model, "dim": dim,
            "model_dtype": model_dtype}


# ---------------------------------------------------------------------------------------------------------------
# progress and the single-process engine


class Progress:
    """One line for the whole job on ``stream``: done, failed, images/s and ETA. Redrawn in place on a terminal;
    elsewhere a line every ``every`` seconds, and always a last one."""

    def __init__(self, total: int | None, stream: Any = None, every: float = 10.0, unit: str = "img") -> None:
        self.total, self.stream, self.every, self.unit = total, stream or sys.stderr, every, unit
        self.done = self.failed = 0
        self.started = self.shown = time.monotonic()
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, done: int, failed: int = 0) -> None:
        self.done += done
        self.failed += failed
        now = time.monotonic()
        if now - self.shown >= (0.5 if self.tty else self.every):
            self.shown = now
            self._show(final=False)

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = (self.done + self.failed) / elapsed
        total = f"/{self.total}" if self.total is not None else ""
        left = None if self.total is None or rate == 0 else (self.total - self.done - self.failed) / rate
        eta = "--" if left is None else time.strftime("%H:%M:%S", time.gmtime(max(0.0, left)))
        return f"{self.done}{total} done, {self.failed} failed, {rate:.1f} {self.unit}/s, ETA {eta}"

    def _show(self, final: bool) -> None:
        end = "\n" if final or not self.tty else ""
        self.stream.write(("\r\x1b[K" if self.tty else "") + f"clipfast: {self.line()}" + end)
        self.stream.flush()

    def close(self) -> None:
        self._show(final=True)


def embed_local(plan: Plan, out: str, model: str, device: str | None = None, dtype: str | None = None,
                batch_size: int = 32, progress: bool = True, timeout: float | None = None) -> dict[str, int]:
    """The single-process engine: every partition still to do, in order, in this process. Returns the counts of
    the whole output (this run and earlier ones).

    Example:
        >>> counts = embed_local(plan_sources(["photos/"]), "out", "openai/clip-vit-base-patch32")  # doctest: +SKIP
    """
    embedder = PartitionEmbedder(model, out, plan.columns, device=device, dtype=dtype, batch_size=batch_size,
                                 timeout=timeout)
    meta = output_meta(model, embedder.clip)
    try:
        with output_lock(out):
            todo = prepare_output(out, plan, meta)
            bar = Progress(rows_of(todo)) if progress else None
            for part in todo:
                summary = embedder(part)
                if bar is not None:
                    bar.update(summary["embedded"], summary["failed"])
            if bar is not None:
                bar.close()
            return finish_output(out, plan, meta)
    finally:
        embedder.close()


def rows_of(todo: list[Partition]) -> int | None:
    if any(p.kind == "shard" for p in todo):
        return None
    return sum(len(p.ids) if p.kind == "files" else p.length for p in todo)


@contextlib.contextmanager
def output_lock(out: str) -> Iterator[None]:
    """An exclusive lock on ``out/.lock`` while a run writes there: a second run fails at once, clearly."""
    os.makedirs(out, exist_ok=True)
    handle = open(os.path.join(out, ".lock"), "a+b")
    try:
        try:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # Windows: no advisory locks
            pass
        except OSError:
            raise InputError(f"Another `clipfast embed` is writing {out!r}; wait for it to finish.") from None
        yield
    finally:
        handle.close()
