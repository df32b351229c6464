"""CLIP image processors: ``CLIPImageProcessor`` (PIL/NumPy, exact) and ``CLIPImageProcessorFast`` (torch, batched).

Both follow transformers 4.57's ``CLIPImageProcessor`` step by step (spec §5.3): optional RGB conversion of PIL
images, resize of the shortest edge with Pillow's antialiased bicubic, center crop, rescale by 1/255, normalize
with the OpenAI mean/std, channels first.

How they are fast and still exact:

- Rescale and normalize are per-pixel functions of a uint8 value and its channel, so once an image is uint8 (it
  always is after Pillow's resize) they are a 256-entry table per channel, filled by running the reference's own
  float operations on the values 0..255. Indexing that table gives the reference's output bit for bit, and the
  crop happens before it, on uint8.
- ``CLIPImageProcessor`` resizes with Pillow itself and spreads the images of a batch over threads (Pillow
  releases the GIL while it resamples).
- ``CLIPImageProcessorFast`` reproduces Pillow's resampling in torch: the same fixed-point filter coefficients
  (22 fractional bits), the same two passes with rounding and clipping to uint8 between them, in the order
  Pillow picks. Each pass is a product with a banded coefficient matrix in float64, where every partial sum is
  an integer below 2**53 and therefore exact on any device. Only the output pixels that survive the center crop
  are computed. No torchvision. That is its path for arrays, tensors and every GPU input.
- ``CLIPImageProcessorFast`` with PIL images on the CPU runs one thread-pool task per image: Pillow resizes
  computing little more than the crop (see ``_BOXED_FILTERS``), and torch folds rescale and normalize into one
  multiply-add per channel. Within one uint8 level of the exact path (rare pixels), not bit-identical.
  :func:`clipfast.image_io.iter_image_batches` runs the same task per file, decode included.

Example:
    >>> from clipfast import CLIPImageProcessor                        # doctest: +SKIP
    >>> processor = CLIPImageProcessor()                               # doctest: +SKIP
    >>> processor(images=image, return_tensors="pt")["pixel_values"].shape  # doctest: +SKIP
    torch.Size([1, 3, 224, 224])
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import math
import os
import threading
import warnings
from collections import UserDict
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from clipfast.configuration import set_known_attributes
from clipfast.errors import InputError

if TYPE_CHECKING:
    import PIL.Image
    import torch

logger = logging.getLogger(__name__)

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
IMAGE_PROCESSOR_NAME = "preprocessor_config.json"

# Pillow's resampling filters: Resampling value -> (name, support)
NEAREST, LANCZOS, BILINEAR, BICUBIC, BOX, HAMMING = 0, 1, 2, 3, 4, 5
_SUPPORT = {BOX: 0.5, BILINEAR: 1.0, HAMMING: 1.0, BICUBIC: 2.0, LANCZOS: 3.0}
_PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point coefficient precision for 8-bit images

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
        from clipfast.tokenization import tensors_to

        tensors_to(self.data, args, kwargs)
        return self


def _as_tensor(value: Any, kind: str, key: str) -> Any:
    """Convert one value to a torch tensor or NumPy array; a ragged list gets a clear error."""
    import torch

    if kind == "pt" and isinstance(value, torch.Tensor) or kind == "np" and isinstance(value, np.ndarray):
        return value
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], (np.ndarray, torch.Tensor)):
        shapes = {tuple(v.shape) for v in value}
        if len(shapes) > 1:
            raise InputError(f"Cannot stack {key} of different shapes {sorted(shapes)} into one tensor; keep "
                             "do_center_crop=True (or resize to a fixed {'height', 'width'}), or pass return_tensors=None.")
        if isinstance(value[0], torch.Tensor):
            value = torch.stack(list(value))
        else:
            value = np.stack(value)
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
    URLs, base64, bytes) stay as they are, to be loaded by :func:`_load_sources` or a fused per-image task."""
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


def _load_source(image: Any) -> Any:
    """A source decoded to an RGB PIL image (as the reference's processors load paths and URLs); images as they are."""
    if not isinstance(image, _SOURCES):
        return image
    from clipfast.image_io import load_image

    return _split_batch(load_image(image))[0]  # (the check for an empty image)


def _load_sources(images: list[Any]) -> list[Any]:
    """Every source in ``images`` loaded, several on the thread pool at once (downloads and decodes overlap)."""
    if not any(isinstance(image, _SOURCES) for image in images):
        return images
    return _map(_load_source, images)


def _fused_sources(images: list[Any], plan: tuple | None, opts: dict[str, Any], as_numpy: bool
                   ) -> "BatchFeature | None":
    """When every image is a source and ``plan`` (an ``_image_fn`` triple) applies, load and preprocess each image
    in one pool task, written into its row of one preallocated batch: decoding one image overlaps resizing
    another, with no barrier between loading and processing. None when this does not apply (a forced
    ``input_data_format`` takes the general path, which honours it)."""
    if plan is None or len(images) < 2 or opts["input_data_format"] is not None \
            or not all(isinstance(image, _SOURCES) for image in images):
        return None
    from clipfast.image_io import DEFAULT_TIMEOUT, _submit

    return_tensors = opts["return_tensors"]
    futures, out = _submit(_thread_pool(), images, plan, DEFAULT_TIMEOUT)  # iter_image_batches' per-image tasks
    results = [future.result() for future in futures]  # raises the first failure, in input order
    if return_tensors is not None and out is not None:
        return BatchFeature({"pixel_values": out}, tensor_type=return_tensors)
    rows = list(out) if out is not None else results
    return BatchFeature({"pixel_values": [row.numpy() for row in rows] if as_numpy else rows},
                        tensor_type=return_tensors)


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
        from clipfast.hub import read_json, resolve_file

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


