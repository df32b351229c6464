"""Shared fixtures: tiny CLIP configs (as transformers' own tests use) and reference-library helpers."""

from __future__ import annotations

import os

import pytest
import torch

# tests must never reach the network
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_TEXT = dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=64, projection_dim=32)
TINY_VISION = dict(image_size=30, patch_size=2, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                   num_attention_heads=4, projection_dim=32)


def tiny_config_dict(**overrides) -> dict:
    """A small CLIPConfig as a dict that both clipfast and transformers accept."""
    text = dict(TINY_TEXT, **overrides.pop("text", {}))
    vision = dict(TINY_VISION, **overrides.pop("vision", {}))
    return dict(text_config=text, vision_config=vision, projection_dim=24, **overrides)


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
