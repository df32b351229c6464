"""CLIP configurations: ``CLIPTextConfig``, ``CLIPVisionConfig`` and ``CLIPConfig``, and config.json in and out.

Field names and defaults are those of transformers, so config.json files written by transformers 4.x, 5.x and
the 2021 Hub uploads (``text_config_dict``, ``torch_dtype``, generation leftovers) all load. Unknown keys are kept
as attributes and written back out.

Values are checked where they enter (construction, ``from_dict``, ``from_pretrained``, assignment): a wrong type
raises TypeError, a bad value :class:`~clipfast.errors.InputError` (a ValueError), each naming the field, the value
and what is expected. Whole floats such as ``12.0`` (some JSON writers store ints so) are taken as ints; ``3.5`` is
refused. Checks across fields (heads divide the width, the patch fits the image) run after construction and in
:meth:`PretrainedConfig.validate`, so that fields can be assigned one at a time.

Example:
    >>> from clipfast import CLIPConfig
    >>> CLIPConfig().vision_config.patch_size
    32
"""

from __future__ import annotations

import copy
import json
import logging
import math
import numbers
import os
from typing import Any, Callable, ClassVar

from clipfast.errors import CheckpointError, InputError
from clipfast.hub import CONFIG_NAME, read_json, resolve_file

logger = logging.getLogger(__name__)

# generic fields of transformers' base config that CLIP never uses but code written against it reads; they are
# defaults (not stored, so config.json stays as it was) until set
_BASE_DEFAULTS: dict[str, Any] = {
    "is_encoder_decoder": False, "is_decoder": False, "add_cross_attention": False, "tie_word_embeddings": True,
    "chunk_size_feed_forward": 0, "pruned_heads": dict, "torchscript": False, "use_bfloat16": False,
    "tf_legacy_loss": False, "finetuning_task": None, "tokenizer_class": None, "prefix": None,
    "task_specific_params": None, "cross_attention_hidden_size": None, "attribute_map": dict,
    "has_no_defaults_at_init": False, "_commit_hash": None, "pad_token_id": None, "bos_token_id": None,
    "eos_token_id": None, "sep_token_id": None, "decoder_start_token_id": None,
}

# keys of old config.json files that only made sense for text generation or for the writing library
_DROPPED_ON_LOAD = ("transformers_version", "model_type")


def _dtype_name(value: Any) -> str | None:
    """``torch.float16`` / ``"torch.float16"`` / ``"float16"`` -> ``"float16"``; None stays None."""
    if value is None:
        return None
    return str(value).removeprefix("torch.")


# -- field checks ------------------------------------------------------------------------------------------------
# Each field is checked where its value enters: construction, from_dict / from_pretrained and assignment. Wrong
# types raise TypeError, wrong values InputError (a ValueError); both name the field, the value and what is
# expected. Whole floats (12.0, as some JSON writers store ints) are taken as ints; 3.5 is refused.

# every hidden_act the model implements (modeling.ACT2FN plus its two module activations; a test keeps them equal)
HIDDEN_ACTS = ("quick_gelu", "gelu", "gelu_python", "gelu_10", "gelu_new", "gelu_accurate", "gelu_python_tanh",
               "gelu_pytorch_tanh", "gelu_fast", "relu", "relu2", "relu6", "silu", "swish", "mish", "tanh", "sigmoid",
               "linear", "laplace", "prelu", "leaky_relu")
_WHOLE_FLOATS = " (a whole float such as 12.0 is taken as 12)"


