"""Pillow's resampling: reproduced in torch exactly, and Pillow's own resize limited to a crop.

- :func:`pil_resize_crop` reproduces ``PIL.Image.resize(..., reducing_gap=None)`` on uint8 tensors: the same
  fixed-point filter coefficients (22 fractional bits), the same two passes with rounding and clipping to uint8
  between them, in the order Pillow picks. Each pass is a product with a banded coefficient matrix in float64,
  where every partial sum is an integer below 2**53 and therefore exact on any device. Only the output pixels
  that survive the crop are computed.
- :func:`_pillow_resize_crop` runs Pillow itself, computing little more than a center crop of the result
  (within one uint8 level; see ``_BOXED_FILTERS``).

Example:
    >>> import torch
    >>> pil_resize_crop(torch.zeros(1, 3, 480, 640, dtype=torch.uint8), 224, 298, box=(0, 37, 224, 224)).shape
    torch.Size([1, 3, 224, 224])
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import numpy as np

from clipfast.errors import InputError

if TYPE_CHECKING:
    import PIL.Image
    import torch

# Pillow's resampling filters: Resampling value -> (name, support)
NEAREST, LANCZOS, BILINEAR, BICUBIC, BOX, HAMMING = 0, 1, 2, 3, 4, 5
_SUPPORT = {BOX: 0.5, BILINEAR: 1.0, HAMMING: 1.0, BICUBIC: 2.0, LANCZOS: 3.0}
_PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point coefficient precision for 8-bit images


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
        >>> import torch
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


# Pillow's CPU lane. Pillow's resize(..., box=) computes just a region of the result, but it stores the box in
# float32, which shifts the filter windows by ~1e-5 pixel: a pixel can come out one level off. Boxing both passes
# lets the first pass's errors add up in the second (two levels, seen on real photos), so only the second pass is
# boxed; the first computes every output on its own axis, exactly, over just the lines the second pass reads.
_BOXED_FILTERS = (BILINEAR, HAMMING, BICUBIC, LANCZOS)  # continuous kernels: a tiny window shift is a tiny change


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
