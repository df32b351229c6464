"""Reading images: a path, an http(s) URL, raw bytes, a base64 string or data URI, or a PIL image.

Every image comes back as an RGB ``PIL.Image.Image`` with its EXIF orientation applied, as the reference's
``load_image`` does. URL downloads use only the standard library, with a timeout, a size cap checked while
streaming, and a user agent. Every failure is one :class:`~clipfast.errors.ImageLoadError` (a ``ValueError``)
that names the source and says what went wrong.

Example:
    >>> from clipfast import load_image                                   # doctest: +SKIP
    >>> image = load_image("http://images.cocodataset.org/val2017/000000039769.jpg")  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import binascii
import functools
import http.client
import io
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import closing
from itertools import islice
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Union

from clipfast.errors import ImageLoadError
from clipfast.tensor_utils import stack_same_shape
from clipfast.workers import Lane, POOL_SIZE_LIMIT, cpu_count, ordered_map, results_in_order, run_ahead, submit_rows

if TYPE_CHECKING:
    import PIL.Image
    import torch

DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
_CHUNK = 1 << 16
_USER_AGENT = "clipfast/0.1 (+https://github.com/clipfast/clipfast) python-urllib"

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, "PIL.Image.Image"]


def load_image(
    image: ImageSource, timeout: float | None = DEFAULT_TIMEOUT, max_bytes: int = DEFAULT_MAX_BYTES
) -> "PIL.Image.Image":
    """Return ``image`` as an RGB PIL image with EXIF orientation applied.

    Args:
        image: a local path, an ``http://``/``https://`` URL, the encoded file as bytes, a base64 string
            (optionally a ``data:image/...;base64,`` URI), or a PIL image.
        timeout: seconds allowed for each network operation of a download (and, doubled, for the whole download).
        max_bytes: largest download accepted, checked while streaming.

    Example:
        >>> load_image("cat.jpg").size                                     # doctest: +SKIP
        (640, 480)
    """
    from PIL import Image

    if isinstance(image, Image.Image):
        return _orient_rgb(image, "the PIL image")
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _decode(bytes(image), f"{len(image)} bytes of image data")
    if isinstance(image, os.PathLike):
        image = os.fspath(image)
    if not isinstance(image, str):
        raise ImageLoadError(f"Cannot load an image from a {type(image).__name__}; pass a path, an http(s) URL, "
                             "bytes, a base64 string or a PIL.Image.Image.")
    if image.startswith(("http://", "https://")):
        return _decode(fetch_url(image, timeout=timeout, max_bytes=max_bytes), image)
    if os.path.isfile(image):
        return _open_file(image)
    if image.startswith("data:"):
        return _decode(_b64decode(image.partition(",")[2], "the data URI"), "the data URI")
    if os.path.isdir(image):
        raise ImageLoadError(f"{image!r} is a folder, not an image file.")
    data = _base64_image(image)
    if data is not None:
        return _decode(data, "the base64 string")
    raise ImageLoadError(f"No such image file: {image!r} (and it is not an http(s) URL, data URI or base64 string "
                         "of an image).")


def load_images(
    items: Iterable[ImageSource], num_workers: int | None = None, timeout: float | None = DEFAULT_TIMEOUT
) -> list["PIL.Image.Image"]:
    """Load many images with :func:`load_image` on the shared thread pool, keeping their order.

    Decoding in Pillow releases the GIL, so threads use every core. ``num_workers`` (how many load at once)
    defaults to the number of CPUs (at most 16); ``num_workers=0`` or ``1`` loads in the calling thread.

    Example:
        >>> images = load_images(["a.jpg", "b.png"])                       # doctest: +SKIP
    """
    items = list(items)
    workers = num_workers if num_workers is not None else min(POOL_SIZE_LIMIT, cpu_count())
    if workers <= 1 or len(items) <= 1:
        return [load_image(item, timeout=timeout) for item in items]
    return ordered_map(lambda item: load_image(item, timeout=timeout), items, Lane(min(workers, len(items))))


def iter_image_batches(
    sources: Iterable[ImageSource],
    processor: Any,
    batch_size: int = 64,
    prefetch: int = 1,
    device: Any = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    **processor_kwargs: Any,
) -> Iterator[tuple[list[ImageSource], "torch.Tensor"]]:
    """Yield ``(sources_chunk, pixel_values)`` for consecutive chunks of ``batch_size`` sources, in order.

    Each image is loaded (:func:`load_image`) and preprocessed in one task on the thread pool, so decoding never
    waits for a batch barrier, and up to ``prefetch`` batches are prepared ahead while the caller works on the
    current one (a model forward, say). ``sources`` is read lazily, one chunk at a time. A source that cannot be
    loaded raises its :class:`~clipfast.errors.ImageLoadError` when its batch is reached.

    Args:
        sources: paths, URLs, bytes, base64 strings or PIL images (anything :func:`load_image` takes).
        processor: a ``CLIPImageProcessor`` / ``CLIPImageProcessorFast`` (per-image tasks), or any callable image
            processor taking ``(images, return_tensors="pt", **kwargs)`` (then only loading runs ahead).
        batch_size: sources per batch; the last batch may be shorter.
        prefetch: batches prepared ahead of the one being yielded (0: none).
        device: move ``pixel_values`` there (``CLIPImageProcessorFast`` resizes on a CUDA device itself).
        timeout: per-download timeout for URLs.
        **processor_kwargs: call-time options of the processor (``size``, ``crop_size``, ...).

    Example:
        >>> for paths, pixels in iter_image_batches(paths, CLIPImageProcessorFast()):  # doctest: +SKIP
        ...     features = model.get_image_features(pixel_values=pixels)
    """
    if batch_size < 1 or prefetch < 0:
        raise ValueError(f"batch_size must be >= 1 and prefetch >= 0, got {batch_size} and {prefetch}.")
    if device is not None and getattr(processor, "resizes_on_device", False):
        processor_kwargs = dict(processor_kwargs, device=device)  # it resizes on that device itself
    hook = getattr(processor, "_image_fn", None)
    plan = hook(processor_kwargs) if hook is not None else None  # None: not a per-image CPU job
    return _batches(iter(sources), processor, batch_size, prefetch, device, timeout, plan, processor_kwargs)


def _batches(items: Iterator[ImageSource], processor: Any, batch_size: int, prefetch: int, device: Any,
             timeout: float | None, plan: tuple | None, kwargs: dict[str, Any]
             ) -> Iterator[tuple[list[ImageSource], "torch.Tensor"]]:
    """The generator behind :func:`iter_image_batches` (which checks its arguments eagerly)."""
    chunks = iter(lambda: list(islice(items, batch_size)), [])
    with closing(run_ahead(chunks, lambda chunk: submit_loads(chunk, plan, timeout), prefetch)) as jobs:
        for chunk, job in jobs:
            yield _collect(chunk, job, plan, processor, kwargs, device)


def submit_loads(sources: list[ImageSource], plan: tuple | None, timeout: float | None = DEFAULT_TIMEOUT
                 ) -> tuple[list, Any]:
    """Queue one pool task per source: load it, and with a per-image ``plan`` (``(run, shape, dtype)`` from a
    processor's ``_image_fn``) also preprocess it, into its row of one preallocated batch tensor when ``shape``
    is known ahead. Returns (futures, that batch or None)."""
    if plan is None:
        return submit_rows(sources, lambda source, _: load_image(source, timeout=timeout))
    run, shape, dtype = plan
    return submit_rows(sources, lambda source, row: run(load_image(source, timeout=timeout), row), shape, dtype)


def _collect(chunk: list[ImageSource], job: tuple[list, Any], plan: tuple | None, processor: Any,
             kwargs: dict[str, Any], device: Any) -> tuple[list[ImageSource], "torch.Tensor"]:
    """Wait for one batch's tasks (raising the first failure, in source order) and assemble its pixel values."""
    futures, out = job
    results = results_in_order(futures)
    if plan is None:
        pixels = processor(results, return_tensors="pt", **kwargs)["pixel_values"]
    elif out is not None:
        pixels = out
    else:
        pixels = stack_same_shape(results, "pixel values")
    return chunk, pixels if device is None else pixels.to(device)


def fetch_url(url: str, timeout: float | None = DEFAULT_TIMEOUT, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """Download ``url`` and return its body, refusing bodies over ``max_bytes`` and slow transfers.

    Example:
        >>> data = fetch_url("https://example.com/cat.jpg", timeout=5)     # doctest: +SKIP
    """
    try:
        # spaces and other unsafe characters are percent-encoded (as requests does); "%" stays, so an already
        # encoded URL is unchanged
        request = urllib.request.Request(urllib.parse.quote(url, safe=_URL_SAFE),
                                         headers={"User-Agent": _USER_AGENT, "Accept": "image/*,*/*;q=0.8"})
        with _opener().open(request, timeout=timeout) as response:
            _check_headers(url, response, max_bytes)
            return _read_capped(url, response, max_bytes, 2 * timeout if timeout else None)
    except ImageLoadError:  # our own checks (size cap, deadline, content type): already say what went wrong
        raise
    except urllib.error.HTTPError as err:
        raise ImageLoadError(f"Downloading {url} failed: HTTP {err.code} {err.reason}.") from None
    except urllib.error.URLError as err:
        if isinstance(err.reason, (socket.timeout, TimeoutError)):
            raise ImageLoadError(f"Downloading {url} timed out after {timeout} s.") from None
        raise ImageLoadError(f"Cannot reach {url}: {err.reason}.") from None
    except (socket.timeout, TimeoutError):
        raise ImageLoadError(f"Downloading {url} timed out after {timeout} s.") from None
    except (OSError, http.client.HTTPException) as err:  # reset connection, bad status line, broken chunks, ...
        raise ImageLoadError(f"Downloading {url} failed: {type(err).__name__}: {err}.") from None
    except ValueError as err:  # a malformed URL ("http://[::1", a bad port)
        raise ImageLoadError(f"{url!r} is not a valid URL: {err}.") from None


_URL_SAFE = ":/?#[]@!$&'()*+,;=%~"


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects to http(s) only (urllib would also follow one to ftp://)."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        if not newurl.lower().startswith(("http://", "https://")):
            raise urllib.error.HTTPError(newurl, code, f"redirect to a non-http(s) URL {newurl!r} refused",
                                         headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


@functools.cache
def _opener() -> urllib.request.OpenerDirector:
    """urllib's default opener, with redirects limited to http(s)."""
    return urllib.request.build_opener(_HttpOnlyRedirects)


def _check_headers(url: str, response: Any, max_bytes: int) -> None:
    """Fail early on a declared size over the cap or a body that says it is not an image."""
    length = response.headers.get("Content-Length")
    if length and length.isdigit() and int(length) > max_bytes:
        raise ImageLoadError(f"{url} is {int(length)} bytes, over the limit of {max_bytes} bytes "
                             "(pass a larger max_bytes to load_image to allow it).")
    kind = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if kind.startswith(("text/", "application/json")):
        raise ImageLoadError(f"{url} did not return an image (Content-Type {kind!r}).")


def _read_capped(url: str, response: Any, max_bytes: int, limit: float | None) -> bytes:
    """Read the body in chunks, so that a server that lies about (or omits) its size cannot exhaust memory,
    and one that trickles bytes cannot hold us for longer than ``limit`` seconds."""
    deadline = time.monotonic() + limit if limit else None
    chunks, total = [], 0
    # read1 returns what one socket read brings (read() would wait for a full chunk), so the deadline is checked
    # between the bytes of a server that trickles them
    read = getattr(response, "read1", response.read)
    while chunk := read(_CHUNK):
        total += len(chunk)
        if total > max_bytes:
            raise ImageLoadError(f"{url} is larger than the limit of {max_bytes} bytes "
                                 "(pass a larger max_bytes to load_image to allow it).")
        if deadline is not None and time.monotonic() > deadline:
            raise ImageLoadError(f"Downloading {url} took longer than {limit:g} s; stopped.")
        chunks.append(chunk)
    return b"".join(chunks)


def _b64decode(text: str, what: str) -> bytes:
    """Decode base64 (standard or URL-safe alphabet), accepting missing padding and newlines."""
    cleaned = "".join(text.split())
    altchars = b"-_" if "-" in cleaned or "_" in cleaned else None
    try:
        return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), altchars=altchars, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ImageLoadError(f"Cannot decode {what} as base64: {err}.") from None


def _base64_image(text: str) -> bytes | None:
    """The bytes of ``text`` read as base64 when they are an image file Pillow recognises (only its header is
    read), else None: a missing path or a name is not base64 of an image, however it is spelled."""
    from PIL import Image, UnidentifiedImageError

    body = "".join(text.split())
    if len(body) < 8 or not all(c.isalnum() or c in "+/=-_" for c in body):
        return None
    try:
        data = base64.b64decode(body + "=" * (-len(body) % 4), altchars=b"-_" if "-" in body or "_" in body
                                else None, validate=True)
        Image.open(io.BytesIO(data))
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError):
        return None
    return data


def _open_file(path: str) -> "PIL.Image.Image":
    """Decode the file at ``path``; errors name the file."""
    try:
        with open(path, "rb") as handle:
            return _decode_stream(handle, repr(path))
    except PermissionError:
        raise ImageLoadError(f"Cannot read the image file {path!r}: permission denied.") from None


def _decode(data: bytes, what: str) -> "PIL.Image.Image":
    """Decode encoded image bytes."""
    return _decode_stream(io.BytesIO(data), what)


def _decode_stream(stream: Any, what: str) -> "PIL.Image.Image":
    """Open, fully decode (so truncation shows up here, not later) and orient an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(stream)
        image.load()
    except UnidentifiedImageError:
        raise ImageLoadError(f"{what} is not an image in a format Pillow can read.") from None
    except Image.DecompressionBombError as err:
        raise ImageLoadError(f"{what} is too large to decode safely ({str(err).rstrip('.')}); raise "
                             "PIL.Image.MAX_IMAGE_PIXELS if you trust it.") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageLoadError(f"{what} is a corrupt or truncated image: {str(err).rstrip('.')}.") from None
    return _orient_rgb(image, what, owned=True)


def _orient_rgb(image: "PIL.Image.Image", what: str, owned: bool = False) -> "PIL.Image.Image":
    """Apply EXIF orientation, then convert to RGB (dropping alpha, as the reference's load_image does).

    The result is always a new image unless ``owned`` (an image we just decoded): then an upright RGB image is
    returned as it is, saving exif_transpose's copy (about half the time of decoding a 640x480 JPEG).
    """
    from PIL import ImageOps

    if image.width == 0 or image.height == 0:
        raise ImageLoadError(f"{what} is empty ({image.width}x{image.height} pixels).")
    if not owned:
        try:
            image.load()  # a lazily opened image: a truncated or corrupt file shows up here, not later
        except (OSError, SyntaxError, ValueError) as err:
            raise ImageLoadError(f"{what} is a corrupt or truncated image: {err}.") from None
    try:
        if not owned or _orientation(image) not in (None, 1):
            image = ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError, KeyError, TypeError):
        pass  # a malformed EXIF block should not make a readable image unusable; keep it as stored
    return image if image.mode == "RGB" else image.convert("RGB")


def _orientation(image: "PIL.Image.Image") -> int | None:
    """The EXIF orientation tag (0x0112) that exif_transpose acts on, read the same way (getexif)."""
    return image.getexif().get(0x0112)
