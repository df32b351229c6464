"""``from_pretrained`` and ``save_pretrained`` for the CLIP models.

Loading builds the model on the meta device (no random weights that would be thrown away), reads the weights
(safetensors first; ``.bin`` only with ``weights_only=True``), checks every key and shape by name, and assigns the
checkpoint tensors in place. Only the tensors a checkpoint lacks are initialised, with the reference's rules.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from typing import Any, Iterator

import torch
from torch import nn

from clipfast.configuration import PretrainedConfig
from clipfast.errors import CheckpointError
from clipfast.hub import load_weights, resolve_weights, save_weights
from clipfast.modeling import (ATTN_IMPLEMENTATIONS, CLIPPreTrainedModel, CLIPTextEmbeddings,
                               CLIPVisionEmbeddings, no_init_weights)

logger = logging.getLogger("clipfast")

# from_pretrained options of transformers that have no effect here; accepted so users' calls keep working
_IGNORED_KWARGS = ("low_cpu_mem_usage", "trust_remote_code", "force_download", "resume_download", "proxies",
                   "use_auth_token", "mirror", "_fast_init", "from_tf", "from_flax", "offload_folder",
                   "offload_state_dict", "use_safetensors", "_from_auto", "_from_pipeline", "code_revision",
                   "weights_only", "tp_plan")
# keys of another CLIP head or tower: dropping them is expected when loading one tower from a full checkpoint
_OTHER_PART = re.compile(r"^(text_model\.|vision_model\.|logit_scale$|text_projection\.|visual_projection\.)")
_POSITION_IDS = re.compile(r"(^|\.)position_ids$")


def resolve_dtype(dtype: Any, config: PretrainedConfig, state_dict: dict[str, torch.Tensor] | None) -> torch.dtype:
    """``None`` -> float32; ``"auto"`` -> the config's dtype, else the checkpoint's first float tensor."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if config.torch_dtype:
            return resolve_dtype(config.torch_dtype, config, None)
        for tensor in (state_dict or {}).values():
            if tensor.is_floating_point():
                return tensor.dtype
        return torch.float32
    name = str(dtype).removeprefix("torch.")
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(f"torch_dtype={dtype!r} is not a floating-point torch dtype; use e.g. torch.float16, "
                         "'bfloat16' or 'auto'.")
    return value


def check_attn_implementation(name: str | dict[str, str | None] | None) -> Any:
    """Validate the attention switch (or a dict of them by sub-config, e.g. ``{"text_config": "eager",
    "vision_config": "sdpa"}``); flash attention needs CUDA."""
    if isinstance(name, dict):
        return {part: check_attn_implementation(value) for part, value in name.items()}
    name = name or "sdpa"
    if name not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation={name!r} is not supported; choose one of {list(ATTN_IMPLEMENTATIONS)}.")
    if name == "flash_attention_2" and not torch.cuda.is_available():
        raise ValueError("attn_implementation='flash_attention_2' needs a CUDA GPU (and float16 or bfloat16 "
                         "weights); none is available. Use attn_implementation='sdpa'.")
    return name


def build_model(cls: type, config: PretrainedConfig, *, torch_dtype: Any = None,
                attn_implementation: str | None = None) -> Any:
    """A randomly initialised model of class ``cls``."""
    if attn_implementation is not None:
        config._attn_implementation = check_attn_implementation(attn_implementation)
    dtype = resolve_dtype(torch_dtype, config, None)
    model = cls(config)
    return model.to(dtype) if dtype != torch.float32 else model


