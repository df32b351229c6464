"""``clipfast serve``: an HTTP JSON API for embeddings, zero-shot classification and search, and a web page.

Standard library only (``http.server``): one thread per connection decodes and preprocesses its request's images;
the texts and images of concurrent requests are then batched (:mod:`clipfast.batching`): one model call per
modality runs the items of many requests, and each request gets back its own rows. :class:`ClipService` holds the
logic on plain dicts, so it runs and is tested without sockets; :func:`make_server` puts HTTP around it.

Endpoints (JSON in, JSON out; errors are ``{"error": "..."}`` with a 4xx status, or 503 with ``Retry-After``
when the queue is full):

- ``GET /health``: ``{"status": "ok"}``.
- ``GET /info``: the model, its embedding size, image size, context length, device and dtype; the batching
  settings and counters (model calls and items run, per modality); the index.
- ``POST /embed``: ``{"texts": [...], "images": [...], "truncate": false}`` -> ``{"text_embeddings": [[...]],
  "image_embeddings": [[...]], "dim": E}``; L2-normalised, in input order; either list may be left out.
- ``POST /classify``: ``{"images": [...], "labels": [...], "top_k": null, "hypothesis_template": "..."}`` ->
  ``{"results": [[{"label", "score"}, ...], ...]}``, one ranked list per image, as the pipeline returns.
- ``POST /v1/embeddings``: OpenAI's embeddings request for texts (``input``: a string or a list of strings,
  ``encoding_format``: ``"float"`` or ``"base64"``) and its response shape.
- With an index: ``POST /search`` ``{"text" | "image" | "embedding" | "row": ..., "k": 10}`` ->
  ``[{"id", "score", "row", ...metadata}]``, and ``GET /thumbnail?row=N`` (or ``?id=ID``) for indexed images.
- ``GET /``: the web page (search, or zero-shot classification without an index).

Images are base64 strings or ``data:image/...;base64,`` URIs. http(s) URLs are fetched only when the server was
started with ``allow_urls=True`` (a server that fetches any URL a client names can be made to probe its own
network), and local file paths are never read. A text longer than the model's context is an error unless the
request says ``"truncate": true``. docs/serving.md describes the protocol and the batching.

Example:
    >>> server = make_server(clipfast.pipeline(model="openai/clip-vit-base-patch32"), port=8000)  # doctest: +SKIP
    >>> serve_until_stopped(server)                                                                # doctest: +SKIP
"""

from __future__ import annotations

import base64
import json
import logging
import math
import signal
import socket
import sys
import threading
import urllib.parse
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Callable

from clipfast.batching import (DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_QUEUE, DEFAULT_MAX_WAIT_MS, DynamicBatcher,
                               QueueFull)
from clipfast.errors import ClipfastError
from clipfast.gallery import WEB_FILES, open_gallery, web_file

if TYPE_CHECKING:
    import numpy as np
    import torch

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 64 * 1024 * 1024  # base64 images are ~4/3 of their files
DEFAULT_MAX_ITEMS = 1024
DEFAULT_DRAIN_SECONDS = 30.0  # how long a stopping server waits for the requests in flight
_READ_TIMEOUT = 30.0  # seconds a client may take to send its request: a stalled client frees its thread
_IMAGE_HINT = " Images are base64 strings or data:image/...;base64, URIs; this server does not read file paths."
_DRAIN_LIMIT = 64 * 1024 * 1024  # bytes of a refused body read and dropped, so that its sender sees the answer


