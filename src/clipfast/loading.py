"""``from_pretrained`` and ``save_pretrained``, and :class:`PreTrainedModel`, the base of the public models that
holds transformers' model API.

Loading builds the model on the meta device (no random weights that would be thrown away), reads the weights
(safetensors first; ``.bin`` only with ``weights_only=True``), checks every key and shape by name, and assigns the
checkpoint tensors in place. Only the tensors a checkpoint lacks are initialised, with the reference's rules.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from typing import Any, Callable, Iterator

import torch
from torch import nn

from clipfast.configuration import PretrainedConfig
from clipfast.errors import CheckpointError
from clipfast.hub import load_weights, resolve_weights, save_weights
from clipfast.kernels import cpu_has_native_bf16, drop_packs
from clipfast.model_inputs import check_labels

logger = logging.getLogger("clipfast")

ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2")
_INIT_WEIGHTS = [True]  # switched off while loading builds a model on the meta device

# from_pretrained options of transformers that have no effect here; accepted so users' calls keep working
_IGNORED_KWARGS = ("low_cpu_mem_usage", "trust_remote_code", "force_download", "resume_download", "proxies",
                   "use_auth_token", "mirror", "_fast_init", "from_tf", "from_flax", "offload_folder",
                   "offload_state_dict", "use_safetensors", "_from_auto", "_from_pipeline", "code_revision",
                   "weights_only", "tp_plan")
# keys of another CLIP head or tower: dropping them is expected when loading one tower from a full checkpoint
_OTHER_PART = re.compile(r"^(text_model\.|vision_model\.|logit_scale$|text_projection\.|visual_projection\.)")
_POSITION_IDS = re.compile(r"(^|\.)position_ids$")


@contextlib.contextmanager
def no_init_weights() -> Iterator[None]:
    """Build models without initialising their weights (loading overwrites them anyway).

    On the meta device, initialisation is pure waste: torch even imports its reference implementations of
    ``normal_`` for it, which costs over a second of start-up.
    """
    names = ("normal_", "uniform_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_", "xavier_normal_",
             "trunc_normal_", "constant_", "zeros_", "ones_")
    saved = {name: getattr(nn.init, name) for name in names}
    _INIT_WEIGHTS.append(False)
    try:
        for name in names:  # torch's own layers (Linear, Embedding, ...) initialise themselves in __init__
            setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        _INIT_WEIGHTS.pop()
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


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


def build_from_config(cls: type, config: PretrainedConfig, *, torch_dtype: Any = None,
                      attn_implementation: str | None = None) -> Any:
    """A randomly initialised model of class ``cls``."""
    if attn_implementation is not None:
        config._attn_implementation = check_attn_implementation(attn_implementation)
    dtype = resolve_dtype(torch_dtype, config, None)
    model = cls(config)
    return model.to(dtype) if dtype != torch.float32 else model


def load_pretrained(cls: type, pretrained_model_name_or_path: str | os.PathLike, *model_args: Any,
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


def _assign(model: PreTrainedModel, state_dict: dict[str, torch.Tensor], dtype: torch.dtype,
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
def _materialize(model: PreTrainedModel, dtype: torch.dtype, uninitialised: set[str]) -> None:
    """Allocate the tensors still on the meta device and initialise them with the reference's rules."""
    for module in model.modules():
        if any(p.is_meta for p in module.parameters(recurse=False)):
            # buffers the model built on the CPU (position ids) survive; to_empty would leave them uninitialised
            kept = {name: b for name, b in module.named_buffers(recurse=False) if b is not None and not b.is_meta}
            module.to_empty(device="cpu", recurse=False)
            for name, buffer in kept.items():
                setattr(module, name, buffer)
            for name, param in module.named_parameters(recurse=False):
                if param.dtype != dtype:
                    setattr(module, name, nn.Parameter(param.to(dtype), requires_grad=param.requires_grad))
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


