"""``CLIPProcessor``: one object that tokenizes text and preprocesses images for a CLIP model.

Each keyword argument goes to the component that understands it (``padding`` to the tokenizer, ``size`` to the
image processor, ``return_tensors`` to both). Folders written by transformers 4.x (preprocessor_config.json +
tokenizer files) and 5.x (processor_config.json + tokenizer files) both load.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from typing import Any

from clipfast import formats
from clipfast.constants import IMAGE_PROCESSOR_NAME, PROCESSOR_NAME
from clipfast.errors import CheckpointError, InputError
from clipfast.hub import read_json, resolve_file

logger = logging.getLogger(__name__)

# transformers options that have no effect here; from_pretrained accepts and drops them
_IGNORED = ("trust_remote_code", "force_download", "use_auth_token", "resume_download", "proxies")

TEXT_KWARGS = frozenset({
    "text_pair", "add_special_tokens", "padding", "truncation", "max_length", "stride", "is_split_into_words",
    "pad_to_multiple_of", "padding_side", "return_token_type_ids", "return_attention_mask",
    "return_overflowing_tokens", "return_special_tokens_mask", "return_offsets_mapping", "return_length",
    "verbose"})
IMAGE_KWARGS = frozenset({
    "do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor", "do_normalize",
    "image_mean", "image_std", "do_convert_rgb", "data_format", "input_data_format", "device"})


class CLIPProcessor:
    """Tokenizer + image processor behind one call.

    Example:
        >>> processor = CLIPProcessor.from_pretrained("openai/clip-vit-base-patch32")  # doctest: +SKIP
        >>> inputs = processor(text=["a cat"], images=image, return_tensors="pt", padding=True)  # doctest: +SKIP
    """

    attributes = ["image_processor", "tokenizer"]
    image_processor_class = ("CLIPImageProcessor", "CLIPImageProcessorFast")
    tokenizer_class = ("CLIPTokenizer", "CLIPTokenizerFast")

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, **kwargs: Any) -> None:
        feature_extractor = kwargs.pop("feature_extractor", None)
        if feature_extractor is not None:
            warnings.warn("The `feature_extractor` argument is deprecated; use `image_processor`.", FutureWarning,
                          stacklevel=2)
            image_processor = image_processor or feature_extractor
        if kwargs:
            raise TypeError(f"CLIPProcessor got unexpected arguments {sorted(kwargs)}.")
        if image_processor is None:
            raise ValueError("CLIPProcessor needs an image_processor (e.g. CLIPImageProcessor()).")
        if tokenizer is None:
            raise ValueError("CLIPProcessor needs a tokenizer (e.g. CLIPTokenizerFast.from_pretrained(...)).")
        self.image_processor = image_processor
        self.tokenizer = tokenizer

    @property
    def feature_extractor(self) -> Any:
        """Deprecated alias of ``image_processor``."""
        return self.image_processor

    @property
    def model_input_names(self) -> list[str]:
        """Image inputs then tokenizer inputs, without duplicates (transformers 4.57's order)."""
        names = list(self.image_processor.model_input_names) + list(self.tokenizer.model_input_names)
        return list(dict.fromkeys(names))

    def __call__(self, *args: Any, text: Any = None, images: Any = None, return_tensors: str | None = None,
                 **kwargs: Any) -> Any:
        """Tokenize ``text`` and/or preprocess ``images``; returns one BatchEncoding with all model inputs
        (``pixel_values`` first, then the tokenizer's fields, as transformers 4.57).

        Positional arguments are read as transformers 4.57 reads them, ``(images, text)``, unless their types
        say the older 4.x order ``(text, images)``: PIL images, arrays and tensors are images, and so are strings
        that name an existing file, an http(s) URL or a data URI; other strings are text.
        """
        text, images = _text_and_images(args, text, images)
        if text is None and images is None:
            raise InputError("You have to specify either text or images (or both) when calling CLIPProcessor.")
        text_kwargs, image_kwargs = self._route(kwargs)
        from clipfast.tokenization import BatchEncoding

        encoding = BatchEncoding()
        if images is not None:
            encoding["pixel_values"] = self.image_processor(images, return_tensors=return_tensors,
                                                            **image_kwargs)["pixel_values"]
        if text is not None:
            tokens = self.tokenizer(text, return_tensors=return_tensors, **text_kwargs)
            encoding.update(tokens)
            encoding._encodings = tokens.encodings
        return encoding

    @staticmethod
    def _route(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Split call kwargs into tokenizer and image-processor kwargs; unknown names are ignored with a warning,
        as the reference does."""
        text_kwargs = dict(kwargs.pop("text_kwargs", None) or {})
        image_kwargs = dict(kwargs.pop("images_kwargs", None) or {})
        common = dict(kwargs.pop("common_kwargs", None) or {})
        for key, value in {**common, **kwargs}.items():
            if key in TEXT_KWARGS:
                text_kwargs[key] = value
            elif key in IMAGE_KWARGS:
                image_kwargs[key] = value
            else:
                logger.warning(f"Keyword argument `{key}` is not a valid argument for CLIPProcessor and will be "
                               f"ignored: it is neither a tokenizer option ({sorted(TEXT_KWARGS)}) nor an image "
                               f"option ({sorted(IMAGE_KWARGS)}).")
        return text_kwargs, image_kwargs

    def decode(self, *args: Any, **kwargs: Any) -> str:
        """The tokenizer's ``decode``."""
        return self.tokenizer.decode(*args, **kwargs)

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        """The tokenizer's ``batch_decode``."""
        return self.tokenizer.batch_decode(*args, **kwargs)

    # -- files --------------------------------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> list[str]:
        """Write preprocessor_config.json and the tokenizer files (the layout transformers 4.x and 5.x both read)."""
        os.makedirs(save_directory, exist_ok=True)
        self.image_processor.save_pretrained(save_directory)
        path = os.path.join(save_directory, IMAGE_PROCESSOR_NAME)
        data = read_json(path)
        data["processor_class"] = type(self).__name__
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
        files = self.tokenizer.save_pretrained(save_directory)
        return [path, *(files or [])]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, use_fast: bool = True,
                        **kwargs: Any) -> CLIPProcessor:
        """Load both components from a folder or hub id; other kwargs go to the component that takes them.

        Example:
            >>> CLIPProcessor.from_pretrained("openai/clip-vit-base-patch32", do_normalize=False)  # doctest: +SKIP
        """
        hub = split_hub_kwargs(kwargs)
        image_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in IMAGE_KWARGS or k == "padding_value"}
        if formats.source_kind(pretrained_model_name_or_path, **hub) == formats.OPEN_CLIP:
            # an open_clip folder or hub repo: built from its open_clip_config.json
            processor = open_clip_processor(pretrained_model_name_or_path, **hub)
            for key, value in image_kwargs.items():
                setattr(processor.image_processor, key, value)
            for key, value in kwargs.items():
                if not hasattr(processor.tokenizer, key):
                    raise TypeError(f"CLIPProcessor.from_pretrained got an unknown argument {key!r}.")
                setattr(processor.tokenizer, key, value)
            return processor
        image_processor = load_image_processor(pretrained_model_name_or_path, hub, image_kwargs,
                                               use_fast=kwargs.pop("use_fast_image_processor", None))
        tokenizer = load_tokenizer(pretrained_model_name_or_path, hub, kwargs, use_fast=use_fast)
        return cls(image_processor=image_processor, tokenizer=tokenizer)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}:\n- image_processor: {self.image_processor!r}\n"
                f"- tokenizer: {self.tokenizer!r}")