class RequestError(ClipfastError, ValueError):
    """A request the server refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = int(status)


@dataclass
class _Raw:
    """An answer that is not JSON: a page, a script, a thumbnail."""

    content_type: str
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)


class ClipService:
    """The API on plain dicts: each public method takes a parsed JSON body and returns a JSON-ready value.

    Texts and images of concurrent requests go through two :class:`~clipfast.batching.DynamicBatcher` queues (one
    model call per modality and batch), which share one lock: one model call at a time.

    Args:
        clip: a :class:`~clipfast.pipelines.ZeroShotImageClassificationPipeline` (model, tokenizer, processor).
        model_name: what ``/info`` and ``/v1/embeddings`` call the model.
        allow_urls: fetch http(s) image URLs (off by default, see the module docstring).
        max_items: most texts plus images one request may carry.
        max_batch_size: most texts or images per model call (1: no batching across requests).
        max_wait_ms: how long a queued item waits for others before its batch runs anyway.
        max_queue: most texts or images (each) admitted and not yet answered; beyond it, 503.
        index: an index folder (or an opened index) that ``search`` answers from.
    """

    def __init__(self, clip: Any, model_name: str = "clip", allow_urls: bool = False,
                 max_items: int = DEFAULT_MAX_ITEMS, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                 max_wait_ms: float = DEFAULT_MAX_WAIT_MS, max_queue: int = DEFAULT_MAX_QUEUE,
                 index: Any = None) -> None:
        self.clip = clip
        self.model_name = model_name
        self.allow_urls = allow_urls
        self.max_items = max_items
        self.model_lock = threading.Lock()  # held around each model call: one at a time; decoding runs outside it
        options = dict(max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, max_queue=max_queue,
                       lock=self.model_lock)
        self.texts = DynamicBatcher(self._embed_texts, name="text", **options)
        self.images = DynamicBatcher(self._embed_pixels, name="image", **options)
        self.index = None if index is None else open_gallery(index, int(clip.model.config.projection_dim))

    def close(self, timeout: float | None = None) -> None:
        """Stop the batchers once the work already queued has run."""
        self.texts.close(timeout)
        self.images.close(timeout)

    # -- endpoints ---------------------------------------------------------------------------------------------

    def info(self, query: Any = None) -> dict[str, Any]:
        """The model's name, embedding size, image size, context length, device and dtype; the batching settings
        and counters; the index."""
        config = self.clip.model.config
        out = {"model": self.model_name, "dim": int(config.projection_dim),
               "image_size": int(config.vision_config.image_size),
               "context_length": int(config.text_config.max_position_embeddings),
               "device": str(self.clip.device), "dtype": str(self.clip.model.dtype).replace("torch.", "")}
        out["batching"] = {"max_batch_size": self.texts.max_batch_size, "max_wait_ms": self.texts.max_wait * 1000,
                           "max_queue": self.texts.max_queue,
                           **{name: {"calls": batcher.calls, "items": batcher.items_run, "pending": batcher.pending()}
                              for name, batcher in (("text", self.texts), ("image", self.images))}}
        if self.index is not None:
            out["index"] = {"rows": len(self.index), "kind": self.index.kind, "model": self.index.model,
                            "search": self.index.method}
        return out

    def embed(self, body: Any) -> dict[str, Any]:
        """L2-normalised embeddings of ``texts`` and/or ``images``, in input order."""
        body = _object(body, ("texts", "images", "truncate"))
        texts = _strings(body, "texts", required=False)
        images = _strings(body, "images", required=False)
        if not texts and not images:
            raise RequestError('Give "texts" and/or "images": lists of strings (images as base64 or data URIs).')
        self._check_count(len(texts) + len(images))
        truncate = _flag(body, "truncate")
        out: dict[str, Any] = {"dim": int(self.clip.model.config.projection_dim)}
        if texts:
            self._check_lengths(texts, truncate)
        with self.texts.admit(len(texts)), self.images.admit(len(images)):
            text_job = self.texts.enqueue(texts)  # the texts run while this thread decodes the images
            image_job = self.images.enqueue(self._pixels(images) if images else [])
            if texts:
                out["text_embeddings"] = _stack(text_job.result()).tolist()
            if images:
                out["image_embeddings"] = _stack(image_job.result()).tolist()
        return out

    def classify(self, body: Any) -> dict[str, Any]:
        """Zero-shot scores of every image against the labels, ranked, one list per image: the pipeline's
        answer, computed from batched embeddings."""
        from clipfast.pipelines import DEFAULT_TEMPLATE, _as_labels, _fill, _ranked, _softmax_columns

        body = _object(body, ("images", "labels", "top_k", "hypothesis_template"))
        images = _strings(body, "images")
        labels = _as_labels(_strings(body, "labels"))
        self._check_count(len(images) + len(labels))
        top_k = body.get("top_k")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise RequestError(f'"top_k" must be a positive integer or null, got {top_k!r}.')
        template = body.get("hypothesis_template", DEFAULT_TEMPLATE)
        if not isinstance(template, str):
            raise RequestError(f'"hypothesis_template" must be a string, got {type(template).__name__}.')
        prompts = [_fill(template, label) for label in labels]
        # as the pipeline: one logit column per distinct token sequence, so equal prompts tie exactly
        unique, inverse = self.clip._distinct_prompts(prompts)
        with self.texts.admit(len(unique)), self.images.admit(len(images)):
            text_job = self.texts.enqueue([prompts[i] for i in unique])
            image_embeds = _stack(self.images.submit(self._pixels(images)))
            text_embeds = _stack(text_job.result())
        scale = self.clip.model.logit_scale.detach().exp().float().cpu()
        logits = (text_embeds @ image_embeds.t() * scale).t()  # (images, distinct prompts)
        return {"results": [_ranked(row, labels, top_k) for row in _softmax_columns(logits, inverse).tolist()]}

    def openai_embeddings(self, body: Any) -> dict[str, Any]:
        """OpenAI's ``POST /v1/embeddings`` for texts: the same request fields and response shape."""
        body = _object(body, ("input", "model", "encoding_format", "dimensions", "user"))
        if "input" not in body:
            raise RequestError('Missing "input": a string or a list of strings.')
        texts = _strings({"input": [body["input"]] if isinstance(body["input"], str) else body["input"]}, "input")
        self._check_count(len(texts))
        encoding = body.get("encoding_format", "float")
        encoding = "float" if encoding is None else encoding
        if encoding not in ("float", "base64"):
            raise RequestError(f'"encoding_format" must be "float" or "base64", got {encoding!r}.')
        dim = int(self.clip.model.config.projection_dim)
        if body.get("dimensions") not in (None, dim):
            raise RequestError(f'This model\'s embeddings have {dim} dimensions; "dimensions" cannot change that '
                               f"(got {body['dimensions']!r}).")
        tokens = self._check_lengths(texts, truncate=False)
        with self.texts.admit(len(texts)):
            vectors = _stack(self.texts.submit(texts))
        data = [{"object": "embedding", "index": i,
                 "embedding": _base64_floats(row) if encoding == "base64" else row.tolist()}
                for i, row in enumerate(vectors)]
        return {"object": "list", "data": data, "model": self.model_name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    def search(self, body: Any) -> list[dict[str, Any]]:
        """The ``k`` indexed items nearest to a ``text``, an ``image``, an ``embedding`` or an indexed ``row``
        ("more like this"): ``[{"id", "score", "row", ...metadata}]``, best first."""
        body = _object(body, ("text", "image", "embedding", "row", "k", "truncate"))
        given = [key for key in ("text", "image", "embedding", "row") if body.get(key) is not None]
        if len(given) != 1:
            raise RequestError('Give one of "text" (a string), "image" (base64 or a data URI), "embedding" (a list '
                               f'of {self.index.dim} numbers) or "row" (an indexed item); got '
                               f"{', '.join(map(repr, given)) or 'none'}.")
        k = body.get("k", 10)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.max_items:
            raise RequestError(f'"k" must be an integer from 1 to {self.max_items}, got {k!r}.')
        vector = self._query_vector(given[0], body)
        return self.index.search_records(vector, k)

    def thumbnail(self, query: dict[str, list[str]]) -> "_Raw":
        """A JPEG thumbnail of an indexed image, named by ``?row=N`` or ``?id=...``; nothing else is read."""
        row = self._named_row(query)
        data = self.index.thumbnail(row)
        if data is None:
            raise RequestError(f"Row {row} has no image file this server can show (a text, a URL, which the page "
                               "links to instead, or a file that is gone).", HTTPStatus.NOT_FOUND)
        return _Raw("image/jpeg", data, {"Cache-Control": "max-age=3600"})

    # -- helpers -----------------------------------------------------------------------------------------------

    def _query_vector(self, kind: str, body: dict[str, Any]) -> "np.ndarray":
        """The search query as one float32 vector."""
        import numpy as np

        if kind == "row":
            return self.index.vector(self._row(body["row"]))
        if kind == "embedding":
            return _embedding(body["embedding"], self.index.dim)
        value = body[kind]
        if not isinstance(value, str):
            raise RequestError(f'"{kind}" must be a string, got {type(value).__name__}.')
        _strings({kind: [value]}, kind)
        batcher = self.texts if kind == "text" else self.images
        with batcher.admit(1):
            if kind == "text":
                self._check_lengths([value], _flag(body, "truncate"))
                rows = self.texts.submit([value])
            else:
                rows = self.images.submit(self._pixels([value]))
        return np.asarray(rows[0], dtype=np.float32)

    def _named_row(self, query: dict[str, list[str]]) -> int:
        """The row a thumbnail request names (``row=N`` or ``id=...``); anything not indexed is a 404."""
        if self.index is None:
            raise RequestError("This server has no index (start it with --index DIR).", HTTPStatus.NOT_FOUND)
        if set(query) - {"row", "id"} or len(query) != 1 or len(next(iter(query.values()))) != 1:
            raise RequestError("Name one indexed image: /thumbnail?row=N or /thumbnail?id=ID.", HTTPStatus.NOT_FOUND)
        if "id" in query:
            row = self.index.row_of(query["id"][0])
            if row is None:
                raise RequestError("No indexed item has that id.", HTTPStatus.NOT_FOUND)
            return row
        text = query["row"][0]
        if not (text.isascii() and text.isdigit()):
            raise RequestError("?row= takes a row number.", HTTPStatus.NOT_FOUND)
        return self._row(int(text), HTTPStatus.NOT_FOUND)

    def _row(self, row: Any, status: int = HTTPStatus.BAD_REQUEST) -> int:
        """A row number as the client sent it; whether the index has that row, the index says."""
        if isinstance(row, bool) or not isinstance(row, int) or row < 0:
            raise RequestError(f'"row" must be an indexed row number (0 or more), got {row!r}.', status)
        return row

    def _check_count(self, count: int) -> None:
        if count > self.max_items:
            raise RequestError(f"A request may carry at most {self.max_items} texts, images and labels in all; "
                               f"this one has {count}. Split it.", HTTPStatus.REQUEST_ENTITY_TOO_LARGE)

    def _check_lengths(self, texts: list[str], truncate: bool) -> int:
        """Refuse texts longer than the context unless ``truncate``; returns the tokens counted (for usage)."""
        limit = int(self.clip.model.config.text_config.max_position_embeddings)
        lengths = [len(ids) for ids in self.clip.tokenizer(texts)["input_ids"]]
        if not truncate:
            for index, length in enumerate(lengths):
                if length > limit:
                    raise RequestError(f"Text {index} is {length} tokens long; this model reads at most {limit} "
                                       '(start and end tokens included). Shorten it, or send "truncate": true.')
        return sum(min(length, limit) for length in lengths)

    def _pixels(self, items: list[str]) -> list[Any]:
        """Decode and preprocess one request's images here, in its own thread (outside the model lock): one
        pixel tensor (3, H, W) per image, as the pipeline's image processor makes them."""
        pixels = self.clip.image_processor(images=self._load_images(items), return_tensors="pt")["pixel_values"]
        return list(pixels)

    def _load_images(self, items: list[str]) -> list[Any]:
        """Decode every image item (base64, data URI, or an allowed URL) on the thread pool; errors name the item."""
        from clipfast.workers import ordered_map as _map

        sources = [self._image_source(index, item) for index, item in enumerate(items)]
        return _map(lambda pair: _load_item(*pair), list(enumerate(sources)))

    def _image_source(self, index: int, item: str) -> Any:
        """What :func:`~clipfast.image_io.load_image` gets for one item: bytes, or a URL when allowed; never a
        path (``load_image`` would read a local file of that name)."""
        from clipfast.image_io import _b64decode

        if item.startswith(("http://", "https://")):
            if not self.allow_urls:
                raise RequestError(f"images[{index}] is a URL, and this server does not fetch URLs (start it with "
                                   "--allow-urls); send the image as base64 instead.")
            return item
        if item.startswith("data:"):
            header, _, data = item.partition(",")
            if ";base64" not in header:
                raise RequestError(f"images[{index}] is a data URI without ';base64'; send base64 image data.")
            item = data
        try:
            return _b64decode(item, f"images[{index}]")
        except ClipfastError as err:
            raise RequestError(f"{err}{_IMAGE_HINT}") from None

    def _embed_texts(self, texts: list[str]) -> "torch.Tensor":
        """One batched model call: float32 CPU rows of the pipeline's text embeddings."""
        return self.clip.text_embeddings(texts).float().cpu()

    def _embed_pixels(self, pixels: list["torch.Tensor"]) -> "torch.Tensor":
        """One batched model call on preprocessed images: float32 CPU rows, L2-normalised as the pipeline's."""
        import torch

        model = self.clip.model
        with torch.inference_mode():
            embeds = model.get_image_features(pixel_values=torch.stack(pixels).to(self.clip.device, model.dtype))
            embeds = embeds / embeds.norm(p=2, dim=-1, keepdim=True)
        return embeds.float().cpu()


def _load_item(index: int, source: Any) -> Any:
    """One decoded image; a failure becomes a RequestError that names ``images[index]``."""
    from clipfast.image_io import load_image

    try:
        return load_image(source)
    except ClipfastError as err:
        hint = "" if isinstance(source, str) else _IMAGE_HINT  # (a URL's own error says enough)
        raise RequestError(f"images[{index}]: {err}{hint}") from None


def _object(body: Any, known: tuple[str, ...]) -> dict[str, Any]:
    """The body as a dict; unknown fields are an error (a typo would otherwise be silently ignored)."""
    if not isinstance(body, dict):
        raise RequestError(f"The request body must be a JSON object, got {type(body).__name__}.")
    unknown = sorted(set(body) - set(known))
    if unknown:
        raise RequestError(f"Unknown field(s) {', '.join(map(repr, unknown))}; this endpoint takes "
                           f"{', '.join(map(repr, known))}.")
    return body


def _strings(body: dict[str, Any], key: str, required: bool = True) -> list[str]:
    """``body[key]`` as a non-empty list of strings (an empty list when absent and not ``required``)."""
    value = body.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list) or not value or not all(isinstance(item, str) for item in value):
        raise RequestError(f'"{key}" must be a non-empty list of strings, got '
                           f"{json.dumps(value)[:80] if value is not None else 'nothing'}.")
    for index, item in enumerate(value):
        try:
            item.encode("utf-8")
        except UnicodeEncodeError as err:  # JSON's \ud800 escapes decode to lone surrogates, which no text holds
            code = ord(item[err.start])
            raise RequestError(f"{key}[{index}] is not valid Unicode (a lone surrogate, \\u{code:x}).") from None
    return value



