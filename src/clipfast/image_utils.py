"""What both CLIP image processors share: ``BatchFeature``, parameters and input checks, crop geometry, the
reference's per-pixel arithmetic with its 256-entry tables, and the base class (parameters, JSON, loading).

Example:
    >>> _crop_box(298, 224, 224, 224)   # (top, left, height, width) of the center crop
    (37, 0, 224, 224)
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections import UserDict
from typing import Any, Sequence

import numpy as np

from clipfast.configuration import set_known_attributes
from clipfast.constants import IMAGE_PROCESSOR_NAME, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from clipfast.errors import InputError
from clipfast.hub import read_json, resolve_file
from clipfast.pillow_resample import BICUBIC
from clipfast.tensor_utils import stack_same_shape, tensors_to

logger = logging.getLogger("clipfast.image_processing")  # the processors' logger, whichever module logs

_VALID_SIZE_KEYS = ({"height", "width"}, {"shortest_edge"}, {"shortest_edge", "longest_edge"},
                    {"longest_edge"}, {"max_height", "max_width"})
_PREPROCESS_KEYS = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
                    "do_normalize", "image_mean", "image_std", "do_convert_rgb", "return_tensors", "data_format",
                    "input_data_format")
FIRST, LAST = "channels_first", "channels_last"


# ----------------------------------------------------------------------------------------------------------------
# BatchFeature
# ----------------------------------------------------------------------------------------------------------------


class BatchFeature(UserDict):
    """The processors' output: a dict (``pixel_values``) with attribute access and ``.to(device or dtype)``.

    Example:
        >>> batch = processor(images=image, return_tensors="pt").to("cuda")  # doctest: +SKIP
        >>> batch.pixel_values.shape                                   # doctest: +SKIP
    """

    def __init__(self, data: dict[str, Any] | None = None, tensor_type: str | None = None):
        super().__init__(data)
        self.convert_to_tensors(tensor_type)

    def __getitem__(self, item: str) -> Any:
        if not isinstance(item, str):
            raise KeyError(f"BatchFeature is indexed by name (e.g. 'pixel_values'), not by {item!r}.")
        return self.data[item]

    def __getattr__(self, item: str) -> Any:
        if item == "data":  # during unpickling, before __setstate__ ran
            raise AttributeError(item)
        try:
            return self.data[item]
        except KeyError:
            raise AttributeError(item) from None

    def __getstate__(self) -> dict[str, Any]:
        return {"data": self.data}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.data = state.get("data", {})

    def convert_to_tensors(self, tensor_type: str | None = None) -> "BatchFeature":
        """Turn every value into a ``"pt"`` tensor or ``"np"`` array (stacking lists); None leaves them as they are."""
        if tensor_type is None:
            return self
        kind = getattr(tensor_type, "value", tensor_type)
        if kind not in ("pt", "np"):
            raise InputError(f"return_tensors={tensor_type!r} is not supported; use 'pt', 'np' or None.")
        for key, value in list(self.data.items()):
            self.data[key] = _as_tensor(value, kind, key)
        return self

    def to(self, *args: Any, **kwargs: Any) -> "BatchFeature":
        """Move floating tensors with ``Tensor.to(*args, **kwargs)`` (device and/or dtype); other tensors only
        change device. Returns ``self``, as the reference does."""
        tensors_to(self.data, args, kwargs)
        return self


def _as_tensor(value: Any, kind: str, key: str) -> Any:
    """Convert one value to a torch tensor or NumPy array; a ragged list gets a clear error."""
    import torch

    if kind == "pt" and isinstance(value, torch.Tensor) or kind == "np" and isinstance(value, np.ndarray):
        return value
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], (np.ndarray, torch.Tensor)):
        value = stack_same_shape(value, key, ", or pass return_tensors=None")
    if kind == "pt":
        return torch.from_numpy(value) if isinstance(value, np.ndarray) else torch.as_tensor(value)
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


# ----------------------------------------------------------------------------------------------------------------
# Parameters: size dicts, channel layout, flattening the input
# ----------------------------------------------------------------------------------------------------------------


def get_size_dict(size: Any, default_to_square: bool = True, param_name: str = "size") -> dict[str, int]:
    """Normalise ``size`` as the reference does: int -> square or shortest edge, (h, w) -> height/width."""
    if isinstance(size, dict):
        out = size
    elif isinstance(size, int) and not isinstance(size, bool):
        out = {"height": size, "width": size} if default_to_square else {"shortest_edge": size}
    elif isinstance(size, (tuple, list)) and len(size) == 2:
        out = {"height": size[0], "width": size[1]}
    else:
        raise InputError(f"{param_name}={size!r} is not a valid size; pass an int, (height, width), "
                         "{'shortest_edge': n} or {'height': h, 'width': w}.")
    if set(out) not in _VALID_SIZE_KEYS:
        raise InputError(f"{param_name} must have one of the key sets {[sorted(k) for k in _VALID_SIZE_KEYS]}, "
                         f"got {sorted(out)}.")
    return out


def _channel_format(shape: Sequence[int], given: str | None = None) -> str:
    """The reference's rule: with 1 or 3 channels on both ends, channels first wins (with a warning)."""
    if given is not None:
        return getattr(given, "value", given)
    if len(shape) != 3:
        raise InputError(f"Cannot tell where the channels are in an array of shape {tuple(shape)}; images are "
                         "(H, W, C) or (C, H, W), or a 4-D batch of those.")
    first, last = shape[0] in (1, 3), shape[-1] in (1, 3)
    if first and last:
        logger.warning("The channel dimension is ambiguous for shape %s; assuming channels first. Pass "
                       "input_data_format to choose.", tuple(shape))
    if first:
        return FIRST
    if last:
        return LAST
    raise InputError(f"Cannot find the channel axis in an image of shape {tuple(shape)}: expected 1 or 3 channels "
                     "first or last. For other channel counts pass input_data_format='channels_first' or "
                     "'channels_last'.")