# ----------------------------------------------------------------------------------------------------------------
# CLIPImageProcessor: PIL + NumPy, the reference's numbers
# ----------------------------------------------------------------------------------------------------------------

_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _thread_pool() -> ThreadPoolExecutor:
    """One process-wide pool for per-image work, created on first use."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="clipfast-img")
        return _POOL


class CLIPImageProcessor(_CLIPImageProcessorBase):
    """CLIP preprocessing with Pillow and NumPy; equal to transformers 4.57's ``CLIPImageProcessor`` bit for bit.

    Args:
        do_resize: resize so that the short side is ``size["shortest_edge"]`` (or to ``{"height", "width"}``).
        size: ``{"shortest_edge": 224}`` by default; an int means the shortest edge.
        resample: Pillow resampling filter (3 = bicubic).
        do_center_crop / crop_size: crop the center ``{"height": 224, "width": 224}``; an int means a square.
        do_rescale / rescale_factor: multiply by 1/255.
        do_normalize / image_mean / image_std: subtract the OpenAI CLIP mean and divide by its std.
        do_convert_rgb: convert PIL images to RGB first (``Image.convert("RGB")``, as the reference does).

    Example:
        >>> processor = CLIPImageProcessor()                               # doctest: +SKIP
        >>> processor([img1, img2], return_tensors="pt").pixel_values.shape  # doctest: +SKIP
        torch.Size([2, 3, 224, 224])
    """

    def preprocess(self, images: Any, **kwargs: Any) -> BatchFeature:
        """Preprocess one image or a batch; keywords override the processor's attributes for this call.

        Accepts PIL images, NumPy arrays and torch tensors ((H, W, C) or (C, H, W), uint8 or float), lists of
        them and 4-D batches. ``return_tensors`` is ``"pt"``, ``"np"`` or None (a list of arrays).
        """
        opts = self._options(kwargs)
        images = _flatten_images(images)
        fused = _fused_sources(images, self._plan(opts), opts, as_numpy=True)
        if fused is not None:
            return fused
        processed = _pillow_pipeline(_load_sources(images), opts)
        return BatchFeature({"pixel_values": processed}, tensor_type=opts["return_tensors"])

    def _image_fn(self, kwargs: dict[str, Any]) -> tuple[Any, tuple[int, ...] | None, Any] | None:
        """(run, shape, dtype) for :func:`clipfast.image_io.iter_image_batches`: ``run(image, out=None)`` gives one
        RGB PIL image's pixel values as a tensor (written into ``out`` when given); ``shape`` is every output's
        shape (None unless center-cropping) and ``dtype`` their dtype. Same numbers as :meth:`preprocess`."""
        return self._plan(self._options(kwargs))

    def _plan(self, opts: dict[str, Any]) -> tuple[Any, tuple[int, ...] | None, Any]:
        """:meth:`_image_fn` for already resolved call options."""
        import torch

        tables = {(3, False): _lookup_table(3, opts, False)}
        dtype = torch.uint8 if tables[(3, False)] is None else torch.float32

        def run(image: Any, out: "torch.Tensor | None" = None) -> "torch.Tensor":
            image = _convert_rgb(image) if opts["do_convert_rgb"] else image
            pixels = torch.from_numpy(np.require(_process_one(image, LAST, opts, tables), requirements=["C", "W"]))
            return pixels if out is None else out.copy_(pixels)

        return run, _rgb_output_shape(opts), dtype


def _rgb_output_shape(opts: dict[str, Any]) -> tuple[int, ...] | None:
    """Shape of every output for RGB inputs when center-cropping (None otherwise: it follows the image)."""
    if not opts["do_center_crop"]:
        return None
    crop_h, crop_w = opts["crop_size"]["height"], opts["crop_size"]["width"]
    return (3, crop_h, crop_w) if opts["data_format"] == FIRST else (crop_h, crop_w, 3)


def _pillow_pipeline(images: list[Any], opts: dict[str, Any]) -> list[np.ndarray]:
    """The exact PIL/NumPy path for a list of images, spread over the thread pool."""
    if opts["do_convert_rgb"]:
        images = [_convert_rgb(image) for image in images]
    from PIL import Image

    # a PIL image is (H, W, C) whatever its size; the reference's guess takes a 1-pixel-tall one for channels first
    pil_first = isinstance(images[0], Image.Image) and opts["input_data_format"] is None
    fmt = LAST if pil_first else _channel_format(_shape_of(images[0]), opts["input_data_format"])
    first = images[0] if isinstance(images[0], np.ndarray) else None
    if opts["do_rescale"] and first is not None and first.dtype != np.uint8 and first.min() >= 0 \
            and first.max() <= 1:
        logger.warning("It looks like you are trying to rescale already rescaled images (values in [0, 1]). "
                       "Set do_rescale=False to avoid rescaling them again.")
    tables: dict[tuple[int, bool], np.ndarray | None] = {}
    for channels in {_channels_of(image, fmt) for image in images}:
        for unscale in (False, True):
            tables[(channels, unscale)] = _lookup_table(channels, opts, unscale)
    return _map(functools.partial(_process_one, fmt=fmt, opts=opts, tables=tables), images)


def _convert_rgb(image: Any) -> Any:
    """PIL images in another mode become RGB with ``Image.convert`` (alpha is dropped, as in the reference)."""
    from PIL import Image

    if isinstance(image, Image.Image) and image.mode != "RGB":
        return image.convert("RGB")
    return image


def _shape_of(image: Any) -> tuple[int, ...]:
    """The shape ``np.array(image)`` would have, without converting PIL images."""
    from PIL import Image

    if isinstance(image, Image.Image):
        bands = len(image.getbands())
        return (image.height, image.width, bands) if bands > 1 else (image.height, image.width)
    return tuple(image.shape)


def _channels_of(image: Any, fmt: str) -> int:
    shape = _shape_of(image)
    if len(shape) != 3:
        raise InputError(f"Cannot process an image of shape {shape} (a {getattr(image, 'mode', '')} PIL image "
                         "without do_convert_rgb?); images need a channel axis.")
    return shape[0] if fmt == FIRST else shape[-1]


def _process_one(image: Any, fmt: str, opts: dict[str, Any], tables: dict) -> np.ndarray:
    """Resize, crop and normalise one image exactly as the reference does (see the module docstring)."""
    unscale = False
    if opts["do_resize"]:
        image, unscale = _resize_one(image, fmt, opts)
    else:
        image = _to_numpy(image)
    if image.ndim == 2:  # a one-band PIL result comes back as (H, W)
        image = image[:, :, None] if fmt == LAST else image[None]
    if opts["do_center_crop"]:
        image = _center_crop(image, opts["crop_size"]["height"], opts["crop_size"]["width"], fmt,
                             opts["crop_rounding"])
    channel_axis = 0 if fmt == FIRST else image.ndim - 1
    if image.dtype == np.uint8:
        table = tables.get((image.shape[channel_axis], unscale))
        if table is not None:
            image = _apply_table(image, table, fmt, opts["data_format"])
            return image
    else:
        image = _post_ops(image, channel_axis, opts, unscale)
    return _to_format(image, fmt, opts["data_format"])


def _resize_one(image: Any, fmt: str, opts: dict[str, Any]) -> tuple[np.ndarray, bool]:
    """Pillow resize of one image; returns the uint8 result and whether it had to be scaled by 255 for Pillow."""
    from PIL import Image

    resample = opts["resample"]
    if isinstance(image, Image.Image) and image.mode == "RGB" and fmt == LAST:
        height, width = _output_size(image.height, image.width, opts["size"])
        return np.asarray(image.resize((width, height), resample, reducing_gap=None)), False
    array = _to_numpy(image)
    if array.ndim == 2:
        raise InputError(f"Cannot process a 2-D image of shape {array.shape}; convert it to RGB "
                         "(do_convert_rgb=True for PIL images) or add a channel axis.")
    h_axis = 1 if fmt == FIRST else 0
    height, width = _output_size(array.shape[h_axis], array.shape[h_axis + 1], opts["size"])
    scaled = _needs_pil_scaling(array)
    hwc = np.moveaxis(array, 0, -1) if fmt == FIRST else array
    if hwc.shape[-1] == 1:
        hwc = hwc[..., 0]
    if scaled:
        hwc = _rescale(hwc, 255)
    pil = Image.fromarray(hwc.astype(np.uint8))
    out = np.array(pil.resize((width, height), resample, reducing_gap=None))
    if out.ndim == 2:
        out = out[:, :, None]
    return (np.moveaxis(out, -1, 0) if fmt == FIRST else out), scaled


def _apply_table(image: np.ndarray, table: np.ndarray, fmt: str, data_format: str) -> np.ndarray:
    """Look up each uint8 pixel in its channel's row of ``table``; writes the requested layout directly."""
    chw = np.moveaxis(image, -1, 0) if fmt == LAST else image
    out = np.empty(chw.shape, dtype=table.dtype)
    for c in range(chw.shape[0]):
        np.take(table[c], chw[c], out=out[c])
    return np.moveaxis(out, 0, -1) if data_format == LAST else out


