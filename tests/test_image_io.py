"""load_image / load_images: files, bytes, base64, EXIF orientation, and URLs from a loopback server."""

from __future__ import annotations

import base64
import threading
import time

import numpy as np
import pytest
from PIL import Image

import helpers.images as image_fixtures
from clipfast.errors import ImageLoadError
from clipfast.image_io import iter_image_batches, load_image, load_images
from helpers import reference
from helpers.loopback import serve


@pytest.fixture(scope="module")
def photo_bytes() -> bytes:
    return image_fixtures.jpeg_bytes(image_fixtures.sample("chelsea").resize((120, 80)))


@pytest.fixture(scope="module")
def server(photo_bytes):
    """127.0.0.1 serving a photo, a 404, text, garbage, big bodies (declared or not) and a hanging endpoint."""
    stop = threading.Event()

    def big_undeclared(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", "image/jpeg")
        handler.end_headers()
        handler.wfile.write(b"\xff" * 200_000)

    def bad_status(handler):
        handler.wfile.write(b"NOT-HTTP garbage\r\n\r\n")

    def trickle(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", "image/gif")
        handler.send_header("Content-Length", "60")
        handler.end_headers()
        for _ in range(60):
            if stop.wait(0.1):
                return
            handler.wfile.write(b"G")
            handler.wfile.flush()

    def to_ftp(handler):
        handler.send_response(302)
        handler.send_header("Location", "ftp://127.0.0.1/cat.jpg")
        handler.end_headers()

    routes = {"/cat.jpg": (200, "image/jpeg", photo_bytes),
              "/a%20cat.jpg": (200, "image/jpeg", photo_bytes),
              "/bad-status": bad_status, "/trickle": trickle, "/to-ftp": to_ftp,
              "/text": (200, "text/html", b"<html>not an image</html>"),
              "/garbage": (200, "application/octet-stream", b"\x00" * 500),
              "/big": (200, "image/jpeg", b"\xff" * 200_000),
              "/big-undeclared": big_undeclared,
              "/hang": lambda handler: stop.wait(5)}
    with serve(routes) as url:
        yield url
        stop.set()


def test_url_photo(server):
    image = load_image(f"{server}/cat.jpg")
    assert image.mode == "RGB" and image.size == (120, 80)


@pytest.mark.parametrize("path, message", [
    ("/missing.jpg", "HTTP 404"), ("/text", "did not return an image"), ("/garbage", "not an image"),
])
def test_url_errors(server, path, message):
    with pytest.raises(ImageLoadError, match=message):
        load_image(f"{server}{path}")


@pytest.mark.parametrize("path", ["/big", "/big-undeclared"])
def test_url_size_cap(server, path):
    with pytest.raises(ImageLoadError, match="limit of 1000 bytes"):
        load_image(f"{server}{path}", max_bytes=1000)


def test_url_timeout_is_quick(server):
    start = time.monotonic()
    with pytest.raises(ImageLoadError, match="timed out"):
        load_image(f"{server}/hang", timeout=0.3)
    assert time.monotonic() - start < 4


def test_url_failures_of_every_kind_are_image_load_errors(server):
    """Broken servers and malformed URLs: one ImageLoadError each, never a raw http.client or ValueError."""
    assert load_image(f"{server}/a cat.jpg").size == (120, 80)  # spaces are percent-encoded, as requests does
    for url, message in ((f"{server}/bad-status", "BadStatusLine|failed"), ("http://[::1/a.jpg", "not a valid URL"),
                         (f"{server.replace('127.0.0.1:', '127.0.0.1:x')}/cat.jpg", "not a valid URL|failed"),
                         (f"{server}/to-ftp", "non-http")):
        with pytest.raises(ImageLoadError, match=message):
            load_image(url, timeout=2)


def test_trickling_server_is_cut_at_twice_the_timeout(server):
    start = time.monotonic()
    with pytest.raises(ImageLoadError, match="took longer than 1 s"):
        load_image(f"{server}/trickle", timeout=0.5)
    assert time.monotonic() - start < 3


def test_unreachable_host():
    with pytest.raises(ImageLoadError, match="Cannot reach|timed out"):
        load_image("http://127.0.0.1:9/none.jpg", timeout=2)  # port 9 (discard) is closed on test machines


def test_path_bytes_base64_data_uri_pil(tmp_path, photo_bytes):
    path = tmp_path / "cat.jpg"
    path.write_bytes(photo_bytes)
    encoded = base64.b64encode(photo_bytes).decode()
    sources = [path, str(path), photo_bytes, encoded, f"data:image/jpeg;base64,{encoded}", Image.open(path)]
    arrays = [np.asarray(load_image(source)) for source in sources]
    for array in arrays[1:]:
        assert np.array_equal(array, arrays[0])
    many = load_images(sources, num_workers=2)
    assert [im.size for im in many] == [(120, 80)] * len(sources)


def test_modes_become_rgb():
    for mode, image in image_fixtures.odd_modes().items():
        assert load_image(image).mode == "RGB", mode


def test_exif_orientation_applied(tmp_path):
    image = image_fixtures.sample("astronaut").resize((60, 40))
    path = tmp_path / "rotated.jpg"
    path.write_bytes(image_fixtures.jpeg_bytes(image, exif_orientation=6))  # "rotate 90 CW to display"
    assert load_image(path).size == (40, 60)


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ImageLoadError, match="No such image file"):
        load_image(str(tmp_path / "nope.jpg"))
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ImageLoadError, match="notes.txt.*not an image"):
        load_image(text)
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(image_fixtures.jpeg_bytes(image_fixtures.sample("coffee"))[:2000])
    with pytest.raises(ImageLoadError, match="cut.jpg.*truncated"):
        load_image(truncated)
    with pytest.raises(ImageLoadError, match="dict"):
        load_image({"a": 1})
    with pytest.raises(ImageLoadError, match="base64"):
        load_image("data:image/png;base64,!!!notbase64!!!")
    assert issubclass(ImageLoadError, ValueError)
    with pytest.raises(ImageLoadError, match="No such image file"):
        load_image("/no/such/folder/and/a/long/name/without/any/dots/in/it/at/all/abcdefghijklmnopqrstuvw")