def _is_image(obj: Any) -> bool:
    """PIL image, NumPy array or torch tensor (torch imported only if the caller already has it)."""
    import sys

    from PIL import Image

    if isinstance(obj, (Image.Image, np.ndarray)):
        return True
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


_SOURCES = (str, bytes, bytearray, memoryview, os.PathLike)  # what load_image decodes: paths, URLs, base64, bytes


def _flatten_images(images: Any) -> list[Any]:
    """One flat list of 3-D images from a single image, a list, a nested list or a 4-D batch. Sources (paths,
    URLs, base64, bytes) stay as they are, to be loaded by :func:`_open_sources` or a fused per-image task."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise InputError("Got an empty list of images; pass at least one image.")
        out: list[Any] = []
        for item in images:
            out.extend(_flatten_images(item) if isinstance(item, (list, tuple)) else _split_batch(item))
        return out
    return _split_batch(images)


def _split_batch(image: Any) -> list[Any]:
    """A 4-D array/tensor is a batch; a 3-D one, a PIL image or a source is one image; anything else is an error."""
    from PIL import Image

    if isinstance(image, _SOURCES):
        return [image]
    if isinstance(image, Image.Image):
        if image.width == 0 or image.height == 0:
            raise InputError(f"Got an empty image ({image.width}x{image.height} pixels).")
        return [image]
    if not _is_image(image):
        raise InputError(f"Invalid image type {type(image).__name__}; expected a PIL.Image.Image, numpy.ndarray, "
                         "torch.Tensor, a file path or URL, or a list of them.")
    if image.ndim == 4:
        return list(image)
    if image.ndim != 3:
        raise InputError(f"Expected an image with 3 dimensions ((H, W, C) or (C, H, W)) or a batch with 4, got shape "
                         f"{tuple(image.shape)}.")
    if 0 in tuple(image.shape):
        raise InputError(f"Got an empty image of shape {tuple(image.shape)}.")
    return [image]



def _to_numpy(image: Any) -> np.ndarray:
    """PIL -> array (as np.array does), torch -> array (detached, on the CPU), arrays unchanged."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return np.array(image)
    if isinstance(image, np.ndarray):
        return image
    return image.detach().cpu().numpy()


def _output_size(height: int, width: int, size: dict[str, int]) -> tuple[int, int]:
    """Target (height, width): shortest edge scaled with the long edge truncated, or an exact height/width."""
    if "shortest_edge" in size:
        target = size["shortest_edge"]
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(target * long / short)
        return (new_long, target) if width <= height else (target, new_long)
    if "height" in size and "width" in size:
        return size["height"], size["width"]
    raise InputError(f"Size must contain either 'shortest_edge' or 'height' and 'width', got {sorted(size)}.")


CROP_ROUNDINGS = ("floor", "half_even")