def _flag(body: dict[str, Any], key: str) -> bool:
    """``body[key]`` as true or false (absent or null: false)."""
    value = body.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RequestError(f'"{key}" must be true or false, got {value!r}.')
    return value


def _base64_floats(row: "torch.Tensor") -> str:
    """One embedding as OpenAI's ``encoding_format="base64"`` sends it: little-endian float32 bytes, base64."""
    return base64.b64encode(row.numpy().astype("<f4").tobytes()).decode("ascii")


def _stack(rows: list["torch.Tensor"]) -> "torch.Tensor":
    """One request's rows, handed back by a batcher, as one (N, E) float32 tensor."""
    import torch

    return torch.stack(rows)


def _embedding(value: Any, dim: int) -> "np.ndarray":
    """A query ``embedding`` as a unit float32 vector of ``dim`` numbers (scores are then cosines)."""
    import numpy as np

    if (not isinstance(value, list) or len(value) != dim
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)):
        raise RequestError(f'"embedding" must be a list of {dim} numbers, got '
                           f"{json.dumps(value)[:80] if isinstance(value, list) else type(value).__name__}.")
    vector = np.asarray(value, dtype=np.float64)
    norm = float(np.linalg.norm(vector))
    if not math.isfinite(norm) or norm == 0:
        raise RequestError('"embedding" must be finite and not all zeros.')
    return (vector / norm).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# HTTP


