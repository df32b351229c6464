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
import urllib.parse
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
    batching = info.pop("batching")
    assert status == 200 and info == {"model": "tiny", "dim": 16, "image_size": 32, "context_length": 77,
                                      "device": "cpu", "dtype": "float32"}
    assert {key: batching[key] for key in ("max_batch_size", "max_wait_ms", "max_queue")} == {
        "max_batch_size": 32, "max_wait_ms": 10.0, "max_queue": 512}
    assert set(batching["text"]) == {"calls", "items", "pending"}


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
    for options, message in ((["--max-batch-size", "0"], "--max-batch-size and --max-queue must be at least 1"),
                             (["--max-queue", "0"], "--max-queue must be at least 1"),
                             (["--max-wait-ms", "nan"], "--max-wait-ms 0-60000"),
                             (["--index", str(model_dir / "nowhere")], "is not a folder")):
        bad = subprocess.run([sys.executable, "-m", "clipfast", "serve", "--model", str(model_dir), *options],
                             env=env, capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr
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


# -- dynamic batching -------------------------------------------------------------------------------------------


def test_the_batcher_splits_and_joins_requests():
    from clipfast.batching import DynamicBatcher

    calls: list[list[int]] = []
    gate = threading.Lock()

    def run(items):
        calls.append(list(items))
        return [item * 10 for item in items]

    batcher = DynamicBatcher(run, max_batch_size=4, max_wait_ms=0, lock=gate)
    try:
        results: dict[int, list[int]] = {}
        with gate:  # hold the model: every request queues, then the batches form from the whole queue
            threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, batcher.submit(
                list(range(100 * i, 100 * i + i + 1))))) for i in range(4)]  # 1, 2, 3 and 4 items
            for thread in threads:
                thread.start()
            for _ in range(3000):
                if batcher.queued() == 10:
                    break
                threading.Event().wait(0.02)
        for thread in threads:
            thread.join(30)
        assert results == {i: [10 * x for x in range(100 * i, 100 * i + i + 1)] for i in range(4)}
        assert sorted(len(call) for call in calls) == [2, 4, 4] and batcher.calls == 3 and batcher.items_run == 10
        assert batcher.submit([]) == [] and batcher.pending() == 0
    finally:
        batcher.close(10)


def test_the_batcher_waits_for_requests_still_being_decoded():
    """A request admitted (its images still decoding) joins the batch of one that queued just before it."""
    from clipfast.batching import DynamicBatcher

    sizes: list[int] = []

    def run(items):
        sizes.append(len(items))
        threading.Event().wait(1.0 if items == ["slow"] else 0)
        return items

    batcher = DynamicBatcher(run, max_batch_size=8, max_wait_ms=0)
    try:
        batcher.submit(["slow"])  # the last call took 1 s: items on their way are waited for up to that
        decoding, queued = threading.Event(), threading.Event()

        def late() -> None:
            with batcher.admit(1):
                decoding.set()
                queued.wait(30)
                assert batcher.submit(["b"]) == ["b"]

        thread = threading.Thread(target=late)
        thread.start()
        decoding.wait(30)
        job = batcher.enqueue(["a"])
        queued.set()
        assert job.result() == ["a"]
        thread.join(30)
        assert sizes == [1, 2]
    finally:
        batcher.close(10)


def test_the_batcher_hands_errors_to_each_request_and_goes_on():
    from clipfast.batching import DynamicBatcher

    def run(items):
        if "bad" in items:
            raise RuntimeError("boom")
        return items

    batcher = DynamicBatcher(run, max_batch_size=8, max_wait_ms=0)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            batcher.submit(["ok", "bad"])
        assert batcher.submit(["fine"]) == ["fine"]
    finally:
        batcher.close(10)


def test_the_batcher_queue_is_bounded():
    from clipfast.batching import DynamicBatcher, QueueFull

    batcher = DynamicBatcher(lambda items: items, max_queue=3)
    try:
        with batcher.admit(2):
            with batcher.admit(1):
                with pytest.raises(QueueFull, match="full") as caught:
                    with batcher.admit(1):
                        pass
                assert caught.value.retry_after >= 1
            assert batcher.pending() == 2
        with batcher.admit(10):  # an empty queue takes a request larger than max_queue
            assert batcher.pending() == 10
    finally:
        batcher.close(10)
    with pytest.raises(QueueFull, match="shutting down"):
        batcher.submit([1])


def _single_answers(clip, requests):
    """What each request gets from the pipeline alone (no server, no batching)."""
    from clipfast.image_io import load_image

    want = []
    for path, body in requests:
        if path == "/embed":
            out = {}
            if "texts" in body:
                out["text_embeddings"] = clip.text_embeddings(body["texts"])
            if "images" in body:
                out["image_embeddings"] = clip.image_embeddings(
                    [load_image(base64.b64decode(item)) for item in body["images"]])
            want.append(out)
        elif path == "/v1/embeddings":
            want.append(clip.text_embeddings(body["input"]))
        else:
            want.append(clip([load_image(base64.b64decode(item)) for item in body["images"]],
                             candidate_labels=body["labels"]))
    return want


