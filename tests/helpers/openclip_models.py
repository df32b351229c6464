"""Tiny open_clip models and their checkpoints in the native layouts of OpenAI and open_clip (random weights).

``build`` needs open_clip (the test that calls it skips without it); ``openai_state_dict`` and
``save_module_archive`` make the same layouts with clipfast and torch alone, for the tests of reading and refusing.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from helpers import reference as import_reference

# OpenAI's conventions (heads = width / 64, quick_gelu), so the files read without a config
OPENAI_LIKE = dict(embed_dim=32, quick_gelu=True,
                   vision_cfg=dict(layers=2, width=128, patch_size=8, image_size=32),
                   text_cfg=dict(context_length=16, vocab_size=100, width=64, heads=1, layers=2))
# open_clip only: gelu, 32-wide vision heads, MLP ratios that truncate (96 * 2.6 -> 249; 44 * 1.12 -> 49, and
# 49 / 44 turned back into a ratio truncates to 48: the pitfall of converting back)
OPEN_CLIP_GELU = dict(embed_dim=24, quick_gelu=False,
                      vision_cfg=dict(layers=2, width=96, head_width=32, patch_size=8, image_size=32, mlp_ratio=2.6),
                      text_cfg=dict(context_length=16, vocab_size=100, width=44, heads=4, layers=2, mlp_ratio=1.12))
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def build(model_cfg: dict, seed: int = 0) -> torch.nn.Module:
    """An open_clip CLIP with random weights, LayerNorms and logit_scale moved off their init values."""
    open_clip = import_reference("open_clip")

    torch.manual_seed(seed)
    model = open_clip.CLIP(**json.loads(json.dumps(model_cfg))).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "ln" in name or name == "logit_scale":
                param.add_(torch.randn_like(param) * 0.1)
    return model


def inputs(vocab_size: int = 100, pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels and right-padded ids ending in an EOS that is the largest id (as <|endoftext|> is in OpenAI's vocab),
    padded as open_clip's tokenizer does: OpenAI/open_clip's argmax pooling and transformers' agree on them."""
    torch.manual_seed(1)
    pixels = torch.randn(3, 3, 32, 32)
    ids = torch.randint(1, 90, (4, 16))
    for row, length in enumerate((16, 9, 3, 12)):
        ids[row, length - 1] = vocab_size - 1
        ids[row, length:] = pad
    return pixels, ids


@torch.no_grad()
def reference(model: torch.nn.Module, pixels: torch.Tensor, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """open_clip's own image and text embeddings and logits."""
    image, text = model.encode_image(pixels), model.encode_text(ids)
    logits = model.logit_scale.exp() * torch.nn.functional.normalize(image, dim=-1) @ \
        torch.nn.functional.normalize(text, dim=-1).T
    return {"image": image, "text": text, "logits": logits}


@torch.no_grad()
def clipfast_outputs(model: torch.nn.Module, pixels: torch.Tensor, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """The same quantities from a clipfast (or transformers) CLIPModel."""
    out = model(input_ids=ids, pixel_values=pixels)
    return {"image": model.get_image_features(pixel_values=pixels), "text": model.get_text_features(input_ids=ids),
            "logits": out.logits_per_image}


def save_torchscript(model: torch.nn.Module, path: Path, trace: bool = False) -> Path:
    """A TorchScript archive, as OpenAI distributed its checkpoints (scripted, or traced like OpenAI's)."""
    pixels, ids = inputs()
    with warnings.catch_warnings():  # TorchScript's deprecation notes, the tracer's notes on control flow
        warnings.simplefilter("ignore")
        if trace:
            jit = torch.jit.trace_module(model, {"forward": (pixels, ids), "encode_image": (pixels,),
                                                 "encode_text": (ids,)}, check_trace=False)
        else:
            jit = torch.jit.script(model)
    jit.save(str(path))
    return path


def save_open_clip_folder(model: torch.nn.Module, model_cfg: dict, folder: Path,
                          preprocess_cfg: dict | None = None) -> Path:
    """open_clip's hub layout: open_clip_config.json + open_clip_model.safetensors."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg or {}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    return folder


def openai_state_dict(seed: int = 0, **text_cfg: int) -> dict[str, torch.Tensor]:
    """OPENAI_LIKE's tensors (``text_cfg`` changes its text tower: vocab_size, context_length) in OpenAI's layout
    with its causal-mask buffer, made without open_clip: a random clipfast CLIPModel with its keys renamed back."""
    import clipfast
    from clipfast.formats import hf_to_openai

    vision, text = OPENAI_LIKE["vision_cfg"], {**OPENAI_LIKE["text_cfg"], **text_cfg}
    tower = dict(hidden_act="quick_gelu")
    config = clipfast.CLIPConfig(
        text_config=dict(vocab_size=text["vocab_size"], max_position_embeddings=text["context_length"],
                         hidden_size=text["width"], intermediate_size=4 * text["width"],
                         num_hidden_layers=text["layers"], num_attention_heads=text["width"] // 64, **tower),
        vision_config=dict(image_size=vision["image_size"], patch_size=vision["patch_size"],
                           hidden_size=vision["width"], intermediate_size=4 * vision["width"],
                           num_hidden_layers=vision["layers"], num_attention_heads=vision["width"] // 64, **tower),
        projection_dim=OPENAI_LIKE["embed_dim"])
    generator = torch.Generator().manual_seed(seed)
    model = clipfast.CLIPModel(config)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    state = hf_to_openai(model.state_dict())
    length = text["context_length"]
    state["attn_mask"] = torch.full((length, length), float("-inf")).triu(1)
    return state


def save_module_archive(state_dict: dict[str, torch.Tensor], path: Path) -> Path:
    """A TorchScript archive whose module tree holds ``state_dict`` (as OpenAI's archives hold their weights),
    scripted from plain modules: what the reader sees of an OpenAI file, without open_clip."""
    root = torch.nn.Module()
    for key, tensor in state_dict.items():
        *path_parts, leaf = key.split(".")
        module = root
        for part in path_parts:
            if not hasattr(module, part):
                module.add_module(part, torch.nn.Module())
            module = getattr(module, part)
        if tensor.is_floating_point() and leaf != "attn_mask":
            module.register_parameter(leaf, torch.nn.Parameter(tensor.clone(), requires_grad=False))
        else:
            module.register_buffer(leaf, tensor.clone())
    with warnings.catch_warnings():  # TorchScript's deprecation notes
        warnings.simplefilter("ignore")
        torch.jit.script(root).save(str(path))
    return path