def _to_format(image: np.ndarray, fmt: str, data_format: str | None) -> np.ndarray:
    """Move the channel axis to ``data_format`` (None keeps the input layout)."""
    if data_format is None or data_format == fmt:
        return image
    return np.moveaxis(image, -1, 0) if data_format == FIRST else np.moveaxis(image, 0, -1)


class CLIPFeatureExtractor(CLIPImageProcessor):
    """Deprecated name of :class:`CLIPImageProcessor` (the 2021 class); warns with a FutureWarning."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        warnings.warn("The class CLIPFeatureExtractor is deprecated and will be removed in version 5 of "
                      "Transformers. Please use CLIPImageProcessor instead.", FutureWarning, stacklevel=2)
        super().__init__(*args, **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# Pillow's resampling, reproduced in torch
# ----------------------------------------------------------------------------------------------------------------


def _filter_weights(kind: int, x: np.ndarray) -> np.ndarray:
    """Pillow's filter functions, evaluated in float64 with the same expressions."""
    ax = np.abs(x)
    if kind == BICUBIC:
        a = -0.5
        near = ((a + 2.0) * ax - (a + 3.0)) * ax * ax + 1
        far = (((ax - 5) * ax + 8) * ax - 4) * a
        return np.where(ax < 1.0, near, np.where(ax < 2.0, far, 0.0))
    if kind == BILINEAR:
        return np.where(ax < 1.0, 1.0 - ax, 0.0)
    if kind == BOX:
        return np.where((x > -0.5) & (x <= 0.5), 1.0, 0.0)
    if kind == HAMMING:
        px = np.where(ax == 0.0, 1.0, ax * np.pi)
        value = np.sin(px) / px * (np.float32(0.54) + np.float32(0.46) * np.cos(px))
        return np.where(ax == 0.0, 1.0, np.where(ax >= 1.0, 0.0, value))
    if kind == LANCZOS:
        def sinc(v: np.ndarray) -> np.ndarray:
            pv = np.where(v == 0.0, 1.0, v * np.pi)
            return np.where(v == 0.0, 1.0, np.sin(pv) / pv)
        return np.where((x >= -3.0) & (x < 3.0), sinc(x) * sinc(x / 3), 0.0)
    raise InputError(f"resample={kind} is not supported; use 0 (nearest), 1 (lanczos), 2 (bilinear), 3 (bicubic), "
                     "4 (box) or 5 (hamming).")