def from_pretrained(cls: type, pretrained_model_name_or_path: str | os.PathLike, *model_args: Any,
                    config: PretrainedConfig | None = None, subfolder: str = "", revision: str | None = None,
                    cache_dir: str | os.PathLike | None = None, local_files_only: bool = False,
                    token: str | bool | None = None, torch_dtype: Any = None, dtype: Any = None,
                    attn_implementation: str | None = None, variant: str | None = None, device_map: Any = None,
                    output_loading_info: bool = False, ignore_mismatched_sizes: bool = False,
                    key_mapping: dict[str, str] | None = None, **kwargs: Any) -> Any:
    """Load ``cls`` from a folder or hub id.

    Args:
        pretrained_model_name_or_path: a local folder, or a hub id such as ``"openai/clip-vit-base-patch32"``.
        config: a config to use instead of the checkpoint's config.json.
        subfolder, revision, cache_dir, local_files_only, token: where files come from (see ``clipfast.hub``).
        torch_dtype / dtype: ``None`` (float32), ``"auto"`` (as stored), or a dtype / dtype name.
        attn_implementation: "eager", "sdpa" (default) or "flash_attention_2".
        device_map: None or a single device ("cpu", "cuda", "cuda:0", "auto").
        output_loading_info: also return ``{"missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"}``.
        ignore_mismatched_sizes: re-initialise tensors whose shape differs instead of failing.
        key_mapping: regex -> replacement renames applied to checkpoint keys.
        kwargs: config attributes to override (e.g. ``output_hidden_states=True``).
    """
    if model_args:
        raise TypeError(f"{cls.__name__}.from_pretrained takes no extra positional arguments; got {model_args!r}.")
    from clipfast import formats  # single files (OpenAI .pt, open_clip) and open_clip folders, renamed in memory

    where = dict(subfolder=subfolder, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
                 token=token)
    kind = formats.source_kind(pretrained_model_name_or_path, **where)
    if kind != formats.HF:
        ckpt = formats.read_checkpoint(pretrained_model_name_or_path, kwargs.pop("open_clip_config", None), kind=kind,
                                       **where)
        if config is None:
            config = config_from_dict(cls, ckpt.config.to_dict(), ckpt.source)
        return load_state_into(cls, config, ckpt.state_dict, ckpt.source, torch_dtype=torch_dtype, dtype=dtype,
                               attn_implementation=attn_implementation, device_map=device_map,
                               output_loading_info=output_loading_info, ignore_mismatched_sizes=ignore_mismatched_sizes,
                               key_mapping=key_mapping, **kwargs)
    source = os.fspath(pretrained_model_name_or_path)
    hub = dict(subfolder=subfolder, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
               token=token)
    if config is None:
        config = config_from_dict(cls, cls.config_class.get_config_dict(source, **hub), source)
    state_dict = load_weights(resolve_weights(source, variant=variant, **hub))
    return load_state_into(cls, config, state_dict, source, torch_dtype=torch_dtype, dtype=dtype,
                           attn_implementation=attn_implementation, device_map=device_map,
                           output_loading_info=output_loading_info, ignore_mismatched_sizes=ignore_mismatched_sizes,
                           key_mapping=key_mapping, **kwargs)


def config_from_dict(cls: type, full: dict[str, Any], source: str) -> PretrainedConfig:
    """The config ``cls`` needs out of a checkpoint's config dict (a tower's sub-config out of a CLIPConfig)."""
    data = cls.config_class._select(full, source)
    if data is not full and "projection_dim" in full and cls.__name__.endswith("WithProjection"):
        # a tower with projection taken out of a CLIPModel checkpoint: the projection there is the
        # composite's projection_dim (sub-configs of some checkpoints carry a stale default)
        data = {**data, "projection_dim": full["projection_dim"]}
    return cls.config_class.from_dict(data)


def load_state_into(cls: type, config: PretrainedConfig, state_dict: dict[str, torch.Tensor], source: str, *,
                    torch_dtype: Any = None, dtype: Any = None, attn_implementation: str | None = None,
                    device_map: Any = None, output_loading_info: bool = False, ignore_mismatched_sizes: bool = False,
                    key_mapping: dict[str, str] | None = None, **kwargs: Any) -> Any:
    """Build ``cls`` on the meta device and put ``state_dict`` into it, with ``from_pretrained``'s options."""
    for name in _IGNORED_KWARGS:
        kwargs.pop(name, None)
    if not isinstance(config, cls.config_class):
        raise TypeError(f"config must be a {cls.config_class.__name__}, got {type(config).__name__}.")
    _apply_config_kwargs(config, kwargs)
    config._attn_implementation = check_attn_implementation(attn_implementation or config._attn_implementation_value)
    config._name_or_path = source
    if key_mapping:
        state_dict = _rename(state_dict, key_mapping)
    target_dtype = resolve_dtype(dtype if dtype is not None else torch_dtype, config, state_dict)
    _set_config_dtype(config, target_dtype)
    with torch.device("meta"), no_init_weights():
        model = cls(config)
    state_dict = _match_prefix(state_dict, model)
    info = _assign(model, state_dict, target_dtype, ignore_mismatched_sizes, source)
    _report(model, source, info)
    model.name_or_path = source
    device = _device(device_map)
    _warn_slow_cpu_bf16(target_dtype, device)
    model = model.to(device).eval()
    return (model, info) if output_loading_info else model


