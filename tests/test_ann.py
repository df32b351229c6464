"""Approximate search (issue 20): `clipfast index` / clipfast.index.build and open_index(...).search with FAISS.

Small clustered collections (a few thousand vectors of dim 32) keep every test fast. Tests that build a FAISS
index skip without faiss (the ``faiss`` fixture); the choice rules and the exact path run without it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from clipfast import ann
from clipfast.index import IndexWriter, build, open_index

DIM = 32


@pytest.fixture
def faiss():
    return pytest.importorskip("faiss", reason="approximate search needs faiss-cpu (the [faiss] extra)")


def clustered(rows: int, dim: int = DIM, seed: int = 0, queries: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors in clusters of uneven size and spread, each in a low-dimensional subspace of its cluster."""
    rng = np.random.default_rng(seed)
    clusters = max(4, rows // 100)
    weights = rng.lognormal(0, 1, clusters)
    centres = rng.standard_normal((clusters, dim))
    bases = [rng.standard_normal((int(s), dim)) / np.sqrt(dim * s) for s in rng.integers(2, 6, clusters)]
    spread = rng.lognormal(0.0, 0.3, clusters)

    def draw(count: int) -> np.ndarray:
        which = rng.choice(clusters, count, p=weights / weights.sum())
        if not count:
            return np.zeros((0, dim), np.float32)
        out = np.stack([centres[c] / np.sqrt(dim) + spread[c] * rng.standard_normal(len(bases[c])) @ bases[c]
                        for c in which]) + rng.standard_normal((count, dim)) * 0.01
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)

    return draw(rows), draw(queries)


def npy_collection(folder: Path, vectors: np.ndarray) -> Path:
    with IndexWriter(folder, {"model": "m", "kind": "image", "dim": vectors.shape[1]}) as writer:
        writer.append([f"item{i}" for i in range(len(vectors))], vectors)
    return folder


def exact_top(vectors: np.ndarray, query: np.ndarray, k: int) -> list[str]:
    return [f"item{i}" for i in np.argsort(-(vectors @ (query / np.linalg.norm(query))), kind="stable")[:k]]


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return clustered(3000, queries=20)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf", "ivfpq"])
def test_each_kind_builds_and_searches(faiss, tmp_path, data, kind):
    vectors, queries = data
    folder = npy_collection(tmp_path, vectors)
    written = build(folder, kind=kind, memory="64MB")
    record = written["indexes"]["embedding"]
    assert record["kind"] == kind and (folder / "index.faiss").is_file() and not list(folder.glob("*.tmp"))
    assert record["file_bytes"] == (folder / "index.faiss").stat().st_size <= record["memory"]["estimated_bytes"]
    assert {"factory", "search", "recall@1", "recall@10", "build_seconds", "memory", "tuning"} <= set(record)
    assert json.loads((folder / "index.json").read_text()) == json.loads(json.dumps(written))
    index = open_index(folder)
    assert index.kind == kind and len(index) == 3000 and index.dim == DIM
    results = index.search(queries, k=5)
    assert len(results) == len(queries) and all(len(hits) == 5 for hits in results)
    for query, hits in zip(queries, results):
        ids = [item for item, _ in hits]
        rows = [int(item[4:]) for item in ids]
        cosines = vectors[rows] @ (query / np.linalg.norm(query))
        np.testing.assert_allclose([score for _, score in hits], cosines, atol=1e-5)  # exact, re-scored
        assert [score for _, score in hits] == sorted((score for _, score in hits), reverse=True)
    found = np.mean([len({i for i, _ in hits} & set(exact_top(vectors, q, 5))) / 5
                     for q, hits in zip(queries, results)])
    assert found >= 0.8, found
    assert index.search(queries[0], k=3) == results[0][:3]  # a 1-D query gives one list
    assert index.search(queries[0], k=3, exact=True) == [(i, pytest.approx(s, abs=1e-6)) for i, s in
                                                          zip(exact_top(vectors, queries[0], 3),
                                                              np.sort(vectors @ (queries[0] / np.linalg.norm(
                                                                  queries[0])))[::-1][:3])]


def test_recall_reaches_the_target_on_clustered_data(faiss, tmp_path):
    vectors, queries = clustered(6000, queries=100, seed=1)
    folder = npy_collection(tmp_path, vectors)
    record = build(folder, kind="ivf", recall=0.97)["indexes"]["embedding"]
    assert record["recall_reached"] and record["recall@10"] >= 0.97 and record["search"]["nprobe"] >= 1
    assert record["recall_queries"] == 500
    index = open_index(folder)
    results = index.search(queries, 10)
    fresh = np.mean([len({i for i, _ in hits} & set(exact_top(vectors, q, 10))) / 10
                     for q, hits in zip(queries, results)])
    assert fresh >= 0.93, fresh  # fresh queries, not in the collection: close to the tuned recall