def _int(where: str, value: Any, expected: str) -> int:
    """``value`` as an int: ints and whole floats pass; bools, strings, 3.5, nan are refused."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, float)):
        raise TypeError(f"{where} must be {expected}; got {value!r} ({type(value).__name__}).")
    if isinstance(value, float) and not value.is_integer():  # also nan and inf
        raise InputError(f"{where} must be {expected}{_WHOLE_FLOATS}; got {value!r}.")
    return int(value)


def _positive_int(where: str, value: Any) -> int:
    """A size or count: an int >= 1."""
    whole = _int(where, value, "a positive int")
    if whole < 1:
        raise InputError(f"{where} must be a positive int; got {value!r}.")
    return whole


def _token_id(where: str, value: Any) -> int | None:
    """A special token id: an int or None."""
    return None if value is None else _int(where, value, "an int token id or None")


def _number(where: str, value: Any, expected: str, ok: Callable[[float], bool]) -> float | int:
    """A finite real number (not a bool) for which ``ok`` holds."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where} must be {expected}; got {value!r} ({type(value).__name__}).")
    if not math.isfinite(value) or not ok(value):
        raise InputError(f"{where} must be {expected}; got {value!r}.")
    return value if isinstance(value, (int, float)) else float(value)  # NumPy scalars: JSON cannot write them


def _hidden_act(where: str, value: Any) -> str:
    """An activation name the model implements."""
    if not isinstance(value, str) or value not in HIDDEN_ACTS:
        error = TypeError if not isinstance(value, str) else InputError
        raise error(f"{where}={value!r} is not supported; choose one of {sorted(HIDDEN_ACTS)}.")
    return value


_RULES: dict[str, Callable[[str, Any], Any]] = {
    **dict.fromkeys(("vocab_size", "hidden_size", "intermediate_size", "projection_dim", "num_hidden_layers",
                     "num_attention_heads", "max_position_embeddings", "num_channels", "image_size", "patch_size"),
                    _positive_int),
    **dict.fromkeys(("pad_token_id", "bos_token_id", "eos_token_id"), _token_id),
    "hidden_act": _hidden_act,
    "layer_norm_eps": lambda where, v: _number(where, v, "a positive number", lambda x: x > 0),
    "attention_dropout": lambda where, v: _number(where, v, "a probability in [0, 1]", lambda x: 0 <= x <= 1),
    "dropout": lambda where, v: _number(where, v, "a probability in [0, 1]", lambda x: 0 <= x <= 1),
    "initializer_range": lambda where, v: _number(where, v, "a number >= 0", lambda x: x >= 0),
    "initializer_factor": lambda where, v: _number(where, v, "a number >= 0", lambda x: x >= 0),
    "logit_scale_init_value": lambda where, v: _number(where, v, "a finite number (the log of the logit scale)",
                                                       lambda x: True),
}
# checked also where they are not a declared field (2021 Hub files carry "dropout" in both sub-configs)
_CHECKED_EXTRAS = frozenset({"dropout"})


