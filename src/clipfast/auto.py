"""Auto classes: pick the clipfast class from what a checkpoint folder says about itself.

``model_type`` in config.json picks the model, ``tokenizer_class`` in tokenizer_config.json the tokenizer,
``image_processor_type`` / ``feature_extractor_type`` in preprocessor_config.json the image processor. A model
type clipfast does not implement gets an error that names it.
"""

from __future__ import annotations

import os
from typing import Any

from clipfast.errors import CheckpointError
from clipfast.hub import read_json, resolve_file

SUPPORTED = "'clip', 'clip_text_model' and 'clip_vision_model'"
HUB_KWARGS = ("subfolder", "revision", "cache_dir", "local_files_only", "token")
_IGNORED = ("trust_remote_code", "force_download", "use_auth_token", "resume_download", "proxies")


def split_hub_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Pop the file-location options out of ``kwargs`` (and drop transformers options with no effect here)."""
    for name in _IGNORED:
        kwargs.pop(name, None)
    return {k: kwargs.pop(k) for k in HUB_KWARGS if k in kwargs}


def _model_classes(table: dict[str, str]) -> dict[str, type]:
    from clipfast import modeling

    return {model_type: getattr(modeling, name) for model_type, name in table.items()}


def _config_dict(name: str | os.PathLike, hub: dict[str, Any]) -> dict[str, Any]:
    """config.json of a folder or hub id, or the given .json file itself."""
    from clipfast.configuration import PretrainedConfig

    return PretrainedConfig.get_config_dict(name, **hub)


def _unsupported(name: str | os.PathLike, model_type: Any) -> CheckpointError:
    return CheckpointError(f"{os.fspath(name)!r} is a {model_type!r} model; clipfast implements only {SUPPORTED}. "
                           "Use transformers for other architectures.")


class AutoConfig:
    """``AutoConfig.from_pretrained(name)`` -> CLIPConfig / CLIPTextConfig / CLIPVisionConfig."""

    @staticmethod
    def from_pretrained(pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> Any:
        from clipfast.configuration import CONFIG_CLASSES

        hub = split_hub_kwargs(kwargs)
        data = _config_dict(pretrained_model_name_or_path, hub)
        config_cls = CONFIG_CLASSES.get(data.get("model_type", ""))
        if config_cls is None:
            raise _unsupported(pretrained_model_name_or_path, data.get("model_type"))
        return config_cls.from_dict(data, **kwargs)

    @staticmethod
    def for_model(model_type: str, **kwargs: Any) -> Any:
        from clipfast.configuration import CONFIG_CLASSES

        if model_type not in CONFIG_CLASSES:
            raise _unsupported("for_model", model_type)
        return CONFIG_CLASSES[model_type](**kwargs)


class _AutoModel:
    """Shared logic: a table from model_type to class name."""

    _table: dict[str, str] = {}

    @classmethod
    def _class_for(cls, model_type: str, architectures: list[str] | None, source: Any) -> type:
        classes = _model_classes(cls._table)
        if model_type in classes:
            return classes[model_type]
        from clipfast.modeling import MODEL_CLASSES

        if model_type in ("clip", "clip_text_model", "clip_vision_model"):  # ours, but not a class of this table
            raise CheckpointError(f"{cls.__name__} cannot load a {model_type!r} checkpoint ({os.fspath(source)!r}); "
                                  f"it handles {sorted(cls._table)}.")
        for arch in architectures or []:  # a config without a known model_type but naming our class
            if arch in MODEL_CLASSES:
                return MODEL_CLASSES[arch]
        raise _unsupported(source, model_type)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        """Load the clipfast model class that the checkpoint's config.json names."""
        config = kwargs.get("config")
        if config is not None:
            model_cls = cls._class_for(config.model_type, config.architectures, pretrained_model_name_or_path)
        else:
            hub = {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
            data = _foreign_or_config(pretrained_model_name_or_path, hub)
            if data is None:  # an OpenAI / open_clip checkpoint: clipfast.convert reads it as a CLIPModel
                from clipfast.modeling import CLIPModel

                return CLIPModel.from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
            model_cls = cls._class_for(data.get("model_type", ""), data.get("architectures"),
                                       pretrained_model_name_or_path)
        return model_cls.from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    @classmethod
    def from_config(cls, config: Any, **kwargs: Any) -> Any:
        """A randomly initialised model for ``config``."""
        return cls._class_for(config.model_type, config.architectures, "config")._from_config(config, **kwargs)


def _foreign_or_config(name: str | os.PathLike, hub: dict[str, Any]) -> dict[str, Any] | None:
    """config.json of an HF checkpoint, or None for what clipfast.convert reads (single files, open_clip layouts)."""
    from clipfast.convert import is_foreign

    return None if is_foreign(name, **hub) else _config_dict(name, hub)


class AutoModel(_AutoModel):
    """``clip`` -> CLIPModel, ``clip_text_model`` -> CLIPTextModel, ``clip_vision_model`` -> CLIPVisionModel."""

    _table = {"clip": "CLIPModel", "clip_text_model": "CLIPTextModel", "clip_vision_model": "CLIPVisionModel"}


class AutoModelForZeroShotImageClassification(_AutoModel):
    """``clip`` -> CLIPModel."""

    _table = {"clip": "CLIPModel"}


class AutoModelForImageClassification(_AutoModel):
    """``clip`` -> CLIPForImageClassification."""

    _table = {"clip": "CLIPForImageClassification"}


# ---------------------------------------------------------------------------------------------------------------
# tokenizers and image processors


def load_tokenizer(name: str | os.PathLike, hub: dict[str, Any], kwargs: dict[str, Any], use_fast: bool = True) -> Any:
    """The CLIP tokenizer of a folder or hub id; a tokenizer of another family is refused by name."""
    path = resolve_file(name, "tokenizer_config.json", required=False, **hub)
    declared = read_json(path).get("tokenizer_class") if path else None
    if declared and declared.removesuffix("Fast") != "CLIPTokenizer":
        raise CheckpointError(f"{os.fspath(name)!r} uses a {declared}; clipfast provides only CLIPTokenizer and "
                              "CLIPTokenizerFast.")
    if use_fast:
        from clipfast.tokenization_fast import CLIPTokenizerFast as tokenizer_cls
    else:
        from clipfast.tokenization import CLIPTokenizer as tokenizer_cls
    return tokenizer_cls.from_pretrained(name, **hub, **kwargs)


def load_image_processor(name: str | os.PathLike, hub: dict[str, Any], kwargs: dict[str, Any],
                         use_fast: bool | None = None) -> Any:
    """The image processor of a folder or hub id (4.x or 5.x layout); ``use_fast=None`` keeps the saved class."""
    from clipfast.image_processing import CLIPImageProcessor, CLIPImageProcessorFast
    from clipfast.processing import read_image_processor_dict

    data = read_image_processor_dict(name, hub)
    declared = data.get("image_processor_type") or data.get("feature_extractor_type") or "CLIPImageProcessor"
    family = declared.removesuffix("Fast")
    if family not in ("CLIPImageProcessor", "CLIPFeatureExtractor"):
        raise CheckpointError(f"{os.fspath(name)!r} uses a {declared}; clipfast provides only CLIPImageProcessor "
                              "and CLIPImageProcessorFast.")
    fast = declared.endswith("Fast") if use_fast is None else use_fast
    processor_cls = CLIPImageProcessorFast if fast else CLIPImageProcessor
    return processor_cls.from_dict(data, **kwargs)


class AutoTokenizer:
    """``AutoTokenizer.from_pretrained(name, use_fast=True)`` -> CLIPTokenizerFast (or CLIPTokenizer)."""

    @staticmethod
    def from_pretrained(pretrained_model_name_or_path: str | os.PathLike, *args: Any, use_fast: bool = True,
                        **kwargs: Any) -> Any:
        hub = split_hub_kwargs(kwargs)
        return load_tokenizer(pretrained_model_name_or_path, hub, kwargs, use_fast=use_fast)


class AutoImageProcessor:
    """``AutoImageProcessor.from_pretrained(name, use_fast=None)`` -> CLIPImageProcessor(Fast)."""

    @staticmethod
    def from_pretrained(pretrained_model_name_or_path: str | os.PathLike, *args: Any, use_fast: bool | None = None,
                        **kwargs: Any) -> Any:
        hub = split_hub_kwargs(kwargs)
        return load_image_processor(pretrained_model_name_or_path, hub, kwargs, use_fast=use_fast)


class AutoProcessor:
    """``AutoProcessor.from_pretrained(name)`` -> CLIPProcessor."""

    @staticmethod
    def from_pretrained(pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        from clipfast.processing import CLIPProcessor

        return CLIPProcessor.from_pretrained(pretrained_model_name_or_path, **kwargs)