def test_auto_choice_by_size_and_budget():
    gib = ann.parse_memory("1GB")
    assert (ann.parse_memory("4GB"), ann.parse_memory("512 MiB"), ann.parse_memory("1.5k"), ann.parse_memory(7)) == (
        4 << 30, 512 << 20, 1536, 7)
    for bad in ("lots", "0GB", "-1MB", ""):
        with pytest.raises(ValueError, match="memory="):
            ann.parse_memory(bad)
    assert ann.choose(5000, 512, 4 * gib).kind == "flat"
    assert ann.choose(100_000, 512, 4 * gib).factory == "IVF512,SQ8"
    plan = ann.choose(1_000_000, 512, gib)
    assert plan.factory == "IVF2048,SQ8" and plan.estimated_bytes <= gib
    small = ann.choose(1_000_000, 512, 200 << 20)
    assert small.kind == "ivfpq" and small.m == 64 and small.estimated_bytes <= 200 << 20
    assert ann.choose(1_000_000, 512, 40 << 20).m == 16
    # the budget wins over the row count: 5,000 rows would be flat, but flat does not fit 1 MiB
    tight = ann.choose(5000, 512, 1 << 20)
    assert tight.kind == "ivfpq" and tight.estimated_bytes <= 1 << 20
    assert ann.choose(500, 16, 4 * gib).kind == "flat" and ann.nlist_for(500) == 8
    with pytest.raises(ValueError, match="kind="):
        ann.choose(100, 16, gib, kind="lsh")


def test_budget_too_small_is_a_clear_error(tmp_path, data):
    folder = npy_collection(tmp_path, data[0])
    pytest.importorskip("faiss", reason="build needs faiss-cpu")
    with pytest.raises(ValueError, match="too small for any index of 3000 vectors.*Raise --memory"):
        build(folder, memory="2KB")
    with pytest.raises(ValueError, match="too small for --kind flat.*use --kind auto"):
        build(folder, memory="100KB", kind="flat")
    assert not (folder / "index.json").exists() and not (folder / "index.faiss").exists()


def test_wrong_dimension_names_both(faiss, tmp_path, data):
    folder = npy_collection(tmp_path, data[0])
    build(folder, kind="ivf")
    for exact in (False, True):
        with pytest.raises(ValueError, match=f"query has {DIM + 1} dimensions but the index has {DIM}"):
            open_index(folder).search(np.ones(DIM + 1), exact=exact)
    with pytest.raises(ValueError, match="zero"):
        open_index(folder).search(np.zeros(DIM))
    with pytest.raises(ValueError, match="k must be a positive integer"):
        open_index(folder).search(np.ones(DIM), k=0)


def test_empty_collection(tmp_path):
    IndexWriter(tmp_path, {"model": "m", "kind": "image", "dim": 4}).close()
    assert open_index(tmp_path).search(np.ones(4), 3) == [] and open_index(tmp_path).search(np.ones((2, 4))) == [[], []]
    with pytest.raises(ValueError, match="nothing to index"):
        build(tmp_path)
    with pytest.raises(ValueError, match="empty"):
        ann.choose(0, 4, 1 << 30)