def set_known_attributes(obj: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Set each of ``kwargs`` that ``obj`` already has as an attribute (``from_dict`` overrides); return the rest."""
    unused = {}
    for key, value in kwargs.items():
        if hasattr(obj, key):
            setattr(obj, key, value)
        else:
            unused[key] = value
    return unused


class PretrainedConfig:
    """Base of the CLIP configs: the generic fields every transformers config carries, and file I/O.

    Subclasses list their own fields with defaults in ``_fields``.
    """

    model_type: ClassVar[str] = ""
    base_config_key: ClassVar[str] = ""
    _fields: ClassVar[dict[str, Any]] = {}
    sub_configs: ClassVar[dict[str, type]] = {}

    def __init__(self, **kwargs: Any) -> None:
        for name, default in self._fields.items():
            setattr(self, name, copy.deepcopy(kwargs.pop(name, default)))
        self.return_dict: bool = kwargs.pop("return_dict", True)
        self.output_hidden_states: bool = kwargs.pop("output_hidden_states", False)
        self.output_attentions: bool = kwargs.pop("output_attentions", False)
        dtype = kwargs.pop("dtype", None)
        torch_dtype = kwargs.pop("torch_dtype", None)
        self.torch_dtype = dtype if dtype is not None else torch_dtype
        self.architectures: list[str] | None = kwargs.pop("architectures", None)
        self.problem_type: str | None = kwargs.pop("problem_type", None)
        self._name_or_path: str = str(kwargs.pop("name_or_path", kwargs.pop("_name_or_path", "")))
        self._attn_implementation_value: str | dict | None = kwargs.pop("attn_implementation",
                                                                        kwargs.pop("_attn_implementation", None))
        self._set_labels(kwargs.pop("id2label", None), kwargs.pop("label2id", None), kwargs.pop("num_labels", None))
        for key in _DROPPED_ON_LOAD:
            kwargs.pop(key, None)
        for key, value in kwargs.items():  # unknown keys are kept, as transformers does
            setattr(self, key, value)
        self._check_consistency()

    def __setattr__(self, name: str, value: Any) -> None:
        """Check a declared field's value as it is assigned (see ``_RULES``); sub-configs are built from dicts."""
        rule = _RULES.get(name)
        if rule is not None and (name in self._fields or name in _CHECKED_EXTRAS):
            value = rule(f"{type(self).__name__}.{name}", value)
        elif name in self.sub_configs:
            value = _as_config(self.sub_configs[name], value, f"{type(self).__name__}.{name}")
        super().__setattr__(name, value)

    def _check_consistency(self) -> None:
        """Checks that involve several fields (run after construction, not per assignment, so that fields can be
        changed one at a time): heads divide the width, the patch fits the image."""
        name = type(self).__name__
        hidden, heads = self.__dict__.get("hidden_size"), self.__dict__.get("num_attention_heads")
        if "hidden_size" in self._fields and hidden % heads:
            raise InputError(f"{name}.hidden_size={hidden} must be divisible by num_attention_heads={heads} (each "
                             f"head gets hidden_size / num_attention_heads channels); e.g. num_attention_heads="
                             f"{max(h for h in range(1, min(heads, hidden) + 1) if hidden % h == 0)}.")
        image, patch = self.__dict__.get("image_size"), self.__dict__.get("patch_size")
        if "patch_size" in self._fields and patch > image:
            raise InputError(f"{name}.patch_size={patch} is larger than image_size={image}: the image holds no "
                             "patch. Use a patch_size of at most image_size.")

    def validate(self) -> None:
        """Check every field and the fields together (sub-configs too), as construction does: for configs whose
        fields were changed one at a time. Raises TypeError or :class:`~clipfast.errors.InputError`."""
        for name, value in list(self.__dict__.items()):
            if isinstance(value, PretrainedConfig):
                value.validate()
            elif name in _RULES and (name in self._fields or name in _CHECKED_EXTRAS):
                _RULES[name](f"{type(self).__name__}.{name}", value)
        self._check_consistency()

    def __getattr__(self, name: str) -> Any:
        """transformers' generic base-config fields that CLIP does not use, at their defaults."""
        if name in _BASE_DEFAULTS:
            default = _BASE_DEFAULTS[name]
            if callable(default):  # a mutable default: kept, so that changes to it last
                return self.__dict__.setdefault(name, default())
            return default
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def use_return_dict(self) -> bool:
        """Whether forward returns output objects (``return_dict`` unless ``torchscript``), as in transformers."""
        return bool(self.return_dict) and not self.torchscript

    @property
    def name_or_path(self) -> str:
        """Where the config was loaded from (a folder or hub id), or ""."""
        return self._name_or_path

    @name_or_path.setter
    def name_or_path(self, value: Any) -> None:
        self._name_or_path = str(value)

    def get_text_config(self, decoder: bool | None = None, encoder: bool | None = None) -> PretrainedConfig:
        """The text part: ``text_config`` of a CLIPConfig, the config itself otherwise (transformers API)."""
        return getattr(self, "text_config", None) or self

    def update_from_string(self, update_str: str) -> None:
        """Update existing fields from ``"name=value,name2=value2"``, each value parsed as its field's type."""
        for pair in filter(None, update_str.split(",")):
            key, sep, text = pair.partition("=")
            if not sep or not hasattr(self, key):
                raise ValueError(f"update_from_string: {pair!r} is not name=value for an existing field of "
                                 f"{type(self).__name__}.")
            current = getattr(self, key)
            if isinstance(current, bool):
                if text.lower() not in ("true", "1", "y", "yes", "false", "0", "n", "no"):
                    raise ValueError(f"update_from_string: {key} needs a boolean, got {text!r}.")
                value: Any = text.lower() in ("true", "1", "y", "yes")
            elif isinstance(current, (int, float)):
                try:
                    value = type(current)(text)
                except ValueError:
                    raise InputError(f"update_from_string: {key} needs a {type(current).__name__}, got {text!r}."
                                     ) from None
            elif isinstance(current, str) or key == "torch_dtype":
                value = text
            else:
                raise ValueError(f"update_from_string: cannot parse {key} of type {type(current).__name__}.")
            setattr(self, key, value)

    # -- labels -------------------------------------------------------------------------------------------------

    def _set_labels(self, id2label: dict | None, label2id: dict | None, num_labels: int | None) -> None:
        """id2label keys become ints (JSON stores them as strings); num_labels defaults to 2 like transformers."""
        if num_labels is not None and (isinstance(num_labels, bool) or not isinstance(num_labels, int)
                                       or num_labels < 0):
            raise InputError(f"{type(self).__name__}.num_labels must be an int >= 0; got {num_labels!r}.")
        if id2label is not None and not isinstance(id2label, dict):
            raise TypeError(f"{type(self).__name__}.id2label must be a dict of class index -> name, e.g. "
                            f"{{0: 'cat', 1: 'dog'}}; got {id2label!r} ({type(id2label).__name__}).")
        if id2label is not None:
            try:
                self.id2label = {int(k): v for k, v in id2label.items()}
            except (TypeError, ValueError):
                raise InputError(f"{type(self).__name__}.id2label keys must be class indices (ints, or digit "
                                 f"strings as JSON stores them); got {id2label!r}.") from None
            if num_labels is not None and num_labels != len(self.id2label):
                logger.warning(f"You passed num_labels={num_labels} with an id2label of {len(self.id2label)} labels "
                               f"({self.id2label}); keeping id2label, so num_labels is {len(self.id2label)}.")
        else:
            self.id2label = {i: f"LABEL_{i}" for i in range(num_labels if num_labels is not None else 2)}
        self.label2id = dict(label2id) if label2id is not None else {v: k for k, v in self.id2label.items()}

    @property
    def num_labels(self) -> int:
        """Number of classes of ``CLIPForImageClassification``."""
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, value: int) -> None:
        if value != len(self.id2label):
            self._set_labels(None, None, value)

    # -- dtype and attention backend ----------------------------------------------------------------------------

    @property
    def torch_dtype(self) -> Any:
        """The weights' dtype as a ``torch.dtype`` (None when unknown), as in transformers. It is kept by name
        (``"float16"``), which is what config.json and ``to_dict`` hold; any dtype or name may be assigned."""
        name = self.__dict__.get("torch_dtype")
        if name is None:
            return None
        import torch

        value = getattr(torch, name, None)
        return value if isinstance(value, torch.dtype) else name

    @torch_dtype.setter
    def torch_dtype(self, value: Any) -> None:
        self.__dict__["torch_dtype"] = _dtype_name(value)

    @property
    def dtype(self) -> Any:
        """Alias of ``torch_dtype`` (transformers 5 name)."""
        return self.torch_dtype

    @dtype.setter
    def dtype(self, value: Any) -> None:
        self.torch_dtype = value

    @property
    def _attn_implementation(self) -> str:
        """The attention backend the model uses: "eager", "sdpa" (default) or "flash_attention_2"."""
        value = self._attn_implementation_value
        return (value.get("") if isinstance(value, dict) else value) or "sdpa"

    @_attn_implementation.setter
    def _attn_implementation(self, value: str | dict[str, str | None] | None) -> None:
        # the choice applies to sub-configs too (both towers of a CLIPConfig), as in transformers; a dict sets
        # them by name ({"text_config": "eager", "vision_config": "sdpa"}; "" is this config's own entry)
        per_part = value if isinstance(value, dict) else None
        self._attn_implementation_value = per_part.get("") if per_part is not None else value
        for name, sub in vars(self).items():
            if isinstance(sub, PretrainedConfig):
                sub._attn_implementation = per_part.get(name) if per_part is not None else value

    # -- dict / JSON --------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-ready dict (sub-configs nested as dicts)."""
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            if key.startswith("_") and key != "_name_or_path":
                continue
            out[key] = value.to_dict() if isinstance(value, PretrainedConfig) else copy.deepcopy(value)
        out["id2label"] = dict(self.id2label)  # int keys, as the reference's to_dict (JSON writes them as strings)
        out["model_type"] = self.model_type
        if not out.get("_name_or_path"):
            out.pop("_name_or_path", None)
        return dict(sorted(out.items()))

    def to_diff_dict(self) -> dict[str, Any]:
        """Alias of :meth:`to_dict` (we always write every field, which both transformers 4 and 5 read)."""
        return self.to_dict()

    def to_json_string(self, use_diff: bool = True) -> str:
        """The config as pretty JSON text."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, json_file_path: str | os.PathLike, use_diff: bool = True) -> None:
        """Write the config as JSON to a file."""
        with open(json_file_path, "w", encoding="utf-8") as f:
            f.write(self.to_json_string(use_diff))

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> Any:
        """Build a config from a dict; ``kwargs`` override fields. ``return_unused_kwargs=True`` as transformers."""
        return_unused = kwargs.pop("return_unused_kwargs", False)
        if not isinstance(config_dict, dict):
            raise TypeError(f"{cls.__name__}.from_dict needs a dict of fields; got {type(config_dict).__name__}.")
        # declared fields given as kwargs go into the constructor, so the fields are checked together once
        fields = {key: kwargs.pop(key) for key in list(kwargs) if key in cls._fields}
        config = cls(**{**config_dict, **fields})
        unused = set_known_attributes(config, kwargs)
        return (config, unused) if return_unused else config

    @classmethod
    def from_json_file(cls, json_file: str | os.PathLike) -> Any:
        """Read a config from a JSON file."""
        return cls.from_dict(read_json(os.fspath(json_file)))

    def update(self, values: dict[str, Any]) -> None:
        """Set several attributes at once."""
        for key, value in values.items():
            setattr(self, key, value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PretrainedConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"

    # -- files --------------------------------------------------------------------------------------------------

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path: str | os.PathLike, **hub_kwargs: Any) -> dict[str, Any]:
        """Read config.json of a folder or hub id (or a path to a .json file)."""
        name = os.fspath(pretrained_model_name_or_path)
        if os.path.isfile(name) and name.endswith(".json"):
            return read_json(name)
        path = resolve_file(name, CONFIG_NAME, **hub_kwargs)
        data = read_json(path)  # type: ignore[arg-type]
        data.setdefault("_name_or_path", name)
        return data

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *, subfolder: str = "",
                        revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                        local_files_only: bool = False, token: str | bool | None = None, **kwargs: Any) -> Any:
        """Load config.json from a folder or hub id; kwargs override fields.

        A text or vision config loaded from a full ``CLIPConfig`` takes its sub-config.

        Example:
            >>> CLIPTextConfig.from_pretrained("openai/clip-vit-base-patch32")  # doctest: +SKIP
        """
        for ignored in ("force_download", "resume_download", "proxies", "trust_remote_code", "use_auth_token"):
            kwargs.pop(ignored, None)
        data = cls.get_config_dict(pretrained_model_name_or_path, subfolder=subfolder, revision=revision,
                                   cache_dir=cache_dir, local_files_only=local_files_only, token=token)
        source = os.fspath(pretrained_model_name_or_path)
        data = cls._select(data, source)
        try:
            return cls.from_dict(data, **kwargs)
        except (InputError, TypeError) as exc:  # say which file holds the bad value
            raise type(exc)(f"{source!r} ({CONFIG_NAME}): {exc}") from None

    @classmethod
    def _select(cls, data: dict[str, Any], source: str) -> dict[str, Any]:
        """Check the model type, taking the sub-config out of a composite CLIP config when needed."""
        found = data.get("model_type")
        if cls.base_config_key and found == "clip" and isinstance(data.get(cls.base_config_key), dict):
            return data[cls.base_config_key]
        if found is not None and found != cls.model_type:
            known = "'clip', 'clip_text_model' and 'clip_vision_model'"
            raise CheckpointError(
                f"{source!r} holds a config of model type {found!r}, but {cls.__name__} expects "
                f"{cls.model_type!r}. clipfast implements {known}.")
        return data

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Write config.json into ``save_directory`` (created if needed)."""
        if os.path.isfile(save_directory):
            raise CheckpointError(f"save_pretrained needs a folder, but {os.fspath(save_directory)!r} is a file.")
        os.makedirs(save_directory, exist_ok=True)
        self.to_json_file(os.path.join(save_directory, CONFIG_NAME))


