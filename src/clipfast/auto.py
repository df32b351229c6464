"""Auto classes: pick the clipfast class from what a checkpoint folder says about itself.

``model_type`` in config.json picks the model, ``tokenizer_class`` in tokenizer_config.json the tokenizer,
``image_processor_type`` / ``feature_extractor_type`` in preprocessor_config.json the image processor. A model
type clipfast does not implement gets an error that names it.
"""

from __future__ import annotations

import os
from typing import Any

from clipfast import formats
from clipfast.errors import CheckpointError
from clipfast.processing import CLIPProcessor, load_image_processor, load_tokenizer, split_hub_kwargs

SUPPORTED = "'clip', 'clip_text_model' and 'clip_vision_model'"


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
            hub = {k: kwargs[k] for k in formats.HUB_KWARGS if k in kwargs}
            if formats.is_foreign(pretrained_model_name_or_path, **hub):
                # an OpenAI / open_clip checkpoint: CLIPModel.from_pretrained reads it through clipfast.formats
                from clipfast.modeling import CLIPModel

                return CLIPModel.from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
            data = _config_dict(pretrained_model_name_or_path, hub)
            model_cls = cls._class_for(data.get("model_type", ""), data.get("architectures"),
                                       pretrained_model_name_or_path)
        return model_cls.from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    @classmethod
    def from_config(cls, config: Any, **kwargs: Any) -> Any:
        """A randomly initialised model for ``config``."""
        return cls._class_for(config.model_type, config.architectures, "config")._from_config(config, **kwargs)


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
        return CLIPProcessor.from_pretrained(pretrained_model_name_or_path, **kwargs)
