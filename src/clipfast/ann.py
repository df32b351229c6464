"""Approximate nearest-neighbour indexes with FAISS: which index fits a size and a memory budget, and how to run it.

This module is the only one that imports ``faiss`` (the ``[faiss]`` extra), and only inside its functions.
``clipfast.index`` builds and searches with it; nothing here knows about embedding folders.

Every kind returns candidates that ``clipfast.index`` re-scores with the stored vectors, so scores are exact
cosines whatever the codes lose. The kinds, smallest file last (``n`` rows of ``d`` dims):

========  ==========================  =============================  ====================================
kind      FAISS factory               index file                     search parameters
========  ==========================  =============================  ====================================
flat      ``Flat``                    4·d·n bytes                     none (exact)
hnsw      ``HNSW32``                  (4·d + ~270)·n bytes            ``efSearch``, candidates per result
ivf       ``IVF{k},SQ8``              (d + 8)·n bytes                 ``nprobe``, candidates per result
ivfpq     ``IVF{k},PQ{m}x{b}``        (m·b/8 + 8)·n bytes             ``nprobe``, candidates per result
========  ==========================  =============================  ====================================

``auto`` (see :func:`choose`): ``flat`` below 10,000 rows, then ``ivf`` while its file fits the budget, then
``ivfpq`` with the most sub-quantizers (at most one per 8 dims) that fit; the budget always wins over the row
count. ``k`` is the power of two nearest ``2·sqrt(n)``, half autofaiss' ``4·sqrt(n)``: k-means training and list
assignment cost grow with ``k``, and on 2 cores the smaller ``k`` keeps a 1M-row build within minutes, while
recall comes from probing more lists (tuned per index). docs/search.md has the measurements.

Example:
    >>> plan = choose(1_000_000, 512, parse_memory("1GB"))
    >>> plan.kind, plan.factory
    ('ivf', 'IVF2048,SQ8')
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clipfast.errors import InputError

KINDS = ("flat", "hnsw", "ivf", "ivfpq")
FLAT_ROWS = 10_000  # below this, an exact scan costs less than a query embedding; no index to tune
HNSW_M = 32
MIN_TRAIN_PER_LIST = 39  # FAISS' k-means warns below 39 points per centroid
TRAIN_PER_LIST = 50
PQ_SUBQUANTIZERS = (64, 32, 16, 8, 4, 2, 1)
EF_SEARCH = (16, 32, 64, 128, 256, 512, 1024)
RERANK = (2, 4, 8, 16, 32)  # candidates fetched per wanted result, re-scored exactly
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_memory(value: str | int | float) -> int:
    """Bytes from ``4GB``, ``512MB``, ``1.5GiB``, ``100k`` or a number of bytes; MB and GB mean MiB and GiB.

    Example:
        >>> parse_memory("4GB"), parse_memory("512MiB"), parse_memory(1024)
        (4294967296, 536870912, 1024)
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number, unit = float(value), ""
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", str(value))
        if match is None:
            raise InputError(f"memory={value!r} is not a size; use e.g. '4GB', '512MB' or a number of bytes.")
        number, unit = float(match.group(1)), match.group(2).upper()
    if not math.isfinite(number) or number <= 0:
        raise InputError(f"memory={value!r} must be a positive size, e.g. '4GB'.")
    return int(number * _UNITS[unit])


def human(size: float) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover


@dataclass
class Plan:
    """One index to build: its kind, FAISS factory string, shape parameters and estimated file size."""

    kind: str
    factory: str
    rows: int
    dim: int
    nlist: int = 0
    m: int = 0
    nbits: int = 8
    estimated_bytes: int = 0
    train_rows: int = 0
    params: dict[str, int] = field(default_factory=dict)


def nlist_for(rows: int) -> int:
    """IVF lists: the power of two nearest 2·sqrt(rows), capped so each list gets 39 training points."""
    target = 2.0 * math.sqrt(rows)
    nlist = 1 << max(0, round(math.log2(max(target, 1.0))))
    while nlist > 1 and nlist * MIN_TRAIN_PER_LIST > rows:
        nlist //= 2
    return nlist


