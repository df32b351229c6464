"""clipfast: exact, fast CLIP for PyTorch with the transformers CLIP API.

Public names are imported lazily, on first attribute access, so that ``import clipfast``
costs almost nothing (no torch import, no vocabulary loading, no network).

Example:
    >>> from clipfast import CLIPModel, CLIPProcessor      # doctest: +SKIP
    >>> model = CLIPModel.from_pretrained("openai/clip-vit-base-patch32")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    # configuration
    "CLIPConfig": "configuration",
    "CLIPTextConfig": "configuration",
    "CLIPVisionConfig": "configuration",
    # models and outputs
    "PreTrainedModel": "loading",
    "CLIPPreTrainedModel": "modeling",
    "CLIPModel": "modeling",
    "CLIPTextModel": "modeling",
    "CLIPVisionModel": "modeling",
    "CLIPTextModelWithProjection": "modeling",
    "CLIPVisionModelWithProjection": "modeling",
    "CLIPForImageClassification": "modeling",
    "CLIPTextTransformer": "modeling",
    "CLIPVisionTransformer": "modeling",
    "CLIPEncoder": "modeling",
    "CLIPEncoderLayer": "modeling",
    "CLIPAttention": "modeling",
    "CLIPMLP": "modeling",
    "CLIPTextEmbeddings": "modeling",
    "CLIPVisionEmbeddings": "modeling",
    "ModelOutput": "outputs",
    "BaseModelOutput": "outputs",
    "BaseModelOutputWithPooling": "outputs",
    "CLIPOutput": "outputs",
    "CLIPTextModelOutput": "outputs",
    "CLIPVisionModelOutput": "outputs",
    "ImageClassifierOutput": "outputs",
    # tokenizers
    "CLIPTokenizer": "tokenization",
    "CLIPTokenizerFast": "tokenization_fast",
    "BatchEncoding": "tokenization_utils",
    # images
    "CLIPImageProcessor": "image_processing",
    "CLIPImageProcessorFast": "image_processing",
    "CLIPFeatureExtractor": "image_processing",
    "BatchFeature": "image_utils",
    "load_image": "image_io",
    "load_images": "image_io",
    "iter_image_batches": "image_io",
    # processor, auto classes, pipeline
    "CLIPProcessor": "processing",
    "AutoConfig": "auto",
    "AutoModel": "auto",
    "AutoModelForZeroShotImageClassification": "auto",
    "AutoModelForImageClassification": "auto",
    "AutoTokenizer": "auto",
    "AutoImageProcessor": "auto",
    "AutoProcessor": "auto",
    "pipeline": "pipelines",
    "ZeroShotImageClassificationPipeline": "pipelines",
    # other checkpoint formats
    "load": "convert",
    "LoadedCLIP": "convert",
    # opt-in speedups (CPU)
    "quantize_int8": "optimize",
    "cpu_bf16_as_fp32": "optimize",
    "cpu_has_native_bf16": "kernels",
    # errors
    "ClipfastError": "errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` on first use (PEP 562)."""
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'clipfast' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"clipfast.{module_name}"), name)
    globals()[name] = value  # cache: the next access skips this hook
    return value


def __dir__() -> list[str]:
    return __all__