def make_server(clip: Any, host: str = "127.0.0.1", port: int = 8000, model_name: str = "clip",
                allow_urls: bool = False, max_body: int = DEFAULT_MAX_BODY, max_items: int = DEFAULT_MAX_ITEMS,
                batch_size: int | None = None, max_batch_size: int | None = None,
                max_wait_ms: float = DEFAULT_MAX_WAIT_MS, max_queue: int = DEFAULT_MAX_QUEUE,
                index: Any = None) -> "ClipHTTPServer":
    """An HTTP server (not started: call :func:`serve_until_stopped` or ``serve_forever()``) answering the
    endpoints of the module docstring.

    ``port=0`` picks a free port (``server.server_address`` tells which). ``max_body`` caps request bodies, in
    bytes (413 above it). ``max_batch_size`` (``batch_size`` is its older name; default 32), ``max_wait_ms`` and
    ``max_queue`` set the batching (see :class:`ClipService`); ``index`` is an index folder to search.
    """
    size = max_batch_size if max_batch_size is not None else batch_size or DEFAULT_MAX_BATCH_SIZE
    service = ClipService(clip, model_name=model_name, allow_urls=allow_urls, max_items=max_items,
                          max_batch_size=size, max_wait_ms=max_wait_ms, max_queue=max_queue, index=index)
    routes: dict[tuple[str, str], Callable[[Any], Any]] = {
        ("GET", "/health"): lambda query: {"status": "ok"}, ("GET", "/info"): service.info,
        ("POST", "/embed"): service.embed, ("POST", "/classify"): service.classify,
        ("POST", "/v1/embeddings"): service.openai_embeddings}
    if service.index is not None:
        routes.update({("POST", "/search"): service.search, ("GET", "/thumbnail"): service.thumbnail})
    for path, (name, kind) in WEB_FILES.items():
        routes[("GET", path)] = lambda query, name=name, kind=kind: _Raw(kind, web_file(name),
                                                                         {"Cache-Control": "no-cache"})
    handler = type("ClipHandler", (_Handler,), {"routes": routes, "max_body": max_body})
    server_class = ClipHTTPServer
    if ":" in host:  # an IPv6 address ("::1", "::")
        server_class = type("ClipHTTPServer6", (ClipHTTPServer,), {"address_family": socket.AF_INET6})
    try:
        server = server_class((host, port), handler)
    except BaseException:
        service.close()
        raise
    server.service = service
    return server