@functools.lru_cache(maxsize=64)
def _pil_coefficients(in_size: int, out_size: int, kind: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc``: (out, ksize) integer weights and the first
    input index of each output."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = _SUPPORT[kind] * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    center = (np.arange(out_size) + 0.5) * scale
    xmin = np.maximum(np.trunc(center - support + 0.5).astype(np.int64), 0)
    count = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - xmin
    taps = np.arange(ksize)
    weights = _filter_weights(kind, ((taps[None, :] + xmin[:, None]) - center[:, None] + 0.5) * (1.0 / filterscale))
    weights[taps[None, :] >= count[:, None]] = 0.0
    total = np.zeros(out_size)
    for j in range(ksize):  # sequential sum, in Pillow's order
        total = total + weights[:, j]
    weights = np.where(total[:, None] != 0.0, weights / np.where(total == 0.0, 1.0, total)[:, None], weights)
    one = float(1 << _PRECISION_BITS)
    fixed = np.where(weights < 0, np.trunc(-0.5 + weights * one), np.trunc(0.5 + weights * one))
    return fixed, xmin


def _band_blocks(in_size: int, out_size: int, kind: int, start: int, stop: int, block: int) -> list[tuple]:
    """Split outputs [start, stop) into blocks; each is (o0, o1, i0, i1, dense (i1-i0, o1-o0) float64 matrix)."""
    fixed, xmin = _pil_coefficients(in_size, out_size, kind)
    blocks = []
    for o0 in range(start, stop, block):
        o1 = min(o0 + block, stop)
        rows = xmin[o0:o1, None] + np.arange(fixed.shape[1])[None, :]
        live = fixed[o0:o1] != 0
        i0 = int(rows[live].min()) if live.any() else int(xmin[o0])
        i1 = int(rows[live].max()) + 1 if live.any() else i0 + 1
        dense = np.zeros((i1 - i0, o1 - o0))
        cols = np.broadcast_to(np.arange(o1 - o0)[:, None], rows.shape)
        np.add.at(dense, (rows[live] - i0, cols[live]), fixed[o0:o1][live])
        blocks.append((o0, o1, i0, i1, dense))
    return blocks


@functools.lru_cache(maxsize=128)
def _band_blocks_on(in_size: int, out_size: int, kind: int, start: int, stop: int, block: int, device: str) -> list:
    """:func:`_band_blocks` with the matrices as float64 tensors on ``device`` (cached per shape and device)."""
    import torch

    return [(o0, o1, i0, i1, torch.from_numpy(dense).to(device))
            for o0, o1, i0, i1, dense in _band_blocks(in_size, out_size, kind, start, stop, block)]


def _resample(x: "torch.Tensor", axis: int, in_size: int, out_size: int, kind: int, start: int, stop: int,
              offset: int = 0) -> "torch.Tensor":
    """One Pillow pass along ``axis`` (-1: columns, -2: rows) of a uint8 tensor whose first entry on that axis
    is input index ``offset``; produces outputs [start, stop) exactly as Pillow rounds and clips them."""
    import torch

    if kind == NEAREST:
        index = torch.as_tensor(_nearest_index(in_size, out_size)[start:stop] - offset, device=x.device)
        return x.index_select(axis, index)
    block = 32 if x.device.type == "cpu" else stop - start  # banded blocks on CPU, one product on GPUs
    blocks = _band_blocks_on(in_size, out_size, kind, start, stop, block, str(x.device))
    first, last = blocks[0][2] - offset, max(b[3] for b in blocks) - offset
    # convert the window once; each block multiplies a view of it (integer sums < 2**31: exact in float64)
    if axis == -1:
        window = x[..., first:last].to(torch.float64)
        parts = [window[..., i0 - offset - first:i1 - offset - first] @ dense for _, _, i0, i1, dense in blocks]
    else:
        window = x[..., first:last, :].to(torch.float64)
        parts = [dense.T @ window[..., i0 - offset - first:i1 - offset - first, :] for _, _, i0, i1, dense in blocks]
    acc = parts[0] if len(parts) == 1 else torch.cat(parts, dim=axis)
    half, one = float(1 << (_PRECISION_BITS - 1)), 1.0 / (1 << _PRECISION_BITS)
    return acc.add_(half).mul_(one).floor_().clamp_(0, 255).to(torch.uint8)


@functools.lru_cache(maxsize=64)
def _nearest_index(in_size: int, out_size: int) -> np.ndarray:
    """Source index of each output pixel in Pillow's nearest-neighbour resize, which walks the input by adding the
    step ``in/out`` to a running coordinate that starts at half a step (so the sum is sequential, as cumsum is)."""
    step = in_size / out_size
    coords = np.cumsum(np.concatenate(([step * 0.5], np.full(out_size - 1, step))))
    return np.minimum(coords.astype(np.int64), in_size - 1)


@functools.lru_cache(maxsize=1)
def _pillow_vertical_first() -> bool:
    """Whether the installed Pillow runs the vertical pass first when the height shrinks much more than the width
    (Pillow 13 does; older versions always start with the horizontal pass). Measured once on a tiny image."""
    import torch
    from PIL import Image

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 12), dtype=np.uint8)
    ref = np.asarray(Image.fromarray(image).resize((11, 9), BICUBIC, reducing_gap=None))
    x = torch.from_numpy(image)
    vertical = _resample(_resample(x, -2, 40, 9, BICUBIC, 0, 9), -1, 12, 11, BICUBIC, 0, 11)
    return bool(np.array_equal(vertical.numpy(), ref))