def _pq_bits(train_rows: int) -> int:
    """Bits per PQ code: 8 (256 centroids) when there are 39·256 training rows, fewer for small collections."""
    return max(1, min(8, int(math.log2(max(2, train_rows // MIN_TRAIN_PER_LIST)))))


def estimate_bytes(kind: str, rows: int, dim: int, nlist: int = 0, m: int = 0, nbits: int = 8) -> int:
    """A slightly generous estimate of the index file's size (measured against FAISS' files in the tests)."""
    header = 4096
    if kind == "flat":
        return header + rows * dim * 4
    if kind == "hnsw":
        # level 0 holds 2·M neighbour ids, upper levels ~M/(M-1) more; plus offsets and levels
        return header + rows * (dim * 4 + int(2 * HNSW_M * 4 * 1.1) + 24)
    lists = nlist * (dim * 4 + 32)  # centroids plus per-list sizes
    if kind == "ivf":
        return header + lists + 8 * dim + rows * (dim + 8)
    if kind == "ivfpq":
        return header + lists + (1 << nbits) * dim * 4 + rows * (math.ceil(m * nbits / 8) + 8)
    raise InputError(f"kind={kind!r} is not one of {KINDS} or 'auto'.")


def _plan(kind: str, rows: int, dim: int, m: int = 0) -> Plan:
    """The plan of one kind at this size (without checking the budget)."""
    nlist = nlist_for(rows) if kind in ("ivf", "ivfpq") else 0
    train = min(rows, max(TRAIN_PER_LIST * nlist, 10_000)) if nlist else 0
    nbits = _pq_bits(train) if kind == "ivfpq" else 8
    factory = {"flat": "Flat", "hnsw": f"HNSW{HNSW_M}", "ivf": f"IVF{nlist},SQ8",
               "ivfpq": f"IVF{nlist},PQ{m}x{nbits}"}[kind]
    return Plan(kind, factory, rows, dim, nlist, m, nbits, estimate_bytes(kind, rows, dim, nlist, m, nbits), train)


def choose(rows: int, dim: int, memory: int, kind: str = "auto") -> Plan:
    """The index for ``rows`` vectors of ``dim`` whose file fits ``memory`` bytes (see the module docstring).

    A named ``kind`` that does not fit, or a budget too small for any index, is an :class:`InputError` saying how
    much memory is needed.
    """
    if rows < 1:
        raise InputError("The collection is empty: there is nothing to index. Embed something first.")
    if kind not in ("auto", *KINDS):
        raise InputError(f"kind={kind!r} is not one of 'auto', {', '.join(repr(k) for k in KINDS)}.")
    # at least 8 dims per sub-quantizer: FAISS trains 4-dim codebooks ~16x slower (PQ128 of 512 dims: 28 s
    # against 1.7 s for PQ64 on 16k rows here), and re-scoring the candidates recovers the recall
    subquantizers = [m for m in PQ_SUBQUANTIZERS if dim % m == 0 and (m * 8 <= dim or m == 1)]
    if kind == "auto":
        order = ["flat"] if rows < FLAT_ROWS else []
        candidates = [_plan(k, rows, dim) for k in [*order, "ivf"]]
        candidates += [_plan("ivfpq", rows, dim, m) for m in subquantizers]
    elif kind == "ivfpq":
        candidates = [_plan("ivfpq", rows, dim, m) for m in subquantizers]
    else:
        candidates = [_plan(kind, rows, dim)]
    for plan in candidates:
        if plan.estimated_bytes <= memory:
            return plan
    smallest = min(candidates, key=lambda plan: plan.estimated_bytes)
    what = "any index" if kind == "auto" else f"--kind {kind}"
    raise InputError(f"A memory budget of {human(memory)} is too small for {what} of {rows} vectors of dim {dim}: "
                     f"the smallest ({smallest.factory}) needs about {human(smallest.estimated_bytes)}. "
                     "Raise --memory (memory=)" + (" or use --kind auto." if kind != "auto" else "."))


def require_faiss() -> Any:
    """The faiss module, or an error saying how to install it."""
    # faiss logs at INFO which of its builds it tries (AVX512, AVX2, ...): noise in a server's request log
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        import faiss
    except ImportError:
        raise InputError("Approximate search needs FAISS: `pip install 'clipfast[faiss]'` (faiss-cpu). "
                         "Without it, search with --exact (exact=True).") from None
    return faiss


def new_index(plan: Plan) -> Any:
    """An empty, untrained FAISS index for ``plan`` (inner product: vectors are L2-normalised)."""
    faiss = require_faiss()
    index = faiss.index_factory(plan.dim, plan.factory, faiss.METRIC_INNER_PRODUCT)
    if plan.nlist:
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.niter = 10  # measured: recall after re-scoring is flat beyond 10 k-means iterations
        if plan.kind == "ivfpq":
            ivfpq = faiss.downcast_index(ivf)
            ivfpq.pq.cp.niter = 10
            # 64 points per code centroid (16k rows): PQ training time is linear in it (56 s for 25k rows of
            # PQ128 at 100k here), and candidates are re-scored exactly, so finer codebooks buy little
            ivfpq.pq.cp.max_points_per_centroid = 64
            ivfpq.do_polysemous_training = False  # measured: 100x the training time, unused by our search
    return index


def train(index: Any, sample: np.ndarray) -> None:
    """Train the coarse quantizer and the codes on a sample of the vectors."""
    if not index.is_trained:
        index.train(np.ascontiguousarray(sample, dtype=np.float32))


def add(index: Any, block: np.ndarray) -> None:
    """Add one shard of vectors; their labels continue from the rows already added."""
    index.add(np.ascontiguousarray(block, dtype=np.float32))


def set_params(index: Any, kind: str, params: dict[str, int]) -> None:
    """Apply the search parameters (``nprobe`` or ``efSearch``) recorded for ``index``."""
    faiss = require_faiss()
    if kind in ("ivf", "ivfpq") and "nprobe" in params:
        faiss.extract_index_ivf(index).nprobe = int(params["nprobe"])
    elif kind == "hnsw" and "efSearch" in params:
        faiss.downcast_index(index).hnsw.efSearch = int(params["efSearch"])


def sweep(plan: Plan) -> list[tuple[str, list[int], tuple[int, ...]]]:
    """What tuning tries, cheapest first: (parameter name, values, candidates per result)."""
    if plan.kind == "flat":
        return [("", [0], (1,))]
    if plan.kind == "hnsw":
        return [("efSearch", list(EF_SEARCH), (2,))]
    probes = [1 << i for i in range(int(math.log2(plan.nlist)) + 1)]
    return [("nprobe", probes, (2,) if plan.kind == "ivf" else RERANK)]


def candidates(index: Any, queries: np.ndarray, count: int) -> np.ndarray:
    """Labels (rows in add order) of the ``count`` best candidates per query, -1 where fewer exist."""
    count = max(1, min(int(count), int(index.ntotal)))
    _, labels = index.search(np.ascontiguousarray(queries, dtype=np.float32), count)
    return labels


def write(index: Any, path: str | os.PathLike) -> None:
    """Write ``index`` to ``path`` (the caller renames it into place)."""
    require_faiss().write_index(index, os.fspath(path))


def read(path: str | os.PathLike, mmap: bool = False) -> Any:
    """Read an index file, memory-mapped when asked (IVF lists and flat codes stay on disk until touched).

    A file FAISS cannot parse raises ``RuntimeError``; the caller turns it into a clear error.
    """
    faiss = require_faiss()
    flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
    return faiss.read_index(os.fspath(path), flags)


def describe(index: Any) -> dict[str, Any]:
    """A few facts about a loaded index, for index.json and the tests."""
    faiss = require_faiss()
    facts: dict[str, Any] = {"ntotal": int(index.ntotal), "d": int(index.d), "faiss": faiss.__version__}
    try:
        facts["nlist"] = int(faiss.extract_index_ivf(index).nlist)
    except (RuntimeError, AttributeError):
        pass
    return facts