class CLIPTextConfig(PretrainedConfig):
    """Configuration of the CLIP text tower (defaults: the ViT-B/32 text encoder)."""

    model_type = "clip_text_model"
    base_config_key = "text_config"
    _fields = {
        "vocab_size": 49408,
        "hidden_size": 512,
        "intermediate_size": 2048,
        "projection_dim": 512,
        "num_hidden_layers": 12,
        "num_attention_heads": 8,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "initializer_factor": 1.0,
        # pad_token_id is stored only: the model never reads it (it differs from the tokenizer's 49407 on purpose)
        "pad_token_id": 1,
        "bos_token_id": 49406,
        # eos_token_id picks the pooled position; the value 2 (all OpenAI Hub configs) selects the legacy rule
        "eos_token_id": 49407,
    }

    def __init__(self, vocab_size: int = 49408, hidden_size: int = 512, intermediate_size: int = 2048,
                 projection_dim: int = 512, num_hidden_layers: int = 12, num_attention_heads: int = 8,
                 max_position_embeddings: int = 77, hidden_act: str = "quick_gelu", layer_norm_eps: float = 1e-5,
                 attention_dropout: float = 0.0, initializer_range: float = 0.02, initializer_factor: float = 1.0,
                 pad_token_id: int = 1, bos_token_id: int = 49406, eos_token_id: int = 49407,
                 **kwargs: Any) -> None:
        named = {k: v for k, v in locals().items() if k in self._fields}
        super().__init__(**named, **kwargs)


