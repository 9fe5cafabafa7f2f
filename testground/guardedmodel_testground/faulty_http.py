"""An HTTP server on loopback that answers GETs with a chosen fault, or passes them to a real upstream.

Put in front of a real Prometheus it plays the ways an HTTP API fails while the client's code and
the upstream stay real: a 500, a 503 with Prometheus's own error body, a hang, a body that is not
JSON, JSON that is not the answer's shape, an empty answer; `only_matching` limits the fault to the
requests whose query string contains a text (so some queries of a batch fail and the rest pass).
The mode can be changed while clients are connected; a hung request is let go by `release` or `stop`.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

PASS = "pass"
ERROR_500 = "error500"
UNAVAILABLE_503 = "unavailable503"
HANG = "hang"
NOT_JSON = "notJson"
WRONG_SHAPE = "wrongShape"
NOT_A_NUMBER = "notANumber"
EMPTY = "empty"
MODES = (PASS, ERROR_500, UNAVAILABLE_503, HANG, NOT_JSON, WRONG_SHAPE, NOT_A_NUMBER, EMPTY)

_EMPTY_VECTOR = {"status": "success", "data": {"resultType": "vector", "result": []}}
# What each fault answers: (HTTP status, body, content type).
_ANSWERS: dict[str, tuple[int, bytes, str]] = {
    ERROR_500: (500, b"internal server error\n", "text/plain"),
    UNAVAILABLE_503: (
        503,
        json.dumps({"status": "error", "errorType": "unavailable", "error": "TSDB not ready"}).encode(),
        "application/json",
    ),
    NOT_JSON: (200, b"<html><body>upstream says hello</body></html>", "text/html"),
    WRONG_SHAPE: (
        200,
        json.dumps({"status": "success", "data": {"resultType": "vector"}}).encode(),
        "application/json",
    ),
    NOT_A_NUMBER: (
        200,
        json.dumps(
            {
                "status": "success",
                "data": {
                    "resultType": "vector",
                    "result": [{"metric": {"version": "2"}, "value": [0, "many"]}],
                },
            }
        ).encode(),
        "application/json",
    ),
    EMPTY: (200, json.dumps(_EMPTY_VECTOR).encode(), "application/json"),
}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # a client opens a connection per query at once (the default is 5)


class FaultyHTTP:
    """`url` answers per `mode`; PASS forwards to `upstream` (without one: an empty vector)."""

    def __init__(self, upstream: str | None = None, *, hang_limit_s: float = 120.0) -> None:
        self.upstream = upstream.rstrip("/") if upstream else None
        self.hang_limit_s = hang_limit_s
        self.mode = PASS
        self.only_matching: str | None = None
        self.requests = 0  # every request seen, faulty or passed
        self.faults = 0  # requests answered (or hung) with the fault
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def set(self, mode: str, only_matching: str | None = None) -> None:
        """From now on answer `mode` (to the queries containing `only_matching`, when given)."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {', '.join(MODES)}")
        with self._lock:
            self.release()
            self._released = threading.Event()
            self.mode, self.only_matching = mode, only_matching

    def release(self) -> None:
        """Let the requests hanging now go (each gets a 504)."""
        self._released.set()

    def start(self) -> Self:
        faulty = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                faulty._answer(self)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = _Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.release()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.requests += 1
            mode, released = self.mode, self._released
            query = urllib.parse.unquote_plus(urllib.parse.urlsplit(handler.path).query)
            if mode != PASS and self.only_matching is not None and self.only_matching not in query:
                mode = PASS
            if mode != PASS:
                self.faults += 1
        if mode == HANG:
            released.wait(self.hang_limit_s)
            status, body, content_type = 504, b"released\n", "text/plain"
        elif mode == PASS:
            status, body, content_type = self._forward(handler.path)
        else:
            status, body, content_type = _ANSWERS[mode]
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", content_type)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
        except OSError:
            pass  # the client gave up waiting (its timeout): nothing to answer

    def _forward(self, path: str) -> tuple[int, bytes, str]:
        if self.upstream is None:
            return 200, json.dumps(_EMPTY_VECTOR).encode(), "application/json"
        try:
            with urllib.request.urlopen(self.upstream + path, timeout=30) as response:
                return response.status, response.read(), response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as error:
            return error.code, error.read(), error.headers.get("Content-Type", "")
        except OSError as error:  # the upstream is down: what a reverse proxy says then
            return 502, f"bad gateway: {error}\n".encode(), "text/plain"