def test_short_base64_images_load():
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (1, 1), (10, 20, 30)).save(buffer, format="GIF")
    text = base64.b64encode(buffer.getvalue()).decode()
    assert len(text) < 64 and load_image(text).getpixel((0, 0)) == (10, 20, 30)
    assert load_image(text.rstrip("=")).size == (1, 1)  # padding is optional


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA"])
def test_truncated_pil_image_is_an_image_load_error(tmp_path, mode):
    """A lazily opened PIL image of a truncated file fails at load time, with the usual error."""
    path = tmp_path / ("cut.png" if mode == "RGBA" else "cut.jpg")
    image_fixtures.sample("coffee").convert(mode).save(path)
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(ImageLoadError, match="truncated"):
        load_image(Image.open(path))


# ---------------------------------------------------------------------------------------------------------------
# iter_image_batches
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jpeg_paths(tmp_path_factory):
    folder = tmp_path_factory.mktemp("batches")
    jpegs = [path for path in image_fixtures.photos(folder) if path.suffix == ".jpg"][:11]
    for path in jpegs:  # one size (160x120) for every file, so that uncropped batches stack
        Image.open(path).convert("RGB").resize((160, 120)).save(path, quality=90)
    return jpegs


def _reference_pixels(processor, paths):
    return processor(load_images(paths), return_tensors="pt").pixel_values


@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_iter_batches_order_and_last_partial_batch(jpeg_paths, prefetch):
    import torch

    from clipfast.image_processing import CLIPImageProcessor, CLIPImageProcessorFast

    exact, fast = CLIPImageProcessor(), CLIPImageProcessorFast()
    expected = _reference_pixels(exact, jpeg_paths)
    for processor, tolerance in ((exact, 0.0), (fast, 0.02)):
        batches = list(iter_image_batches(iter(jpeg_paths), processor, batch_size=4, prefetch=prefetch))
        assert [len(chunk) for chunk, _ in batches] == [4, 4, 3]
        assert [p for chunk, _ in batches for p in chunk] == list(jpeg_paths)
        pixels = torch.cat([px for _, px in batches])
        assert pixels.shape == (11, 3, 224, 224) and pixels.dtype == torch.float32
        assert float((pixels - expected).abs().max()) <= tolerance
    # the fast class through the iterator gives what its own call gives
    via_call = _reference_pixels(fast, jpeg_paths)
    assert torch.equal(torch.cat([px for _, px in iter_image_batches(jpeg_paths, fast, batch_size=5)]), via_call)


