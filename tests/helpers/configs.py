"""Tiny CLIP configs, as transformers' own tests use: fast to build, every code path exercised."""

from __future__ import annotations

TINY_TEXT = dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=64, projection_dim=32)
TINY_VISION = dict(image_size=30, patch_size=2, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                   num_attention_heads=4, projection_dim=32)


def tiny_config_dict(**overrides) -> dict:
    """A small CLIPConfig as a dict that both clipfast and transformers accept."""
    text = dict(TINY_TEXT, **overrides.pop("text", {}))
    vision = dict(TINY_VISION, **overrides.pop("vision", {}))
    return dict(text_config=text, vision_config=vision, projection_dim=24, **overrides)
