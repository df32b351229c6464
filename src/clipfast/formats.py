"""Checkpoint formats below the model layer: OpenAI's ``.pt`` files, open_clip checkpoints and transformers
folders, read into memory with our keys. Pure readers: nothing here builds a model, tokenizer or processor.

OpenAI and open_clip share one key layout (``visual.conv1.weight``, ``transformer.resblocks.N.attn.in_proj_weight``,
...), so one rename table serves both, and :func:`openai_to_hf` is the one filter every foreign state dict goes
through; only the architecture source differs:

- OpenAI files store no config: sizes come from tensor shapes, heads = width / 64, activation quick_gelu.
- open_clip checkpoints come with a model config (``embed_dim``, ``vision_cfg``, ``text_cfg``, ``quick_gelu``),
  beside the weights or as ``open_clip_config.json`` (``{"model_cfg": ..., "preprocess_cfg": ...}``) in hub folders.

OpenAI's TorchScript archives are read by :mod:`clipfast.torchscript`, which runs nothing in them.

:func:`source_kind` is the one place that decides whether a source is a transformers checkpoint or one of these
(a single weights file, an open_clip folder or hub repo); every loader asks it.

Example:
    >>> from clipfast.formats import read_checkpoint
    >>> ckpt = read_checkpoint("ViT-B-32.pt")            # doctest: +SKIP
    >>> ckpt.format, ckpt.config.vision_config.patch_size  # doctest: +SKIP
    ('openai-torchscript', 32)
"""