class ClipHTTPServer(ThreadingHTTPServer):
    """The threading HTTP server, counting the requests in flight so that it can stop without cutting them."""

    daemon_threads = True
    # the listen backlog: socketserver's 5 drops (or resets) connections when many clients connect at once
    request_queue_size = 1024
    service: ClipService

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stopping = False  # set once shutdown starts: answers then close their connections
        self._in_flight = 0
        self._idle = threading.Condition()

    def begin_request(self) -> None:
        with self._idle:
            self._in_flight += 1

    def end_request(self) -> None:
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that failed outside a request's own handling (a client that hung up mid-answer) goes
        to the log, not to stderr as a traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            logger.info("%s hung up: %s", client_address[0], error)
        else:
            logger.exception("connection from %s failed", client_address[0])

    def drain(self, timeout: float = DEFAULT_DRAIN_SECONDS) -> bool:
        """Stop listening, wait up to ``timeout`` seconds for the requests in flight to be answered, then stop
        the batchers. Returns whether every request was answered. Call after ``serve_forever`` returned."""
        self.stopping = True
        self.server_close()  # new connections are refused from here on
        with self._idle:
            answered = self._idle.wait_for(lambda: self._in_flight == 0, timeout)
        self.service.close(timeout=5)
        return answered


def serve_until_stopped(server: ClipHTTPServer, drain_timeout: float = DEFAULT_DRAIN_SECONDS) -> bool:
    """``server.serve_forever()`` until SIGTERM or Ctrl-C, then stop listening and finish the requests in flight
    (at most ``drain_timeout`` seconds). Returns True when stopped by Ctrl-C, False by SIGTERM."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start()) \
        if main else None
    interrupted = False
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
        if not server.drain(drain_timeout):
            logger.warning("stopped with requests still in flight after %.0f s", drain_timeout)
    return interrupted


class _Handler(BaseHTTPRequestHandler):
    """Routes a request to its endpoint and turns every outcome, protocol errors included, into a JSON answer."""

    routes: dict[tuple[str, str], Callable[[Any], Any]] = {}
    server: ClipHTTPServer
    max_body = DEFAULT_MAX_BODY
    timeout = _READ_TIMEOUT
    protocol_version = "HTTP/1.1"
    server_version = "clipfast"

    def do_GET(self) -> None:  # noqa: N802 (the names http.server dispatches to)
        self._answer("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._answer("POST")

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer("HEAD")

    def do_PUT(self) -> None:  # noqa: N802
        self._answer("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._answer("DELETE")

    def do_PATCH(self) -> None:  # noqa: N802
        self._answer("PATCH")

    def do_OPTIONS(self) -> None:  # noqa: N802
        self._answer("OPTIONS")

    def _answer(self, method: str) -> None:
        path = self._route_path()
        self._body_read, headers = False, {}
        try:
            self._check_framing()
            endpoint = self.routes.get((method, path))
            if endpoint is None:
                allowed = sorted(m for m, p in self.routes if p == path)
                headers = {"Allow": ", ".join(allowed)} if allowed else {}
                raise self._no_route(method, path, allowed)
            body = self._read_json() if method == "POST" else self._query()
            status, payload = HTTPStatus.OK, endpoint(body)
        except RequestError as err:
            status, payload = err.status, {"error": str(err)}
        except QueueFull as err:  # load shedding: the client should come back, not give up
            status, payload = HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(err)}
            headers = {"Retry-After": str(err.retry_after)}
        except ClipfastError as err:  # the library's own checks (bad image, bad label, ...): the client's fault
            status, payload = HTTPStatus.BAD_REQUEST, {"error": str(err)}
        except Exception:  # a bug or an out-of-memory: logged here, one line to the client
            logger.exception("%s %s failed", method, path)
            status, payload = HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "Internal error; see the server log."}
        if not self._body_read and (self.headers.get("Content-Length", "0") != "0"
                                    or "Transfer-Encoding" in self.headers):
            self.close_connection = True  # an unread body must not be taken for the next request on this connection
        if self.server.stopping:
            self.close_connection = True
        self._send(status, payload, headers, with_body=method != "HEAD")

    def parse_request(self) -> bool:
        """Count the request as in flight from its first line on (a stopping server waits for it)."""
        self.server.begin_request()
        self._counted = True
        return super().parse_request()

    def handle_one_request(self) -> None:
        self._counted = False
        try:
            super().handle_one_request()
        finally:
            if self._counted:
                self.server.end_request()

    def _query(self) -> dict[str, list[str]]:
        """The request target's query string, decoded (``?row=3`` -> ``{"row": ["3"]}``)."""
        query = urllib.parse.urlsplit(self.path).query
        try:
            return urllib.parse.parse_qs(query, keep_blank_values=True, max_num_fields=20)
        except ValueError:  # more fields than that
            raise RequestError("Too many query fields.") from None

    def _route_path(self) -> str:
        """The request target's path, without a query, a trailing slash, or (absolute form) scheme and host."""
        target = self.path
        if target.startswith(("http://", "https://")):
            target = urllib.parse.urlsplit(target).path or "/"
        return target.split("?", 1)[0].rstrip("/") or "/"

    def _no_route(self, method: str, path: str, allowed: list[str]) -> RequestError:
        if allowed:
            return RequestError(f"{path} takes {' or '.join(allowed)}, not {method}.", HTTPStatus.METHOD_NOT_ALLOWED)
        listing = ", ".join(f"{m} {p}" for m, p in self.routes if not p.startswith("/static/"))
        return RequestError(f"No endpoint {path}; there are {listing}.", HTTPStatus.NOT_FOUND)

    def _check_framing(self) -> None:
        """Refuse bodies whose length is not one plain Content-Length (chunked, conflicting or malformed lengths
        are how requests get smuggled past proxies); the connection is closed after such a request."""
        if "Transfer-Encoding" in self.headers:
            raise RequestError("Chunked (Transfer-Encoding) bodies are not supported; send the body with a "
                               "Content-Length header.", HTTPStatus.LENGTH_REQUIRED)
        lengths = {value.strip() for value in self.headers.get_all("Content-Length") or []}
        if len(lengths) > 1 or any(not (v.isascii() and v.isdigit()) for v in lengths):
            raise RequestError(f"Bad Content-Length {', '.join(sorted(lengths))}: send one length in bytes.")

    def _read_json(self) -> Any:
        """The request body parsed as JSON, within the size cap."""
        length = self.headers.get("Content-Length")
        if length is None:
            raise RequestError("Send the body with a Content-Length header.", HTTPStatus.LENGTH_REQUIRED)
        size = int(length)
        if size > self.max_body:
            self._drain(size)  # so that the client, still sending, reads this answer instead of a reset
            raise RequestError(f"The body is {size} bytes; this server takes at most {self.max_body}.",
                               HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        try:
            raw = self.rfile.read(size)
        except (TimeoutError, OSError):
            raise RequestError(f"The body did not arrive within {self.timeout:.0f} s (Content-Length {size}).",
                               HTTPStatus.REQUEST_TIMEOUT) from None
        if len(raw) < size:
            raise RequestError(f"The body ended after {len(raw)} of its {size} bytes (Content-Length).")
        self._body_read = True
        try:
            return json.loads(raw)
        except (ValueError, RecursionError) as err:  # bad JSON, bad UTF-8, a 5000-digit number, deep nesting
            raise RequestError(f"The body is not valid JSON: {str(err)[:200]}.") from None

    def _drain(self, size: int) -> None:
        """Read and drop up to ``_DRAIN_LIMIT`` bytes of a refused body (larger ones: the connection just closes)."""
        left = min(size, _DRAIN_LIMIT)
        try:
            while left > 0 and (chunk := self.rfile.read(min(left, 1 << 16))):
                left -= len(chunk)
        except (TimeoutError, OSError):
            pass  # the client stopped sending: nothing more to protect it from

    def handle_expect_100(self) -> bool:
        """Refuse an oversized body before the client sends it (instead of inviting it with 100 Continue)."""
        length = self.headers.get("Content-Length", "")
        if length.isascii() and length.isdigit() and int(length) > self.max_body:
            self.close_connection = True
            self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                       {"error": f"The body is {length} bytes; this server takes at most {self.max_body}."})
            return False
        return super().handle_expect_100()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (a malformed request line, an unsupported protocol, oversized headers) as
        JSON, like every other answer."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # not parsed yet: answer with a status line all the same
            self.request_version = "HTTP/1.1"
        text = message or explain or HTTPStatus(code).phrase
        self._send(code, {"error": f"{text}."}, with_body=getattr(self, "command", None) != "HEAD")

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None,
              with_body: bool = True) -> None:
        if isinstance(payload, _Raw):
            kind, data, headers = payload.content_type, payload.data, {**payload.headers, **(headers or {})}
        else:
            # default=str: an index's metadata may hold dates or decimals, which JSON has no type for
            kind, data = "application/json", json.dumps(payload, default=str).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if with_body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        logger.info("%s - %s", self.address_string(), format % args)
