"""The ``clipfast`` command, run as a subprocess (``python -m clipfast``) on a tiny random-weight checkpoint folder
and a folder of generated images that also holds a corrupt JPEG, a text file named .png and a .txt file.

Subprocesses that do not depend on each other run concurrently, to keep the module fast.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import clipfast
import helpers
from clipfast.index import IDS, VECTORS, IndexWriter, open_index, top_k

LABELS = ["cat", "dog", "a red car"]
TEXTS = ["a cat", "a dog on a beach", "a photo of a red car"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """model/ (tiny CLIP + real tokenizer files), imgs/ (6 images in two folders + 3 bad files), many/ (60)."""
    from helpers.tokenizer_files import write_tiny_clip

    root = tmp_path_factory.mktemp("cli")
    write_tiny_clip(root / "model")
    rng = np.random.default_rng(0)
    for folder, count in (("imgs", 3), ("imgs/sub", 3), ("many", 60)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (40 + i, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / folder / f"img{i:02d}.{'png' if i % 2 else 'jpg'}")
    (root / "imgs" / "corrupt.jpg").write_bytes((root / "imgs" / "img00.jpg").read_bytes()[:100])
    (root / "imgs" / "sub" / "fake.png").write_text("not an image")
    (root / "imgs" / "notes.txt").write_text("not an image either, and not picked up from a folder")
    (root / "empty").mkdir()
    return root


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLIPFAST_", "HF_HUB_OFFLINE"))}
    # one torch thread per process: concurrent subprocesses on a small machine, and no network ever
    return {**env, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8", **extra}


def _start(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "clipfast", *args], cwd=cwd, env=env or _env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _run_all(cwd: Path, *commands: list[str]) -> list[subprocess.CompletedProcess]:
    """Run several commands concurrently; their results in order."""
    procs = [_start(cwd, *command) for command in commands]
    results = []
    for command, proc in zip(commands, procs):
        out, err = proc.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(command, proc.returncode, out, err))
    return results


@pytest.fixture(scope="module")
def clip(workdir):
    return clipfast.pipeline(model=str(workdir / "model"), device="cpu")


@pytest.fixture(scope="module")
def runs(workdir):
    """classify, embed (images, texts) and info, run once for the tests below."""
    text_file = workdir / "texts.txt"
    text_file.write_text(f"{TEXTS[2]}\n\n{TEXTS[0]}\n")  # a blank line, and a repeat of a --text
    names = ["classify", "embed_images", "embed_texts", "info"]
    results = _run_all(workdir,
                       ["classify", "imgs", "--labels", *LABELS, "--top-k", "2", "--json", "--model", "model"],
                       ["embed", "imgs", "--out", "img.index", "--model", "model", "--batch-size", "2"],
                       ["embed", "--text", *TEXTS[:2], "--text-file", "texts.txt", "--out", "txt.index",
                        "--model", "model"],
                       ["info", "model", "--json"])
    return dict(zip(names, results))


def _image_ids(workdir: Path) -> list[str]:
    return [os.path.join("imgs", name) for name in ("img00.jpg", "img01.png", "img02.jpg")] + [
        os.path.join("imgs", "sub", name) for name in ("img00.jpg", "img01.png", "img02.jpg")]


def _check_skips(result: subprocess.CompletedProcess) -> None:
    """Exit code 1, one warning per bad file, and a closing count."""
    assert result.returncode == 1, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("clipfast: warning:")]
    assert len(warnings) == 2 and "corrupt.jpg" in warnings[0] + warnings[1] and "fake.png" in "".join(warnings)
    assert "2 of 8 inputs skipped" in result.stderr


def test_classify_matches_pipeline(workdir, runs, clip):
    result = runs["classify"]
    _check_skips(result)
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["image"] for row in rows] == _image_ids(workdir)
    expected = clip.classify([str(workdir / row["image"]) for row in rows], LABELS, top_k=2)
    for row, ranked in zip(rows, expected):
        assert [r["label"] for r in row["results"]] == [r["label"] for r in ranked]
        np.testing.assert_allclose([r["score"] for r in row["results"]], [r["score"] for r in ranked], atol=1e-5)


@torch.inference_mode()
def test_embed_images_match_get_image_features(workdir, runs, clip):
    _check_skips(runs["embed_images"])
    index = open_index(workdir / "img.index")
    assert index.ids == _image_ids(workdir) and index.meta["model"] == str(workdir / "model")
    images = [Image.open(workdir / i).convert("RGB") for i in index.ids]
    pixels = clip.image_processor(images=images, return_tensors="pt")["pixel_values"]
    expected = clip.model.get_image_features(pixel_values=pixels)
    expected = expected / expected.norm(dim=-1, keepdim=True)
    np.testing.assert_allclose(index.vectors, expected.numpy(), atol=1e-5)


@torch.inference_mode()
def test_embed_texts_match_get_text_features(workdir, runs, clip):
    assert runs["embed_texts"].returncode == 0, runs["embed_texts"].stderr
    index = open_index(workdir / "txt.index")
    assert index.ids == TEXTS and index.meta["kind"] == "text"
    for text, vector in zip(TEXTS, index.vectors):
        expected = clip.model.get_text_features(**clip.tokenizer([text], return_tensors="pt"))[0]
        np.testing.assert_allclose(vector, (expected / expected.norm()).numpy(), atol=1e-5)


def test_search_finds_nearest_first(workdir, runs):
    assert runs["embed_images"].returncode == 1 and runs["embed_texts"].returncode == 0
    query = os.path.join("imgs", "sub", "img01.png")
    by_image, by_text, as_json = _run_all(workdir, ["search", "img.index", "--image", query, "--top-k", "3"],
                                          ["search", "txt.index", TEXTS[1]],
                                          ["search", "img.index", "anything", "--top-k", "100", "--json"])
    assert by_image.returncode == 0, by_image.stderr
    lines = by_image.stdout.splitlines()
    assert len(lines) == 3 and lines[0].split(None, 1) == ["1.0000", query]
    assert by_text.stdout.splitlines()[0].split(None, 1) == ["1.0000", TEXTS[1]]  # model taken from meta.json
    hits = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert sorted(hit["id"] for hit in hits) == sorted(_image_ids(workdir))
    assert [hit["score"] for hit in hits] == sorted((hit["score"] for hit in hits), reverse=True)


def test_info(workdir, runs):
    assert runs["info"].returncode == 0, runs["info"].stderr
    facts = json.loads(runs["info"].stdout)
    reference = helpers.reference("transformers").CLIPModel.from_pretrained(workdir / "model")
    assert facts["parameters"] == sum(p.numel() for p in reference.parameters())
    assert facts["architecture"] == "CLIPModel" and facts["dtype"] == "float32" and facts["embedding dim"] == 16
    assert str(workdir / "model") in facts["loaded from"] and "model.safetensors" in facts["files"]


def test_info_takes_model_as_an_option_and_convert_takes_debug(workdir, capsys, tmp_path):
    from clipfast.cli import main

    assert main(["info", "--model", str(workdir / "model"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["architecture"] == "CLIPModel"
    assert main(["convert", str(workdir / "model"), str(tmp_path / "out"), "--debug"]) == 0
    assert (tmp_path / "out" / "model.safetensors").exists()


def test_killed_embed_resumes_without_loss_or_duplicates(workdir, clip):
    out = workdir / "many.index"
    args = ["embed", "many", "--out", "many.index", "--model", "model", "--batch-size", "1"]
    proc = _start(workdir, *args)
    ids_file = out / IDS
    while proc.poll() is None and not (ids_file.exists() and ids_file.read_bytes().count(b"\n") >= 2):
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    done = ids_file.read_bytes().count(b"\n")
    assert 2 <= done < 60, "the run should have been killed part-way"
    resumed = _run_all(workdir, args)[0]
    assert resumed.returncode == 0, resumed.stderr
    assert f"60 embeddings in many.index ({60 - done} new)" in resumed.stderr
    index = open_index(out)
    expected_ids = sorted(os.path.join("many", name) for name in os.listdir(workdir / "many"))
    assert index.ids == expected_ids and np.load(out / VECTORS).shape == (60, 16)
    clean = clip.image_embeddings([Image.open(workdir / i).convert("RGB") for i in expected_ids])
    np.testing.assert_allclose(index.vectors, clean.numpy(), atol=1e-5)


def test_errors_are_one_line(workdir):
    offline = _env(HF_HOME=str(workdir / "fresh-hf-home"))
    image = os.path.join("imgs", "img00.jpg")
    commands = [["classify", image, "--labels", "cat", "--model", "no/such/folder"],
                ["classify", "empty", "nothing*.jpg", "--labels", "cat", "dog", "--model", "model"],
                ["classify", image, "--labels"],
                ["search", "imgs", "a cat"],
                ["embed", image, "--text", "a cat", "--out", "x.index"]]
    procs = [_start(workdir, *command) for command in commands] + [
        _start(workdir, "classify", image, "--labels", "cat", "dog", env=offline)]
    commands += [["classify", image, "--labels", "cat", "--template", "a {} photo of {style}", "--model", "model"],
                 ["classify", image, "--labels", "cat", "--template", "{} next to {}", "--model", "model"],
                 ["classify", image, "--labels", "cat", "--top-k", "0", "--model", "model"]]
    procs = procs[:-1] + [_start(workdir, *command) for command in commands[-3:]] + procs[-1:]
    expected = [(1, "does not exist"), (1, "No images found"), (2, "--labels"), (1, "not a clipfast index"),
                (2, "not both"), (2, "--template"), (2, "--template"), (2, "--top-k must be at least 1"),
                (1, "offline")]
    for proc, (code, words) in zip(procs, expected):
        out, err = proc.communicate(timeout=120)
        lines = err.strip().splitlines()
        assert proc.returncode == code and len(lines) == 1 and words in lines[0], err
        assert lines[0].startswith(("clipfast: error:", "clipfast classify: error:", "clipfast embed: error:"))
        assert "Traceback" not in err and out == ""


def test_help_everywhere_without_torch(workdir):
    code = ("import sys\nfrom clipfast.cli import main\n"
            "for cmd in ([], ['classify'], ['embed'], ['search'], ['info']):\n"
            "    try:\n        main([*cmd, '--help'])\n    except SystemExit as exc:\n        assert exc.code == 0\n"
            "print('torch' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env())
    assert result.returncode == 0 and result.stdout.strip().endswith("False"), result.stderr
    for words in ("--labels", "--top-k", "--out", "--text-file", "--image", "resumable", "CLIPFAST_MODEL"):
        assert words in result.stdout


def test_index_recovers_from_torn_writes(tmp_path):
    """A kill can leave vectors without ids and a half-written id line; reopening cuts both back."""
    vectors = np.eye(4, dtype=np.float32)
    with IndexWriter(tmp_path, {"model": "m", "kind": "text", "dim": 4}) as writer:
        writer.append(["a", "b"], vectors[:2])
    with open(tmp_path / VECTORS, "ab") as handle:
        handle.write(vectors[2:].tobytes())  # vectors of a chunk whose ids never landed
    with open(tmp_path / IDS, "ab") as handle:
        handle.write(b'{"id": "c"')  # a torn line
    with IndexWriter(tmp_path, {"model": "m", "kind": "text", "dim": 4}) as writer:
        assert writer.done == {"a", "b"}
        writer.append(["d"], vectors[3:])
    index = open_index(tmp_path)
    assert index.ids == ["a", "b", "d"] and np.load(tmp_path / VECTORS).shape == (3, 4)
    np.testing.assert_array_equal(index.vectors, vectors[[0, 1, 3]])
    with pytest.raises(ValueError, match="same --model"):
        IndexWriter(tmp_path, {"model": "other", "kind": "text", "dim": 4})
    with IndexWriter(tmp_path, {"model": "m", "kind": "text", "dim": 4}) as writer:  # the refusal let go of the lock
        assert writer.rows == 3


def test_index_killed_before_its_first_header(tmp_path):
    """embeddings.npy cut short before any row was committed: the next run starts over, readers see no rows."""
    meta = {"model": "m", "kind": "text", "dim": 4}
    IndexWriter(tmp_path, meta).close()
    for size in (0, 57):
        with open(tmp_path / VECTORS, "r+b") as handle:
            handle.truncate(size)
        assert open_index(tmp_path).ids == [] and open_index(tmp_path).search(np.ones(4), 3) == []
        with IndexWriter(tmp_path, meta) as writer:
            writer.append(["a"], np.eye(4, dtype=np.float32)[:1])
        assert open_index(tmp_path).ids == ["a"]
        (tmp_path / IDS).write_bytes(b"")


def test_index_ids_that_utf8_cannot_encode(tmp_path):
    """File names with undecodable bytes arrive as lone surrogates: stored escaped, read back the same."""
    odd = os.fsdecode(b"caf\xe9.jpg")
    with IndexWriter(tmp_path, {"model": "m", "kind": "image", "dim": 2}) as writer:
        writer.append([odd, "plain é.jpg"], np.eye(2, dtype=np.float32))
    assert open_index(tmp_path).ids == [odd, "plain é.jpg"]
    with IndexWriter(tmp_path, {"model": "m", "kind": "image", "dim": 2}) as writer:
        assert writer.done == {odd, "plain é.jpg"}


def test_index_rejects_bad_k_and_foreign_meta(tmp_path):
    with IndexWriter(tmp_path, {"model": "m", "kind": "text", "dim": 2}) as writer:
        writer.append(["a", "b"], np.eye(2, dtype=np.float32))
    for k in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            open_index(tmp_path).search(np.ones(2), k)
    (tmp_path / "meta.json").write_text('{"dim": 2}')
    with pytest.raises(ValueError, match="lacks"):
        open_index(tmp_path)


def test_top_k_is_exact_across_blocks():
    rng = np.random.default_rng(0)
    vectors, query = rng.standard_normal((1000, 8)).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    expected = np.argsort(-(vectors @ query))[:7]
    assert [row for row, _ in top_k(vectors, query, 7, block=64)] == expected.tolist()
    assert [row for row, _ in top_k(vectors, query, np.int64(2))] == expected[:2].tolist()
    assert len(top_k(vectors[:3], query, 10)) == 3


def test_parquet_export_round_trips(workdir, runs, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    from clipfast.index import write_parquet

    assert runs["embed_texts"].returncode == 0, runs["embed_texts"].stderr
    index = open_index(workdir / "txt.index")
    write_parquet(index, tmp_path / "texts.parquet")
    table = pq.read_table(tmp_path / "texts.parquet")
    assert table.column("id").to_pylist() == index.ids
    np.testing.assert_array_equal(np.array(table.column("embedding").to_pylist(), dtype=np.float32), index.vectors)
    assert json.loads(table.schema.metadata[b"clipfast"])["kind"] == "text"
