"""A loopback proxy in front of fake-gcs-server that accepts the XML API's object PUT.

Real GCS stores an object on ``PUT /<bucket>/<object>`` (the XML API, which the Rust ``object_store``
crate under obstore writes with); fake-gcs-server answers that request "invalid uploadType" and stores
objects only through the JSON API's media upload. The proxy turns each such PUT into that upload and
answers with the headers a real PUT carries (``ETag``, ``x-goog-generation``); every other request
passes through unchanged, so reads, listings and errors are the emulator's own.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

_PASSED_HEADERS = ("content-type", "range", "if-match", "if-none-match", "authorization")
_JSON_API_ROOTS = ("upload", "storage", "download", "batch", "_internal")


class GcsPutProxy:
    """Listens on 127.0.0.1:<port> and forwards to ``upstream`` (the emulator's base URL)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.upstream))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="gcs-put-proxy", daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def xml_put_target(path: str, query: str) -> tuple[str, str] | None:
    """(bucket, object name) when ``path`` is an XML API object PUT the emulator lacks, else None."""
    parts = urllib.parse.urlsplit(path)
    segments = parts.path.lstrip("/").split("/", 1)
    if len(segments) != 2 or not segments[1] or segments[0] in _JSON_API_ROOTS:
        return None
    if "uploadType" in urllib.parse.parse_qs(query):
        return None
    return urllib.parse.unquote(segments[0]), urllib.parse.unquote(segments[1])


def _handler(upstream: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet, as the emulator runs
            pass

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _forward(self) -> None:
            body = self._body()
            split = urllib.parse.urlsplit(self.path)
            target = xml_put_target(self.path, split.query) if self.command == "PUT" else None
            if target is not None:
                self._upload(*target, body)
                return
            request = urllib.request.Request(
                upstream + self.path,
                method=self.command,
                data=body if body or self.command in ("PUT", "POST", "PATCH") else None,
                headers={k: v for k, v in self.headers.items() if k.lower() in _PASSED_HEADERS},
            )
            self._relay(request)

        def _upload(self, bucket: str, name: str, body: bytes) -> None:
            query = urllib.parse.urlencode({"uploadType": "media", "name": name})
            request = urllib.request.Request(
                f"{upstream}/upload/storage/v1/b/{urllib.parse.quote(bucket)}/o?{query}",
                method="POST",
                data=body,
                headers={"Content-Type": self.headers.get("Content-Type") or "application/octet-stream"},
            )
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    stored = json.loads(response.read())
            except urllib.error.HTTPError as error:
                self._answer(error.code, dict(error.headers.items()), error.read())
                return
            headers = {"ETag": f'"{stored.get("etag", "")}"', "x-goog-generation": str(stored["generation"])}
            self._answer(200, headers, b"")

        def _relay(self, request: urllib.request.Request) -> None:
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    self._answer(response.status, dict(response.headers.items()), response.read())
            except urllib.error.HTTPError as error:
                self._answer(error.code, dict(error.headers.items()), error.read())

        def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
            self.send_response(status)
            for key, value in headers.items():
                if key.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                    self.send_header(key, value)
            length = headers.get("Content-Length") if self.command == "HEAD" else None
            self.send_header("Content-Length", length or str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = _forward

    return Handler