def test_iter_batches_kwargs_device_and_foreign_processor(jpeg_paths):
    import torch

    from clipfast.image_processing import CLIPImageProcessor, CLIPImageProcessorFast

    kwargs = {"size": 64, "crop_size": 48, "do_normalize": False}
    (_, pixels), = list(iter_image_batches(jpeg_paths[:3], CLIPImageProcessorFast(), batch_size=8, device="cpu",
                                           **kwargs))
    expected = CLIPImageProcessor(**kwargs)(load_images(jpeg_paths[:3]), return_tensors="pt").pixel_values
    assert pixels.shape == (3, 3, 48, 48) and float((pixels - expected).abs().max()) <= 1 / 255 + 1e-6
    # no crop: shapes follow the images, stacked when they agree
    (_, uncropped), = list(iter_image_batches(jpeg_paths[:2], CLIPImageProcessor(), do_center_crop=False))
    assert uncropped.shape == (2, 3, 224, 298)
    # any other callable processor: loading runs ahead, the processor runs on each batch with the keywords
    calls = []

    def foreign(images, return_tensors=None, **options):
        calls.append((len(images), return_tensors, options))
        return {"pixel_values": torch.stack([torch.from_numpy(np.array(image.resize((8, 8)))) for image in images])}

    batches = list(iter_image_batches(jpeg_paths, foreign, batch_size=6, device="cpu", scale=2))
    assert [px.shape for _, px in batches] == [(6, 8, 8, 3), (5, 8, 8, 3)]
    assert calls == [(6, "pt", {"scale": 2}), (5, "pt", {"scale": 2})]  # device= only goes to processors that resize


def test_iter_batches_with_transformers_processor(jpeg_paths):
    import torch

    from clipfast.image_processing import CLIPImageProcessor

    transformers = reference("transformers")
    theirs = torch.cat([px for _, px in iter_image_batches(jpeg_paths, transformers.CLIPImageProcessor(),
                                                           batch_size=6)])
    assert torch.equal(theirs, _reference_pixels(CLIPImageProcessor(), jpeg_paths))


def test_iter_batches_errors(jpeg_paths, tmp_path):
    from clipfast.image_processing import CLIPImageProcessorFast

    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg at all")
    sources = list(jpeg_paths[:4]) + [bad] + list(jpeg_paths[4:6])
    batches = iter_image_batches(sources, CLIPImageProcessorFast(), batch_size=2, prefetch=2)
    assert [len(c) for c, _ in (next(batches), next(batches))] == [2, 2]  # the batches before the bad file
    with pytest.raises(ImageLoadError, match="broken.jpg.*not an image"):
        next(batches)
    with pytest.raises(ValueError, match="batch_size"):
        iter_image_batches(jpeg_paths, CLIPImageProcessorFast(), batch_size=0)  # checked at the call
    with pytest.raises(ImageLoadError, match="No such image file"):
        list(iter_image_batches([tmp_path / "missing.jpg"], CLIPImageProcessorFast()))


def test_iter_batches_stops_early_and_reads_lazily(jpeg_paths):
    from clipfast.image_processing import CLIPImageProcessorFast

    consumed = []

    def sources():
        for path in jpeg_paths:
            consumed.append(path)
            yield path

    batches = iter_image_batches(sources(), CLIPImageProcessorFast(), batch_size=2, prefetch=1)
    chunk, _ = next(batches)
    assert chunk == list(jpeg_paths[:2]) and len(consumed) == 4  # this batch and the one prepared ahead
    batches.close()
    assert len(consumed) == 4


def test_load_image_returns_a_new_image_for_pil_input(photo_bytes, tmp_path):
    path = tmp_path / "cat.jpg"
    path.write_bytes(photo_bytes)
    with Image.open(path) as source:
        source.load()
        assert load_image(source) is not source  # a caller's image is never handed back (it may be mutated)


def test_batches_inside_inference_mode(tmp_path):
    """Pool threads fill the batch outside the caller's inference mode: both entry points must still work."""
    import torch
    from PIL import Image

    import clipfast
    from clipfast.image_io import iter_image_batches

    paths = []
    for i in range(3):
        path = tmp_path / f"{i}.jpg"
        Image.new("RGB", (64 + i, 48), (10 * i, 20, 30)).save(path)
        paths.append(str(path))
    fast = clipfast.CLIPImageProcessorFast()
    with torch.inference_mode():
        batches = [pixels for _, pixels in iter_image_batches(paths, fast, batch_size=2)]
        direct = fast([Image.open(p) for p in paths], return_tensors="pt").pixel_values
    assert torch.equal(torch.cat(batches), direct)


def test_decompression_bombs_are_refused_clearly(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (300, 300)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses above twice this
    with pytest.raises(ImageLoadError, match=r"big.png.* is too large to decode safely .*MAX_IMAGE_PIXELS") as info:
        load_image(path)
    assert ".." not in str(info.value)
