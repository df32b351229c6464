"""load_image / load_images: files, bytes, base64, EXIF orientation, and URLs from a loopback server."""

from __future__ import annotations

import base64
import threading
import time

import numpy as np
import pytest
from PIL import Image

import image_fixtures
from clipfast.errors import ImageLoadError
from clipfast.image_io import load_image, load_images
from loopback import serve


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

    routes = {"/cat.jpg": (200, "image/jpeg", photo_bytes),
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