def _is_pixels(value: Any) -> bool:
    """A PIL image, array or tensor, or a non-empty (nested) list of them."""
    from clipfast.image_utils import _is_image

    if isinstance(value, (list, tuple)):
        return bool(value) and all(_is_pixels(v) for v in value)
    return _is_image(value)


def _is_image_source(value: Any) -> bool:
    """A path of an existing file, an http(s) URL or a data URI (or a non-empty list of them): read as an image."""
    if isinstance(value, (list, tuple)):
        return bool(value) and all(_is_image_source(v) for v in value)
    if isinstance(value, os.PathLike):
        return True
    return isinstance(value, str) and (value.startswith(("http://", "https://", "data:image/"))
                                       or os.path.isfile(value))


def _text_and_images(args: tuple[Any, ...], text: Any, images: Any) -> tuple[Any, Any]:
    """(text, images) from the call's positional arguments and keywords (see ``CLIPProcessor.__call__``)."""
    free = int(text is None) + int(images is None)
    if len(args) > free:
        raise TypeError(f"CLIPProcessor takes at most {free} positional argument(s) besides text= / images=, got "
                        f"{len(args)}; pass images= and text= by keyword.")
    if not args:
        return text, images
    if text is not None:
        return text, args[0]
    if images is not None:
        return args[0], images
    if len(args) == 1:
        only = args[0]
        return (None, only) if _is_pixels(only) or _is_image_source(only) else (only, None)
    first, second = args
    looks_like_image = [v is not None and (_is_pixels(v) or _is_image_source(v)) for v in (first, second)]
    if looks_like_image == [False, True] and first is not None:
        return first, second  # the older order: (text, images)
    return second, first  # transformers 4.57: (images, text)