def pil_resize_crop(x: "torch.Tensor", out_h: int, out_w: int, kind: int = BICUBIC,
                    box: tuple[int, int, int, int] | None = None) -> "torch.Tensor":
    """Pillow's ``resize((out_w, out_h), kind, reducing_gap=None)`` of a uint8 (..., H, W) tensor, then the crop
    ``box`` = (top, left, height, width) of the result (the whole result if None), computing only that crop.

    Example:
        >>> pil_resize_crop(torch.zeros(1, 3, 480, 640, dtype=torch.uint8), 224, 298, box=(0, 37, 224, 224)).shape
        torch.Size([1, 3, 224, 224])
    """
    height, width = x.shape[-2:]
    top, left, crop_h, crop_w = box if box is not None else (0, 0, out_h, out_w)
    need_h, need_v = out_w != width, out_h != height
    if _vertical_first(height, width, out_h, out_w, kind):
        cols = _rows_needed(width, out_w, kind, left, left + crop_w)
        x = _vertical(x[..., cols[0]:cols[1]], height, out_h, kind, top, top + crop_h, need_v)
        return _horizontal(x, width, out_w, kind, left, left + crop_w, need_h, offset=cols[0])
    rows = _rows_needed(height, out_h, kind, top, top + crop_h) if need_v else (top, top + crop_h)
    x = _horizontal(x[..., rows[0]:rows[1], :], width, out_w, kind, left, left + crop_w, need_h)
    return _vertical(x, height, out_h, kind, top, top + crop_h, need_v, offset=rows[0])


def _vertical_first(height: int, width: int, out_h: int, out_w: int, kind: int) -> bool:
    """Whether Pillow resizes (height, width) -> (out_h, out_w) with the vertical pass first."""
    if kind == NEAREST or out_w == width or out_h == height:
        return False
    return 0 < height - out_h and height - out_h > 2 * (width - out_w) and _pillow_vertical_first()


def _rows_needed(in_size: int, out_size: int, kind: int, start: int, stop: int) -> tuple[int, int]:
    """Input indices [first, last) that outputs [start, stop) of a pass read."""
    if kind == NEAREST:
        index = _nearest_index(in_size, out_size)[start:stop]
        return int(index.min()), int(index.max()) + 1
    fixed, xmin = _pil_coefficients(in_size, out_size, kind)
    counts = (fixed[start:stop] != 0).any(axis=0)
    last = int(np.nonzero(counts)[0].max()) + 1 if counts.any() else 1
    return int(xmin[start:stop].min()), int((xmin[start:stop] + last).max())


def _horizontal(x: "torch.Tensor", width: int, out_w: int, kind: int, start: int, stop: int, needed: bool,
                offset: int = 0) -> "torch.Tensor":
    """Horizontal pass on a tensor whose first column is input column ``offset`` (just the column slice when the
    width does not change, as Pillow then skips the pass)."""
    if not needed:
        return x[..., start - offset:stop - offset]
    return _resample(x, -1, width, out_w, kind, start, stop, offset)


def _vertical(x: "torch.Tensor", height: int, out_h: int, kind: int, start: int, stop: int, needed: bool,
              offset: int = 0) -> "torch.Tensor":
    """Vertical pass on a tensor whose first row is input row ``offset``."""
    if not needed:
        return x[..., start - offset:stop - offset, :]
    return _resample(x, -2, height, out_h, kind, start, stop, offset)


# ----------------------------------------------------------------------------------------------------------------
# CLIPImageProcessorFast: torch, batched, any device
# ----------------------------------------------------------------------------------------------------------------

_CPU_CHUNK = 8  # images per resize product on CPU: keeps the float64 temporaries in cache


