"""Tokenizer files: OpenAI's gz vocabulary, save/load round trips (with transformers where installed), Hub layouts,
lazy imports."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from helpers import reference  # noqa: E402
from helpers.tokenizer_files import hub_dir, shipped_dir  # noqa: E402

import clipfast  # noqa: E402
from clipfast.errors import CheckpointError  # noqa: E402
from clipfast.tokenization import convert_openai_vocab, read_openai_vocab, read_vocab_files  # noqa: E402

CLASSES = {"slow": (clipfast.CLIPTokenizer, "CLIPTokenizer"), "fast": (clipfast.CLIPTokenizerFast, "CLIPTokenizerFast")}
TEXTS = ["a photo of a cat", "naïve café 😊 &amp;", "a <new-tok> here"]


def test_openai_vocab_and_its_files(tmp_path) -> None:
    vocab, merges = read_openai_vocab()
    assert (len(vocab), len(merges)) == (49408, 48894)
    assert [vocab[t] for t in ("!", "!</w>", "in", "th", "an", "a</w>", "cat</w>", "<|endoftext|>")] == [
        0, 256, 512, 513, 514, 320, 2368, 49407]
    assert merges[:3] == [("i", "n"), ("t", "h"), ("a", "n")]
    vocab_file, merges_file = convert_openai_vocab(tmp_path)
    assert read_vocab_files(vocab_file, merges_file) == (vocab, merges)
    assert open(merges_file, encoding="utf-8").readline() == "#version: 0.2\n"


def test_openai_vocab_gives_the_hub_vocab_and_merges(tmp_path) -> None:
    vocab, merges = read_openai_vocab()
    hub_vocab, hub_merges = read_vocab_files(os.path.join(hub_dir(), "vocab.json"),
                                             os.path.join(hub_dir(), "merges.txt"))
    assert vocab == hub_vocab and merges == hub_merges
    vocab_file, merges_file = convert_openai_vocab(tmp_path)
    assert filecmp.cmp(merges_file, os.path.join(hub_dir(), "merges.txt"), shallow=False)
    assert json.load(open(vocab_file, encoding="utf-8")) == hub_vocab


def test_shipped_gz_is_open_clips_copy() -> None:
    open_clip = reference("open_clip")
    shipped = os.path.join(os.path.dirname(clipfast.__file__), "data", "bpe_simple_vocab_16e6.txt.gz")
    assert filecmp.cmp(shipped, os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz"),
                       shallow=False)
    assert os.path.isfile(os.path.join(os.path.dirname(shipped), "LICENSE-openai-clip-vocab.txt"))


@pytest.mark.parametrize("kind", ["slow", "fast"])
def test_from_openai_vocab_matches_hub_tokenizer(kind: str) -> None:
    cls, ref_name = CLASSES[kind]
    ours = cls.from_openai_vocab()
    ref = getattr(reference("transformers"), ref_name).from_pretrained(hub_dir())
    assert ours.model_max_length == 77 and ours(TEXTS, padding=True).input_ids == ref(TEXTS, padding=True).input_ids


@pytest.mark.parametrize("kind", ["slow", "fast"])
def test_save_pretrained_round_trips(kind: str, tmp_path) -> None:
    cls, _ = CLASSES[kind]
    ours = cls.from_pretrained(shipped_dir())
    ours.add_tokens(["<new-tok>"])
    written = ours.save_pretrained(tmp_path / "ours")
    assert all(os.path.isfile(p) for p in written)
    names = set(os.listdir(tmp_path / "ours"))
    assert {"vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"} <= names
    assert ("tokenizer.json" in names) == (kind == "fast")
    reloaded = cls.from_pretrained(tmp_path / "ours")
    assert reloaded.model_max_length == 77 and len(reloaded) == 49409
    assert reloaded(TEXTS).input_ids == ours(TEXTS).input_ids


@pytest.mark.parametrize("kind", ["slow", "fast"])
def test_save_pretrained_round_trips_with_transformers(kind: str, tmp_path) -> None:
    cls, ref_name = CLASSES[kind]
    ref_cls = getattr(reference("transformers"), ref_name)
    ours = cls.from_pretrained(hub_dir())
    ours.add_tokens(["<new-tok>"])
    ours.save_pretrained(tmp_path / "ours")
    reloaded = ref_cls.from_pretrained(tmp_path / "ours")
    assert reloaded.model_max_length == 77 and len(reloaded) == 49409
    assert reloaded(TEXTS).input_ids == ours(TEXTS).input_ids
    ref = ref_cls.from_pretrained(hub_dir())
    ref.add_tokens(["<new-tok>"])
    ref.save_pretrained(tmp_path / "ref")
    assert cls.from_pretrained(tmp_path / "ref")(TEXTS).input_ids == ref(TEXTS).input_ids


def test_slow_vocabulary_files_are_byte_identical_to_reference(tmp_path) -> None:
    ref = reference("transformers").CLIPTokenizer.from_pretrained(hub_dir())
    ours = clipfast.CLIPTokenizer.from_pretrained(hub_dir())
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for mine, theirs in zip(ours.save_vocabulary(str(tmp_path / "a"), "x"), ref.save_vocabulary(str(tmp_path / "b"),
                                                                                                   "x")):
        assert os.path.basename(mine) == os.path.basename(theirs) and filecmp.cmp(mine, theirs, shallow=False)


@pytest.mark.parametrize("writer", ["clipfast", "transformers"])
def test_hub_layouts_subfolder_and_tokenizer_json_only(tmp_path, writer: str) -> None:
    """Files as clipfast or transformers writes them, in a diffusers-style subfolder or as tokenizer.json only."""
    source = shipped_dir() if writer == "clipfast" else hub_dir()
    repo = tmp_path / "repo"
    (repo / "tokenizer").mkdir(parents=True)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(os.path.join(source, name), repo / "tokenizer" / name)  # diffusers layout, no tokenizer.json
    want = [[49406, 320, 1125, 539, 320, 2368, 49407]]  # TEXTS[0], "a photo of a cat"
    for cls in (clipfast.CLIPTokenizer, clipfast.CLIPTokenizerFast):
        assert cls.from_pretrained(repo, subfolder="tokenizer")(TEXTS[:1]).input_ids == want[:1]
    only_json = tmp_path / "v5"
    only_json.mkdir()
    shutil.copy(os.path.join(source, "tokenizer.json"), only_json / "tokenizer.json")
    (only_json / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77, "backend": "tokenizers",
                                                                 "tokenizer_class": "CLIPTokenizer"}))
    for cls in (clipfast.CLIPTokenizer, clipfast.CLIPTokenizerFast):
        tok = cls.from_pretrained(only_json)
        assert tok.model_max_length == 77 and tok(TEXTS[:1]).input_ids == want[:1]
    with pytest.raises(CheckpointError):
        clipfast.CLIPTokenizer.from_pretrained(tmp_path / "repo")  # files are in the subfolder


def test_pre_417_tokenizer_json_is_rebuilt(tmp_path) -> None:
    data = json.load(open(os.path.join(shipped_dir(), "tokenizer.json"), encoding="utf-8"))
    data["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    tok = clipfast.CLIPTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_import_is_lazy() -> None:
    code = ("import sys, clipfast.tokenization, clipfast.tokenization_fast; "
            "print(sorted(m for m in ('torch', 'tokenizers', 'ftfy', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