def _assert_same(path, got, want):
    if path == "/embed":
        assert set(got) - {"dim"} == set(want)
        for key, value in want.items():
            assert torch.allclose(torch.tensor(got[key]), value, atol=1e-5, rtol=0), key
    elif path == "/v1/embeddings":
        assert torch.allclose(torch.tensor([row["embedding"] for row in got["data"]]), want, atol=1e-5, rtol=0)
    else:
        assert len(got["results"]) == len(want)
        for got_ranked, want_ranked in zip(got["results"], want):
            scores = {entry["label"]: entry["score"] for entry in want_ranked}
            assert sorted(e["label"] for e in got_ranked) == sorted(scores)
            assert all(abs(entry["score"] - scores[entry["label"]]) <= 1e-5 for entry in got_ranked)


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(clip):
    """16 clients at once (texts, images, both, OpenAI texts, classification): the model runs one call per
    modality, and every answer equals what the request gets alone, within 1e-5."""
    requests = []
    for i in range(16):
        kind = i % 4
        if kind == 0:
            requests.append(("/embed", {"texts": [f"photo number {i}", f"a cat {i}"][: 1 + i % 2]}))
        elif kind == 1:
            requests.append(("/embed", {"images": [_b64(_png(100 + i, (30 + i, 40)))] * (1 + i % 3)}))
        elif kind == 2:
            requests.append(("/embed", {"texts": [f"dog {i}"], "images": [_b64(_png(200 + i))]}))
        else:
            requests.append(("/v1/embeddings", {"input": [f"word {i}", "a red car"]}) if i % 8 == 3 else
                            ("/classify", {"images": [_b64(_png(300 + i))], "labels": ["cat", f"dog {i}", "car"]}))
    want = _single_answers(clip, requests)
    server = _serve(clip, max_batch_size=64, max_wait_ms=0)
    service, client = server.service, _Client(server)
    try:
        got: dict[int, tuple[int, dict]] = {}
        texts_before, images_before = service.texts.calls, service.images.calls
        with service.model_lock:  # the model is busy: every request queues, then runs in one call per modality
            threads = [threading.Thread(target=lambda i=i: got.__setitem__(i, client(*requests[i])))
                       for i in range(len(requests))]
            for thread in threads:
                thread.start()
            for _ in range(3000):  # (at most 60 s)
                if service.texts.queued() == 18 and service.images.queued() == 14:
                    break
                threading.Event().wait(0.02)
        for thread in threads:
            thread.join(60)
        assert service.texts.calls - texts_before == 1 and service.images.calls - images_before == 1
        for i, (path, _) in enumerate(requests):
            status, out = got[i]
            assert status == 200, out
            _assert_same(path, out, want[i])
    finally:
        server.shutdown()
        server.server_close()
        server.service.close()


def test_batching_off_gives_the_same_answers(clip):
    requests = [("/embed", {"texts": ["a cat", "two dogs"], "images": [_b64(_png(1)), _b64(_png(2))]})]
    want = _single_answers(clip, requests)
    server = _serve(clip, max_batch_size=1)
    try:
        status, out = _Client(server)(*requests[0])
        assert status == 200
        _assert_same("/embed", out, want[0])
        assert server.service.images.calls == 2 and server.service.texts.calls == 2  # one item per call
    finally:
        server.shutdown()
        server.server_close()
        server.service.close()


def test_a_full_queue_answers_503_with_retry_after(clip):
    import http.client

    server = _serve(clip, max_queue=2)
    service, client = server.service, _Client(server)
    try:
        answers: list = []
        with service.model_lock:
            threads = [threading.Thread(target=lambda: answers.append(client("/embed", {"texts": ["a cat"]})))
                       for _ in range(2)]
            for thread in threads:
                thread.start()
            for _ in range(3000):
                if service.texts.pending() == 2:
                    break
                threading.Event().wait(0.02)
            connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
            connection.request("POST", "/embed", body=json.dumps({"texts": ["one more"]}))
            response = connection.getresponse()
            payload = json.loads(response.read())
            connection.close()
        for thread in threads:
            thread.join(60)
        assert response.status == 503 and "queue is full" in payload["error"]
        assert int(response.getheader("Retry-After")) >= 1
        assert [status for status, _ in answers] == [200, 200]
    finally:
        server.shutdown()
        server.server_close()
        service.close()