class CLIPVisionConfig(PretrainedConfig):
    """Configuration of the CLIP vision tower (defaults: ViT-B/32 at 224 px)."""

    model_type = "clip_vision_model"
    base_config_key = "vision_config"
    _fields = {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "projection_dim": 512,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "num_channels": 3,
        "image_size": 224,
        "patch_size": 32,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "initializer_factor": 1.0,
    }

    def __init__(self, hidden_size: int = 768, intermediate_size: int = 3072, projection_dim: int = 512,
                 num_hidden_layers: int = 12, num_attention_heads: int = 12, num_channels: int = 3,
                 image_size: int = 224, patch_size: int = 32, hidden_act: str = "quick_gelu",
                 layer_norm_eps: float = 1e-5, attention_dropout: float = 0.0, initializer_range: float = 0.02,
                 initializer_factor: float = 1.0, **kwargs: Any) -> None:
        named = {k: v for k, v in locals().items() if k in self._fields}
        super().__init__(**named, **kwargs)


class CLIPConfig(PretrainedConfig):
    """Configuration of the full CLIP model: a text config, a vision config and the shared projection.

    Example:
        >>> cfg = CLIPConfig.from_text_vision_configs(CLIPTextConfig(), CLIPVisionConfig(), projection_dim=512)
        >>> cfg.projection_dim
        512
    """

    model_type = "clip"
    sub_configs: ClassVar[dict[str, type]] = {"text_config": CLIPTextConfig, "vision_config": CLIPVisionConfig}
    _fields = {"projection_dim": 512, "logit_scale_init_value": 2.6592, "initializer_factor": 1.0}

    def __init__(self, text_config: dict | CLIPTextConfig | None = None,
                 vision_config: dict | CLIPVisionConfig | None = None, projection_dim: int = 512,
                 logit_scale_init_value: float = 2.6592, initializer_factor: float = 1.0, **kwargs: Any) -> None:
        # 2021 Hub files carry text_config_dict / vision_config_dict (usually null); non-null values win
        text_config = _merge_legacy(CLIPTextConfig, text_config, kwargs.pop("text_config_dict", None))
        vision_config = _merge_legacy(CLIPVisionConfig, vision_config, kwargs.pop("vision_config_dict", None))
        super().__init__(projection_dim=projection_dim, logit_scale_init_value=logit_scale_init_value,
                         initializer_factor=initializer_factor, **kwargs)
        self.text_config = text_config  # built into a CLIPTextConfig by __setattr__
        self.vision_config = vision_config
        if self._attn_implementation_value is not None:
            self._attn_implementation = self._attn_implementation_value

    @classmethod
    def from_text_vision_configs(cls, text_config: CLIPTextConfig, vision_config: CLIPVisionConfig,
                                 **kwargs: Any) -> CLIPConfig:
        """Build a CLIPConfig from a text and a vision config (transformers 4.x API)."""
        return cls(text_config=text_config.to_dict(), vision_config=vision_config.to_dict(), **kwargs)