def _axis_crop(size: int, crop: int, rounding: str) -> tuple[int, int]:
    """(zero lines padded before the image, first line kept) of a center crop along one axis.

    ``"floor"`` is transformers' crop: offsets round down, and padding puts the odd line first. ``"half_even"`` is
    torchvision's (open_clip's): offsets round half to even, and padding puts the odd line last.
    """
    if crop > size:
        return ((crop - size) // 2 if rounding == "half_even" else (crop - size + 1) // 2), 0
    return 0, (round((size - crop) / 2) if rounding == "half_even" else (size - crop) // 2)


def _crop_box(height: int, width: int, crop_h: int, crop_w: int, rounding: str = "floor"
              ) -> tuple[int, int, int, int] | None:
    """(top, left, crop_h, crop_w) of the center crop, or None when it needs zero padding."""
    (pad_top, top), (pad_left, left) = _axis_crop(height, crop_h, rounding), _axis_crop(width, crop_w, rounding)
    return None if pad_top or pad_left else (top, left, crop_h, crop_w)


def _center_crop(image: np.ndarray, crop_h: int, crop_w: int, fmt: str, rounding: str = "floor") -> np.ndarray:
    """The center crop of an array in layout ``fmt`` (zero-padded where the image is smaller than the crop)."""
    chw = np.moveaxis(image, -1, 0) if fmt == LAST else image
    out = _padded_crop(chw, crop_h, crop_w, rounding, np.zeros_like)
    return np.moveaxis(out, 0, -1) if fmt == LAST else out


def _padded_crop(image: Any, crop_h: int, crop_w: int, rounding: str, zeros_like: Any) -> Any:
    """Center crop of a (..., H, W) array or tensor, zero-padding (``zeros_like(x, shape=...)``) where it is
    smaller than the crop; a view when no padding is needed."""
    height, width = image.shape[-2:]
    (pad_top, top), (pad_left, left) = _axis_crop(height, crop_h, rounding), _axis_crop(width, crop_w, rounding)
    if pad_top or pad_left:
        new_h, new_w = max(crop_h, height), max(crop_w, width)
        padded = zeros_like(image, shape=tuple(image.shape[:-2]) + (new_h, new_w))
        padded[..., pad_top:pad_top + height, pad_left:pad_left + width] = image
        image = padded
    return image[..., top:top + crop_h, left:left + crop_w]


# ----------------------------------------------------------------------------------------------------------------
# The reference's per-pixel arithmetic (NumPy), and its 256-entry tables
# ----------------------------------------------------------------------------------------------------------------


def _rescale(image: np.ndarray, scale: float) -> np.ndarray:
    """``x * scale`` computed in float64, stored as float32 (the reference's rescale)."""
    return (image.astype(np.float64) * scale).astype(np.float32)


def _normalize(image: np.ndarray, mean: Any, std: Any, channel_axis: int) -> np.ndarray:
    """``(x - mean) / std`` per channel in the image's float dtype (float32 for integer images)."""
    channels = image.shape[channel_axis]
    if not np.issubdtype(image.dtype, np.floating):
        image = image.astype(np.float32)
    mean_arr = _per_channel(mean, channels, "image_mean", image.dtype)
    std_arr = _per_channel(std, channels, "image_std", image.dtype)
    shape = [1] * image.ndim
    shape[channel_axis] = channels
    return (image - mean_arr.reshape(shape)) / std_arr.reshape(shape)


def _per_channel(value: Any, channels: int, name: str, dtype: Any) -> np.ndarray:
    """A scalar or one value per channel, as an array of ``dtype``."""
    if isinstance(value, (int, float)):
        value = [value] * channels
    value = list(value)
    if len(value) != channels:
        raise InputError(f"{name} has {len(value)} values but the image has {channels} channels.")
    return np.array(value, dtype=dtype)


def _post_ops(image: np.ndarray, channel_axis: int, opts: dict[str, Any], unscale: bool) -> np.ndarray:
    """Everything after the crop: the 1/255 undo of a float image's PIL round trip, rescale, normalize."""
    if unscale:
        image = _rescale(image, 1 / 255)
    if opts["do_rescale"]:
        image = _rescale(image, opts["rescale_factor"])
    if opts["do_normalize"]:
        image = _normalize(image, opts["image_mean"], opts["image_std"], channel_axis)
    return image


def _lookup_table(channels: int, opts: dict[str, Any], unscale: bool) -> np.ndarray | None:
    """(channels, 256) table of :func:`_post_ops` applied to every uint8 value, or None if it is the identity."""
    if not (unscale or opts["do_rescale"] or opts["do_normalize"]):
        return None
    values = np.repeat(np.arange(256, dtype=np.uint8)[:, None], channels, axis=1)  # (256, C), channels last
    return np.ascontiguousarray(_post_ops(values, 1, opts, unscale).T)


def _needs_pil_scaling(image: np.ndarray) -> bool:
    """The reference's rule to put an array into a uint8 PIL image: uint8 or integer-valued arrays go as they are,
    floats in [0, 1] are multiplied by 255 first, anything else is an error."""
    if image.dtype == np.uint8:
        return False
    if np.allclose(image, image.astype(int)):
        if image.min() >= 0 and image.max() <= 255:
            return False
        raise InputError(f"Cannot resize an image with values in [{image.min()}, {image.max()}]: integer-valued "
                         "images must lie in [0, 255].")
    if image.min() >= 0 and image.max() <= 1:
        return True
    raise InputError(f"Cannot resize a float image with values in [{image.min()}, {image.max()}]: float images must "
                     "lie in [0, 1] (or hold integers in [0, 255]).")


# ----------------------------------------------------------------------------------------------------------------
# Shared processor plumbing: parameters, serialization, loading
# ----------------------------------------------------------------------------------------------------------------


class _CLIPImageProcessorBase:
    """Parameters, ``to_dict``/``from_dict``/JSON/``from_pretrained``/``save_pretrained``, shared by both classes."""

    model_input_names = ["pixel_values"]
    resizes_on_device = False  # whether preprocess takes device= (the fast class does)
    _extra_defaults: dict[str, Any] = {}

    def __init__(
        self,
        do_resize: bool = True,
        size: dict[str, int] | int | None = None,
        resample: int = BICUBIC,
        do_center_crop: bool = True,
        crop_size: dict[str, int] | int | None = None,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: float | list[float] | None = None,
        image_std: float | list[float] | None = None,
        do_convert_rgb: bool = True,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("feature_extractor_type", None)  # 2021 configs name the old class; it means nothing now
        kwargs.pop("image_processor_type", None)
        self._processor_class = kwargs.pop("processor_class", None)
        use_square_size = kwargs.pop("use_square_size", False)
        for key, default in self._extra_defaults.items():
            setattr(self, key, kwargs.pop(key, default))
        self.do_resize = do_resize
        self.size = get_size_dict(size if size is not None else {"shortest_edge": 224}, default_to_square=False)
        self.resample = resample
        self.do_center_crop = do_center_crop
        self.crop_size = get_size_dict(crop_size if crop_size is not None else {"height": 224, "width": 224},
                                       default_to_square=True, param_name="crop_size")
        self.do_rescale = do_rescale
        self.rescale_factor = rescale_factor
        self.do_normalize = do_normalize
        self.image_mean = image_mean if image_mean is not None else list(OPENAI_CLIP_MEAN)
        self.image_std = image_std if image_std is not None else list(OPENAI_CLIP_STD)
        self.do_convert_rgb = do_convert_rgb
        if use_square_size:  # KOSMOS-2 configs: a square resize instead of the shortest edge
            self.size = {"height": self.size["shortest_edge"], "width": self.size["shortest_edge"]}
        for key, value in kwargs.items():  # unknown config keys are kept, as the reference keeps them
            setattr(self, key, value)

    def __call__(self, images: Any, **kwargs: Any) -> BatchFeature:
        """Same as :meth:`preprocess`."""
        return self.preprocess(images, **kwargs)

    def preprocess(self, images: Any, **kwargs: Any) -> BatchFeature:  # pragma: no cover - overridden
        raise NotImplementedError

    def center_crop(self, image: np.ndarray, size: dict[str, int], input_data_format: str | None = None,
                    **kwargs: Any) -> np.ndarray:
        """Center crop one array to ``size`` ({'height', 'width'}), zero-padding if it is smaller."""
        size = get_size_dict(size, param_name="crop_size")
        if "height" not in size or "width" not in size:
            raise InputError(f"crop_size needs 'height' and 'width', got {sorted(size)}.")
        return _center_crop(image, size["height"], size["width"], _channel_format(image.shape, input_data_format))

    def _options(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Call-time options: each keyword overrides the attribute of the same name; unknown keywords are logged."""
        unknown = set(kwargs) - set(_PREPROCESS_KEYS) - set(self._extra_call_keys()) - {"crop_rounding"}
        if unknown:
            logger.warning("Unused or unrecognized kwargs: %s.", ", ".join(sorted(unknown)))
        # the reference reads these three only from the call (the fast class also from its attributes)
        call_only = {"return_tensors", "data_format", "input_data_format"} - set(self._extra_defaults)
        opts = {key: None if key in call_only else getattr(self, key, None) for key in _PREPROCESS_KEYS}
        opts.update({k: v for k, v in kwargs.items() if v is not None})
        opts.setdefault("data_format", FIRST)
        opts["data_format"] = getattr(opts["data_format"], "value", opts["data_format"]) or FIRST
        opts["size"] = get_size_dict(opts["size"], default_to_square=False)
        opts["crop_size"] = get_size_dict(opts["crop_size"], default_to_square=True, param_name="crop_size")
        opts["resample"] = int(opts["resample"]) if opts["resample"] is not None else None
        if opts["do_rescale"] and opts["rescale_factor"] is None:
            raise InputError("rescale_factor must be set when do_rescale is True.")
        if opts["do_normalize"] and (opts["image_mean"] is None or opts["image_std"] is None):
            raise InputError("image_mean and image_std must be set when do_normalize is True.")
        if opts["do_resize"] and opts["resample"] is None:
            raise InputError("resample must be set when do_resize is True.")
        if opts["do_center_crop"] and not {"height", "width"} <= set(opts["crop_size"]):
            raise InputError(f"crop_size needs 'height' and 'width', got {sorted(opts['crop_size'])}.")
        # clipfast's own option (kept in the config only when set): "half_even" crops where open_clip does
        opts["crop_rounding"] = kwargs.get("crop_rounding") or getattr(self, "crop_rounding", None) or "floor"
        if opts["crop_rounding"] not in CROP_ROUNDINGS:
            raise InputError(f"crop_rounding={opts['crop_rounding']!r} is not known; use 'floor' (transformers' "
                             "center crop) or 'half_even' (torchvision's and open_clip's).")
        return opts

    def _extra_call_keys(self) -> tuple[str, ...]:
        return ()

    # -- serialization -------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """All attributes (deep-copied) plus ``image_processor_type``, as the reference writes them."""
        out = copy.deepcopy(self.__dict__)
        out["image_processor_type"] = type(self).__name__
        return out

    def to_json_string(self) -> str:
        """``to_dict()`` as sorted, indented JSON; ``_processor_class`` is written as ``processor_class``."""
        data = self.to_dict()
        processor_class = data.pop("_processor_class", None)
        if processor_class is not None:
            data["processor_class"] = processor_class
        data = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in data.items()}
        return json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n"

    def to_json_file(self, json_file_path: str | os.PathLike) -> None:
        """Write :meth:`to_json_string` to a file."""
        with open(json_file_path, "w", encoding="utf-8") as handle:
            handle.write(self.to_json_string())

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"

    @classmethod
    def from_dict(cls, image_processor_dict: dict[str, Any], **kwargs: Any) -> Any:
        """Build from a config dict; keyword arguments override it as in the reference: ``size`` and
        ``crop_size`` go through the constructor (so ints become dicts), other known attributes are set after.

        Example:
            >>> CLIPImageProcessor.from_dict({"size": 224}, size=42).size   # doctest: +SKIP
            {'shortest_edge': 42}
        """
        config = dict(image_processor_dict)
        return_unused = kwargs.pop("return_unused_kwargs", False)
        for key in ("size", "crop_size"):
            if key in kwargs and key in config:
                config[key] = kwargs.pop(key)
        processor = cls(**config)
        unused = set_known_attributes(processor, kwargs)
        return (processor, unused) if return_unused else processor

    @classmethod
    def from_json_file(cls, json_file: str | os.PathLike) -> Any:
        """Build from a ``preprocessor_config.json`` file."""
        with open(json_file, encoding="utf-8") as handle:
            return cls.from_dict(json.load(handle))

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        subfolder: str = "",
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """Load ``preprocessor_config.json`` from a folder or hub id (2021 and current formats).

        Example:
            >>> CLIPImageProcessor.from_pretrained("openai/clip-vit-base-patch32")  # doctest: +SKIP
        """
        kwargs.pop("use_fast", None)
        kwargs.pop("force_download", None)
        kwargs.pop("trust_remote_code", None)
        path = resolve_file(pretrained_model_name_or_path, IMAGE_PROCESSOR_NAME, subfolder=subfolder,
                            revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token)
        return cls.from_dict(read_json(path), **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> list[str]:
        """Write ``preprocessor_config.json`` into ``save_directory`` (created if needed); returns its path."""
        if os.path.isfile(save_directory):
            raise InputError(f"save_pretrained expects a folder, but {os.fspath(save_directory)!r} is a file.")
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, IMAGE_PROCESSOR_NAME)
        self.to_json_file(path)
        return [path]


def _json_default(value: Any) -> Any:
    """JSON for the odd attribute: enums by value, tuples and arrays as lists, dtypes and devices as strings."""
    if hasattr(value, "value"):
        return value.value
    if isinstance(value, (set, tuple)):
        return list(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