def _set_config_dtype(config: PretrainedConfig, dtype: torch.dtype) -> None:
    """Record the dtype the model is loaded in, on the config and its sub-configs (as transformers does)."""
    config.dtype = dtype  # stored by name
    for sub in vars(config).values():
        if isinstance(sub, PretrainedConfig):
            _set_config_dtype(sub, dtype)


def _warn_slow_cpu_bf16(dtype: torch.dtype, device: torch.device) -> None:
    """bf16 on a CPU without bf16 hardware runs several times slower than fp32: say so, and what to do."""
    if dtype != torch.bfloat16 or device.type != "cpu":
        return
    from clipfast.optimize import cpu_has_native_bf16

    if not cpu_has_native_bf16():
        warnings.warn("This CPU has no native bfloat16 (no AVX512-BF16/AMX): a bf16 model runs several times "
                      "slower than float32 here. Load in float32, or keep the bf16 weights and compute in fp32 "
                      "with clipfast.optimize.cpu_bf16_as_fp32(model).", stacklevel=4)


def _apply_config_kwargs(config: PretrainedConfig, kwargs: dict[str, Any]) -> None:
    """Config attributes passed to from_pretrained override the file; anything else is refused by name."""
    unknown = []
    for key, value in kwargs.items():
        if hasattr(config, key) or key in ("num_labels", "id2label", "label2id"):
            setattr(config, key, value)
        else:
            unknown.append(key)
    if unknown:
        raise TypeError(f"from_pretrained got unexpected keyword arguments {unknown}; they are neither loading "
                        "options nor config attributes.")


def _rename(state_dict: dict[str, torch.Tensor], key_mapping: dict[str, str]) -> dict[str, torch.Tensor]:
    """Apply user regex renames to checkpoint keys."""
    out = {}
    for key, tensor in state_dict.items():
        for pattern, replacement in key_mapping.items():
            key = re.sub(pattern, replacement, key)
        out[key] = tensor
    return out


