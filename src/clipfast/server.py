"""``clipfast serve``: an HTTP JSON API for embeddings and zero-shot classification, over the pipeline.

Standard library only (``http.server``): one thread per connection, images decoded outside the model lock, one
model call at a time (each already uses every core). :class:`ClipService` holds the logic on plain dicts, so it
runs and is tested without sockets; :func:`make_server` puts HTTP around it.

Endpoints (JSON in, JSON out; errors are ``{"error": "..."}`` with a 4xx status):

- ``GET /health``: ``{"status": "ok"}``.
- ``GET /info``: the model, its embedding size, image size, context length, device and dtype.
- ``POST /embed``: ``{"texts": [...], "images": [...], "truncate": false}`` -> ``{"text_embeddings": [[...]],
  "image_embeddings": [[...]], "dim": E}``; L2-normalised, in input order; either list may be left out.
- ``POST /classify``: ``{"images": [...], "labels": [...], "top_k": null, "hypothesis_template": "..."}`` ->
  ``{"results": [[{"label", "score"}, ...], ...]}``, one ranked list per image, as the pipeline returns.
- ``POST /v1/embeddings``: OpenAI's embeddings request for texts (``input``: a string or a list of strings,
  ``encoding_format``: ``"float"`` or ``"base64"``) and its response shape.

Images are base64 strings or ``data:image/...;base64,`` URIs. http(s) URLs are fetched only when the server was
started with ``allow_urls=True`` (a server that fetches any URL a client names can be made to probe its own
network), and local file paths are never read. A text longer than the model's context is an error unless the
request says ``"truncate": true``.

Example:
    >>> server = make_server(clipfast.pipeline(model="openai/clip-vit-base-patch32"), port=8000)  # doctest: +SKIP
    >>> server.serve_forever()                                                                      # doctest: +SKIP
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import threading
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Callable

from clipfast.errors import ClipfastError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 64 * 1024 * 1024  # base64 images are ~4/3 of their files
DEFAULT_MAX_ITEMS = 1024
_READ_TIMEOUT = 30.0  # seconds a client may take to send its request: a stalled client frees its thread
_IMAGE_HINT = " Images are base64 strings or data:image/...;base64, URIs; this server does not read file paths."
_DRAIN_LIMIT = 64 * 1024 * 1024  # bytes of a refused body read and dropped, so that its sender sees the answer


class RequestError(ClipfastError, ValueError):
    """A request the server refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = int(status)