from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipfast import hub
from clipfast.configuration import CLIPConfig
from clipfast.constants import (CONFIG_NAME, IMAGE_PROCESSOR_NAME, OPEN_CLIP_CONFIG, OPEN_CLIP_HUB_PREFIX,
                                OPEN_CLIP_WEIGHTS, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
from clipfast.errors import CheckpointError

if TYPE_CHECKING:
    import torch

# torch (and clipfast.torchscript, which needs it) is imported by the functions that handle tensors, as hub.py
# does: the source decision and the config readers serve the processor and tokenizer layers, which load no torch

# the from_pretrained options that say where files come from (what read_checkpoint and source_kind take)
HUB_KWARGS = ("subfolder", "revision", "cache_dir", "local_files_only", "token")

# ---------------------------------------------------------------------------------------------------------------
# rename tables (OpenAI / open_clip key, our key); {i} is a layer index, {p} is "weight" or "bias"

_RENAMES: list[tuple[str, str]] = [
    ("token_embedding.weight", "text_model.embeddings.token_embedding.weight"),
    ("positional_embedding", "text_model.embeddings.position_embedding.weight"),
    ("ln_final.{p}", "text_model.final_layer_norm.{p}"),
    ("text_projection", "text_projection.weight"),
    ("logit_scale", "logit_scale"),
    ("visual.class_embedding", "vision_model.embeddings.class_embedding"),
    ("visual.positional_embedding", "vision_model.embeddings.position_embedding.weight"),
    ("visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight"),
    ("visual.ln_pre.{p}", "vision_model.pre_layrnorm.{p}"),
    ("visual.ln_post.{p}", "vision_model.post_layernorm.{p}"),
    ("visual.proj", "visual_projection.weight"),
]
_TOWERS: list[tuple[str, str]] = [
    ("transformer.resblocks.{i}.", "text_model.encoder.layers.{i}."),
    ("visual.transformer.resblocks.{i}.", "vision_model.encoder.layers.{i}."),
]
_LAYER_RENAMES: list[tuple[str, str]] = [
    ("ln_1.{p}", "layer_norm1.{p}"),
    ("ln_2.{p}", "layer_norm2.{p}"),
    ("attn.out_proj.{p}", "self_attn.out_proj.{p}"),
    ("mlp.c_fc.{p}", "mlp.fc1.{p}"),
    ("mlp.c_proj.{p}", "mlp.fc2.{p}"),
]
# stored as matrices used as ``x @ P``; our nn.Linear weights are their transposes
_TRANSPOSED = {"text_projection", "visual.proj"}
# nn.MultiheadAttention packs q, k, v (in that order) into one projection
_PACKED = ("attn.in_proj_{p}", ("self_attn.q_proj.{p}", "self_attn.k_proj.{p}", "self_attn.v_proj.{p}"))
# entries of OpenAI files that are not weights (sizes stored as tensors, the causal mask buffer)
_NOT_WEIGHTS = re.compile(r"(^|\.)(input_resolution|context_length|vocab_size|attn_mask)$")
# what the user has, for the checkpoints of whole architectures other than CLIP; CoCa's contrastive part without
# its decoder still shows CoCa's image pooler and text CLS token
COCA = "CoCa: a captioning model with a text decoder"
_ARCHITECTURES: list[tuple[tuple[str, ...], str]] = [
    # (patterns that must all match some key, what they reveal)
    ((r"^text_decoder\.",), COCA),
    ((r"(^|\.)(attn_pool|attentional_pool)", r"^(text\.)?cls_emb$"), COCA),
]
# what a key reveals about a part of an architecture CLIPModel cannot express; checked in order, first match names it
_UNSUPPORTED: list[tuple[str, str]] = [
    (r"^visual\.(layer\d|attnpool|bn\d|conv[23])", "a ResNet image tower (ModifiedResNet)"),
    (r"^visual\.trunk\.", "a timm image tower"),
    (r"(^|\.)(attn_pool|attentional_pool)", "attentional pooling"),
    (r"(^|\.)ls_[12]\.", "layer scale (ls_init_value)"),
    (r"\.attn\.(ln_q|ln_k|ln_inner|head_scale|logit_scale)(\.|$)|\.(ln_attn|mlp\.ln)\.", "custom attention "
     "blocks (qk-norm, scaled cosine attention, head scales, extra norms)"),
    (r"^text\.transformer\.(?!resblocks\.)", "a Hugging Face text encoder (hf_model_name)"),
    (r"^(text\.)?cls_emb$", "a text CLS embedding (embed_cls)"),
    (r"^logit_bias$", "a sigmoid-loss bias (SigLIP)"),
    (r"^(text\.)?text_projection\.(weight|bias)$", "a text projection with bias (proj_bias)"),
]
# keys only a CLIP checkpoint of OpenAI's / open_clip's layout has (after _normalize_keys)
_CLIP_KEYS = re.compile(r"^(visual\.|transformer\.resblocks\.|token_embedding\.weight$|positional_embedding$)")
# what clipfast's CLIPModel covers, for the refusals
PLAIN_CLIP = "clipfast loads plain CLIP ViTs (a ViT image tower with the standard text tower)"


def _expand(template: str, i: int | None = None, p: str | None = None) -> str:
    return template.replace("{i}", str(i)).replace("{p}", p or "")


def _key_map(text_layers: int, vision_layers: int) -> dict[str, str]:
    """Every OpenAI key (but the packed attention projections) -> our key, for the given depths."""
    out: dict[str, str] = {}
    for openai, ours in _RENAMES:
        for p in ("weight", "bias") if "{p}" in openai else (None,):
            out[_expand(openai, p=p)] = _expand(ours, p=p)
    for (tower, our_tower), layers in zip(_TOWERS, (text_layers, vision_layers)):
        for i in range(layers):
            for openai, ours in _LAYER_RENAMES:
                for p in ("weight", "bias"):
                    out[_expand(tower, i) + _expand(openai, p=p)] = _expand(our_tower, i) + _expand(ours, p=p)
    return out


def _layer_count(state_dict: dict[str, torch.Tensor], prefix: str) -> int:
    """Number of residual blocks under ``prefix`` (``transformer.resblocks.``)."""
    found = {int(m.group(1)) for k in state_dict if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(found) + 1 if found else 0


def openai_to_hf(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an OpenAI / open_clip state dict to our keys (float tensors upcast to float32).

    Raises CheckpointError, naming what was found, for architectures CLIPModel cannot express and for
    keys it does not know; nothing is dropped silently but the non-weight entries of OpenAI files.
    """
    state_dict = _normalize_keys(state_dict)
    _refuse_unsupported(state_dict)
    if not any(_CLIP_KEYS.match(k) for k in state_dict):
        raise CheckpointError(_not_clip(state_dict))
    text_layers = _layer_count(state_dict, "transformer.resblocks.")
    vision_layers = _layer_count(state_dict, "visual.transformer.resblocks.")
    names = _key_map(text_layers, vision_layers)
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, tensor in state_dict.items():
        if tensor.is_floating_point():
            tensor = tensor.float()  # OpenAI files mix fp16 and fp32
        if key in names:
            out[names[key]] = tensor.t().contiguous() if key in _TRANSPOSED else tensor
        elif (packed := _split_packed(key, tensor)) is not None:
            out.update(packed)
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"Unknown tensors {unknown[:8]} in a checkpoint with OpenAI / open_clip keys; "
                              f"{PLAIN_CLIP}.")
    missing = sorted(set(names.values()) - set(out))
    if missing:
        raise CheckpointError(f"The checkpoint lacks tensors CLIPModel needs: {missing[:8]}. It is not a "
                              "standard CLIP ViT (e.g. no_ln_pre, or proj_type 'none').")
    return out


def _normalize_keys(state_dict: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Drop non-weight entries, strip DDP's ``module.`` prefix and CustomTextCLIP's ``text.`` prefix."""
    import torch

    sd = {k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor) and not _NOT_WEIGHTS.search(k)}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    standard_text = re.compile(r"^text\.(token_embedding|positional_embedding|transformer\.resblocks|ln_final|"
                               r"text_projection$)")
    return {k.removeprefix("text.") if standard_text.match(k) else k: v for k, v in sd.items()}


def _refuse_unsupported(state_dict: dict[str, torch.Tensor]) -> None:
    """Name the architecture (CoCa), else the first architecture feature, CLIPModel cannot express, with an
    example key."""
    for patterns, what in _ARCHITECTURES:
        hits = [[k for k in state_dict if re.search(pattern, k)] for pattern in patterns]
        if all(hits):
            raise CheckpointError(f"This checkpoint is {what} (e.g. {hits[0][0]!r}); {PLAIN_CLIP}. "
                                  "Use open_clip for this model.")
    for pattern, what in _UNSUPPORTED:
        found = [k for k in state_dict if re.search(pattern, k)]
        if found:
            raise CheckpointError(f"This checkpoint has {what} (e.g. {found[0]!r}), which clipfast's CLIPModel "
                                  "cannot express (it covers ViT image towers with the standard text tower). "
                                  "Use open_clip for this model.")


def _not_clip(state_dict: dict[str, torch.Tensor]) -> str:
    """The refusal of a weights file that holds no CLIP tensors at all, naming what it holds."""
    if not state_dict:
        return "The checkpoint holds no weight tensors, so it is not a CLIP checkpoint."
    return (f"The checkpoint's {len(state_dict)} tensors (e.g. {sorted(state_dict)[:4]}) have none of a CLIP "
            "checkpoint's keys: OpenAI / open_clip name them 'visual.*', 'transformer.resblocks.*', "
            "'token_embedding.weight'; transformers 'text_model.*', 'vision_model.*'. It is not a CLIP model.")


def _template_regex(template: str) -> str:
    """A rename template as a regex: ``{i}`` captures a layer index, ``{p}`` weight or bias."""
    return re.escape(template).replace(re.escape("{i}"), r"(\d+)").replace(re.escape("{p}"), r"(weight|bias)")


def _split_packed(key: str, tensor: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """``...attn.in_proj_weight`` -> our q/k/v projections, or None if ``key`` is not a packed projection."""
    for tower, our_tower in _TOWERS:
        m = re.fullmatch(_template_regex(tower + _PACKED[0]), key)
        if m:
            base, p = _expand(our_tower, int(m.group(1))), m.group(2)
            return {base + _expand(name, p=p): part.clone() for name, part in zip(_PACKED[1], tensor.chunk(3))}
    return None


def hf_to_openai(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our keys -> OpenAI / open_clip keys (q/k/v packed back, projections transposed)."""
    import torch

    text_layers = _layer_count(state_dict, "text_model.encoder.layers.")
    vision_layers = _layer_count(state_dict, "vision_model.encoder.layers.")
    names = _key_map(text_layers, vision_layers)
    missing = sorted(set(names.values()) - set(state_dict))
    if missing:
        raise CheckpointError(f"Not a full CLIPModel checkpoint: it lacks {missing[:8]}.")
    out = {}
    for openai, ours in names.items():
        tensor = state_dict[ours]
        out[openai] = tensor.t().contiguous() if openai in _TRANSPOSED else tensor
    for (tower, our_tower), layers in zip(_TOWERS, (text_layers, vision_layers)):
        for i in range(layers):
            for p in ("weight", "bias"):
                parts = [state_dict[_expand(our_tower, i) + _expand(name, p=p)] for name in _PACKED[1]]
                out[_expand(tower, i) + _expand(_PACKED[0], p=p)] = torch.cat(parts, dim=0)
    return out


# ---------------------------------------------------------------------------------------------------------------
# architecture: from tensor shapes (OpenAI) or an open_clip model config

# open_clip options whose other values change the math in ways CLIPModel cannot follow (a missing option is fine)
_UNSUPPORTED_OPTIONS: list[tuple[str, str, tuple, str]] = [
    # (section, option, accepted values, what another value means)
    ("vision_cfg", "timm_model_name", (None, ""), "a timm image tower"),
    ("vision_cfg", "attentional_pool", (None, False), "attentional pooling"),
    ("vision_cfg", "pool_type", ("tok",), "image pooling other than the class token"),
    ("vision_cfg", "ls_init_value", (None,), "layer scale (ls_init_value)"),
    ("vision_cfg", "no_ln_pre", (False,), "an image tower without ln_pre"),
    ("vision_cfg", "pos_embed_type", ("learnable", "sin_cos_2d"), "an unknown position embedding"),
    ("text_cfg", "hf_model_name", (None, ""), "a Hugging Face text encoder (hf_model_name)"),
    ("text_cfg", "pool_type", ("argmax", "eos"), "text pooling other than at the EOS token"),
    ("text_cfg", "no_causal_mask", (False,), "a bidirectional text tower (no_causal_mask)"),
    ("text_cfg", "embed_cls", (False,), "a text CLS embedding (embed_cls)"),
    ("text_cfg", "proj_type", ("linear",), "a text projection other than linear"),
    ("text_cfg", "proj_bias", (False,), "a text projection with bias"),
    ("text_cfg", "ls_init_value", (None,), "layer scale (ls_init_value)"),
    *[(section, option, (None, False, "default"), "custom attention blocks")
      for section in ("vision_cfg", "text_cfg") for option in ("block_type", "qk_norm", "scaled_cosine_attn",
                                                               "scale_heads", "scale_attn_inner", "scale_attn",
                                                               "scale_fc")],
    *[(section, "act_kwargs", (None, {}), "activation arguments") for section in ("vision_cfg", "text_cfg")],
    ("", "init_logit_bias", (None,), "a sigmoid-loss bias (SigLIP)"),
]


def check_open_clip_config(model_cfg: dict[str, Any]) -> None:
    """Raise CheckpointError naming the architecture (CoCa, ResNet), else the first open_clip option, that
    CLIPModel cannot express."""
    for section in ("vision_cfg", "text_cfg"):
        if not isinstance(model_cfg.get(section) or {}, dict):
            raise CheckpointError(f"The open_clip config's {section} is a {type(model_cfg[section]).__name__} "
                                  f"({model_cfg[section]!r}); it must be an object of tower options.")
    if model_cfg.get("multimodal_cfg") is not None:
        raise CheckpointError(f"The open_clip config describes {COCA} (multimodal_cfg); {PLAIN_CLIP}. "
                              "Use open_clip for this model.")
    vision = model_cfg.get("vision_cfg") or {}
    if isinstance(vision.get("layers"), (list, tuple)):
        raise CheckpointError(f"The open_clip config describes a ResNet image tower (vision_cfg.layers="
                              f"{vision['layers']}), which clipfast's CLIPModel cannot express. Use open_clip.")
    for section, option, accepted, what in _UNSUPPORTED_OPTIONS:
        part = (model_cfg.get(section) or {}) if section else model_cfg
        if option in part and part[option] not in accepted:
            where = f"{section}.{option}" if section else option
            raise CheckpointError(f"The open_clip config sets {where}={part[option]!r}: {what}, which clipfast's "
                                  "CLIPModel cannot express. Use open_clip for this model.")
    for section in ("vision_cfg", "text_cfg"):
        norm = (model_cfg.get(section) or {}).get("norm_kwargs") or {}
        if set(norm) - {"eps"}:
            raise CheckpointError(f"The open_clip config sets {section}.norm_kwargs={norm}; only eps is supported.")


def _norm_eps(model_cfg: dict[str, Any]) -> float:
    """The LayerNorm epsilon (open_clip's default 1e-5, or norm_kwargs eps, the same in both towers)."""
    found = {((model_cfg.get(s) or {}).get("norm_kwargs") or {}).get("eps", 1e-5) for s in ("vision_cfg", "text_cfg")}
    if len(found) > 1:
        raise CheckpointError(f"The open_clip config uses different LayerNorm eps per tower ({sorted(found)}).")
    return float(found.pop())


def _shape(state_dict: dict[str, torch.Tensor], key: str, dim: int = 0) -> int:
    """A size read off a tensor, with a clear error when the tensor is absent."""
    if key not in state_dict:
        raise CheckpointError(f"The checkpoint lacks {key!r}, needed to read its architecture.")
    return int(state_dict[key].shape[dim])


def _heads(width: int, head_width: int, tower: str) -> int:
    """Attention heads of a tower from its head width (OpenAI's convention: 64)."""
    if width % head_width:
        raise CheckpointError(f"The {tower} tower's width {width} is not a multiple of its head width {head_width}; "
                              "pass the open_clip config that describes it.")
    return width // head_width


def config_from_weights(state_dict: dict[str, torch.Tensor], *, hidden_act: str = "quick_gelu",
                        vision_head_width: int = 64, text_heads: int | None = None, layer_norm_eps: float = 1e-5,
                        eos_token_id: int = 2) -> CLIPConfig:
    """A CLIPConfig for a state dict with our keys: sizes from tensor shapes, the rest from the arguments.

    ``eos_token_id=2`` selects the reference's legacy pooling at the largest token id, which is what OpenAI and
    open_clip (``pool_type='argmax'``) do; the OpenAI configs on the Hub store the same value.
    """
    patch = state_dict.get("vision_model.embeddings.patch_embedding.weight")
    if patch is None or patch.shape[-1] != patch.shape[-2]:
        raise CheckpointError("The checkpoint has no square patch embedding (visual.conv1.weight).")
    positions = _shape(state_dict, "vision_model.embeddings.position_embedding.weight")
    grid = math.isqrt(positions - 1)
    if grid * grid + 1 != positions:
        raise CheckpointError(f"{positions} image positions are not a square grid plus the class token.")
    v_width, t_width = int(patch.shape[0]), _shape(state_dict, "text_model.final_layer_norm.weight")
    embed_dim = _shape(state_dict, "text_projection.weight")
    if _shape(state_dict, "visual_projection.weight") != embed_dim:
        raise CheckpointError("The image and text projections have different output sizes.")
    common = dict(hidden_act=hidden_act, layer_norm_eps=layer_norm_eps, projection_dim=embed_dim)
    vision = dict(hidden_size=v_width, image_size=int(patch.shape[-1]) * grid, patch_size=int(patch.shape[-1]),
                  num_hidden_layers=_layer_count(state_dict, "vision_model.encoder.layers."),
                  intermediate_size=_shape(state_dict, "vision_model.encoder.layers.0.mlp.fc1.weight"),
                  num_attention_heads=_heads(v_width, vision_head_width, "image"), **common)
    text = dict(hidden_size=t_width, vocab_size=_shape(state_dict, "text_model.embeddings.token_embedding.weight"),
                max_position_embeddings=_shape(state_dict, "text_model.embeddings.position_embedding.weight"),
                num_hidden_layers=_layer_count(state_dict, "text_model.encoder.layers."),
                intermediate_size=_shape(state_dict, "text_model.encoder.layers.0.mlp.fc1.weight"),
                num_attention_heads=text_heads or _heads(t_width, 64, "text"), eos_token_id=eos_token_id,
                **({"bos_token_id": 0, "pad_token_id": 1} if eos_token_id == 2 else {}), **common)
    if t_width % text["num_attention_heads"]:
        raise CheckpointError(f"Text width {t_width} is not divisible by {text['num_attention_heads']} heads.")
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=embed_dim)


def _square_size(size: Any, what: str) -> int:
    """An open_clip ``image_size`` / ``patch_size`` (an int or [height, width]) as one int; non-square is an error:
    CLIPModel's position embeddings are a square grid."""
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise CheckpointError(f"{what} has a non-square size {list(size)}; clipfast's CLIPModel (as transformers') "
                                  "works on square images and patches. Use open_clip for this model.")
        size = size[0]
    return int(size)


def _open_clip_architecture(model_cfg: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> CLIPConfig:
    """CLIPConfig for an open_clip model config and its (renamed) weights; sizes must agree."""
    check_open_clip_config(model_cfg)
    vision, text = model_cfg.get("vision_cfg") or {}, model_cfg.get("text_cfg") or {}
    for option in ("image_size", "patch_size"):  # a non-square size whose grid happens to be square reads as one
        if option in vision:
            vision = dict(vision, **{option: _square_size(vision[option], f"vision_cfg.{option}")})
    eos = int(text.get("eos_id", 2)) if text.get("pool_type") == "eos" else 2
    if text.get("pool_type") == "eos" and eos == 2:
        raise CheckpointError("text_cfg pools at eos_id=2, which transformers' CLIP reads as 'pool at the largest "
                              "id'; clipfast cannot express this model.")
    config = config_from_weights(state_dict, hidden_act="quick_gelu" if model_cfg.get("quick_gelu") else "gelu",
                                 vision_head_width=int(vision.get("head_width", 64)),
                                 text_heads=int(text.get("heads", 8)), layer_norm_eps=_norm_eps(model_cfg),
                                 eos_token_id=eos)
    found = {"embed_dim": config.projection_dim, "vision_cfg.width": config.vision_config.hidden_size,
             "vision_cfg.layers": config.vision_config.num_hidden_layers,
             "vision_cfg.patch_size": config.vision_config.patch_size,
             "text_cfg.width": config.text_config.hidden_size, "text_cfg.layers": config.text_config.num_hidden_layers}
    sections = {"": model_cfg, "vision_cfg": vision, "text_cfg": text}  # vision with its sizes made ints
    for name, value in found.items():
        section, _, option = name.rpartition(".")
        stated = sections[section].get(option)
        if stated is not None and int(stated) != value:
            raise CheckpointError(f"The open_clip config says {name}={stated}, but the weights have {value}: the "
                                  "config does not describe this checkpoint.")
    if "image_size" in vision:  # open_clip's size, which need not be a multiple of the patch (the rest is cut off)
        grid = config.vision_config.image_size // config.vision_config.patch_size
        if vision["image_size"] // config.vision_config.patch_size != grid:
            raise CheckpointError(f"The open_clip config says vision_cfg.image_size={vision['image_size']}, but the "
                                  f"weights have a {grid}x{grid} patch grid: the config does not describe this "
                                  "checkpoint.")
        config.vision_config.image_size = vision["image_size"]
    return config


# ---------------------------------------------------------------------------------------------------------------
# preprocessing: open_clip's preprocess_cfg <-> preprocessor_config.json

_RESAMPLE = {"bicubic": 3, "bilinear": 2}  # PIL codes; open_clip's 'random' is a training augmentation


def image_processor_config(preprocess_cfg: dict[str, Any], image_size: int, open_clip_crop: bool = True
                           ) -> dict[str, Any]:
    """``preprocessor_config.json`` (transformers format) for open_clip's ``preprocess_cfg`` and the model's
    ``image_size``; with ``open_clip_crop``, center crops where open_clip's torchvision transform does
    (``crop_rounding="half_even"``, a clipfast option), else where transformers does (for folders it reads).

    Raises CheckpointError where CLIPImageProcessor cannot express it (resize_mode 'longest', which pads).

    Example:
        >>> image_processor_config({"mean": [0.5] * 3, "std": [0.5] * 3}, 224)["size"]
        {'shortest_edge': 224}
    """
    size = image_size  # open_clip (3.x) resizes and crops to the model's image_size, whatever preprocess_cfg's says
    interpolation = preprocess_cfg.get("interpolation") or "bicubic"
    if interpolation == "random":
        interpolation = "bicubic"  # what open_clip itself uses at inference
    if interpolation not in _RESAMPLE:
        raise CheckpointError(f"preprocess_cfg interpolation {interpolation!r} has no CLIPImageProcessor "
                              f"equivalent; supported: {sorted(_RESAMPLE)}.")
    mode = preprocess_cfg.get("resize_mode") or "shortest"
    if mode == "shortest":
        resize, crop = {"shortest_edge": int(size)}, True
    elif mode == "squash":
        resize, crop = {"height": int(size), "width": int(size)}, False
    else:
        raise CheckpointError(f"preprocess_cfg resize_mode {mode!r} (resize the longest side, then pad) cannot be "
                              "expressed by CLIPImageProcessor; supported: 'shortest', 'squash'.")
    rounding = {"crop_rounding": "half_even"} if crop and open_clip_crop else {}
    return {**rounding, "crop_size": {"height": int(size), "width": int(size)}, "do_center_crop": crop,
            "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
            "image_mean": [float(x) for x in preprocess_cfg.get("mean") or OPENAI_CLIP_MEAN],
            "image_processor_type": "CLIPImageProcessor",
            "image_std": [float(x) for x in preprocess_cfg.get("std") or OPENAI_CLIP_STD],
            "resample": _RESAMPLE[interpolation], "rescale_factor": 1 / 255, "size": resize}


def open_clip_preprocess(processor: dict[str, Any], image_size: int = 224) -> dict[str, Any]:
    """open_clip's ``preprocess_cfg`` for a ``preprocessor_config.json`` dict (2021 or current format); sizes the
    dict leaves out are the model's ``image_size`` (an S x S center crop of the short side resized to S)."""
    size, crop = processor.get("size", image_size), processor.get("crop_size", image_size)
    size = {"shortest_edge": size} if isinstance(size, int) else size
    crop = {"height": crop, "width": crop} if isinstance(crop, int) else crop
    resample = {v: k for k, v in _RESAMPLE.items()}.get(processor.get("resample", 3))
    if "shortest_edge" in size and size["shortest_edge"] == crop.get("height") == crop.get("width") \
            and processor.get("do_center_crop", True):
        mode, side = "shortest", size["shortest_edge"]
    elif size.get("height") == size.get("width") and size.get("height") and not processor.get("do_center_crop"):
        mode, side = "squash", size["height"]
    else:
        raise CheckpointError(f"The image processor (size {size}, crop {crop}) has no open_clip equivalent; "
                              "open_clip resizes the short side to the crop size, or squashes to a square.")
    if resample is None:
        raise CheckpointError(f"Image processor resample={processor.get('resample')} has no open_clip equivalent.")
    return {"size": side, "mean": list(processor.get("image_mean", OPENAI_CLIP_MEAN)),
            "std": list(processor.get("image_std", OPENAI_CLIP_STD)), "interpolation": resample, "resize_mode": mode}


# ---------------------------------------------------------------------------------------------------------------
# our config as open_clip's model config (for writing open_clip folders)


def open_clip_model_config(config: CLIPConfig) -> dict[str, Any]:
    """open_clip's model config (``embed_dim``, ``quick_gelu``, ``vision_cfg``, ``text_cfg``) for a CLIPConfig."""
    text, vision = config.text_config, config.vision_config
    acts = {text.hidden_act, vision.hidden_act}
    if len(acts) != 1 or not acts <= {"quick_gelu", "gelu"}:
        raise CheckpointError(f"open_clip uses one activation, quick_gelu or gelu, for both towers; found {acts}.")
    if text.layer_norm_eps != vision.layer_norm_eps or vision.num_channels != 3:
        raise CheckpointError("open_clip needs one LayerNorm eps for both towers and 3 image channels.")
    norm = {"norm_kwargs": {"eps": text.layer_norm_eps}} if text.layer_norm_eps != 1e-5 else {}
    vision_cfg = {"image_size": vision.image_size, "layers": vision.num_hidden_layers, "width": vision.hidden_size,
                  "patch_size": vision.patch_size, "head_width": vision.hidden_size // vision.num_attention_heads,
                  "mlp_ratio": _mlp_ratio(vision.hidden_size, vision.intermediate_size), **norm}
    text_cfg = {"context_length": text.max_position_embeddings, "vocab_size": text.vocab_size,
                "width": text.hidden_size, "heads": text.num_attention_heads, "layers": text.num_hidden_layers,
                "mlp_ratio": _mlp_ratio(text.hidden_size, text.intermediate_size), **norm}
    if text.eos_token_id != 2:  # the non-legacy rule: pool at the first eos_token_id
        text_cfg.update(pool_type="eos", eos_id=text.eos_token_id)
    return {"embed_dim": config.projection_dim, "quick_gelu": acts == {"quick_gelu"}, "vision_cfg": vision_cfg,
            "text_cfg": text_cfg}


def _mlp_ratio(width: int, intermediate: int) -> float:
    """The ratio open_clip turns back into ``intermediate`` with ``int(width * ratio)``, which truncates:
    ``intermediate / width`` can land one short (243.99... -> 243), so step up to the next float until it fits."""
    ratio = intermediate / width
    while int(width * ratio) < intermediate:
        ratio = math.nextafter(ratio, math.inf)
    return ratio


# ---------------------------------------------------------------------------------------------------------------
# reading any checkpoint


@dataclass
class Checkpoint:
    """A checkpoint read into memory with our keys, and what it says about tokenizer and preprocessing.

    Exactly one of ``preprocess_cfg`` (open_clip style) and ``image_processor`` (transformers style) is set; the
    other form is derived on request, raising where it cannot be expressed.
    """

    config: CLIPConfig
    state_dict: dict[str, torch.Tensor]
    format: str  # "hf", "openai", "openai-torchscript" or "open_clip"
    source: str
    preprocess_cfg: dict[str, Any] | None = None
    image_processor: dict[str, Any] | None = None
    tokenizer_name: str | None = None  # what open_clip tokenizes with, when not OpenAI's plain BPE
    hub_kwargs: dict[str, Any] = field(default_factory=dict)

    def image_processor_config(self, open_clip_crop: bool = True) -> dict[str, Any]:
        """``preprocessor_config.json`` content for this checkpoint (for OpenAI and open_clip checkpoints, cropping
        where open_clip does unless ``open_clip_crop=False``: see :func:`image_processor_config`)."""
        if self.image_processor is not None:
            return self.image_processor
        return image_processor_config(self.preprocess_cfg or {}, self.config.vision_config.image_size,
                                      open_clip_crop)

    def open_clip_preprocess_cfg(self) -> dict[str, Any]:
        """open_clip's ``preprocess_cfg`` for this checkpoint."""
        if self.preprocess_cfg is not None:
            return {"size": self.config.vision_config.image_size, **self.preprocess_cfg}
        return open_clip_preprocess(self.image_processor or {}, self.config.vision_config.image_size)

    @property
    def foreign(self) -> bool:
        """Whether the checkpoint is OpenAI's or open_clip's (its tokenizer and preprocessing follow open_clip)."""
        return self.format != "hf"


# what source_kind answers
HF, FILE, OPEN_CLIP = "hf", "file", "open_clip"


def source_kind(name_or_path: str | os.PathLike, *, subfolder: str = "", **hub_kwargs: Any) -> str:
    """What a source is, decided here for every loader: ``"file"`` (a single weights file: OpenAI ``.pt``,
    open_clip weights, or a transformers weights file), ``"open_clip"`` (an ``hf-hub:`` name, or a folder / hub
    repo in open_clip's layout without a transformers ``config.json``) or ``"hf"`` (a transformers folder or hub
    id, and anything else, which the transformers loader then reports).

    ``hub_kwargs`` (revision, cache_dir, local_files_only, token) locate hub files; a hub id costs up to two
    file look-ups (cached after the first download).

    Example:
        >>> source_kind("ViT-B-32.pt"), source_kind("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K")  # doctest: +SKIP
        ('file', 'open_clip')
    """
    name = os.fspath(name_or_path)
    if name.startswith(OPEN_CLIP_HUB_PREFIX):
        return OPEN_CLIP
    local = Path(name) / subfolder if subfolder else Path(name)
    if local.is_file():
        return FILE
    if local.is_dir():
        return OPEN_CLIP if not (local / CONFIG_NAME).is_file() and (local / OPEN_CLIP_CONFIG).is_file() else HF
    if hub._looks_like_path(name):
        return HF  # the regular loader reports the missing folder
    where = dict(subfolder=subfolder, **hub_kwargs)
    if (hub.resolve_file(name, CONFIG_NAME, required=False, **where) is None
            and hub.resolve_file(name, OPEN_CLIP_CONFIG, required=False, **where) is not None):
        return OPEN_CLIP
    return HF


def is_foreign(name_or_path: str | os.PathLike, *, subfolder: str = "", **hub_kwargs: Any) -> bool:
    """Whether a source is read by :func:`read_checkpoint` rather than the transformers loader: a single weights
    file, or an open_clip folder or hub repo (see :func:`source_kind`)."""
    return source_kind(name_or_path, subfolder=subfolder, **hub_kwargs) != HF


def read_checkpoint(name_or_path: str | os.PathLike, open_clip_config: dict[str, Any] | str | os.PathLike | None = None,
                    *, kind: str | None = None, **hub_kwargs: Any) -> Checkpoint:
    """Read any CLIP checkpoint into memory with our keys (see the module docstring for the formats).

    Args:
        name_or_path: an OpenAI ``.pt`` (TorchScript archive or state dict), an open_clip weights file
            (``.pt``/``.bin``/``.safetensors``), an open_clip folder or hub repo (``hf-hub:`` prefix optional),
            or a transformers folder or hub id.
        open_clip_config: the open_clip model config (dict or JSON path) of a weights file; by default it is
            looked for beside the file (``open_clip_config.json``, ``<stem>.json``); without one, a state dict is
            read with OpenAI's conventions (heads = width / 64, quick_gelu).
        kind: what :func:`source_kind` said of this source, when the caller asked it already.
        hub_kwargs: subfolder, revision, cache_dir, local_files_only, token.
    """
    name = os.fspath(name_or_path)
    kind = kind or source_kind(name, **hub_kwargs)
    if kind == FILE:
        subfolder = hub_kwargs.get("subfolder")
        return _read_file(str(Path(name) / subfolder if subfolder else Path(name)), open_clip_config)
    if open_clip_config is not None:
        raise CheckpointError("open_clip_config= is for a single weights file; a folder or hub repo brings its own.")
    if kind == OPEN_CLIP:
        return _read_open_clip_repo(name.removeprefix(OPEN_CLIP_HUB_PREFIX), hub_kwargs)
    return _read_hf(name, hub_kwargs)


def _read_file(path: str, open_clip_config: dict[str, Any] | str | os.PathLike | None) -> Checkpoint:
    """One weights file: TorchScript archive, torch pickle (weights only) or safetensors."""
    from clipfast.torchscript import is_torchscript, read_torchscript

    torchscript = is_torchscript(path)
    state_dict = read_torchscript(path) if torchscript else hub.load_weights([path])
    if any(k.startswith(("text_model.", "vision_model.")) for k in state_dict):
        folder = os.path.dirname(path) or "."
        return Checkpoint(CLIPConfig.from_pretrained(folder), _drop_position_ids(state_dict), "hf", folder,
                          image_processor=_read_optional_json(os.path.join(folder, IMAGE_PROCESSOR_NAME)))
    cfg = _json_arg(open_clip_config) if open_clip_config is not None else _config_beside(path)
    if cfg is None:
        return _from_openai(state_dict, "openai-torchscript" if torchscript else "openai", path)
    return _from_open_clip(state_dict, cfg, path)


# OpenAI's released ViTs as (image width, layers, patch, image size, text width, layers, embedding size): B/32,
# B/16, L/14 and L/14@336px
_OPENAI_VITS = {(768, 12, 32, 224, 512, 12, 512), (768, 12, 16, 224, 512, 12, 512), (1024, 24, 14, 224, 768, 12, 768),
                (1024, 24, 14, 336, 768, 12, 768)}


def _from_openai(state_dict: dict[str, torch.Tensor], fmt: str, source: str) -> Checkpoint:
    """OpenAI conventions: sizes from shapes, heads = width / 64, quick_gelu, OpenAI preprocessing."""
    ours = openai_to_hf(state_dict)
    config = config_from_weights(ours)
    config.dtype = stored_dtype(state_dict)
    vision, text = config.vision_config, config.text_config
    shape = (vision.hidden_size, vision.num_hidden_layers, vision.patch_size, vision.image_size, text.hidden_size,
             text.num_hidden_layers, config.projection_dim)
    if fmt == "openai" and shape not in _OPENAI_VITS:
        # open_clip writes the same keys, but its models may use gelu, other head widths or EOS pooling: a
        # checkpoint without its config can load silently wrong
        warnings.warn(f"{source} has no model config and is not one of OpenAI's released CLIP models, so it is read "
                      "with OpenAI's conventions (quick_gelu, 64-wide attention heads, text pooled at the largest "
                      "token id). If it is an open_clip checkpoint, pass open_clip_config= (its model config JSON) or "
                      "put that JSON beside it as <name>.json or open_clip_config.json.", stacklevel=4)
    return Checkpoint(config, ours, fmt, source, preprocess_cfg={})


def stored_dtype(state_dict: dict[str, torch.Tensor]) -> torch.dtype:
    """The floating dtype holding most of a checkpoint's values (OpenAI files keep a few tensors in float32 beside
    float16 weights): what ``torch_dtype="auto"`` loads in."""
    import torch

    counts: dict[torch.dtype, int] = {}
    for tensor in state_dict.values():
        if tensor.is_floating_point():
            counts[tensor.dtype] = counts.get(tensor.dtype, 0) + tensor.numel()
    return max(counts, key=counts.__getitem__) if counts else torch.float32


def foreign_tokenizer_error(source: str, what: str) -> CheckpointError:
    """The error for an open_clip model whose tokenizer is not OpenAI's BPE (clipfast ships only that one)."""
    return CheckpointError(f"{source!r} uses {what}; clipfast ships OpenAI's BPE with its standard text cleaning "
                           "only. Load the model with CLIPModel.from_pretrained and the tokenizer with the library "
                           "that provides it.")


_PLAIN_TOKENIZER_KWARGS = {"clean": ("lower",), "reduction_mask": ("", None), "additional_special_tokens": (None, [])}


def _other_tokenizer(text_cfg: dict[str, Any]) -> str | None:
    """What open_clip would tokenize this model's text with, when that is not OpenAI's plain BPE: another
    tokenizer (``hf_tokenizer_name``) or SimpleTokenizer options that change the ids (``tokenizer_kwargs``)."""
    if text_cfg.get("hf_tokenizer_name"):
        return f"the tokenizer {text_cfg['hf_tokenizer_name']!r}"
    kwargs = {k: v for k, v in (text_cfg.get("tokenizer_kwargs") or {}).items() if k != "context_length"}
    if any(value not in _PLAIN_TOKENIZER_KWARGS.get(key, ()) for key, value in kwargs.items()):
        return f"open_clip's tokenizer with tokenizer_kwargs={kwargs}"
    return None


def _model_cfg(cfg: dict[str, Any], source: str) -> dict[str, Any]:
    """The model config out of an open_clip config file (plain, or ``{"model_cfg", "preprocess_cfg"}``)."""
    model_cfg = cfg.get("model_cfg", cfg)
    if not isinstance(model_cfg, dict) or not {"vision_cfg", "text_cfg"} <= set(model_cfg):
        raise CheckpointError(f"The open_clip config of {source!r} lacks vision_cfg / text_cfg.")
    return model_cfg


def _from_open_clip(state_dict: dict[str, torch.Tensor], cfg: dict[str, Any], source: str) -> Checkpoint:
    """An open_clip state dict with its config (plain model config, or ``{"model_cfg", "preprocess_cfg"}``)."""
    model_cfg = _model_cfg(cfg, source)
    check_open_clip_config(model_cfg)
    ours = openai_to_hf(state_dict)
    preprocess = dict(cfg.get("preprocess_cfg") or {})
    config = _open_clip_architecture(model_cfg, ours)
    config.dtype = stored_dtype(state_dict)
    return Checkpoint(config, ours, "open_clip", source, preprocess_cfg=preprocess,
                      tokenizer_name=_other_tokenizer(model_cfg.get("text_cfg") or {}))


def _read_open_clip_repo(name: str, hub_kwargs: dict[str, Any]) -> Checkpoint:
    """A folder or hub repo holding ``open_clip_config.json`` and ``open_clip_model.safetensors`` (or ``.bin``)."""
    cfg = hub.read_json(hub.resolve_file(name, OPEN_CLIP_CONFIG, **hub_kwargs))  # type: ignore[arg-type]
    for filename in OPEN_CLIP_WEIGHTS:
        path = hub.resolve_file(name, filename, required=False, **hub_kwargs)
        if path is not None:
            return _from_open_clip(hub.load_weights([path]), cfg, name)
    raise CheckpointError(f"{name!r} has {OPEN_CLIP_CONFIG} but no weights ({' or '.join(OPEN_CLIP_WEIGHTS)}).")


def open_clip_processing(name: str | os.PathLike, **hub_kwargs: Any) -> tuple[int, dict[str, Any]]:
    """The text context length and the ``preprocessor_config.json`` content of an open_clip folder or hub repo,
    from its ``open_clip_config.json`` alone (no weights are read).

    Raises CheckpointError where open_clip tokenizes this model with something else than OpenAI's BPE.
    """
    name = os.fspath(name).removeprefix(OPEN_CLIP_HUB_PREFIX)
    cfg = hub.read_json(hub.resolve_file(name, OPEN_CLIP_CONFIG, **hub_kwargs))  # type: ignore[arg-type]
    model_cfg = _model_cfg(cfg, name)
    text, vision = model_cfg["text_cfg"] or {}, model_cfg["vision_cfg"] or {}
    other = _other_tokenizer(text)
    if other:
        raise foreign_tokenizer_error(name, other)
    image_size = _square_size(vision.get("image_size", 224), f"{name!r}")
    return (int(text.get("context_length", 77)),
            image_processor_config(dict(cfg.get("preprocess_cfg") or {}), image_size))


def _read_hf(name: str, hub_kwargs: dict[str, Any]) -> Checkpoint:
    """A transformers folder or hub id."""
    config = CLIPConfig.from_pretrained(name, **hub_kwargs)
    state_dict = _drop_position_ids(hub.load_weights(hub.resolve_weights(name, **hub_kwargs)))
    path = hub.resolve_file(name, IMAGE_PROCESSOR_NAME, required=False, **hub_kwargs)
    return Checkpoint(config, state_dict, "hf", name, image_processor=hub.read_json(path) if path else None,
                      hub_kwargs=hub_kwargs)


def _drop_position_ids(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Old transformers files store the position_ids buffers; they are not weights."""
    return {k: v for k, v in state_dict.items() if not k.endswith("position_ids")}


def _json_arg(value: dict[str, Any] | str | os.PathLike) -> dict[str, Any]:
    """An open_clip config given as a dict or a JSON path."""
    return dict(value) if isinstance(value, dict) else hub.read_json(os.fspath(value))


def _read_optional_json(path: str) -> dict[str, Any] | None:
    return hub.read_json(path) if os.path.isfile(path) else None


def _config_beside(path: str) -> dict[str, Any] | None:
    """An open_clip config next to a weights file: open_clip_config.json, ``<stem>.json`` or an open_clip-shaped
    config.json; None when there is none (the file is then read as an OpenAI checkpoint)."""
    folder, stem = os.path.dirname(path) or ".", Path(path).stem
    for name in (OPEN_CLIP_CONFIG, f"{stem}.json", CONFIG_NAME):
        candidate = os.path.join(folder, name)
        if os.path.isfile(candidate):
            data = hub.read_json(candidate)
            model_cfg = data.get("model_cfg", data)
            if isinstance(model_cfg, dict) and {"vision_cfg", "text_cfg"} <= set(model_cfg):
                return data
    return None