def _match_prefix(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Fit the checkpoint's key prefixes to the model's: drop the base-model prefix ``clip.`` (weights saved from a
    wrapper, as transformers strips ``base_model_prefix``), and add a missing tower prefix (transformers 5 keeps
    single-tower weights as ``embeddings.*`` in memory)."""
    expected = set(model.state_dict())
    if expected & set(state_dict):
        return state_dict
    prefix = getattr(model, "base_model_prefix", "") + "."
    if prefix != "." and any(k.startswith(prefix) for k in state_dict):
        state_dict = {k.removeprefix(prefix): v for k, v in state_dict.items()}
        if expected & set(state_dict):
            return state_dict
    for prefix in ("text_model.", "vision_model."):
        renamed = {prefix + k: v for k, v in state_dict.items()}
        if expected & set(renamed):
            return renamed
    return state_dict


def _assign(model: CLIPPreTrainedModel, state_dict: dict[str, torch.Tensor], dtype: torch.dtype,
            ignore_mismatched_sizes: bool, source: str) -> dict[str, list]:
    """Check keys and shapes, put checkpoint tensors into the meta model, initialise what is missing."""
    expected = model.state_dict()
    unexpected = [k for k in state_dict if k not in expected and not _POSITION_IDS.search(k)]
    missing = [k for k in expected if k not in state_dict]
    mismatched = []
    usable: dict[str, torch.Tensor] = {}
    for key, target in expected.items():
        tensor = state_dict.get(key)
        if tensor is None:
            continue
        if tensor.shape != target.shape and tensor.numel() == target.numel() == 1:
            tensor = tensor.reshape(target.shape)  # logit_scale saved as (1,) by some exporters
        if tensor.shape != target.shape:
            mismatched.append((key, tuple(tensor.shape), tuple(target.shape)))
            continue
        usable[key] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    if mismatched and not ignore_mismatched_sizes:
        lines = "\n".join(f"  {k}: checkpoint {c}, model {m}" for k, c, m in mismatched[:20])
        raise CheckpointError(
            f"{len(mismatched)} tensor(s) of {source!r} do not fit {type(model).__name__} built from its config:\n"
            f"{lines}\nThe config does not describe these weights. Fix config.json, or pass "
            "ignore_mismatched_sizes=True to re-initialise them.")
    model.load_state_dict(usable, strict=False, assign=True)
    _materialize(model, dtype, {k for k in expected if k not in usable})
    return {"missing_keys": missing, "unexpected_keys": unexpected,
            "mismatched_keys": sorted(k for k, _, _ in mismatched), "error_msgs": [], "_mismatched_shapes": mismatched}


def _post_order(module: nn.Module) -> Iterator[nn.Module]:
    """Modules children-first, the order of ``nn.Module.apply`` (parents' init rules win)."""
    for child in module.children():
        yield from _post_order(child)
    yield module


@torch.no_grad()
def _materialize(model: CLIPPreTrainedModel, dtype: torch.dtype, uninitialised: set[str]) -> None:
    """Allocate the tensors still on the meta device and initialise them with the reference's rules."""
    for module in model.modules():
        if any(p.is_meta for p in module.parameters(recurse=False)):
            module.to_empty(device="cpu", recurse=False)
            for name, param in module.named_parameters(recurse=False):
                if param.dtype != dtype:
                    setattr(module, name, nn.Parameter(param.to(dtype), requires_grad=param.requires_grad))
        if isinstance(module, (CLIPTextEmbeddings, CLIPVisionEmbeddings)):
            length = module.position_embedding.weight.shape[0]
            module.position_ids = torch.arange(length).expand((1, -1))
    params = dict(model.named_parameters())
    todo = {id(params[k]) for k in uninitialised if k in params}
    if not todo:
        return
    for module in _post_order(model):
        for tensor, init in model._init_rules(module):
            if id(tensor) in todo:
                init(tensor)


def _report(model: nn.Module, source: str, info: dict[str, list]) -> None:
    """Warn about what was not used or not found, as transformers does.

    Keys of a CLIP part this class does not have (the other tower, logit_scale, a projection) are expected when
    loading one tower from a full checkpoint, and only logged at info level.
    """
    class_name = type(model).__name__
    own_parts = {name for name, _ in model.named_children()} | {name for name, _ in model.named_parameters(
        recurse=False)}
    unexpected = info["unexpected_keys"]
    expected_drop = [k for k in unexpected if _OTHER_PART.match(k) and k.split(".")[0] not in own_parts]
    surprising = [k for k in unexpected if k not in expected_drop]
    if expected_drop:
        logger.info("%d weights of %s were not used by %s (another part of a CLIP checkpoint).",
                    len(expected_drop), source, class_name)
    if surprising:
        warnings.warn(f"Some weights of {source!r} were not used by {class_name}: {surprising[:10]}"
                      f"{' ...' if len(surprising) > 10 else ''}", stacklevel=3)
    if info["missing_keys"]:
        warnings.warn(f"Some weights of {class_name} were not in {source!r} and are newly initialized: "
                      f"{info['missing_keys'][:10]}{' ...' if len(info['missing_keys']) > 10 else ''}. "
                      "Train the model before using it for predictions.", stacklevel=3)
    for key, ckpt, mine in info.pop("_mismatched_shapes"):
        warnings.warn(f"{key} of {source!r} has shape {ckpt}, the model needs {mine}: newly initialized.",
                      stacklevel=3)


def _device(device_map: Any) -> torch.device:
    """A single target device from transformers' ``device_map`` values."""
    if device_map is None:
        return torch.device("cpu")
    if device_map == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device_map, dict):
        devices = set(device_map.values())
        if len(devices) != 1:
            raise ValueError("clipfast places the whole model on one device; device_map with several devices "
                             f"({sorted(map(str, devices))}) is not supported.")
        device_map = devices.pop()
    if isinstance(device_map, int):
        return torch.device("cuda", device_map)
    return torch.device(device_map)


def refuse_push_to_hub() -> None:
    """clipfast never uploads: the error for ``push_to_hub``, with what to do instead."""
    raise NotImplementedError("push_to_hub is not supported by clipfast: save_pretrained(folder), then upload it "
                              "with huggingface_hub.upload_folder(repo_id=..., folder_path=folder).")


def save_pretrained(model: CLIPPreTrainedModel, save_directory: str | os.PathLike, *,
                    safe_serialization: bool = True, max_shard_size: int | str = "5GB",
                    state_dict: dict[str, torch.Tensor] | None = None, **kwargs: Any) -> None:
    """Write config.json and model.safetensors (sharded above ``max_shard_size``)."""
    if kwargs.get("push_to_hub"):
        refuse_push_to_hub()
    if os.path.isfile(save_directory):
        raise CheckpointError(f"save_pretrained needs a folder, but {os.fspath(save_directory)!r} is a file.")
    os.makedirs(save_directory, exist_ok=True)
    config = model.config
    config.architectures = [type(model).__name__]
    config.dtype = model.dtype  # stored by name
    config.save_pretrained(save_directory)
    save_weights(state_dict if state_dict is not None else model.state_dict(), save_directory,
                 max_shard_size=max_shard_size, safe_serialization=safe_serialization)