def test_damaged_or_truncated_index_is_a_clear_error(faiss, tmp_path, data):
    folder = npy_collection(tmp_path, data[0])
    build(folder, kind="ivf")
    path = folder / "index.faiss"
    good = path.read_bytes()
    damaged = [good[:len(good) // 2], good[:100], b"", good[:5000] + bytes(len(good) - 5000),
               good[:-64] + b"\xff" * 64]
    for content in damaged:
        path.write_bytes(content)
        for mmap in (False, True):
            with pytest.raises(ValueError, match="damaged or truncated"):
                open_index(folder, mmap=mmap).search(data[1][0])
    path.write_bytes(good)
    assert len(open_index(folder).search(data[1][0])) == 10
    (folder / "index.json").write_text("{not json")
    with pytest.raises(ValueError, match="index.json is missing or damaged"):
        open_index(folder)
    path.unlink()
    (folder / "index.json").write_text("{not json")
    with pytest.raises(ValueError, match="missing or damaged"):
        open_index(folder)


def test_faiss_reading_garbage_is_an_error_not_a_crash(faiss, tmp_path, data):
    """A file that matches index.json's size and CRC but that FAISS cannot parse (written by a foreign tool)."""
    folder = npy_collection(tmp_path, data[0])
    build(folder, kind="ivf")
    garbage = np.random.default_rng(0).bytes(4096)
    (folder / "index.faiss").write_bytes(garbage)
    meta = json.loads((folder / "index.json").read_text())
    record = meta["indexes"]["embedding"]
    import zlib

    record.update(file_bytes=4096, crc32=zlib.crc32(garbage), head_crc32=zlib.crc32(garbage))
    (folder / "index.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="damaged or truncated"):
        open_index(folder)


def test_stale_index_is_refused(faiss, tmp_path, data):
    folder = npy_collection(tmp_path, data[0][:2000])
    build(folder, kind="flat")
    with IndexWriter(folder, {"model": "m", "kind": "image", "dim": DIM}) as writer:
        writer.append(["late"], data[0][2000:2001])
    with pytest.raises(ValueError, match="built for 2000 rows but the collection now has 2001"):
        open_index(folder)
    build(folder, kind="flat")
    assert open_index(folder).search(data[0][2000], k=1)[0][0] == "late"


def test_interrupted_build_leaves_the_previous_index(faiss, tmp_path, data, monkeypatch):
    from clipfast import index as index_module

    folder = npy_collection(tmp_path, data[0])
    build(folder, kind="ivf")
    before = {name: (folder / name).read_bytes() for name in ("index.faiss", "index.json")}
    expected = open_index(folder).search(data[1][:3])

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    # killed while adding vectors, then after the new file was written but before anything was renamed
    for target, name in ((ann, "add"), (index_module, "_commit")):
        with monkeypatch.context() as patch:
            patch.setattr(target, name, interrupted)
            with pytest.raises(KeyboardInterrupt):
                build(folder, kind="flat")
        assert {name: (folder / name).read_bytes() for name in before} == before
        assert open_index(folder).kind == "ivf" and open_index(folder).search(data[1][:3]) == expected
    assert (folder / "index.faiss.tmp").exists()  # left by the second interruption
    (folder / "index.json.tmp").write_text("half")
    build(folder, kind="hnsw")  # the next build removes the leftovers
    assert not list(folder.glob("*.tmp")) and open_index(folder).kind == "hnsw"


def test_a_kill_between_the_renames_is_rolled_forward(faiss, tmp_path, data, monkeypatch):
    from clipfast import index as index_module

    folder = npy_collection(tmp_path, data[0])
    build(folder, kind="ivf")
    real_replace = os.replace

    def replace(source, target):
        if Path(target).name == "index.json":
            raise KeyboardInterrupt  # the new index.faiss is in place, index.json still the old one
        real_replace(source, target)

    monkeypatch.setattr(index_module.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        build(folder, kind="flat")
    monkeypatch.setattr(index_module.os, "replace", real_replace)
    assert json.loads((folder / "index.json").read_text())["indexes"]["embedding"]["kind"] == "ivf"
    index = open_index(folder)
    assert index.kind == "flat" and len(index.search(data[1][0])) == 10  # the reader takes the new record
    build(folder, kind="ivf")
    assert not list(folder.glob("*.tmp")) and open_index(folder).kind == "ivf"


def _parquet_collection(folder: Path, image: np.ndarray, text: np.ndarray) -> None:
    """Bulk embedding's layout: two part files, an image that failed (null image embedding), a caption column."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    folder.mkdir()
    rows = len(image)

    def column(values: np.ndarray, nulls: list[int]):
        mask = np.zeros(len(values), bool)
        mask[nulls] = True
        flat = pa.array(values.reshape(-1))
        return pa.FixedSizeListArray.from_arrays(flat, DIM, mask=pa.array(mask))

    half = rows // 2
    for part, (lo, hi) in enumerate(((0, half), (half, rows))):
        nulls = [3 - lo] if lo <= 3 < hi else []
        table = pa.table({"id": [f"item{i}" for i in range(lo, hi)],
                          "image_embedding": column(image[lo:hi], nulls),
                          "text_embedding": column(text[lo:hi], []),
                          "caption": [f"caption {i}" for i in range(lo, hi)],
                          "url": [f"http://example.com/{i}.jpg" for i in range(lo, hi)]})
        pq.write_table(table, folder / f"part-{part:05d}.parquet", row_group_size=500)
    (folder / "_clipfast.json").write_text(json.dumps({
        "model": "m", "dim": DIM, "dtype": "float32", "sources": ["table.parquet"], "counts": {"embedded": rows},
        "columns": ["image_embedding", "text_embedding"], "format": "parquet"}))


def test_parquet_layout_with_two_embedding_columns(faiss, tmp_path):
    (image, queries), (text, _) = clustered(3000, queries=5, seed=2), clustered(3000, seed=3)
    folder = tmp_path / "bulk"
    _parquet_collection(folder, image, text)
    exact = open_index(folder)  # before any FAISS index: exact search over the default column
    assert exact.kind == "exact" and exact.column == "image_embedding" and len(exact) == 2999
    data = build(folder, kind="ivf", memory="16MB")
    assert set(data["indexes"]) == {"image_embedding", "text_embedding"}
    assert (folder / "index.image_embedding.faiss").is_file() and (folder / "index.text_embedding.faiss").is_file()
    assert sum(r["memory"]["budget_bytes"] for r in data["indexes"].values()) <= 16 << 20
    images, texts = open_index(folder), open_index(folder, column="text_embedding")
    assert images.kind == texts.kind == "ivf" and (len(images), len(texts)) == (2999, 3000)
    hits = images.search_records(queries[0], k=4)
    assert [set(hit) for hit in hits] == [{"id", "score", "row", "caption", "url"}] * 4
    for hit in hits:
        assert hit["caption"] == f"caption {hit['row']}" and hit["id"] == f"item{hit['row']}"
        assert hit["score"] == pytest.approx(float(image[hit["row"]] @ queries[0] / np.linalg.norm(queries[0])),
                                             abs=1e-5)
    assert [hit["id"] for hit in hits] == [i for i, _ in images.search(queries[0], k=4, exact=True)]
    top = texts.search(text[2000], k=1)[0]
    assert top[0] == "item2000" and top[1] == pytest.approx(1.0, abs=1e-5)
    assert images.row_of("item3") is None and texts.row_of("item3") == 3 and images.row_of("item2500") == 2500
    assert images.record(3) == {"id": "item3", "caption": "caption 3", "url": "http://example.com/3.jpg"}
    assert images.search(image[3], k=1)[0][0] != "item3"  # the failed image is not searchable
    np.testing.assert_array_equal(images.vector(2500), image[2500])
    np.testing.assert_array_equal(texts.vector(3), text[3])
    with pytest.raises(ValueError, match="row 3 has no vector"):
        images.vector(3)
    with pytest.raises(ValueError, match="not an embedding column"):
        open_index(folder, column="caption")


def test_cli_index_then_search_and_exact(faiss, tmp_path, capsys, monkeypatch):
    pytest.importorskip("torch", reason="the CLI embeds its text query with a tiny model")
    monkeypatch.setenv("HF_HUB_VERBOSITY", "error")  # main() sets it; the test must leave the environment as found
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from helpers.tokenizer_files import write_tiny_clip

    from clipfast.cli import main

    write_tiny_clip(tmp_path / "model")
    texts = [f"a photo of thing number {i}" for i in range(300)]
    (tmp_path / "texts.txt").write_text("\n".join(texts))
    assert main(["embed", "--text-file", str(tmp_path / "texts.txt"), "--out", str(tmp_path / "t.index"),
                 "--model", str(tmp_path / "model")]) == 0
    capsys.readouterr()
    assert main(["index", str(tmp_path / "t.index"), "--kind", "hnsw", "--memory", "10MB"]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert summary["factory"] == "HNSW32" and summary["rows"] == 300 and "clipfast: HNSW32 for 300 vectors" in err
    outputs = []
    for extra in ([], ["--exact"]):
        assert main(["search", str(tmp_path / "t.index"), texts[7], "--json", "--top-k", "3", *extra]) == 0
        outputs.append([json.loads(line) for line in capsys.readouterr().out.splitlines()])
    assert outputs[0][0]["id"] == texts[7] and outputs[0][0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert [hit["id"] for hit in outputs[0]] == [hit["id"] for hit in outputs[1]]
    assert main(["index", str(tmp_path / "t.index"), "--memory", "1KB"]) == 1
    assert "too small" in capsys.readouterr().err


def test_memory_mapped_open(faiss, tmp_path, data):
    folder = npy_collection(tmp_path, data[0])
    build(folder, kind="ivf")
    mapped, loaded = open_index(folder, mmap=True), open_index(folder)
    assert mapped.kind == "ivf" and mapped.search(data[1]) == loaded.search(data[1])
    assert mapped.search_records(data[1][0], k=2)[0]["id"] == loaded.search(data[1][0], k=1)[0][0]
    np.testing.assert_array_equal(mapped.vector(5), data[0][5])
    with pytest.raises(ValueError, match="no vector"):
        mapped.vector(len(data[0]))
