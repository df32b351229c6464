"""A tiny HTTP server on 127.0.0.1 for tests that fetch URLs (never any other address)."""

from __future__ import annotations

import contextlib
import http.server
import threading
from typing import Callable, Iterator, Union

# a route answers with (status, content type, body), or writes the response itself
Route = Union[tuple[int, str, bytes], Callable[[http.server.BaseHTTPRequestHandler], None]]


@contextlib.contextmanager
def serve(routes: dict[str, Route]) -> Iterator[str]:
    """Serve ``routes`` (unknown paths get a 404) and yield the base URL; stops the server on exit."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:
            route = routes.get(self.path, (404, "text/plain", b"missing"))
            if callable(route):
                route(self)
                return
            status, kind, body = route
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