class CLIPImageProcessorFast(_CLIPImageProcessorBase):
    """CLIP preprocessing in torch, batched, on any device (``device="cuda"``); no torchvision.

    Same parameters and outputs as :class:`CLIPImageProcessor`. For arrays, tensors and GPU inputs, resizing
    reproduces Pillow's fixed-point resampling exactly (module docstring), so on uint8 images the output equals
    the PIL path's. PIL images on the CPU take a faster lane that stays within one uint8 level of it (uint8
    outputs, without rescale and normalize, stay exact).
    Differences from transformers' torchvision-based class: float images are quantised to uint8 before resizing
    (as the PIL path does), and crops larger than the image are padded with the odd pixel on the top/left (as the
    PIL path does). ``return_tensors=None`` gives a list of tensors.

    Example:
        >>> processor = CLIPImageProcessorFast()                            # doctest: +SKIP
        >>> processor(images, return_tensors="pt", device="cuda").pixel_values.device  # doctest: +SKIP
        device(type='cuda', index=0)
    """

    _extra_defaults = {"default_to_square": False, "do_pad": None, "pad_size": None, "return_tensors": None,
                       "data_format": FIRST, "input_data_format": None, "device": None, "disable_grouping": None}

    def _extra_call_keys(self) -> tuple[str, ...]:
        return tuple(self._extra_defaults)

    def preprocess(self, images: Any, **kwargs: Any) -> BatchFeature:
        """Preprocess one image or a batch in torch; keywords override attributes for this call (plus ``device``).

        Images of the same size are resized together in one batched product.
        """
        opts = self._options(kwargs)
        opts["device"] = kwargs.get("device", self.device)
        images = _flatten_images(images)
        fused = _fused_sources(images, self._plan(opts), opts, as_numpy=False)
        if fused is not None:
            return fused
        images = _load_sources(images)
        if _pillow_lane(images, opts):
            # on the CPU, Pillow's own SIMD resampler on a thread pool beats the same arithmetic in torch
            return BatchFeature({"pixel_values": _cpu_lane(images, opts)}, tensor_type=opts["return_tensors"])
        prepared = [_prepare_tensor(image, opts) for image in images]
        groups: dict[tuple, list[int]] = {}
        for index, (tensor, unscale) in enumerate(prepared):
            groups.setdefault((tuple(tensor.shape), tensor.dtype, unscale), []).append(index)
        outputs: list[Any] = [None] * len(prepared)
        for (shape, _, unscale), indices in groups.items():
            batch = _stack([prepared[i][0] for i in indices], opts["device"])
            result = _process_batch(batch, opts, unscale)
            for position, index in enumerate(indices):
                outputs[index] = result[position]
        return BatchFeature({"pixel_values": outputs}, tensor_type=opts["return_tensors"])

    def _image_fn(self, kwargs: dict[str, Any]) -> tuple[Any, tuple[int, ...] | None, Any] | None:
        """The per-image CPU lane for :func:`clipfast.image_io.iter_image_batches`, as
        :meth:`CLIPImageProcessor._image_fn`; None when the target device is not the CPU."""
        opts = self._options(kwargs)
        opts["device"] = kwargs.get("device", self.device)
        return self._plan(opts)

    def _plan(self, opts: dict[str, Any]) -> tuple[Any, tuple[int, ...] | None, Any] | None:
        """:meth:`_image_fn` for already resolved call options."""
        return _cpu_lane_fn(opts) if _pillow_lane([], opts) else None


def _pillow_lane(images: list[Any], opts: dict[str, Any]) -> bool:
    """Whether to resize with Pillow on threads: PIL inputs, a CPU target, and a resize to do."""
    from PIL import Image

    device = opts["device"]
    on_cpu = device is None or str(device).split(":")[0] == "cpu"
    return on_cpu and opts["do_resize"] and all(isinstance(image, Image.Image) for image in images)


# Pillow's CPU lane. Pillow's resize(..., box=) computes just a region of the result, but it stores the box in
# float32, which shifts the filter windows by ~1e-5 pixel: a pixel can come out one level off. Boxing both passes
# lets the first pass's errors add up in the second (two levels, seen on real photos), so only the second pass is
# boxed; the first computes every output on its own axis, exactly, over just the lines the second pass reads.
_BOXED_FILTERS = (BILINEAR, HAMMING, BICUBIC, LANCZOS)  # continuous kernels: a tiny window shift is a tiny change


