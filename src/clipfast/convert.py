"""Any CLIP checkpoint as a model with its tokenizer and image processor, and conversion between formats.

Reading lives a layer below, in :mod:`clipfast.formats` (OpenAI ``.pt`` files, open_clip checkpoints, transformers
folders, renamed to our keys; TorchScript archives through :mod:`clipfast.torchscript`, which runs nothing). This
module builds on it:

- :func:`load`: model, tokenizer and image processor of any checkpoint (``clipfast.load``);
- :func:`convert`: write a checkpoint as a transformers folder, an OpenAI ``.pt`` or an open_clip folder
  (``clipfast convert``).

Example:
    >>> import clipfast
    >>> model, tokenizer, image_processor = clipfast.load("ViT-B-32.pt")            # doctest: +SKIP
    >>> clip = clipfast.load("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K")            # doctest: +SKIP
    >>> clipfast.convert.convert("ViT-B-32.pt", "clip-vit-b32")                         # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from clipfast.constants import CONFIG_NAME, IMAGE_PROCESSOR_NAME, OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS, SAFE_WEIGHTS
from clipfast import formats
from clipfast.errors import CheckpointError
from clipfast.formats import HUB_KWARGS, Checkpoint, foreign_tokenizer_error, hf_to_openai, open_clip_model_config
from clipfast.image_processing import CLIPImageProcessor
from clipfast.loading import config_from_dict, load_state_into
from clipfast.modeling import CLIPModel
from clipfast.tokenization_fast import CLIPTokenizerFast

# ---------------------------------------------------------------------------------------------------------------
# loading


class LoadedCLIP(NamedTuple):
    """What :func:`load` returns; unpack it as ``model, tokenizer, image_processor = clipfast.load(...)``."""

    model: Any
    tokenizer: Any
    image_processor: Any


def load(name_or_path: str | os.PathLike, *, open_clip_config: dict[str, Any] | str | os.PathLike | None = None,
         **kwargs: Any) -> LoadedCLIP:
    """Load any CLIP checkpoint with its tokenizer and image processor.

    Accepts OpenAI ``.pt`` files (TorchScript archives or state dicts), open_clip weights files (config beside
    them or passed as ``open_clip_config``), open_clip folders and hub repos (``hf-hub:org/name``), and
    transformers folders and hub ids. ``kwargs`` go to ``CLIPModel.from_pretrained`` (``torch_dtype``,
    ``device_map``, ``attn_implementation``, ``revision``, ...). A transformers folder without tokenizer or
    preprocessor files gives None for that part.

    Example:
        >>> model, tokenizer, image_processor = clipfast.load("ViT-B-32.pt")   # doctest: +SKIP
        >>> inputs = tokenizer(["a photo of a cat"], padding=True, return_tensors="pt")  # doctest: +SKIP
    """
    hub_kwargs = {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
    kind = formats.source_kind(name_or_path, **hub_kwargs)
    if open_clip_config is not None or kind != formats.HF:
        ckpt = formats.read_checkpoint(name_or_path, open_clip_config, kind=kind, **hub_kwargs)
        return load_checkpoint(ckpt, **kwargs)
    model = CLIPModel.from_pretrained(name_or_path, **kwargs)
    return LoadedCLIP(model, *_saved_processors(name_or_path, hub_kwargs))


def load_checkpoint(ckpt: Checkpoint, **kwargs: Any) -> LoadedCLIP:
    """Model, tokenizer and image processor of a checkpoint read by :func:`clipfast.formats.read_checkpoint`;
    ``kwargs`` are ``from_pretrained``'s model options (``torch_dtype``, ``device_map``, ...)."""
    model = model_from_checkpoint(CLIPModel, ckpt, **kwargs)
    if ckpt.foreign:
        processor = CLIPImageProcessor.from_dict(ckpt.image_processor_config())
        return LoadedCLIP(model, checkpoint_tokenizer(ckpt), processor)
    # a transformers checkpoint (or its weights file): the tokenizer and processor files beside the weights
    return LoadedCLIP(model, *_saved_processors(ckpt.source, ckpt.hub_kwargs))


