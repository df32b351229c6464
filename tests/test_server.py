"""``clipfast serve``: the HTTP API on a tiny random-weight model, through real sockets on 127.0.0.1."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import clipfast
from helpers import loopback
from clipfast.server import make_server


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from helpers.tokenizer_files import write_tiny_clip

    return write_tiny_clip(tmp_path_factory.mktemp("serve") / "model")


@pytest.fixture(scope="module")
def clip(model_dir):
    return clipfast.pipeline(model=str(model_dir))


def _png(seed: int, size=(40, 50)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class _Client:
    def __init__(self, server) -> None:
        self.url = f"http://127.0.0.1:{server.server_address[1]}"

    def __call__(self, path: str, body=None, raw: bytes | None = None, method: str | None = None):
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method or ("GET" if data is None
                                                                                      else "POST"))
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())


def _serve(clip, **kwargs):
    server = make_server(clip, port=0, **kwargs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def client(clip):
    server = _serve(clip, model_name="tiny", max_items=20)
    yield _Client(server)
    server.shutdown()
    server.server_close()


def test_health_and_info(client):
    assert client("/health") == (200, {"status": "ok"})
    status, info = client("/info/")
    assert status == 200 and info == {"model": "tiny", "dim": 16, "image_size": 32, "context_length": 77,
                                      "device": "cpu", "dtype": "float32"}


def test_embed_equals_the_pipeline(client, clip):
    from clipfast.image_io import load_image

    texts = ["a cat", "a dog on a beach", "a cat"]
    pngs = [_png(0), _png(1, (70, 30))]
    images = [_b64(pngs[0]), "data:image/png;base64," + _b64(pngs[1]), _b64(pngs[0]).rstrip("=")]
    status, out = client("/embed", {"texts": texts, "images": images})
    assert status == 200 and out["dim"] == 16
    want_text = clip.text_embeddings(texts)
    want_image = clip.image_embeddings([load_image(data) for data in (pngs[0], pngs[1], pngs[0])])
    assert torch.allclose(torch.tensor(out["text_embeddings"]), want_text, atol=1e-6)
    assert torch.allclose(torch.tensor(out["image_embeddings"]), want_image, atol=1e-6)
    assert out["text_embeddings"][0] == out["text_embeddings"][2]
    status, only_text = client("/embed", {"texts": texts[:1]})
    assert status == 200 and set(only_text) == {"dim", "text_embeddings"}


def test_classify_equals_the_pipeline(client, clip):
    from clipfast.image_io import load_image

    labels = ["cat", "dog", "a red car"]
    status, out = client("/classify", {"images": [_b64(_png(2)), _b64(_png(3))], "labels": labels})
    assert status == 200
    assert out["results"] == clip([load_image(_png(2)), load_image(_png(3))], candidate_labels=labels)
    status, out = client("/classify", {"images": [_b64(_png(2))], "labels": labels, "top_k": 2,
                                       "hypothesis_template": "a photo of {}"})
    want = clip(load_image(_png(2)), candidate_labels=labels, top_k=2, hypothesis_template="a photo of {}")
    assert status == 200 and out["results"] == [want]


def test_openai_embeddings(client, clip):
    status, out = client("/v1/embeddings", {"input": ["hello world", "a cat"], "model": "anything"})
    assert status == 200 and out["object"] == "list" and out["model"] == "tiny"
    assert [row["index"] for row in out["data"]] == [0, 1] and out["data"][0]["object"] == "embedding"
    want = clip.text_embeddings(["hello world", "a cat"])
    assert torch.allclose(torch.tensor([row["embedding"] for row in out["data"]]), want, atol=1e-6)
    tokens = sum(len(ids) for ids in clip.tokenizer(["hello world", "a cat"])["input_ids"])
    assert out["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    status, packed = client("/v1/embeddings", {"input": "a cat", "encoding_format": "base64", "dimensions": 16})
    vector = np.frombuffer(base64.b64decode(packed["data"][0]["embedding"]), dtype="<f4")
    assert status == 200 and np.allclose(vector, want[1].numpy(), atol=1e-6)


@pytest.mark.parametrize("path, body, status, match", [
    ("/embed", {"texts": ["word " * 100]}, 400, "Text 0 is 10[0-9] tokens long.*truncate"),
    ("/embed", {"images": ["/etc/passwd"]}, 400, r"images\[0\].*does not read file paths"),
    ("/embed", {"images": [os.path.abspath(__file__)]}, 400, r"images\[0\]"),
    ("/embed", {"images": ["http://127.0.0.1:9/a.jpg"]}, 400, "does not fetch URLs.*--allow-urls"),
    ("/embed", {"images": ["data:image/png,abc"]}, 400, "without ';base64'"),
    ("/embed", {"images": ["@@@"]}, 400, r"images\[0\].*base64"),
    ("/embed", {"texts": "a cat"}, 400, '"texts" must be a non-empty list of strings'),
    ("/embed", {"texts": ["a", 3]}, 400, '"texts" must be a non-empty list of strings'),
    ("/embed", {}, 400, 'Give "texts" and/or "images"'),
    ("/embed", {"text": ["a cat"]}, 400, "Unknown field.*'text'"),
    ("/embed", {"texts": ["a"], "truncate": "yes"}, 400, '"truncate" must be true or false'),
    ("/embed", ["a cat"], 400, "must be a JSON object"),
    ("/embed", {"texts": ["a"] * 21}, 413, "at most 20"),
    ("/classify", {"images": [_b64(b"not a png at all")], "labels": ["cat"]}, 400, r"images\[0\]: .*not an image"),
    ("/classify", {"images": [_b64(_png(0))], "labels": ["cat"], "top_k": 0}, 400, "top_k"),
    ("/classify", {"images": [_b64(_png(0))], "labels": ["cat"], "hypothesis_template": "{} {x}"}, 400, "template"),
    ("/classify", {"images": [_b64(_png(0))]}, 400, '"labels" must be'),
    ("/v1/embeddings", {"model": "x"}, 400, 'Missing "input"'),
    ("/v1/embeddings", {"input": [[1, 2, 3]]}, 400, "list of strings"),
    ("/v1/embeddings", {"input": "a", "encoding_format": "int8"}, 400, "encoding_format"),
    ("/v1/embeddings", {"input": "a", "dimensions": 8}, 400, "16 dimensions"),
    ("/nowhere", {}, 404, "No endpoint /nowhere; there are GET /health"),
    ("/classify", {"images": [_b64(_png(0))], "labels": ["cat"], "hypothesis_template": "{0.x}"}, 400, "template"),
    ("/embed", {"texts": ["ok", "bad \ud800"]}, 400, r"texts\[1\] is not valid Unicode"),
    ("/v1/embeddings", {"input": "\udfff"}, 400, r"input\[0\] is not valid Unicode"),
    ("/v1/embeddings", {"input": "a", "encoding_format": ""}, 400, "encoding_format"),
])
def test_bad_requests_get_a_status_and_a_clear_message(client, path, body, status, match):
    import re

    got_status, out = client(path, body)
    assert got_status == status and set(out) == {"error"} and re.search(match, out["error"]), out


def test_protocol_errors(client, clip):
    assert client("/embed", method="GET") == (405, {"error": "/embed takes POST, not GET."})
    status, out = client("/embed", raw=b"{not json")
    assert status == 400 and "not valid JSON" in out["error"]
    small = _serve(clip, max_body=100)
    try:
        status, out = _Client(small)("/embed", {"texts": ["x" * 200]})
        assert status == 413 and "at most 100" in out["error"]
    finally:
        small.shutdown()
        small.server_close()
    host, port = client.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:  # no Content-Length
        sock.sendall(b"POST /embed HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = b"".join(iter(lambda: sock.recv(65536), b""))
    assert reply.startswith(b"HTTP/1.1 411") and b"Content-Length" in reply


def test_keep_alive_connections_survive_errors(client):
    """On one HTTP/1.1 connection, a refused request with an unread body does not corrupt the next request."""
    import http.client

    host, port = client.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        for path, body in (("/nowhere", b'{"texts": ["a"]}'), ("/health", b"{}"), ("/embed", b'{"texts": ["a"]}')):
            connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            payload = json.loads(response.read())
            assert response.status == {"/nowhere": 404, "/health": 405, "/embed": 200}[path], payload
            connection.request("GET", "/health")
            response = connection.getresponse()
            assert response.status == 200 and json.loads(response.read()) == {"status": "ok"}
    finally:
        connection.close()


def _raw(client, request: bytes) -> tuple[bytes, bytes]:
    """Send raw bytes on a new connection; (status line, body) of the first answer."""
    host, port = client.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(request)
        reply = b""
        while b"\r\n\r\n" not in reply or len(reply.partition(b"\r\n\r\n")[2]) < _length(reply):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0], body


def _length(reply: bytes) -> int:
    for line in reply.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


@pytest.mark.parametrize("request_bytes, status, match", [
    (b"HEAD /embed HTTP/1.1\r\nHost: x\r\n\r\n", b"405", b""),  # HEAD: no body
    (b"PUT /embed HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}", b"405", b"takes POST"),
    (b"OPTIONS /health HTTP/1.1\r\nHost: x\r\n\r\n", b"405", b"takes GET"),
    (b"GARBAGE\r\n\r\n", b"400", b'{"error": "Bad request syntax'),
    (b"GET /health HTTP/2.0\r\nHost: x\r\n\r\n", b"505", b'{"error"'),
    (b"POST /embed HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", b"411",
     b"Chunked"),
    (b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", b"400",
     b"Bad Content-Length"),
    (b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Length: 1_0\r\n\r\n", b"400", b"Bad Content-Length"),
    (b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + b"1" * 5000, b"400", b"not valid JSON"),
    (b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Length: 20000\r\n\r\n" + b"[" * 20000, b"400", b"not valid JSON"),
    (b"POST /embed HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 999999999\r\n\r\n", b"413",
     b"at most"),
    (b"GET http://example.com/health HTTP/1.1\r\nHost: x\r\n\r\n", b"200", b'{"status": "ok"}'),
])
def test_protocol_refusals_are_json(client, request_bytes, status, match):
    """Malformed, chunked, conflicting or oversized requests get a JSON 4xx (never http.server's HTML page), and
    the connection is not reused for a body that was not read."""
    line, body = _raw(client, request_bytes)
    assert line.split()[1] == status, (line, body)
    assert match in body, body
    if status == b"405":
        host, port = client.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(request_bytes)
            head = sock.recv(65536).partition(b"\r\n\r\n")[0]
        assert b"\r\nAllow: " in head


def test_odd_but_valid_inputs_work(client, clip):
    """URL-safe base64, a 1-pixel-tall image, "truncate": null."""
    from clipfast.image_io import load_image

    data = _png(7, (1, 5))  # one pixel tall: the reference's channel guess calls it channels first
    urlsafe = base64.urlsafe_b64encode(data).decode().rstrip("=")
    status, out = client("/embed", {"images": [urlsafe], "texts": ["a"], "truncate": None})
    assert status == 200, out
    assert torch.allclose(torch.tensor(out["image_embeddings"]), clip.image_embeddings([load_image(data)]),
                          atol=1e-6)


def test_urls_are_fetched_only_when_allowed(clip):
    from clipfast.image_io import load_image

    server = _serve(clip, allow_urls=True)
    try:
        with loopback.serve({"/cat.png": (200, "image/png", _png(5)), "/gone.png": (404, "text/plain", b"")}) as url:
            status, out = _Client(server)("/embed", {"images": [url + "/cat.png"]})
            assert status == 200
            assert torch.allclose(torch.tensor(out["image_embeddings"]),
                                  clip.image_embeddings([load_image(_png(5))]), atol=1e-6)
            status, out = _Client(server)("/embed", {"images": [url + "/gone.png"]})
            assert status == 400 and "HTTP 404" in out["error"] and "images[0]" in out["error"]
    finally:
        server.shutdown()
        server.server_close()


def test_concurrent_requests_each_get_their_own_answer(client, clip):
    texts = [f"photo number {i}" for i in range(8)]
    want = clip.text_embeddings(texts)
    results: dict[int, list] = {}

    def ask(i: int) -> None:
        results[i] = client("/embed", {"texts": [texts[i]]})[1]["text_embeddings"][0]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(texts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert torch.allclose(torch.tensor([results[i] for i in range(len(texts))]), want, atol=1e-6)


def test_the_serve_command(model_dir):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPFAST_")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    bad = subprocess.run([sys.executable, "-m", "clipfast", "serve", "--model", str(model_dir), "--port", "70000"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--port must be" in bad.stderr
    for value in ("nan", "inf", "1e-9"):
        bad = subprocess.run([sys.executable, "-m", "clipfast", "serve", "--model", str(model_dir),
                              "--max-body-mb", value], env=env, capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2 and "--max-body-mb a positive number" in bad.stderr, bad.stderr
    proc = subprocess.Popen([sys.executable, "-m", "clipfast", "serve", "--model", str(model_dir), "--port", "0"],
                            env=env, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert "serving" in line, line
        url = line.split(" on ")[1].split()[0]
        with urllib.request.urlopen(url + "/health", timeout=30) as response:
            assert json.loads(response.read()) == {"status": "ok"}
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