class ClipService:
    """The API on plain dicts: each public method takes a parsed JSON body and returns a JSON-ready dict.

    Args:
        clip: a :class:`~clipfast.pipelines.ZeroShotImageClassificationPipeline` (model, tokenizer, processor).
        model_name: what ``/info`` and ``/v1/embeddings`` call the model.
        allow_urls: fetch http(s) image URLs (off by default, see the module docstring).
        max_items: most texts plus images one request may carry.
        batch_size: texts or images per model call.
    """

    def __init__(self, clip: Any, model_name: str = "clip", allow_urls: bool = False,
                 max_items: int = DEFAULT_MAX_ITEMS, batch_size: int = 32) -> None:
        self.clip = clip
        self.model_name = model_name
        self.allow_urls = allow_urls
        self.max_items = max_items
        self.batch_size = max(1, batch_size)
        self._lock = threading.Lock()  # one model call at a time; decoding runs outside it

    # -- endpoints ---------------------------------------------------------------------------------------------

    def info(self, body: Any = None) -> dict[str, Any]:
        """The model's name, embedding size, image size, context length, device and dtype."""
        config = self.clip.model.config
        return {"model": self.model_name, "dim": int(config.projection_dim),
                "image_size": int(config.vision_config.image_size),
                "context_length": int(config.text_config.max_position_embeddings),
                "device": str(self.clip.device), "dtype": str(self.clip.model.dtype).replace("torch.", "")}

    def embed(self, body: Any) -> dict[str, Any]:
        """L2-normalised embeddings of ``texts`` and/or ``images``, in input order."""
        body = _object(body, ("texts", "images", "truncate"))
        texts = _strings(body, "texts", required=False)
        images = _strings(body, "images", required=False)
        if not texts and not images:
            raise RequestError('Give "texts" and/or "images": lists of strings (images as base64 or data URIs).')
        self._check_count(len(texts) + len(images))
        truncate = _flag(body, "truncate")
        loaded = self._load_images(images) if images else []
        out: dict[str, Any] = {"dim": int(self.clip.model.config.projection_dim)}
        if texts:
            self._check_lengths(texts, truncate)
            out["text_embeddings"] = self._batched(self.clip.text_embeddings, texts)
        if images:
            out["image_embeddings"] = self._batched(self.clip.image_embeddings, loaded)
        return out

    def classify(self, body: Any) -> dict[str, Any]:
        """Zero-shot scores of every image against the labels, ranked, one list per image."""
        from clipfast.pipelines import DEFAULT_TEMPLATE, _as_labels

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
        loaded = self._load_images(images)
        with self._lock:
            results = self.clip.classify(loaded, labels, hypothesis_template=template, top_k=top_k,
                                         batch_size=self.batch_size)
        return {"results": results}

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
        vectors = self._batched(self.clip.text_embeddings, texts, as_list=False)
        data = [{"object": "embedding", "index": i,
                 "embedding": _base64_floats(row) if encoding == "base64" else row.tolist()}
                for i, row in enumerate(vectors)]
        return {"object": "list", "data": data, "model": self.model_name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    # -- helpers -----------------------------------------------------------------------------------------------

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

    def _batched(self, encode: Callable[[list[Any]], Any], items: list[Any], as_list: bool = True) -> Any:
        """``encode`` over ``items`` in batches, under the model lock; float32 rows (lists unless ``as_list``)."""
        import torch

        with self._lock:
            parts = [encode(items[i:i + self.batch_size]).float().cpu() for i in range(0, len(items),
                                                                                        self.batch_size)]
        vectors = torch.cat(parts)
        return vectors.tolist() if as_list else vectors


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


# ---------------------------------------------------------------------------------------------------------------
# HTTP


def make_server(clip: Any, host: str = "127.0.0.1", port: int = 8000, model_name: str = "clip",
                allow_urls: bool = False, max_body: int = DEFAULT_MAX_BODY, max_items: int = DEFAULT_MAX_ITEMS,
                batch_size: int = 32) -> ThreadingHTTPServer:
    """An HTTP server (not started: call ``serve_forever()``) answering the endpoints of the module docstring.

    ``port=0`` picks a free port (``server.server_address`` tells which). ``max_body`` caps request bodies, in
    bytes (413 above it).
    """
    service = ClipService(clip, model_name=model_name, allow_urls=allow_urls, max_items=max_items,
                          batch_size=batch_size)
    routes = {("GET", "/health"): lambda body: {"status": "ok"}, ("GET", "/info"): service.info,
              ("POST", "/embed"): service.embed, ("POST", "/classify"): service.classify,
              ("POST", "/v1/embeddings"): service.openai_embeddings}
    handler = type("ClipHandler", (_Handler,), {"routes": routes, "max_body": max_body})
    server_class = ThreadingHTTPServer
    if ":" in host:  # an IPv6 address ("::1", "::")
        server_class = type("ThreadingHTTPServer6", (ThreadingHTTPServer,), {"address_family": socket.AF_INET6})
    server = server_class((host, port), handler)
    server.daemon_threads = True
    server.service = service  # type: ignore[attr-defined]
    return server


class _Handler(BaseHTTPRequestHandler):
    """Routes a request to its endpoint and turns every outcome, protocol errors included, into a JSON answer."""

    routes: dict[tuple[str, str], Callable[[Any], dict[str, Any]]] = {}
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
            body = self._read_json() if method == "POST" else None
            status, payload = HTTPStatus.OK, endpoint(body)
        except RequestError as err:
            status, payload = err.status, {"error": str(err)}
        except ClipfastError as err:  # the library's own checks (bad image, bad label, ...): the client's fault
            status, payload = HTTPStatus.BAD_REQUEST, {"error": str(err)}
        except Exception:  # a bug or an out-of-memory: logged here, one line to the client
            logger.exception("%s %s failed", method, path)
            status, payload = HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "Internal error; see the server log."}
        if not self._body_read and (self.headers.get("Content-Length", "0") != "0"
                                    or "Transfer-Encoding" in self.headers):
            self.close_connection = True  # an unread body must not be taken for the next request on this connection
        self._send(status, payload, headers, with_body=method != "HEAD")

    def _route_path(self) -> str:
        """The request target's path, without a query, a trailing slash, or (absolute form) scheme and host."""
        target = self.path
        if target.startswith(("http://", "https://")):
            target = urllib.parse.urlsplit(target).path or "/"
        return target.split("?", 1)[0].rstrip("/") or "/"

    def _no_route(self, method: str, path: str, allowed: list[str]) -> RequestError:
        if allowed:
            return RequestError(f"{path} takes {' or '.join(allowed)}, not {method}.", HTTPStatus.METHOD_NOT_ALLOWED)
        listing = ", ".join(f"{m} {p}" for m, p in self.routes)
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

    def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None,
              with_body: bool = True) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
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