def read_image_processor_dict(name: str | os.PathLike, hub: dict[str, Any]) -> dict[str, Any]:
    """The image-processor settings of a folder: preprocessor_config.json (4.x) or processor_config.json (5.x)."""
    path = resolve_file(name, IMAGE_PROCESSOR_NAME, required=False, **hub)
    if path is not None:
        return read_json(path)
    path = resolve_file(name, PROCESSOR_NAME, required=False, **hub)
    if path is not None:
        data = read_json(path)
        if isinstance(data.get("image_processor"), dict):
            return data["image_processor"]
    raise CheckpointError(f"{os.fspath(name)!r} has no image preprocessing settings: expected "
                          f"{IMAGE_PROCESSOR_NAME!r} (or {PROCESSOR_NAME!r} with an 'image_processor' entry).")


# ---------------------------------------------------------------------------------------------------------------
# components of a folder or hub repo (the Auto classes use these too)


def split_hub_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Pop the file-location options out of ``kwargs`` (and drop transformers options with no effect here)."""
    for name in _IGNORED:
        kwargs.pop(name, None)
    return {k: kwargs.pop(k) for k in formats.HUB_KWARGS if k in kwargs}


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

    data = read_image_processor_dict(name, hub)
    declared = data.get("image_processor_type") or data.get("feature_extractor_type") or "CLIPImageProcessor"
    family = declared.removesuffix("Fast")
    if family not in ("CLIPImageProcessor", "CLIPFeatureExtractor"):
        raise CheckpointError(f"{os.fspath(name)!r} uses a {declared}; clipfast provides only CLIPImageProcessor "
                              "and CLIPImageProcessorFast.")
    fast = declared.endswith("Fast") if use_fast is None else use_fast
    processor_cls = CLIPImageProcessorFast if fast else CLIPImageProcessor
    return processor_cls.from_dict(data, **kwargs)


def open_clip_processor(name: str | os.PathLike, **hub_kwargs: Any) -> CLIPProcessor:
    """The ``CLIPProcessor`` of an open_clip folder or hub repo, from its ``open_clip_config.json`` alone (no
    weights are read): OpenAI's BPE sized to the text context, and the image processor of its preprocess_cfg."""
    from clipfast.image_processing import CLIPImageProcessor
    from clipfast.tokenization_fast import CLIPTokenizerFast

    context_length, image_processor = formats.open_clip_processing(name, **hub_kwargs)
    tokenizer = CLIPTokenizerFast.from_openai_vocab(model_max_length=context_length, text_cleaning="openai")
    return CLIPProcessor(image_processor=CLIPImageProcessor.from_dict(image_processor), tokenizer=tokenizer)
