"""Test photos: scikit-image's bundled samples saved as JPEG/PNG at several sizes, plus odd PIL modes.

Used by the image tests and the image-processing benchmark. Everything is generated into a given folder.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

SAMPLES = ("astronaut", "coffee", "chelsea", "rocket", "camera")
# (width, height): down- and up-scaling, tall, wide, tiny, slight down/up-sizes, exact 224
SIZES = ((640, 480), (480, 640), (301, 225), (225, 301), (224, 224), (150, 100), (10, 7), (1000, 300), (90, 400))


def sample(name: str) -> Image.Image:
    """One scikit-image sample photo as a PIL image (camera is grayscale, 'L')."""
    import skimage.data

    return Image.fromarray(getattr(skimage.data, name)())


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


def benchmark_jpegs(folder: Path, count: int = 256, size: tuple[int, int] = (640, 480)) -> list[Path]:
    """``count`` distinct 640x480 JPEGs cropped and resized from the samples (for the benchmark)."""
    rng = np.random.default_rng(0)
    bases = [sample(name).convert("RGB") for name in SAMPLES]
    paths = []
    for i in range(count):
        base = bases[i % len(bases)]
        w, h = base.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        image = base.crop((x0, y0, x0 + cw, y0 + ch)).resize(size, Image.BICUBIC)
        path = folder / f"bench_{i:04d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths
