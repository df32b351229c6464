"""Test photos: scikit-image's bundled samples saved as JPEG/PNG at several sizes, plus odd PIL modes.

Without scikit-image (a plain ``pip install -e .``) each sample is a synthetic photo-like image of the same size
and mode (smooth colour fields, hard-edged shapes, fine texture), so the tests that only need pictures still run.
Everything is generated into a given folder.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

SAMPLES = ("astronaut", "coffee", "chelsea", "rocket", "camera")
# (width, height): down- and up-scaling, tall, wide, tiny, slight down/up-sizes, exact 224
SIZES = ((640, 480), (480, 640), (301, 225), (225, 301), (224, 224), (150, 100), (10, 7), (1000, 300), (90, 400))


# (height, width, channels) of scikit-image's samples, for the synthetic stand-ins
_SAMPLE_SHAPES = {"astronaut": (512, 512, 3), "coffee": (400, 600, 3), "chelsea": (300, 451, 3),
                  "rocket": (427, 640, 3), "camera": (512, 512, 1)}


def sample(name: str) -> Image.Image:
    """One scikit-image sample photo as a PIL image (camera is grayscale, 'L'); a synthetic stand-in of the same
    size and mode when scikit-image is not installed."""
    try:
        import skimage.data
    except ImportError:
        return synthetic_photo(*_SAMPLE_SHAPES[name], seed=SAMPLES.index(name))
    return Image.fromarray(getattr(skimage.data, name)())


def synthetic_photo(height: int, width: int, channels: int = 3, seed: int = 0) -> Image.Image:
    """A deterministic photo-like image: low-frequency colour waves, a few hard-edged ellipses and bars (edges
    that resampling filters ring on) and fine noise (texture), as uint8 RGB or L."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    planes = []
    for _ in range(channels):
        fx, fy, phase = rng.uniform(1, 6), rng.uniform(1, 6), rng.uniform(0, 2 * np.pi)
        planes.append(0.5 + 0.3 * np.sin(2 * np.pi * (fx * x + fy * y) + phase) + 0.2 * (x - y))
    image = np.stack(planes, axis=-1)
    for _ in range(6):  # hard edges
        cy, cx, ry, rx = rng.uniform(0, 1, 2).tolist() + rng.uniform(0.05, 0.3, 2).tolist()
        cy, cx = cy * y.max(), cx * x.max()  # centres inside the image
        inside = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 < 1
        image[inside] = rng.uniform(0, 1, channels)
    image[:, int(width * 0.1):int(width * 0.13)] = rng.uniform(0, 1, channels)  # a vertical bar
    image += rng.normal(0, 0.03, image.shape)  # texture
    pixels = np.clip(image * 255, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels[..., 0] if channels == 1 else pixels)


def photos(folder: Path) -> list[Path]:
    """Write every sample at every size as JPEG (quality 90) and PNG; returns the paths."""
    paths = []
    for i, name in enumerate(SAMPLES):
        base = sample(name)
        for j, (w, h) in enumerate(SIZES):
            if (i + j) % 2:  # half of the combinations keep the test fast
                continue
            image = base.resize((w, h), Image.BICUBIC)
            for ext in ("jpg", "png"):
                path = folder / f"{name}_{w}x{h}.{ext}"
                image.save(path, quality=90) if ext == "jpg" else image.save(path)
                paths.append(path)
    return paths


def odd_modes() -> dict[str, Image.Image]:
    """One image per unusual mode: L, LA, RGBA, P, P with transparency, CMYK, I;16, I, F, 1-bit."""
    rgb = sample("chelsea").resize((300, 200))
    rgba = rgb.convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, 300, dtype=np.uint8), (200, 1))
    rgba.putalpha(Image.fromarray(alpha))
    gray16 = (np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
    p_transparent = rgb.convert("P")
    p_transparent.info["transparency"] = 0
    return {
        "L": rgb.convert("L"), "LA": rgba.convert("LA"), "RGBA": rgba, "P": rgb.convert("P"),
        "P_transparency": p_transparent, "CMYK": rgb.convert("CMYK"), "I;16": Image.fromarray(gray16),
        "I": Image.fromarray(gray16.astype(np.int32)), "F": rgb.convert("F"), "1": rgb.convert("1"),
    }


def jpeg_bytes(image: Image.Image, quality: int = 90, exif_orientation: int | None = None) -> bytes:
    """Encode ``image`` as JPEG, optionally with an EXIF orientation tag."""
    buf = io.BytesIO()
    if exif_orientation is None:
        image.save(buf, "JPEG", quality=quality)
    else:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        image.save(buf, "JPEG", quality=quality, exif=exif.tobytes())
    return buf.getvalue()
