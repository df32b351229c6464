"""Approximate search at scale: `clipfast index` against exact search, on clustered 512-d vectors.

The vectors are generated with a fixed seed to look like image embeddings: many clusters of uneven size
(log-normal weights) and spread, each point in a low-dimensional subspace (2-12 dims) of its cluster plus a
little isotropic noise, L2-normalised. The queries are 500 fresh points drawn the same way, not in the collection.

For each size the collection is written in the embeddings.npy layout (cached between runs), the index is built
by the CLI in a child process (its wall time and peak memory measured), then, in this process:
exact search (single and batched), the index's search (single and batched: p50/p99 latency, queries/s) and
recall@10 of the index against exact search (the fraction of the exact top 10 returned).

    python benchmarks/bench_index.py --sizes 100000              # minutes
    python benchmarks/bench_index.py --sizes 1000000 --configs auto:1GB ivfpq:256MB
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from clipfast.index import IndexWriter, open_index

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report  # noqa: E402  (after the path insert)

DIM = 512
SEED = 0


def cluster_model(rows: int, dim: int, seed: int) -> dict[str, np.ndarray]:
    """Centres, weights, subspace sizes and spreads of ``rows // 200`` clusters."""
    rng = np.random.default_rng(seed)
    clusters = max(8, rows // 200)
    weights = rng.lognormal(0.0, 1.0, clusters)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    return {"weights": weights / weights.sum(), "centres": centres, "sub": rng.integers(2, 13, clusters),
            "spread": rng.lognormal(-0.5, 0.4, clusters).astype(np.float32)}


def draw(model: dict[str, np.ndarray], count: int, seed: int, rng_seed: tuple[int, ...]) -> np.ndarray:
    """``count`` unit vectors: a cluster centre plus a point of its subspace plus noise."""
    rng = np.random.default_rng(rng_seed)
    centres, sub, spread = model["centres"], model["sub"], model["spread"]
    which = rng.choice(len(centres), size=count, p=model["weights"])
    out = np.empty((count, centres.shape[1]), np.float32)
    for c in np.unique(which):
        rows = np.flatnonzero(which == c)
        basis = np.random.default_rng([seed, int(c)]).standard_normal((sub[c], centres.shape[1])).astype(np.float32)
        basis /= np.linalg.norm(basis, axis=1, keepdims=True) * np.sqrt(sub[c])  # (sub, dim), each row 1/sqrt(sub)
        z = rng.standard_normal((len(rows), sub[c])).astype(np.float32)
        noise = rng.standard_normal((len(rows), centres.shape[1])).astype(np.float32) * 0.01
        out[rows] = centres[c] + spread[c] * (z @ basis) + noise
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def collection(root: Path, rows: int) -> tuple[Path, np.ndarray]:
    """The cached collection folder of ``rows`` vectors and 500 fresh queries."""
    model = cluster_model(rows, DIM, SEED)
    folder = root / f"n{rows}"
    meta = {"model": "synthetic", "kind": "image", "dim": DIM}
    with IndexWriter(folder, meta) as writer:
        chunk = 100_000
        for start in range(writer.rows, rows, chunk):  # whole chunks were committed: resume after them
            count = min(chunk, rows - start)
            writer.append([f"v{start + i:09d}" for i in range(count)], draw(model, count, SEED, (SEED, 1, start)))
    return folder, draw(model, 500, SEED, (SEED, 2))


def build(folder: Path, kind: str, memory: str) -> dict[str, object]:
    """Run `clipfast index` in a child process: wall seconds, its peak RSS and what index.json records."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "clipfast", "index", str(folder), "--kind", kind, "--memory",
                           memory, "--quiet"], capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise SystemExit(f"clipfast index failed: {done.stderr}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    record = next(iter(json.loads((folder / "index.json").read_text())["indexes"].values()))
    return {"seconds": seconds, "peak_rss_mib": max(peak, before) / 1024, "record": record}


def timed(fn, items: list) -> list[float]:
    """Seconds of ``fn(item)`` for each item."""
    out = []
    for item in items:
        start = time.perf_counter()
        fn(item)
        out.append(time.perf_counter() - start)
    return out


def measure(folder: Path, queries: np.ndarray, truth: list[list[str]], exact_single: float) -> dict[str, float]:
    """Latency, throughput and recall@10 of the folder's index against the exact top 10."""
    index = open_index(folder)
    index.search(queries[:5], 10)  # warm the page cache and FAISS' threads
    single = timed(lambda q: index.search(q, 10), list(queries))
    batches = [queries[i:i + 50] for i in range(0, len(queries), 50)]
    batched = timed(lambda b: index.search(b, 10), batches)
    found = index.search(queries, 10)
    recall = statistics.mean(len({i for i, _ in f} & set(t)) / 10 for f, t in zip(found, truth))
    return {"recall@10": recall, "single q/s": len(single) / sum(single),
            "single p50 ms": 1000 * float(np.percentile(single, 50)),
            "single p99 ms": 1000 * float(np.percentile(single, 99)),
            "batch50 q/s": len(queries) / sum(batched), "batch50 p50 ms": 1000 * float(np.percentile(batched, 50)),
            "batch50 p99 ms": 1000 * float(np.percentile(batched, 99)),
            "speedup single": (len(single) / sum(single)) / exact_single}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--configs", nargs="+", default=["auto:1GB", "ivfpq:128MB"],
                        help="KIND:MEMORY index builds to measure (default: auto:1GB ivfpq:128MB)")
    parser.add_argument("--root", default=os.environ.get("CLIPFAST_BENCH_DIR", "/tmp/clipfast-bench-index"))
    parser.add_argument("--exact-single", type=int, default=20, help="single exact queries timed (default: 20)")
    parser.add_argument("--name", default="bench_index")
    args = parser.parse_args()
    rows_out = []
    for size in args.sizes:
        start = time.perf_counter()
        folder, queries = collection(Path(args.root), size)
        print(f"{size} rows ready in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        exact = open_index(folder)
        start = time.perf_counter()
        truth = [[i for i, _ in hits] for hits in exact.search(queries, 10, exact=True)]
        exact_batch = len(queries) / (time.perf_counter() - start)
        first = list(queries[:args.exact_single])
        exact_times = timed(lambda q, index=exact: index.search(q, 10, exact=True), first)
        exact_single = len(exact_times) / sum(exact_times)
        rows_out.append({"rows": size, "index": "exact (numpy scan)", "build s": 0.0,
                         "index MiB": 0.0, "recall@10": 1.0, "single q/s": exact_single,
                         "single p50 ms": 1000 * float(np.median(exact_times)),
                         "single p99 ms": 1000 * float(np.percentile(exact_times, 99)),
                         "batch50 q/s": float("nan"), "batch500 q/s": exact_batch, "speedup single": 1.0})
        print(rows_out[-1], file=sys.stderr, flush=True)
        for config in args.configs:
            kind, memory = config.split(":")
            built = build(folder, kind, memory)
            record = built["record"]
            row = {"rows": size, "index": f"{record['factory']} ({config})", "build s": built["seconds"],
                   "peak MiB": built["peak_rss_mib"], "index MiB": record["file_bytes"] / 2**20,
                   "search": " ".join(f"{k}={v}" for k, v in record["search"].items()),
                   "tuned recall@10": record["recall@10"], **measure(folder, queries, truth, exact_single)}
            rows_out.append(row)
            print(row, file=sys.stderr, flush=True)
            (Path(args.root) / f"{args.name}-partial.json").write_text(json.dumps(rows_out, indent=2, default=str))
    report(args.name, rows_out)


if __name__ == "__main__":
    main()