def _merge_legacy(cls: type, config: dict | PretrainedConfig | None, legacy: dict | None
                  ) -> dict | PretrainedConfig | None:
    """Apply a non-null legacy ``*_config_dict`` on top of the sub-config, as the reference does: a full ``cls``
    config is built from it (defaults for the keys it lacks) and all its values win."""
    if legacy is None:
        return config
    if not isinstance(legacy, dict):
        raise TypeError(f"CLIPConfig.{cls.base_config_key}_dict must be a dict of {cls.__name__} fields or None; "
                        f"got {legacy!r} ({type(legacy).__name__}).")
    base = config.to_dict() if isinstance(config, PretrainedConfig) else dict(config or {})
    full = cls(**{k: v for k, v in legacy.items() if k not in _DROPPED_ON_LOAD}).to_dict()
    base.update({k: v for k, v in full.items() if k not in _DROPPED_ON_LOAD})
    return base


def _as_config(cls: type, value: Any, where: str) -> Any:
    """A sub-config from a dict, an instance (kept as is) or None (defaults); anything else is refused."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    expected = f"{where} must be a {cls.__name__}, a dict of its fields or None"
    swapped = {CLIPTextConfig.model_type, CLIPVisionConfig.model_type} - {cls.model_type}
    if isinstance(value, PretrainedConfig) or (isinstance(value, dict) and value.get("model_type") in swapped):
        kind = type(value).__name__ if isinstance(value, PretrainedConfig) else f"model_type {value['model_type']!r}"
        raise InputError(f"{expected}; got a {kind} config (text and vision configs swapped?).")
    if not isinstance(value, dict):
        raise TypeError(f"{expected}; got {value!r} ({type(value).__name__}).")
    return cls(**{k: v for k, v in value.items() if k != "model_type"})


CONFIG_CLASSES: dict[str, type] = {c.model_type: c for c in (CLIPConfig, CLIPTextConfig, CLIPVisionConfig)}