def _saved_processors(name_or_path: str | os.PathLike, hub_kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """The tokenizer and image processor saved in a transformers folder or hub repo, each None when absent."""
    return (_optional(lambda: CLIPTokenizerFast.from_pretrained(name_or_path, **hub_kwargs)),
            _optional(lambda: CLIPImageProcessor.from_pretrained(name_or_path, **hub_kwargs)))


def _optional(make: Callable[[], Any]) -> Any:
    """``make()``, or None when the files it needs are absent."""
    try:
        return make()
    except CheckpointError:
        return None


def model_from_checkpoint(cls: type, ckpt: Checkpoint, *, config: Any = None, **kwargs: Any) -> Any:
    """A model of class ``cls`` holding a checkpoint read into memory, with ``from_pretrained``'s options."""
    for name in (*HUB_KWARGS, "variant"):
        kwargs.pop(name, None)
    if config is None:
        config = config_from_dict(cls, ckpt.config.to_dict(), ckpt.source)
    return load_state_into(cls, config, ckpt.state_dict, ckpt.source, **kwargs)


def checkpoint_tokenizer(ckpt: Checkpoint, openai_cleaning: bool = True) -> Any:
    """The tokenizer of a checkpoint: a transformers folder's own files, else OpenAI's BPE sized to the text
    context, with OpenAI's text cleaning (the ids open_clip and OpenAI's code give) unless
    ``openai_cleaning=False`` (the ids transformers gives, for a folder transformers will read)."""
    if ckpt.tokenizer_name:
        raise foreign_tokenizer_error(ckpt.source, ckpt.tokenizer_name)
    if not ckpt.foreign:
        return CLIPTokenizerFast.from_pretrained(ckpt.source, **ckpt.hub_kwargs)
    return CLIPTokenizerFast.from_openai_vocab(model_max_length=ckpt.config.text_config.max_position_embeddings,
                                               text_cleaning="openai" if openai_cleaning else None)


# ---------------------------------------------------------------------------------------------------------------
# writing: transformers folder, OpenAI .pt, open_clip folder


def convert(source: str | os.PathLike, destination: str | os.PathLike, *, to: str = "hf",
            open_clip_config: dict[str, Any] | str | os.PathLike | None = None, **hub_kwargs: Any) -> list[str]:
    """Convert a CLIP checkpoint of any format; returns the paths written.

    ``to="hf"``: a transformers folder (config.json, model.safetensors, tokenizer files, preprocessor_config.json)
    that clipfast and transformers load. ``to="openai"``: one ``.pt`` state dict at ``destination``.
    ``to="open_clip"``: a hub-style folder (open_clip_config.json + open_clip_model.safetensors).

    Example:
        >>> convert("ViT-B-32.pt", "clip-vit-b32")   # doctest: +SKIP
    """
    writers = {"hf": _write_hf, "openai": _write_openai, "open_clip": _write_open_clip}
    if to not in writers:
        raise ValueError(f"to={to!r} is not a checkpoint format; choose one of {sorted(writers)}.")
    ckpt = formats.read_checkpoint(source, open_clip_config, **hub_kwargs)
    return writers[to](ckpt, os.fspath(destination))


def _write_hf(ckpt: Checkpoint, destination: str) -> list[str]:
    """config.json + model.safetensors, tokenizer files, preprocessor_config.json (checked before writing)."""
    # the folder is for transformers too: its crop and text cleaning
    processor = ckpt.image_processor_config(open_clip_crop=False) if ckpt.foreign else ckpt.image_processor
    tokenizer = checkpoint_tokenizer(ckpt, openai_cleaning=False) if ckpt.foreign else \
        _optional(lambda: checkpoint_tokenizer(ckpt))
    model = model_from_checkpoint(CLIPModel, ckpt)
    model.save_pretrained(destination)
    written = [os.path.join(destination, n) for n in (CONFIG_NAME, SAFE_WEIGHTS)]
    if tokenizer is not None:
        written += list(tokenizer.save_pretrained(destination))
    if processor is not None:
        written.append(_write_json(os.path.join(destination, IMAGE_PROCESSOR_NAME), processor))
    return written


def _write_openai(ckpt: Checkpoint, destination: str) -> list[str]:
    """One ``.pt`` state dict with OpenAI's keys, if the model follows OpenAI's conventions."""
    config = ckpt.config
    for tower in (config.text_config, config.vision_config):
        if tower.hidden_act != "quick_gelu" or tower.hidden_size != 64 * tower.num_attention_heads:
            raise CheckpointError(
                f"OpenAI checkpoints imply quick_gelu and heads = width / 64; this model has {tower.hidden_act} and "
                f"{tower.num_attention_heads} heads of width {tower.hidden_size}. Use --to open_clip instead.")
    if config.text_config.eos_token_id not in (2, 49407):
        raise CheckpointError(f"OpenAI checkpoints pool at the largest token id; this model pools at id "
                              f"{config.text_config.eos_token_id}. Use --to open_clip instead.")
    if os.path.isdir(destination):
        raise CheckpointError(f"--to openai writes one .pt file, but {destination!r} is a folder.")
    os.makedirs(os.path.dirname(destination) or ".", exist_ok=True)
    torch.save(hf_to_openai(ckpt.state_dict), destination)
    return [destination]


def _write_open_clip(ckpt: Checkpoint, destination: str) -> list[str]:
    """open_clip's hub layout: open_clip_config.json ({model_cfg, preprocess_cfg}) + open_clip_model.safetensors."""
    from safetensors.torch import save_file

    cfg = {"model_cfg": open_clip_model_config(ckpt.config), "preprocess_cfg": ckpt.open_clip_preprocess_cfg()}
    if os.path.isfile(destination):
        raise CheckpointError(f"--to open_clip writes a folder, but {destination!r} is a file.")
    os.makedirs(destination, exist_ok=True)
    weights = os.path.join(destination, OPEN_CLIP_WEIGHTS[0])
    save_file({k: v.contiguous() for k, v in hf_to_openai(ckpt.state_dict).items()}, weights,
              metadata={"format": "pt"})
    return [_write_json(os.path.join(destination, OPEN_CLIP_CONFIG), cfg), weights]


def _write_json(path: str, data: dict[str, Any]) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path
