"""``clipfast serve``'s web page in a real browser: headless Chromium (Debian's package) driven by Playwright,
against servers on 127.0.0.1 with a tiny random model. Skips where Playwright or Chromium is not installed.

``CLIPFAST_WEB_SCREENSHOT=docs/img/web.png pytest tests/test_web.py`` also saves a screenshot of the results.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import threading
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import clipfast
from clipfast.server import make_server

CHROMIUM = next((path for path in (os.environ.get("CLIPFAST_CHROMIUM"), "/usr/bin/chromium",
                                   shutil.which("chromium"), shutil.which("chromium-browser")) if path and
                 os.path.isfile(path)), None)
pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None,
                       reason="the browser test needs the playwright package (pip install playwright)"),
    pytest.mark.skipif(CHROMIUM is None, reason="the browser test needs Chromium (apt-get install chromium)"),
]
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]
NAMES = ["astronaut", "coffee cup", "cat", "rocket", "camera man", "red square", "blue sky", "green field"]


def _photo(seed: int) -> Image.Image:
    """A smooth, colourful 96x72 test picture (different for every seed)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:72, 0:96] / 12.0
    base = np.stack([np.sin(x * rng.uniform(0.3, 1.5) + rng.uniform(0, 6)) + np.cos(y * rng.uniform(0.3, 1.5))
                     for _ in range(3)], -1)
    return Image.fromarray(((base - base.min()) / np.ptp(base) * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from helpers.tokenizer_files import write_tiny_clip

    return clipfast.pipeline(model=str(write_tiny_clip(tmp_path_factory.mktemp("web") / "model")))


@pytest.fixture(scope="module")
def gallery(clip, tmp_path_factory):
    """An image index of 8 pictures named after what a person would search for."""
    from clipfast.index import IndexWriter

    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for i, name in enumerate(NAMES):
        path = folder / f"{name}.png"
        _photo(i).save(path)
        paths.append(str(path))
    vectors = clip.image_embeddings([Image.open(path).convert("RGB") for path in paths])
    with IndexWriter(folder / "index", {"model": "tiny", "kind": "image", "dim": 16}) as writer:
        writer.append(paths, vectors.numpy())
    return folder / "index", paths, vectors


@contextlib.contextmanager
def _session(browser, clip, **kwargs):
    """A server on loopback and a new browser page on it: yields (page, base URL), then closes both."""
    server = make_server(clip, port=0, **kwargs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    page = _page(browser, base)
    try:
        yield page, base
    finally:
        page.close()
        server.shutdown()
        server.server_close()
        server.service.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield browser
        browser.close()


def _page(browser, base: str):
    """A new page that records every request it makes that does not go to ``base``."""
    page = browser.new_page(viewport={"width": 1100, "height": 760})
    page.outside = []
    page.on("request", lambda request: None if request.url.startswith((base, "data:", "blob:"))
            else page.outside.append(request.url))
    return page


def _first(page) -> dict:
    """Caption and score of the grid's first card."""
    card = page.locator("#results li").first
    return {"caption": card.locator(".caption").inner_text(), "score": float(card.locator(".score").inner_text())}


def test_search_type_upload_and_more_like_this(browser, clip, gallery):
    folder, paths, vectors = gallery
    with _session(browser, clip, index=str(folder)) as (page, base):
        page.goto(base + "/")
        page.wait_for_selector("#search-panel:not([hidden])")
        query = "a cat on a sofa"
        best = int((vectors @ clip.text_embeddings([query])[0]).argmax())
        page.keyboard.type(query)  # the text box has the focus: the page is usable from the keyboard
        page.keyboard.press("Enter")
        page.wait_for_selector("#results li")
        assert _first(page)["caption"] == Path(paths[best]).name
        assert page.locator("#results li").count() == len(paths)
        assert urllib.parse.parse_qs(urllib.parse.urlsplit(page.url).query)["q"] == [query]  # shareable
        page.wait_for_function("[...document.querySelectorAll('#results img')].every(i => i.complete && "
                               "i.naturalWidth > 0)")
        if os.environ.get("CLIPFAST_WEB_SCREENSHOT"):
            page.screenshot(path=os.environ["CLIPFAST_WEB_SCREENSHOT"], full_page=True)

        page.set_input_files("#search-file", paths[3])  # search by an uploaded image: it finds itself first
        page.wait_for_function("document.querySelector('#status').textContent.includes('your image')")
        assert _first(page) == {"caption": Path(paths[3]).name, "score": pytest.approx(1.0, abs=1e-3)}

        page.locator("#results li").nth(2).get_by_role("button", name="More like").click()
        page.wait_for_function("location.search.includes('row=')")
        row = int(urllib.parse.parse_qs(urllib.parse.urlsplit(page.url).query)["row"][0])
        page.wait_for_function("document.querySelector('#status').textContent.includes('more like row')")
        assert _first(page)["caption"] == Path(paths[row]).name

        page.goto(base + "/?" + urllib.parse.urlencode({"q": query, "k": 3}))  # a shared link runs its search
        page.wait_for_selector("#results li")
        assert page.locator("#results li").count() == 3 and page.input_value("#q") == query
        assert page.outside == []


def test_classification_without_an_index(browser, clip, tmp_path):
    with _session(browser, clip) as (page, base):
        picture = tmp_path / "picture.png"
        _photo(11).save(picture)
        page.goto(base + "/")
        page.wait_for_selector("#classify-panel:not([hidden])")
        assert page.locator("#search-panel").is_hidden()
        page.fill("#labels", "a cat, a dog, a red car")
        page.set_input_files("#classify-file", str(picture))
        page.wait_for_selector("#classify-results li")
        labels = [text.split(" \u2014 ")[0] for text in page.locator("#classify-results li").all_inner_texts()]
        want = clip(Image.open(picture).convert("RGB"), candidate_labels=["a cat", "a dog", "a red car"])
        assert labels == [entry["label"] for entry in want]
        assert page.outside == []