def _cpu_lane(images: list["PIL.Image.Image"], opts: dict[str, Any]) -> Any:
    """PIL images -> pixel values on the thread pool, within one uint8 level of the exact path: one tensor when
    every output has the crop's shape, else a list of tensors."""
    import torch

    if not (opts["do_convert_rgb"] or all(image.mode == "RGB" for image in images)):
        arrays = _pillow_pipeline(images, opts)  # odd modes kept as they are: the exact path knows them
        return [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
    run, shape, dtype = _cpu_lane_fn(opts)
    if shape is None:
        return _map(run, images)
    out = batch_buffer(len(images), shape, dtype)
    _map(lambda pair: run(*pair), list(zip(images, out)))
    return out if opts["return_tensors"] is not None else list(out)


def batch_buffer(count: int, shape: tuple[int, ...], dtype: "torch.dtype") -> "torch.Tensor":
    """An uninitialised (count, *shape) batch whose rows pool threads fill. It is made outside any inference mode
    of the caller: threads don't inherit that mode, and writing into an inference tensor outside it fails."""
    import torch

    with torch.inference_mode(False):
        return torch.empty((count, *shape), dtype=dtype)


def _map(work: Any, items: list[Any]) -> list[Any]:
    """``work`` over ``items`` on the thread pool (in this thread for one item or one CPU)."""
    if len(items) > 1 and (os.cpu_count() or 1) > 1:
        return list(_thread_pool().map(work, items))
    return [work(item) for item in items]


def _cpu_lane_fn(opts: dict[str, Any]) -> tuple[Any, tuple[int, ...] | None, Any]:
    """(run, shape, dtype): ``run(image, out=None)`` takes a PIL image to its pixel values (written into ``out``
    when given), ``shape`` is that of every output (None unless center-cropping), ``dtype`` their dtype."""
    import torch

    affine = _affine(opts, 3)
    dtype = torch.uint8 if affine is None else torch.float32
    shape = _rgb_output_shape(opts)

    def run(image: "PIL.Image.Image", out: "torch.Tensor | None" = None) -> "torch.Tensor":
        pixels = torch.from_numpy(_resized_rgb(image, opts, exact=affine is None))
        if opts["data_format"] == FIRST:
            pixels = pixels.permute(2, 0, 1)
        out = torch.empty(pixels.shape, dtype=dtype) if out is None else out
        out.copy_(pixels)  # one pass: layout, dtype and (below) the affine map all happen in cache
        return out if affine is None else out.mul_(affine[0]).add_(affine[1])

    return run, shape, dtype


def _affine(opts: dict[str, Any], channels: int) -> tuple["torch.Tensor", "torch.Tensor"] | None:
    """Rescale and normalize folded into ``x * scale + shift`` per channel (float32, within ~1e-6 of the
    reference's two steps), shaped for ``data_format``; None when neither is on (the output stays uint8)."""
    import torch

    if not (opts["do_rescale"] or opts["do_normalize"]):
        return None
    scale = np.full(channels, float(opts["rescale_factor"]) if opts["do_rescale"] else 1.0)
    shift = np.zeros(channels)
    if opts["do_normalize"]:
        mean = _per_channel(opts["image_mean"], channels, "image_mean", np.float64)
        std = _per_channel(opts["image_std"], channels, "image_std", np.float64)
        scale, shift = scale / std, -mean / std
    shape = (channels, 1, 1) if opts["data_format"] == FIRST else (channels,)
    return (torch.from_numpy(scale.astype(np.float32)).view(shape),
            torch.from_numpy(shift.astype(np.float32)).view(shape))


def _resized_rgb(image: "PIL.Image.Image", opts: dict[str, Any], exact: bool = False) -> np.ndarray:
    """Convert to RGB, resize and center crop one PIL image: a writable (H, W, 3) uint8 array, computing only the
    crop (within one level) unless ``exact`` (uint8 outputs are the pixels themselves: keep them exact)."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    height, width = _output_size(image.height, image.width, opts["size"])
    kind, crop = opts["resample"], opts["crop_size"] if opts["do_center_crop"] else None
    box = _crop_box(height, width, crop["height"], crop["width"], opts["crop_rounding"]) if crop else None
    if box is not None and kind in _BOXED_FILTERS and not exact:
        return np.array(_pillow_resize_crop(image, height, width, kind, box))
    array = np.array(image.resize((width, height), kind, reducing_gap=None))
    return _center_crop(array, crop["height"], crop["width"], LAST, opts["crop_rounding"]) if crop else array


def _pillow_resize_crop(image: "PIL.Image.Image", out_h: int, out_w: int, kind: int,
                        box: tuple[int, int, int, int]) -> "PIL.Image.Image":
    """The crop ``box`` = (top, left, height, width) of ``image.resize((out_w, out_h), kind, reducing_gap=None)``,
    computing little more than the crop, in Pillow's pass order; within one uint8 level (see _BOXED_FILTERS)."""
    width, height = image.size
    top, left, crop_h, crop_w = box
    if _vertical_first(height, width, out_h, out_w, kind):
        first, last = _input_span(width, out_w, kind, left, left + crop_w)
        part = _crop(image, (first, 0, last, height))
        part = _pillow_pass(part, 1, height, out_h, kind, top, top + crop_h)
        return _pillow_pass(part, 0, width, out_w, kind, left, left + crop_w, offset=first, boxed=True)
    first, last = _input_span(height, out_h, kind, top, top + crop_h)
    part = _crop(image, (0, first, width, last))
    part = _pillow_pass(part, 0, width, out_w, kind, left, left + crop_w)
    return _pillow_pass(part, 1, height, out_h, kind, top, top + crop_h, offset=first, boxed=True)


def _pillow_pass(image: "PIL.Image.Image", axis: int, in_size: int, out_size: int, kind: int, start: int,
                 stop: int, offset: int = 0, boxed: bool = False) -> "PIL.Image.Image":
    """Outputs [start, stop) of one Pillow pass ``in_size -> out_size`` along ``axis`` (0: columns, 1: rows) of an
    image whose first line on that axis is input line ``offset``. Unboxed, the pass computes every output and
    is cropped (exact); boxed, it computes only [start, stop)."""
    width, height = image.size
    if out_size == in_size:  # Pillow skips this pass
        lo, hi = start - offset, stop - offset
        return _crop(image, (lo, 0, hi, height) if axis == 0 else (0, lo, width, hi))
    if not boxed:
        image = image.resize((out_size, height) if axis == 0 else (width, out_size), kind, reducing_gap=None)
        return _crop(image, (start, 0, stop, height) if axis == 0 else (0, start, width, stop))
    scale = in_size / out_size
    lo, hi = start * scale - offset, stop * scale - offset
    size, region = ((stop - start, height), (lo, 0, hi, height)) if axis == 0 else \
        ((width, stop - start), (0, lo, width, hi))
    return image.resize(size, kind, box=region, reducing_gap=None)


def _crop(image: "PIL.Image.Image", box: tuple[int, int, int, int]) -> "PIL.Image.Image":
    """``image.crop(box)``, skipped when the box is the whole image."""
    return image if box == (0, 0, *image.size) else image.crop(box)


@functools.lru_cache(maxsize=128)
def _input_span(in_size: int, out_size: int, kind: int, start: int, stop: int) -> tuple[int, int]:
    """Input lines [first, last) inside the filter windows of outputs [start, stop) of Pillow's pass
    ``in_size -> out_size`` (windows as Pillow's precompute_coeffs bounds them, zero weights included)."""
    if in_size == out_size:
        return start, stop
    scale = in_size / out_size
    support = _SUPPORT[kind] * max(scale, 1.0)
    first = max(int((start + 0.5) * scale - support + 0.5), 0)
    last = min(int((stop - 1 + 0.5) * scale + support + 0.5), in_size)
    return first, last


def _prepare_tensor(image: Any, opts: dict[str, Any]) -> tuple["torch.Tensor", bool]:
    """One image as a (C, H, W) CPU tensor; with ``do_resize``, as uint8 by the PIL path's rule (the flag says
    whether it was multiplied by 255 on the way)."""
    import torch
    from PIL import Image

    if isinstance(image, Image.Image):
        if opts["do_convert_rgb"] and image.mode != "RGB":
            image = image.convert("RGB")
        array = np.asarray(image)
        fmt = LAST
    else:
        array = image if isinstance(image, np.ndarray) else image.detach().cpu().numpy()
        fmt = _channel_format(array.shape, opts["input_data_format"]) if array.ndim == 3 else FIRST
    if array.ndim == 2:
        array = array[None]
    unscale = False
    if opts["do_resize"] and array.dtype != np.uint8:
        unscale = _needs_pil_scaling(array)
        array = (_rescale(array, 255) if unscale else array).astype(np.uint8)
    if fmt == LAST:
        array = np.moveaxis(array, -1, 0)
    if not array.flags.writeable:  # PIL's buffers are read-only; torch wants to own writable memory
        array = array.copy()
    return torch.from_numpy(np.ascontiguousarray(array)), unscale


def _stack(tensors: list["torch.Tensor"], device: Any) -> "torch.Tensor":
    """Stack same-shape images and move them (still compact uint8) to ``device``."""
    import torch

    batch = torch.stack(tensors)
    return batch.to(device, non_blocking=True) if device is not None else batch


def _process_batch(batch: "torch.Tensor", opts: dict[str, Any], unscale: bool) -> "torch.Tensor":
    """Resize + crop (uint8, exact), then rescale/normalize by table lookup (uint8) or in float."""
    import torch

    crop = opts["crop_size"] if opts["do_center_crop"] else None
    if opts["do_resize"]:
        out_h, out_w = _output_size(batch.shape[-2], batch.shape[-1], opts["size"])
        box = _crop_box(out_h, out_w, crop["height"], crop["width"], opts["crop_rounding"]) if crop else None
        chunk = _CPU_CHUNK if batch.device.type == "cpu" else len(batch)
        batch = torch.cat([pil_resize_crop(part, out_h, out_w, opts["resample"], box)
                           for part in batch.split(chunk)])
        if crop and box is None:
            batch = _crop_torch(batch, crop["height"], crop["width"], opts["crop_rounding"])
    elif crop:
        batch = _crop_torch(batch, crop["height"], crop["width"], opts["crop_rounding"])
    if batch.dtype == torch.uint8:
        table = _lookup_table(batch.shape[1], opts, unscale)
        batch = batch if table is None else _apply_table_torch(batch, table)
    else:
        batch = _post_ops_torch(batch, opts)
    return batch.permute(0, 2, 3, 1) if opts["data_format"] == LAST else batch


def _crop_torch(batch: "torch.Tensor", crop_h: int, crop_w: int, rounding: str = "floor") -> "torch.Tensor":
    """The center crop of a (B, C, H, W) tensor, as :func:`_center_crop` does it."""
    return _padded_crop(batch, crop_h, crop_w, rounding, lambda x, shape: x.new_zeros(shape))


def _apply_table_torch(batch: "torch.Tensor", table: np.ndarray) -> "torch.Tensor":
    """Gather ``table[c, pixel]`` for a uint8 (B, C, H, W) tensor (bit-identical to the NumPy arithmetic)."""
    import torch

    flat = torch.from_numpy(table.reshape(-1)).to(batch.device)
    offsets = torch.arange(batch.shape[1], device=batch.device).view(1, -1, 1, 1) * 256
    return flat[batch.to(torch.int64) + offsets]


def _post_ops_torch(batch: "torch.Tensor", opts: dict[str, Any]) -> "torch.Tensor":
    """Rescale (float64 product, stored float32) and normalize (in the image's float dtype), as NumPy does."""
    import torch

    if opts["do_rescale"]:
        batch = (batch.to(torch.float64) * opts["rescale_factor"]).to(torch.float32)
    if opts["do_normalize"]:
        if not batch.is_floating_point():
            batch = batch.to(torch.float32)
        channels = batch.shape[1]
        mean = torch.from_numpy(_per_channel(opts["image_mean"], channels, "image_mean", np.float64))
        std = torch.from_numpy(_per_channel(opts["image_std"], channels, "image_std", np.float64))
        mean = mean.to(batch.device, batch.dtype).view(1, -1, 1, 1)
        std = std.to(batch.device, batch.dtype).view(1, -1, 1, 1)
        batch = (batch - mean) / std
    return batch
