"""A local stand-in for the Hugging Face Hub: serves folders as repos over loopback HTTP.

It answers the two requests ``huggingface_hub.hf_hub_download`` makes (HEAD for metadata, GET for the bytes)
with the headers the real Hub sends, and the Hub's error codes for unknown repos and files. Point a process at
it with ``HF_ENDPOINT=<url>`` (read by huggingface_hub at import time, so use it in a subprocess).
"""

from __future__ import annotations

import hashlib
import http.server
import threading
import urllib.parse
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """``with FakeHub({"org/name": folder}) as url: ...`` serves each folder as a model repo."""

    def __init__(self, repos: dict[str, Path], revisions: tuple[str, ...] = ("main", COMMIT)) -> None:
        self.repos = {k: Path(v) for k, v in repos.items()}
        self.revisions = revisions
        self.requests: list[str] = []
        self.authorizations: list[str | None] = []  # the Authorization header of each request
        self._server: http.server.ThreadingHTTPServer | None = None

    def __enter__(self) -> str:
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_HEAD(self) -> None:
                hub._answer(self, send_body=False)

            def do_GET(self) -> None:
                hub._answer(self, send_body=True)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __exit__(self, *exc) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    def _answer(self, handler: http.server.BaseHTTPRequestHandler, send_body: bool) -> None:
        path = urllib.parse.unquote(urllib.parse.urlparse(handler.path).path)
        self.requests.append(f"{handler.command} {path}")
        self.authorizations.append(handler.headers.get("Authorization"))
        parts = path.strip("/").split("/")
        if "resolve" not in parts:
            return self._error(handler, 404, "RepoNotFound")
        i = parts.index("resolve")
        repo, filename = "/".join(parts[:i]), "/".join(parts[i + 2:])
        folder = self.repos.get(repo)
        if folder is None:
            return self._error(handler, 401, "RepoNotFound")
        if parts[i + 1] not in self.revisions:
            return self._error(handler, 404, "RevisionNotFound")
        file = folder / filename
        if not file.is_file():
            return self._error(handler, 404, "EntryNotFound")
        data = file.read_bytes()
        handler.send_response(200)
        handler.send_header("X-Repo-Commit", COMMIT)
        handler.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if send_body:
            handler.wfile.write(data)

    @staticmethod
    def _error(handler: http.server.BaseHTTPRequestHandler, status: int, code: str) -> None:
        handler.send_response(status)
        handler.send_header("X-Error-Code", code)
        handler.send_header("Content-Length", "0")
        handler.end_headers()
