"""Bulk embedding without Ray (clipfast.bulk): sources (files, folders, globs, Parquet/CSV tables, webdataset
shards, URLs on loopback), the Parquet part files and their metadata, resume after a kill, and the numbers against
the single-process index layout (and transformers, where installed).

The tiny model is written with clipfast alone (its bundled vocabulary), so these tests need only pyarrow.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pa = pytest.importorskip("pyarrow", reason="Parquet output needs pyarrow (pip install -e '.[test]')")
import pyarrow.parquet as pq  # noqa: E402

from clipfast import bulk  # noqa: E402
from clipfast.errors import InputError  # noqa: E402
from helpers import needs, reference  # noqa: E402
from helpers.loopback import serve  # noqa: E402


def write_tiny_model(folder: Path) -> Path:
    """A tiny random CLIP (32 px images, projection 16) with clipfast's own tokenizer files and preprocessing."""
    import torch

    import clipfast
    from clipfast.tokenization_fast import CLIPTokenizerFast

    torch.manual_seed(0)
    config = clipfast.CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                           num_attention_heads=4),
        projection_dim=16)
    clipfast.CLIPModel(config).save_pretrained(folder)
    CLIPTokenizerFast.from_openai_vocab(model_max_length=77).save_pretrained(folder)
    clipfast.CLIPImageProcessor(size={"shortest_edge": 32},
                                crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def jpeg(seed: int, size: tuple[int, int] = (48, 40)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_shard(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> Path:
    """A webdataset tar: each sample's members named KEY.EXT, in order."""
    with tarfile.open(path, "w") as tar:
        for key, files in samples:
            for ext, data in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """model/, imgs/ (5 images in two folders + a corrupt one), table.csv and table.parquet (paths relative to
    the table, a caption column, a missing file), shard-{0..1}.tar (txt and json captions, a sample without
    an image, a truncated JPEG)."""
    root = tmp_path_factory.mktemp("bulk")
    write_tiny_model(root / "model")
    for folder, count, seed in (("imgs", 3, 0), ("imgs/sub", 2, 10)):
        (root / folder).mkdir(parents=True)
        for i in range(count):
            (root / folder / f"img{i}.jpg").write_bytes(jpeg(seed + i))
    (root / "imgs" / "broken.jpg").write_bytes(jpeg(99)[:120])
    rows = {"path": ["imgs/img0.jpg", "imgs/missing.jpg", "imgs/sub/img1.jpg"],
            "caption": ["a cat", "a dog", None], "rank": [3, 1, 2]}
    pq.write_table(pa.table(rows), root / "table.parquet")
    import pyarrow.csv

    pyarrow.csv.write_csv(pa.table(rows), root / "table.csv")
    write_shard(root / "shard-0.tar", [("s000", {"jpg": jpeg(20), "txt": b"first caption"}),
                                       ("s001", {"png": _png(21), "json": b'{"caption": "second"}'}),
                                       ("s002", {"txt": b"no image here"})])
    write_shard(root / "shard-1.tar", [("s100", {"jpg": jpeg(22)[:150], "json": b'{"text": "cut"}'}),
                                       ("s101", {"jpeg": jpeg(23)})])
    return root


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(jpeg(seed))).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def clip(data):
    return bulk.load_model(str(data / "model"), device="cpu")


@pytest.fixture
def cwd(data, monkeypatch):
    monkeypatch.chdir(data)
    return data


def _read(out: Path) -> "pa.Table":
    return pa.concat_tables([pq.read_table(path) for path in sorted(out.glob("part-*.parquet"))],
                            promote_options="default")


def _vectors(column: "pa.ChunkedArray") -> list[np.ndarray | None]:
    return [None if v is None else np.asarray(v, dtype=np.float32) for v in column.to_pylist()]


# ---------------------------------------------------------------------------------------------------------------
# sources


def test_expand_braces():
    assert bulk.expand_braces("s-{000..002}.tar") == ["s-000.tar", "s-001.tar", "s-002.tar"]
    assert bulk.expand_braces("{a,b}/x-{8..10}.tar") == ["a/x-8.tar", "a/x-9.tar", "a/x-10.tar", "b/x-8.tar",
                                                        "b/x-9.tar", "b/x-10.tar"]
    assert bulk.expand_braces("plain.tar") == ["plain.tar"]
    assert bulk.expand_braces("{x}.tar") == ["{x}.tar"]


def test_plan_files_folders_globs(cwd):
    plan = bulk.plan_sources(["imgs", "imgs/sub/*.jpg"], partition_size=2)
    ids = [i for part in plan.partitions for i in part.ids]
    # the folder as given, recursively, sorted; a file found twice once
    assert ids == [os.path.join("imgs", n) for n in ("broken.jpg", "img0.jpg", "img1.jpg", "img2.jpg")] + [
        os.path.join("imgs", "sub", n) for n in ("img0.jpg", "img1.jpg")]
    assert [len(p.ids) for p in plan.partitions] == [2, 2, 2] and plan.columns == ["image_embedding"]
    assert all(os.path.isabs(p) for part in plan.partitions for p in part.paths)
    with pytest.raises(InputError, match="nothing.jpg"):
        bulk.plan_sources(["imgs", "nothing.jpg"])


def test_plan_tables_and_shards(cwd):
    plan = bulk.plan_sources(["table.parquet", "shard-{0..1}.tar"], text_column="caption", partition_size=2)
    kinds = [(p.kind, p.offset, p.length, p.image_column, p.id_column) for p in plan.partitions]
    assert kinds == [("table", 0, 2, "path", "path"), ("table", 2, 1, "path", "path"),
                     ("shard", 0, 0, None, None), ("shard", 0, 0, None, None)]
    assert plan.columns == ["image_embedding", "text_embedding"]
    with pytest.raises(InputError, match="--image-column 'nope'"):
        bulk.plan_sources(["table.csv"], image_column="nope")
    with pytest.raises(InputError, match="has none of the columns"):
        pq.write_table(pa.table({"x": [1]}), cwd / "odd.parquet")
        bulk.plan_sources(["odd.parquet"])


# ---------------------------------------------------------------------------------------------------------------
# output


@pytest.fixture(scope="module")
def mixed(data, tmp_path_factory):
    """One single-process run over every source kind, from the data folder."""
    out = tmp_path_factory.mktemp("mixed") / "out"
    with contextlib.chdir(data):  # sources as a user names them, relative to where the command runs
        plan = bulk.plan_sources(["imgs", "table.csv", "shard-{0..1}.tar"], text_column="caption",
                                 partition_size=2)
        counts = bulk.embed_local(plan, str(out), "model", device="cpu", batch_size=2, progress=False)
    return out, counts


def test_output_layout_and_metadata(mixed, data):
    out, counts = mixed
    names = sorted(os.listdir(out))
    assert [n for n in names if n.startswith("part-")] == [f"part-{i:06d}.parquet" for i in range(7)]
    assert not [n for n in names if "tmp" in n]
    meta = json.loads((out / "_clipfast.json").read_text())
    assert meta["format"] == "parquet" and meta["dim"] == 16 and meta["dtype"] == "float32"
    assert meta["model"] == str(data / "model") and meta["status"] == "complete"
    assert meta["columns"] == ["image_embedding", "text_embedding"]
    assert meta["sources"] == ["imgs", "table.csv", "shard-{0..1}.tar"]
    # broken.jpg, missing.jpg, the sample without an image, the truncated JPEG
    assert counts == meta["counts"] == {"partitions": 7, "rows": 13, "embedded": 10, "failed": 4}
    errors = pq.read_table(out / "_errors.parquet").to_pylist()
    assert sorted(e["id"] for e in errors) == sorted([os.path.join("imgs", "broken.jpg"), "imgs/missing.jpg",
                                                       "s002", "s100"])
    assert all(e["source"] and e["reason"] for e in errors)
    table = _read(out)
    assert table.schema.field("id").type == pa.string()
    assert table.schema.field("image_embedding").type == pa.list_(pa.float32(), 16)
    vectors = [v for v in _vectors(table.column("image_embedding")) + _vectors(table.column("text_embedding"))
               if v is not None]
    np.testing.assert_allclose([np.linalg.norm(v) for v in vectors], 1.0, atol=1e-5)


def test_rows_keep_text_when_image_fails(mixed):
    table = _read(mixed[0]).to_pylist()
    rows = {row["id"]: row for row in table}  # the table names two of the files again: its rows come later
    missing = rows["imgs/missing.jpg"]  # a table row: its text is kept, its image is null
    assert missing["image_embedding"] is None and missing["text_embedding"] is not None
    assert missing["caption"] == "a dog" and missing["rank"] == 1 and missing["path"] == "imgs/missing.jpg"
    assert os.path.join("imgs", "broken.jpg") not in rows  # a file without text: left out, listed in errors
    assert rows["imgs/sub/img1.jpg"]["text_embedding"] is None  # no caption
    assert rows["s001"]["caption"] == "second" and rows["s000"]["caption"] == "first caption"
    assert rows["s100"]["image_embedding"] is None and rows["s100"]["caption"] == "cut"
    assert rows["s101"]["shard"] == "shard-1.tar"


@pytest.mark.parametrize("partition_size", [1, 4])
def test_same_numbers_as_single_process_index(data, tmp_path, partition_size, monkeypatch):
    """Whatever the partitioning, equal to `clipfast embed` writing the index folder (within 1e-5)."""
    from clipfast.cli import main
    from clipfast.index import open_index

    monkeypatch.chdir(data)
    monkeypatch.setenv("HF_HUB_VERBOSITY", "error")  # what main() sets
    assert main(["embed", "imgs", "--out", str(tmp_path / "index"), "--model", "model", "--device", "cpu"]) == 1
    index = open_index(tmp_path / "index")
    plan = bulk.plan_sources(["imgs"], partition_size=partition_size)
    bulk.embed_local(plan, str(tmp_path / "parquet"), "model", device="cpu", batch_size=3, progress=False)
    table = _read(tmp_path / "parquet")
    assert table.column("id").to_pylist() == index.ids
    np.testing.assert_allclose(np.stack(_vectors(table.column("image_embedding"))), index.vectors, atol=1e-5)


@needs("transformers")
def test_parity_with_transformers(mixed, data):
    transformers = reference("transformers")
    import torch

    model = transformers.CLIPModel.from_pretrained(data / "model").eval()
    processor = transformers.CLIPImageProcessor.from_pretrained(data / "model")
    tokenizer = transformers.CLIPTokenizerFast.from_pretrained(data / "model")
    rows = [r for r in _read(mixed[0]).to_pylist() if r["id"].startswith("imgs")]
    with torch.no_grad():
        for row in rows:
            if row["image_embedding"] is not None:
                pixels = processor(images=Image.open(data / row["id"]).convert("RGB"),
                                   return_tensors="pt")["pixel_values"]
                expected = model.get_image_features(pixel_values=pixels)[0]
                np.testing.assert_allclose(row["image_embedding"], (expected / expected.norm()).numpy(), atol=1e-4)
            if row["text_embedding"] is not None:
                expected = model.get_text_features(**tokenizer([row["caption"]], return_tensors="pt"))[0]
                np.testing.assert_allclose(row["text_embedding"], (expected / expected.norm()).numpy(), atol=1e-4)


def test_url_table_on_loopback(data, tmp_path, clip):
    """http(s) URLs: 200s embedded, a 404, a truncated body and a text page recorded as errors."""
    good = jpeg(30)
    routes = {"/a.jpg": (200, "image/jpeg", good), "/cut.jpg": (200, "image/jpeg", good[:200]),
              "/page": (200, "text/html", b"<html></html>")}
    with serve(routes) as base:
        urls = [f"{base}/a.jpg", f"{base}/gone.jpg", f"{base}/cut.jpg", f"{base}/page"]
        pq.write_table(pa.table({"url": urls, "id": ["a", "gone", "cut", "page"]}), tmp_path / "urls.parquet")
        plan = bulk.plan_sources([str(tmp_path / "urls.parquet")])
        counts = bulk.embed_local(plan, str(tmp_path / "out"), str(data / "model"), device="cpu", progress=False)
    assert counts["embedded"] == 1 and counts["failed"] == 3
    table = _read(tmp_path / "out")
    assert table.column("id").to_pylist() == ["a"] and table.column("url").to_pylist() == [urls[0]]
    expected = clip.image_embeddings([Image.open(io.BytesIO(good)).convert("RGB")]).numpy()
    np.testing.assert_allclose(_vectors(table.column("image_embedding"))[0], expected[0], atol=1e-5)
    reasons = {e["id"]: e["reason"] for e in pq.read_table(tmp_path / "out" / "_errors.parquet").to_pylist()}
    assert "404" in reasons["gone"] and "truncated" in reasons["cut"] and "not return an image" in reasons["page"]


# ---------------------------------------------------------------------------------------------------------------
# resume


def _state(out: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("part-*.parquet")}


def test_resume_redoes_only_missing_partitions(data, tmp_path, monkeypatch):
    monkeypatch.chdir(data)
    out = tmp_path / "out"
    plan = bulk.plan_sources(["imgs", "shard-{0..1}.tar"], text_column="caption", partition_size=2)
    first = bulk.embed_local(plan, str(out), "model", device="cpu", progress=False)
    before = _state(out)
    bulk.embed_local(plan, str(out), "model", device="cpu", progress=False)  # finished: nothing changes
    assert _state(out) == before
    # a kill: one part file never renamed (its temporary file left behind), _clipfast.json still "running"
    (out / "part-000001.parquet").rename(out / ".tmp-part-000001.parquet.dead")
    (out / "part-000003.parquet").unlink()
    meta = json.loads((out / "_clipfast.json").read_text())
    (out / "_clipfast.json").write_text(json.dumps(dict(meta, status="running", counts=None)))
    again = bulk.embed_local(plan, str(out), "model", device="cpu", progress=False)
    after = _state(out)
    assert again == first and sorted(after) == sorted(before)
    assert {k: v for k, v in after.items() if k not in ("part-000001.parquet", "part-000003.parquet")} == {
        k: v for k, v in before.items() if k not in ("part-000001.parquet", "part-000003.parquet")}
    assert not list(out.glob(".tmp-*"))
    ids = _read(out).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == first["rows"]


def test_resume_refuses_other_sources_or_model(data, tmp_path, monkeypatch):
    monkeypatch.chdir(data)
    out = str(tmp_path / "out")
    bulk.embed_local(bulk.plan_sources(["imgs"], partition_size=2), out, "model", device="cpu", progress=False)
    with pytest.raises(InputError, match="other sources or options"):
        bulk.embed_local(bulk.plan_sources(["imgs"], partition_size=3), out, "model", device="cpu", progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("not ours")
    with pytest.raises(InputError, match="not a clipfast Parquet output"):
        bulk.embed_local(bulk.plan_sources(["imgs"]), str(tmp_path / "other"), "model", device="cpu",
                         progress=False)


def test_cli_summary_and_exit_code(data, tmp_path, monkeypatch, capsys):
    from clipfast.cli import main

    monkeypatch.chdir(data)
    monkeypatch.setenv("HF_HUB_VERBOSITY", "error")  # what main() sets
    code = main(["embed", "table.parquet", "--out", str(tmp_path / "out"), "--model", "model", "--device", "cpu",
                 "--text-column", "caption"])
    err = capsys.readouterr().err
    assert code == 1 and "2 embedded, 1 failed" in err and "_errors.parquet" in err
    assert "done, 1 failed" in err  # the progress line
    code = main(["embed", "imgs/sub", "--out", str(tmp_path / "ok"), "--model", "model", "--format", "parquet"])
    assert code == 0 and "2 embedded, 0 failed" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="2"):
        main(["embed", "table.parquet", "--out", str(tmp_path / "x"), "--workers", "2"])
    assert "need --engine ray" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_ray_actor_resources_without_ray():
    """How --workers shares a cluster out (clipfast.ray imports without Ray; only its functions need it)."""
    from clipfast.ray import actor_resources

    assert actor_resources({"CPU": 64.0, "GPU": 8.0}, 1, None, None) == (8, 8, 1)  # one actor per GPU
    assert actor_resources({"CPU": 2.0}, 1, None, None) == (1, 2, 0)  # CPU only: one actor with every core
    assert actor_resources({"CPU": 32.0}, 4, None, None) == (4, 8, 0)  # one per node
    assert actor_resources({"CPU": 8.0}, 1, 2, 1) == (2, 1, 0)
    with pytest.raises(InputError, match="more model actors than the cluster has GPUs"):
        actor_resources({"CPU": 8.0, "GPU": 1.0}, 1, 2, None)
    with pytest.raises(InputError, match="need 8 CPUs"):
        actor_resources({"CPU": 2.0}, 1, 2, 4)
