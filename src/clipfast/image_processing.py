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
- ``CLIPImageProcessorFast`` reproduces Pillow's resampling in torch (:mod:`clipfast.pillow_resample`): the
  same fixed-point filter coefficients, the same two passes with rounding and clipping to uint8 between them,
  exact on any device, computing only the output pixels that survive the center crop. No torchvision. That is
  its path for arrays, tensors and every GPU input.
- ``CLIPImageProcessorFast`` with PIL images on the CPU runs one thread-pool task per image: Pillow resizes
  computing little more than the crop (see ``_BOXED_FILTERS``), and torch folds rescale and normalize into one
  multiply-add per channel. Within one uint8 level of the exact path (rare pixels), not bit-identical.
  :func:`clipfast.image_io.iter_image_batches` runs the same task per file, decode included.

What both share (``BatchFeature``, parameters, crop geometry, the per-pixel tables, JSON and loading) lives in
:mod:`clipfast.image_utils`; the thread pool in :mod:`clipfast.workers`.

Example:
    >>> from clipfast import CLIPImageProcessor                        # doctest: +SKIP
    >>> processor = CLIPImageProcessor()                               # doctest: +SKIP
    >>> processor(images=image, return_tensors="pt")["pixel_values"].shape  # doctest: +SKIP
    torch.Size([1, 3, 224, 224])
"""

from __future__ import annotations

import functools
import logging
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from clipfast.constants import IMAGE_PROCESSOR_NAME, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD  # noqa: F401  (importable here)
from clipfast.errors import InputError
from clipfast.image_io import DEFAULT_TIMEOUT, load_image, submit_loads
from clipfast.image_utils import (FIRST, LAST, _SOURCES, BatchFeature, _center_crop, _channel_format,
                                  _CLIPImageProcessorBase, _crop_box, _flatten_images, _lookup_table,
                                  _needs_pil_scaling, _output_size, _padded_crop, _per_channel, _post_ops, _rescale,
                                  _split_batch, _to_numpy)
from clipfast.image_utils import CROP_ROUNDINGS, _is_image, get_size_dict  # noqa: F401  (importable here)
from clipfast.pillow_resample import (_BOXED_FILTERS, BICUBIC, BILINEAR, BOX, HAMMING, LANCZOS,  # noqa: F401
                                      NEAREST, _pillow_resize_crop, pil_resize_crop)
from clipfast.workers import batch_buffer, ordered_map, results_in_order

if TYPE_CHECKING:
    import PIL.Image
    import torch

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------------
# Sources (paths, URLs, base64, bytes) in a processor's input
# ----------------------------------------------------------------------------------------------------------------


def _open_source(image: Any) -> Any:
    """A source decoded to an RGB PIL image (as the reference's processors load paths and URLs); images as they are."""
    if not isinstance(image, _SOURCES):
        return image
    return _split_batch(load_image(image))[0]  # (the check for an empty image)


def _open_sources(images: list[Any]) -> list[Any]:
    """Every source in ``images`` loaded, several on the thread pool at once (downloads and decodes overlap)."""
    if not any(isinstance(image, _SOURCES) for image in images):
        return images
    return ordered_map(_open_source, images)


def _fused_sources(images: list[Any], plan: tuple | None, opts: dict[str, Any], as_numpy: bool
                   ) -> "BatchFeature | None":
    """When every image is a source and ``plan`` (an ``_image_fn`` triple) applies, load and preprocess each image
    in one pool task, written into its row of one preallocated batch: decoding one image overlaps resizing
    another, with no barrier between loading and processing. None when this does not apply (a forced
    ``input_data_format`` takes the general path, which honours it)."""
    if plan is None or len(images) < 2 or opts["input_data_format"] is not None \
            or not all(isinstance(image, _SOURCES) for image in images):
        return None
    return_tensors = opts["return_tensors"]
    futures, out = submit_loads(images, plan, DEFAULT_TIMEOUT)  # iter_image_batches' per-image tasks
    results = results_in_order(futures)  # raises the first failure, in input order
    if return_tensors is not None and out is not None:
        return BatchFeature({"pixel_values": out}, tensor_type=return_tensors)
    rows = list(out) if out is not None else results
    return BatchFeature({"pixel_values": [row.numpy() for row in rows] if as_numpy else rows},
                        tensor_type=return_tensors)


# ----------------------------------------------------------------------------------------------------------------
# CLIPImageProcessor: PIL + NumPy, the reference's numbers
# ----------------------------------------------------------------------------------------------------------------


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
        processed = _pillow_pipeline(_open_sources(images), opts)
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
    return ordered_map(functools.partial(_process_one, fmt=fmt, opts=opts, tables=tables), images)


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

    resizes_on_device = True  # takes device= and resizes there (iter_image_batches passes its device on)
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
        images = _open_sources(images)
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


def _cpu_lane(images: list["PIL.Image.Image"], opts: dict[str, Any]) -> Any:
    """PIL images -> pixel values on the thread pool, within one uint8 level of the exact path: one tensor when
    every output has the crop's shape, else a list of tensors."""
    import torch

    if not (opts["do_convert_rgb"] or all(image.mode == "RGB" for image in images)):
        arrays = _pillow_pipeline(images, opts)  # odd modes kept as they are: the exact path knows them
        return [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
    run, shape, dtype = _cpu_lane_fn(opts)
    if shape is None:
        return ordered_map(run, images)
    out = batch_buffer(len(images), shape, dtype)
    ordered_map(lambda pair: run(*pair), list(zip(images, out)))
    return out if opts["return_tensors"] is not None else list(out)




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
