"""Hub ids through huggingface_hub, against a loopback stand-in of the Hub: download, cache, revisions, tokens,
offline mode and every failure as one clear error. No reference library is needed, so these run with whatever
huggingface_hub release pip resolves (0.2x with transformers 4.57 beside it, the newest one in a plain install)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import clipfast
from helpers.configs import tiny_config_dict
from helpers.fake_hub import COMMIT, FakeHub


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A tiny CLIP model folder saved by clipfast itself."""
    folder = tmp_path_factory.mktemp("repo")
    clipfast.CLIPModel(clipfast.CLIPConfig(**tiny_config_dict())).save_pretrained(folder)
    return folder


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter (huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE at import)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)


LOAD = """
    import clipfast
    model = clipfast.CLIPModel.from_pretrained("org/tiny", {kwargs})
    print("OK", model.config.projection_dim)
"""


def test_download_with_revision_and_token_then_offline_from_the_cache(repo, tmp_path):
    home = str(tmp_path / "hf_home")
    hub = FakeHub({"org/tiny": repo})
    with hub as url:
        online = _run(LOAD.format(kwargs='revision="main", token="hf_secret"'), HF_ENDPOINT=url, HF_HOME=home,
                      HF_HUB_OFFLINE="0")
        assert online.returncode == 0, online.stderr
        assert "OK 24" in online.stdout
        by_commit = _run(LOAD.format(kwargs=f'revision="{COMMIT}"'), HF_ENDPOINT=url, HF_HOME=home, HF_HUB_OFFLINE="0")
        assert by_commit.returncode == 0, by_commit.stderr
    assert any(path.endswith("/resolve/main/model.safetensors") for path in hub.requests)
    assert "Bearer hf_secret" in hub.authorizations
    # the stand-in is gone: offline mode and local_files_only both read the cache
    offline = _run(LOAD.format(kwargs=""), HF_HOME=home, HF_HUB_OFFLINE="1")
    assert offline.returncode == 0, offline.stderr
    local = _run(LOAD.format(kwargs="local_files_only=True"), HF_HOME=home, HF_HUB_OFFLINE="0",
                 HF_ENDPOINT="http://hub.invalid")
    assert local.returncode == 0, local.stderr


@pytest.mark.parametrize("kwargs, message", [
    ('', "neither a local folder nor a model id"),
    ('revision="no-such-branch"', "Revision 'no-such-branch' does not exist"),
])
def test_unknown_repo_and_revision_are_one_clear_error(repo, tmp_path, kwargs, message):
    name = "org/missing" if not kwargs else "org/tiny"
    code = f'import clipfast; clipfast.CLIPModel.from_pretrained("{name}", {kwargs})'
    with FakeHub({"org/tiny": repo}) as url:
        result = _run(code, HF_ENDPOINT=url, HF_HOME=str(tmp_path), HF_HUB_OFFLINE="0")
    assert result.returncode == 1
    assert "CheckpointError" in result.stderr and message in result.stderr, result.stderr
    assert "huggingface_hub" not in result.stderr.splitlines()[-1]


def test_repo_without_weights_names_what_is_missing(repo, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_bytes((repo / "config.json").read_bytes())
    with FakeHub({"org/bare": bare}) as url:
        result = _run('import clipfast; clipfast.CLIPModel.from_pretrained("org/bare")', HF_ENDPOINT=url,
                      HF_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="0")
    assert result.returncode == 1
    assert "CheckpointError" in result.stderr and "model.safetensors" in result.stderr, result.stderr


def test_offline_and_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(clipfast.errors.OfflineError, match="offline mode is on"):
        clipfast.CLIPModel.from_pretrained("org/never-downloaded", cache_dir=tmp_path)


def test_unreachable_hub_is_one_clear_error(tmp_path):
    result = _run('import clipfast; clipfast.CLIPModel.from_pretrained("org/never-downloaded")',
                  HF_HOME=str(tmp_path), HF_HUB_OFFLINE="0", HF_ENDPOINT="http://hub.invalid")
    assert result.returncode == 1
    assert "Cannot reach the Hugging Face Hub" in result.stderr, result.stderr


def test_tokenizer_and_processor_come_from_the_hub_too(repo, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    for path in repo.iterdir():
        (full / path.name).write_bytes(path.read_bytes())
    clipfast.CLIPTokenizerFast.from_openai_vocab().save_pretrained(full)
    clipfast.CLIPImageProcessor(size=30, crop_size=30).save_pretrained(full)
    code = """
        import clipfast
        processor = clipfast.AutoProcessor.from_pretrained("org/full")
        print("OK", processor.tokenizer("a photo")["input_ids"])
    """
    with FakeHub({"org/full": full}) as url:
        result = _run(code, HF_ENDPOINT=url, HF_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="0")
    assert result.returncode == 0, result.stderr
    assert "OK [49406, 320, 1125, 49407]" in result.stdout
