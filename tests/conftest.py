"""Shared fixtures: tiny CLIP configs (as transformers' own tests use) and reference-library helpers."""

from __future__ import annotations

import os

import pytest
import torch

# tests must never reach the network
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from helpers.configs import TINY_TEXT, TINY_VISION, tiny_config_dict  # noqa: F401  (re-exported for fixtures)
from helpers.process_state import changes, restore, snapshot


@pytest.fixture(autouse=True)
def _leaves_process_state_alone():
    """Fail any test that leaves torch's settings, default dtype, threads, nn.init or the environment changed
    (and put them back, so that one test's leak cannot change what later tests see)."""
    before = snapshot()
    yield
    after = snapshot()
    leaked = changes(before, after)
    if leaked:
        restore(before)
        pytest.fail("the test left process-wide state changed (use helpers.process_state.torch_settings or "
                    "monkeypatch.setenv):\n  " + "\n  ".join(leaked), pytrace=False)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def text_inputs():
    """Right-padded token ids with an EOS (the largest id, 98) ending each real sequence."""
    ids = torch.randint(1, 90, (4, 9))
    mask = torch.ones_like(ids)
    for row, length in enumerate((9, 6, 3, 9)):
        ids[row, length - 1] = 98
        ids[row, length:] = 98  # pad with EOS, as CLIP's tokenizer does
        mask[row, length:] = 0
    return ids, mask


@pytest.fixture
def pixel_values():
    return torch.randn(4, 3, 30, 30)