def test_sigterm_answers_the_requests_in_flight_then_exits(model_dir):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPFAST_")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    # a request waits up to 3 s for company: it is still in flight when SIGTERM comes
    proc = subprocess.Popen([sys.executable, "-m", "clipfast", "serve", "--model", str(model_dir), "--port", "0",
                             "--max-wait-ms", "3000"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert "serving" in line, line
        url = line.split(" on ")[1].split()[0]
        answer: list = []
        request = urllib.request.Request(url + "/embed", data=json.dumps({"texts": ["a cat"]}).encode())
        thread = threading.Thread(target=lambda: answer.append(urllib.request.urlopen(request, timeout=60).read()))
        thread.start()
        threading.Event().wait(1.0)
        proc.send_signal(signal.SIGTERM)
        thread.join(60)
        assert proc.wait(timeout=60) == 0
        assert len(json.loads(answer[0])["text_embeddings"][0]) == 16
        assert "stopped (SIGTERM)" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()


# -- search, thumbnails and the page ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def indexed(clip, tmp_path_factory):
    """An image index of 6 PNG files (ids: their paths), a URL id and a text file posing as an image."""
    from clipfast.image_io import load_image
    from clipfast.index import IndexWriter

    folder = tmp_path_factory.mktemp("gallery")
    paths = []
    for i in range(6):
        path = folder / f"photo {i}.png"
        path.write_bytes(_png(400 + i, (60 + 10 * i, 50)))
        paths.append(str(path))
    (folder / "notes.txt").write_text("not an image")
    ids = paths + ["http://127.0.0.1:9/remote.jpg", str(folder / "notes.txt")]
    vectors = clip.image_embeddings([load_image(p) for p in paths] + [load_image(_png(9)), load_image(_png(10))])
    with IndexWriter(folder / "index", {"model": "tiny", "kind": "image", "dim": 16}) as writer:
        writer.append(ids, vectors.numpy())
    return folder / "index", ids, vectors


@pytest.fixture(scope="module")
def search_server(clip, indexed):
    server = _serve(clip, index=str(indexed[0]), max_items=50)
    yield server
    server.shutdown()
    server.server_close()
    server.service.close()


def test_search_by_text_image_embedding_and_row(search_server, indexed, clip):
    client, (_, ids, vectors) = _Client(search_server), indexed
    status, info = client("/info")
    assert status == 200 and info["index"] == {"rows": 8, "kind": "image", "model": "tiny",
                                                  "search": "exact"}
    status, results = client("/search", {"text": "a photo of a cat", "k": 3})
    scores = vectors @ clip.text_embeddings(["a photo of a cat"])[0]
    best = scores.argsort(descending=True)[:3].tolist()
    assert status == 200 and [r["row"] for r in results] == best and [r["id"] for r in results] == [ids[i] for i in best]
    assert np.allclose([r["score"] for r in results], scores[best].numpy(), atol=1e-5)
    with open(ids[2], "rb") as handle:
        status, results = client("/search", {"image": "data:image/png;base64," + _b64(handle.read())})
    assert status == 200 and len(results) == 8 and results[0]["id"] == ids[2] and results[0]["score"] > 0.9999
    status, results = client("/search", {"embedding": (3 * vectors[4]).tolist(), "k": 1})
    assert status == 200 and [r["row"] for r in results] == [4] and abs(results[0]["score"] - 1) < 1e-5
    status, results = client("/search", {"row": 5, "k": 2})
    assert status == 200 and results[0]["row"] == 5 and len(results) == 2


@pytest.mark.parametrize("body, match", [
    ({}, 'Give one of "text"'),
    ({"text": "a", "row": 1}, "got 'text', 'row'"),
    ({"text": "a", "k": 0}, '"k" must be an integer from 1 to 50'),
    ({"text": "a", "k": "3"}, '"k" must be'),
    ({"text": "a", "k": 51}, '"k" must be'),
    ({"text": 3}, '"text" must be a string'),
    ({"text": "word " * 100}, "tokens long"),
    ({"image": "@@@"}, "base64"),
    ({"image": "/etc/passwd"}, "does not read file paths"),
    ({"embedding": [0.1] * 15}, "list of 16 numbers"),
    ({"embedding": [0.0] * 16}, "not all zeros"),
    ({"embedding": ["a"] * 16}, "list of 16 numbers"),
    ({"row": 8}, "row 8 has no vector|out of range"),
    ({"row": -1}, '"row" must be an indexed row number'),
    ({"row": True}, '"row" must be'),
    ({"query": "a"}, "Unknown field"),
])
def test_bad_searches_are_400(search_server, body, match):
    import re

    status, out = _Client(search_server)("/search", body)
    assert status == 400 and re.search(match, out["error"]), out


def test_without_an_index_there_is_no_search(client):
    status, out = client("/search", {"text": "a"})
    assert status == 404 and "No endpoint /search" in out["error"]
    assert client("/thumbnail?row=0")[0] == 404


def test_thumbnails_only_for_indexed_images(search_server, indexed):
    _, ids, _ = indexed
    url = _Client(search_server).url
    for query in ("row=0", "id=" + urllib.parse.quote(ids[1], safe="")):
        with urllib.request.urlopen(f"{url}/thumbnail?{query}", timeout=30) as response:
            assert response.headers["Content-Type"] == "image/jpeg"
            image = Image.open(io.BytesIO(response.read()))
            assert image.format == "JPEG" and max(image.size) <= 256


@pytest.mark.parametrize("target", [
    "/thumbnail?id=../../../../etc/passwd", "/thumbnail?id=%2Fetc%2Fpasswd", "/thumbnail?id=/etc/passwd",
    "/thumbnail?id=..%2f..%2fetc%2fpasswd", "/thumbnail?row=8", "/thumbnail?row=-1", "/thumbnail?row=1e0",
    "/thumbnail?row=0&id=x", "/thumbnail?row=0&row=1", "/thumbnail", "/thumbnail?row=6", "/thumbnail?row=7",
    "/thumbnail/../../etc/passwd", "/thumbnail/%2e%2e/%2e%2e/etc/passwd", "/static/../server.py",
    "/static/%2e%2e%2fserver.py", "/static/..%2f..%2fserver.py", "//etc/passwd", "/etc/passwd",
    "/static/index.html/..", "/..%2f..%2fetc%2fpasswd",
])
def test_nothing_but_indexed_images_is_served(search_server, target):
    """Thumbnails are named by an indexed id or row; a path in any spelling, a URL id (row 6, never fetched) or
    an indexed file that is not an image (row 7) is a 404, with JSON."""
    line, body = _raw(_Client(search_server), f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                      .encode())
    assert line.split()[1] == b"404", (target, line, body)
    assert json.loads(body)["error"] and b"root:" not in body


def test_the_page_is_served_with_no_external_urls(search_server):
    import re

    url = _Client(search_server).url
    seen = {}
    for path, kind in (("/", "text/html"), ("/static/app.js", "text/javascript"), ("/static/style.css", "text/css")):
        with urllib.request.urlopen(url + path, timeout=30) as response:
            assert response.status == 200 and response.headers["Content-Type"].startswith(kind)
            seen[path] = response.read().decode("utf-8")
        assert not re.search(r"(?i)https?://|[\"'(=]\s*//\w|@import", seen[path]), path  # no CDN, no other host
    assert 'src="/static/app.js"' in seen["/"] and 'href="/static/style.css"' in seen["/"]
    assert all(word in seen["/"] for word in ('type="file"', 'type="search"', 'id="results"'))


def test_search_over_a_parquet_collection(clip, tmp_path):
    """Bulk embedding's layout (part-*.parquet + _clipfast.json): records carry their metadata, thumbnails come
    from the ``path`` column, a row whose image failed has no vector, and URL ids are never fetched."""
    pa = pytest.importorskip("pyarrow", reason="the Parquet layout needs pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    from clipfast.image_io import load_image

    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"p{i}.png"))
        Path(paths[-1]).write_bytes(_png(500 + i))
    vectors = clip.image_embeddings([load_image(p) for p in paths]).numpy()
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), 16)
    column = pa.concat_arrays([column, pa.nulls(1, column.type)])  # a 4th row whose image failed
    table = pa.table({"id": ["a", "b", "https://example.com/c.jpg", "d"], "image_embedding": column,
                      "caption": ["first", "second", "third", "broken"], "path": paths + [None]})
    folder = tmp_path / "collection"
    folder.mkdir()
    pq.write_table(table, folder / "part-00000.parquet")
    (folder / "_clipfast.json").write_text(json.dumps({"model": "tiny", "dim": 16, "dtype": "float32",
                                                       "columns": ["image_embedding"], "format": "parquet"}))
    server = _serve(clip, index=str(folder))
    client = _Client(server)
    try:
        status, results = client("/search", {"embedding": vectors[1].tolist(), "k": 2})
        assert status == 200 and results[0]["id"] == "b" and results[0]["caption"] == "second", results
        assert results[0]["row"] == 1 and results[0]["path"] == paths[1]
        status, results = client("/search", {"row": 0, "k": 1})
        assert status == 200 and results[0]["id"] == "a"
        status, out = client("/search", {"row": 3})
        assert status == 400 and "row 3" in out["error"]
        with urllib.request.urlopen(client.url + "/thumbnail?id=b", timeout=30) as response:
            assert response.headers["Content-Type"] == "image/jpeg"
        for query in ("row=3", "row=9", "id=d", "id=" + urllib.parse.quote(paths[0], safe="")):
            assert client("/thumbnail?" + query)[0] == 404, query
    finally:
        server.shutdown()
        server.server_close()
        server.service.close()