def save_pretrained(model: PreTrainedModel, save_directory: str | os.PathLike, *,
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


# ---------------------------------------------------------------------------------------------------------------
# The model base class: transformers' model API, shared by every public model


class PreTrainedModel(nn.Module):
    """Base of the public models: ``from_pretrained`` / ``save_pretrained`` and the rest of transformers' model
    API (initialisation once, sizes, gradient checkpointing, attention switch, token-table resizing).

    A model class sets ``config_class`` and implements ``_init_rules`` (its initialisation, as data) and, if it
    has a token table, ``get_input_embeddings`` and ``_set_token_embedding``.
    """

    config_class: type[PretrainedConfig] = PretrainedConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    framework = "pt"
    is_parallelizable = False

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got "
                            f"{type(config).__name__}.")
        config.validate()  # fields may have been changed one at a time since construction (e.g. patch_size)
        backend = config._attn_implementation
        if backend not in ATTN_IMPLEMENTATIONS:
            raise ValueError(f"attn_implementation={backend!r} is not supported; choose one of "
                             f"{list(ATTN_IMPLEMENTATIONS)}.")
        self.config = config
        self.name_or_path = config._name_or_path

    # -- initialisation -----------------------------------------------------------------------------------------

    def post_init(self) -> None:
        """Initialise every weight as the reference does (children first, so specific rules win), once: a model
        already initialised or loaded keeps its weights, as the reference's does."""
        if _INIT_WEIGHTS[-1] and not getattr(self, "_weights_ready", False):
            self.apply(self._init_weights)
        self._weights_ready = True

    def init_weights(self) -> None:
        """transformers' public name of :meth:`post_init`'s initialisation."""
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Initialise the tensors that ``module``'s own rule covers."""
        for tensor, init in self._init_rules(module):
            init(tensor)

    def _init_rules(self, module: nn.Module) -> list[tuple[torch.Tensor, Callable[[torch.Tensor], Any]]]:
        """The initialisation rules for one module, as (tensor, in-place init) pairs; kept as data so that loading
        can initialise only the tensors a checkpoint lacks. The model classes say what they are."""
        return []

    # -- loading and saving -------------------------------------------------------------------------------------

    @classmethod
    def _from_config(cls, config: PretrainedConfig, torch_dtype: torch.dtype | None = None,
                     attn_implementation: str | None = None, **kwargs: Any) -> Any:
        """Build a randomly initialised model from a config (transformers' private constructor)."""
        return build_from_config(cls, config, torch_dtype=kwargs.pop("dtype", torch_dtype),
                                 attn_implementation=attn_implementation)

    @classmethod
    def from_config(cls, config: PretrainedConfig, **kwargs: Any) -> Any:
        """Alias of :meth:`_from_config` (the Auto classes' spelling)."""
        return cls._from_config(config, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *model_args: Any, **kwargs: Any) -> Any:
        """Load a model from a folder or hub id; see :func:`clipfast.loading.load_pretrained` for the options.

        Example:
            >>> model = CLIPModel.from_pretrained("openai/clip-vit-base-patch32")  # doctest: +SKIP
        """
        return load_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs)

    def save_pretrained(self, save_directory: Any, **kwargs: Any) -> None:
        """Write config.json and model.safetensors, loadable by clipfast and by transformers 4.x and 5.x."""
        save_pretrained(self, save_directory, **kwargs)

    def push_to_hub(self, *args: Any, **kwargs: Any) -> None:
        """Not supported: clipfast never uploads. Save with ``save_pretrained`` and upload the folder with
        ``huggingface_hub.upload_folder``."""
        refuse_push_to_hub()

    def classification_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """A classifier's loss as transformers picks it by ``config.problem_type`` (set from the labels if
        unset): MSE for regression, cross-entropy for single-label, BCE-with-logits for multi-label."""
        num_labels = self.config.num_labels
        single_label = self.config.problem_type in (None, "single_label_classification") and num_labels > 1
        labels = check_labels(labels, num_labels, single_label).to(logits.device)
        if self.config.problem_type is None:
            if num_labels == 1:
                self.config.problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                self.config.problem_type = "single_label_classification"
            else:
                self.config.problem_type = "multi_label_classification"
        problem = self.config.problem_type
        if problem == "regression":
            if num_labels == 1:
                return nn.functional.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype))
            return nn.functional.mse_loss(logits, labels.to(logits.dtype))
        if problem == "single_label_classification":
            return nn.functional.cross_entropy(logits.view(-1, num_labels), labels.view(-1))
        if problem == "multi_label_classification":
            return nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        raise ValueError(f"problem_type={problem!r} is not one of 'regression', 'single_label_classification', "
                         "'multi_label_classification'.")

    # -- what the model is --------------------------------------------------------------------------------------

    @property
    def base_model(self) -> nn.Module:
        """The model itself (CLIP models have no separate base model), as in transformers."""
        return getattr(self, self.base_model_prefix, self)

    @property
    def device(self) -> torch.device:
        """Device of the first parameter."""
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the first floating-point parameter."""
        return next(p.dtype for p in self.parameters() if p.is_floating_point())

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Number of parameters (optionally only those with requires_grad, or without the embedding tables)."""
        skipped = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)} if exclude_embeddings else set()
        return sum(p.numel() for p in self.parameters()
                   if (p.requires_grad or not only_trainable) and id(p) not in skipped)

    def get_memory_footprint(self, return_buffers: bool = True) -> int:
        """Bytes taken by the parameters (and buffers)."""
        tensors = [*self.parameters(), *(self.buffers() if return_buffers else [])]
        return sum(t.numel() * t.element_size() for t in tensors)

    def can_generate(self) -> bool:
        return False

    # -- switches -----------------------------------------------------------------------------------------------

    def set_attn_implementation(self, attn_implementation: str | dict[str, str]) -> None:
        """Switch the attention backend at runtime ("eager", "sdpa", "flash_attention_2", or a dict by sub-config)."""
        self.config._attn_implementation = check_attn_implementation(attn_implementation)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Recompute each encoder layer in the backward pass to save activation memory."""
        self._set_in_layers("gradient_checkpointing", True)

    def gradient_checkpointing_disable(self) -> None:
        """Undo :meth:`gradient_checkpointing_enable`."""
        self._set_in_layers("gradient_checkpointing", False)

    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(getattr(m, "gradient_checkpointing", False) for m in self.modules())

    def _set_in_layers(self, name: str, value: bool) -> None:
        """Set the switch ``name`` of every submodule that has one."""
        for module in self.modules():
            if module is not self and hasattr(module, name):
                setattr(module, name, value)

    def set_cpu_weight_packing(self, enabled: bool = True) -> "PreTrainedModel":
        """Opt in to (or out of) MKL weight packing for float32 CPU inference; returns the model.

        Each encoder layer then packs its float32 weights once, on its second CPU call without autograd (a
        one-shot call never pays for packing), and multiplies by the packs from then on: the same float32 math,
        ~1.3x faster at batch 1 for ViT-B/32 (~1.05x at batch 32). The packs cost one extra copy of the Linear
        weights of each tower that ran on CPU (~340 MB for the B/32 vision tower) and are rebuilt when a parameter
        changes: a new parameter or storage, ``load_state_dict``, in-place ops, optimizer steps (fused ones
        included: a sample of each parameter's values is checked on every call). Writes through ``param.data`` to
        a few elements can slip past the sample: call this again after them (it drops the packs, so the next call
        repacks). Off: the packs are freed. See :mod:`clipfast.kernels`.

        Example:
            >>> model = CLIPModel.from_pretrained(path).eval().set_cpu_weight_packing()  # doctest: +SKIP
        """
        for module in self.modules():
            if hasattr(module, "fast_paths"):  # a layer with a fast path on packed weights: (default, packed)
                default, packed = module.fast_paths
                module.cpu_weight_packing, module.fast = bool(enabled), packed if enabled else default
                drop_packs(module)
        return self

    def _apply(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``to()``, ``cuda()``, ``half()``... also drop the CPU weight packs, which the moved weights no longer use."""
        for module in self.modules():
            drop_packs(module)
        return super()._apply(fn, *args, **kwargs)

    # -- input embeddings ---------------------------------------------------------------------------------------

    def enable_input_require_grads(self) -> None:
        """Make the input embeddings' output require grad, so gradient checkpointing works with frozen
        embeddings (adapters, PEFT)."""
        def require_grads(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            output.requires_grad_(True)

        self._require_grads_hook = self.get_input_embeddings().register_forward_hook(require_grads)

    def disable_input_require_grads(self) -> None:
        """Undo :meth:`enable_input_require_grads`."""
        hook = getattr(self, "_require_grads_hook", None)
        if hook is not None:
            hook.remove()
            self._require_grads_hook = None

    def get_input_embeddings(self) -> nn.Module:
        """The token embedding (text models) or the patch embedding (vision models)."""
        raise NotImplementedError(f"{type(self).__name__} has no single input embedding.")

    def get_output_embeddings(self) -> None:
        return None

    def tie_weights(self) -> None:
        """CLIP ties no weights; present for API compatibility."""

    def resize_token_embeddings(self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None,
                                mean_resizing: bool = True) -> nn.Embedding:
        """Grow or shrink the token table (e.g. after ``tokenizer.add_tokens``), keeping existing rows, as
        transformers does: the size rounded up to ``pad_to_multiple_of``; new rows drawn around the old rows' mean
        (``mean_resizing``, with 1e-9 of their covariance) or from the initialisation rule; ``requires_grad`` kept.
        """
        old = self.get_input_embeddings()
        if not isinstance(old, nn.Embedding):
            raise TypeError(f"{type(self).__name__} has no token embedding to resize.")
        if new_num_tokens is None and pad_to_multiple_of is None:
            return old
        size = old.num_embeddings if new_num_tokens is None else int(new_num_tokens)
        if pad_to_multiple_of:
            size = -(-size // int(pad_to_multiple_of)) * int(pad_to_multiple_of)
        new = nn.Embedding(size, old.embedding_dim, device=old.weight.device, dtype=old.weight.dtype)
        with torch.no_grad():
            keep = min(size, old.num_embeddings)
            new.weight[:keep] = old.weight[:keep]
            if size > keep:
                new.weight[keep:] = (_rows_like(old.weight, size - keep) if mean_resizing else
                                     torch.randn_like(new.weight[keep:]) * 0.02 * self.config.initializer_factor)
        new.weight.requires_grad_(old.weight.requires_grad)
        self._set_token_embedding(new)
        return new

    def _set_token_embedding(self, table: nn.Embedding) -> None:
        """Put a resized token table in place (and its size into the config)."""
        raise TypeError(f"{type(self).__name__} has no token embedding to resize.")


def ignore_extra_kwargs(method: str, kwargs: dict[str, Any]) -> None:
    """Keywords a method does not take: ignored with one warning (the reference's
    ``filter_out_non_signature_kwargs``), so ``model.get_text_features(**processor_outputs)`` works."""
    if kwargs:
        warnings.warn(f"The following named arguments are not valid for `{method}` and were ignored: "
                      f"{', '.join(repr(k) for k in kwargs)}", UserWarning, stacklevel=3)


def _rows_like(table: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` new embedding rows around the mean of ``table``'s rows: drawn from N(mean, 1e-9 * covariance)
    when the covariance is positive definite, else the mean itself (transformers' mean resizing)."""
    rows = table.float()
    mean = rows.mean(dim=0)
    centered = rows - mean
    covariance = centered.T @ centered / rows.shape[0]
    try:
        scale = torch.linalg.cholesky(1e-9 * covariance.double()).float()
    except RuntimeError:  # not positive definite (fewer rows than dimensions, duplicates)
        return mean.expand(count, -1).to(table.dtype)
    return (mean + torch.randn(count, mean.shape[0], device=table.device) @ scale.T).to(table.dtype)
