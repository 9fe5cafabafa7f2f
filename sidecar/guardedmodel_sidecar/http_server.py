"""The v2 HTTP/REST adapter: a small HTTP/1.1 server on asyncio protocols.

Why not aiohttp's server: measured on this class of machine, HTTP plumbing is ~80 % of a Python
proxy's CPU per request; a v2 endpoint needs only keep-alive, Content-Length (or chunked) bodies,
``Expect: 100-continue`` and pipelining, so this server parses exactly that and hands the body to the
data plane without copying. Infer requests go through the guard pipeline; health answers from the
sidecar's own view of Triton; other v2 endpoints (metadata, config, statistics, repository index)
are passed through to Triton unchanged, except model load/unload, which the sidecar owns.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Callable

from guardedmodel_sidecar.errors import Forbidden, GuardError, InvalidRequest, PayloadTooLarge
from guardedmodel_sidecar.pipeline import Pipeline
from guardedmodel_sidecar.protocol.http_codec import (
    HEADER_LENGTH,
    decode_infer_request,
    encode_error,
    encode_infer_response,
)
from guardedmodel_sidecar.upstream import TritonHttp

log = logging.getLogger(__name__)

_REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Payload Too Large",
    422: "Unprocessable Entity",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}
_HEADER_LENGTH_LOWER = HEADER_LENGTH.lower()
_JSON = "application/json"
_BINARY = "application/octet-stream"


class _Request:
    __slots__ = ("body", "headers", "keep_alive", "method", "path")

    def __init__(
        self, method: str, path: str, headers: dict[str, str], body: memoryview, keep_alive: bool
    ) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive


class V2HttpServer:
    """Routes v2 requests; one instance serves every connection."""

    def __init__(
        self,
        pipeline: Pipeline,
        triton: TritonHttp,
        *,
        max_body: int,
        is_ready: Callable[[], bool],
    ) -> None:
        self.pipeline = pipeline
        self.triton = triton
        self.max_body = max_body
        self.is_ready = is_ready
        self.model = pipeline.model

    def protocol(self) -> _HttpConnection:
        return _HttpConnection(self)

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        return await loop.create_server(
            self.protocol, host, port, reuse_address=True, reuse_port=reuse_port or None, backlog=1024
        )

    async def handle(self, request: _Request) -> tuple[int, str, list[bytes | memoryview], dict[str, str]]:
        """(status, content type, body chunks, extra headers)."""
        path = request.path.split("?", 1)[0]
        try:
            if request.method == "POST" and path.endswith("/infer"):
                return await self._infer(request, path)
            if path == "/v2/health/live":
                return 200, _JSON, [], {}
            if path == "/v2/health/ready":
                if self.is_ready():
                    return 200, _JSON, [], {}
                return (
                    503,
                    _JSON,
                    [encode_error("not ready: Triton or a routed model version is not ready")],
                    {},
                )
            if path.startswith("/v2/repository/models/") and request.method == "POST":
                raise Forbidden(
                    "model loading is managed by the guard sidecar from the GuardedModel routing; "
                    "change the GuardedModel instead of loading or unloading through this endpoint"
                )
            return await self._passthrough(request, path)
        except GuardError as exc:
            return exc.http_status, _JSON, [encode_error(exc.message)], exc.headers

    async def _infer(
        self, request: _Request, path: str
    ) -> tuple[int, str, list[bytes | memoryview], dict[str, str]]:
        parts = path.split("/")
        # /v2/models/<m>/infer or /v2/models/<m>/versions/<v>/infer
        if len(parts) == 5 and parts[2] == "models":
            model, version = parts[3], ""
        elif len(parts) == 7 and parts[2] == "models" and parts[4] == "versions":
            model, version = parts[3], parts[5]
        else:
            return 404, _JSON, [encode_error(f"no v2 endpoint at {path}")], {}
        header_length = request.headers.get(_HEADER_LENGTH_LOWER)
        try:
            try:
                hlen = int(header_length) if header_length is not None else None
            except ValueError:
                raise InvalidRequest(f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
            infer_request = decode_infer_request(request.body, hlen, model, version)
        except GuardError as exc:
            self.pipeline.record_undecodable(model, version, exc, request.body)
            raise
        result = await self.pipeline.infer(infer_request)
        chunks, json_length = encode_infer_response(result.response, infer_request, result.parameters)
        headers = dict(result.headers)
        if json_length is not None:
            headers[HEADER_LENGTH] = str(json_length)
            return 200, _BINARY, chunks, headers
        return 200, _JSON, chunks, headers

    async def _passthrough(
        self, request: _Request, path: str
    ) -> tuple[int, str, list[bytes | memoryview], dict[str, str]]:
        if not path.startswith("/v2"):
            return 404, _JSON, [encode_error(f"no v2 endpoint at {path}")], {}
        extra = ""
        content_type = request.headers.get("content-type")
        if content_type:
            extra = f"Content-Type: {content_type}\r\n"
        body = [request.body] if len(request.body) else []
        response = await self.triton.request(request.method, request.path, body, extra)
        return response.status, response.headers.get("content-type", _JSON), [response.body], {}


class _HttpConnection(asyncio.Protocol):
    __slots__ = (
        "_buf",
        "_busy",
        "_closing",
        "_continue_sent",
        "_loop",
        "_paused",
        "_server",
        "_transport",
    )

    def __init__(self, server: V2HttpServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._busy = False
        self._closing = False
        self._continue_sent = False
        # The client is not reading its responses: take no new request until it catches up.
        self._paused = False
        # Cached: asyncio.get_running_loop() makes a getpid() system call on every use (Python 3.11).
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._transport = None

    def pause_writing(self) -> None:
        # The transport's buffer is above its high-water mark. Stop reading too, so a client that
        # pipelines requests without reading the answers cannot make the sidecar buffer without bound.
        self._paused = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        if self._transport is None:
            return
        self._transport.resume_reading()
        if self._buf and not self._busy and not self._closing:
            self._next()

    def data_received(self, data: bytes) -> None:
        if self._buf:
            self._buf += data
        else:
            self._buf = bytearray(data)
        if not self._busy and not self._paused:
            self._next()

    def _next(self) -> None:
        """Parse one complete request off the buffer and dispatch it (requests are answered in order)."""
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > 65536:
                self._fail(431, "request headers are larger than 64 KiB")
            return
        try:
            head = bytes(buf[:end]).decode("latin-1")
            lines = head.split("\r\n")
            method, target, version = lines[0].split(" ", 2)
        except ValueError:
            self._fail(400, "malformed HTTP request line")
            return
        headers: dict[str, str] = {}
        for line in lines[1:]:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        start = end + 4
        chunked = headers.get("transfer-encoding", "").lower() == "chunked"
        if chunked:
            try:
                decoded = _dechunk(buf, start)
            except ValueError:
                self._fail(400, "malformed chunked body (a chunk size is not hexadecimal)")
                return
            if decoded is None:
                self._maybe_continue(headers)
                return
            body_bytes, consumed = decoded
            body = memoryview(body_bytes)
            rest = buf[consumed:]
        else:
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                self._fail(400, "Content-Length is not a number")
                return
            if length > self._server.max_body:
                self._fail(
                    413, f"request body of {length} bytes is above the limit of {self._server.max_body}"
                )
                return
            if len(buf) - start < length:
                self._maybe_continue(headers)
                return
            if len(buf) == start + length:
                body = memoryview(buf)[start:]
                rest = bytearray()
            else:
                body = memoryview(bytes(buf[start : start + length]))
                rest = buf[start + length :]
        self._buf = rest
        self._continue_sent = False
        connection = headers.get("connection", "").lower()
        keep_alive = connection != "close" and (version == "HTTP/1.1" or connection == "keep-alive")
        encoding = headers.get("content-encoding")
        if encoding and len(body):
            try:
                body = memoryview(_decompress(bytes(body), encoding))
            except (zlib.error, ValueError) as exc:
                self._fail(400, f"cannot decode a {encoding} request body: {exc}")
                return
            if len(body) > self._server.max_body:
                self._fail(413, f"decompressed body is above the limit of {self._server.max_body} bytes")
                return
        self._busy = True
        request = _Request(method, target, headers, body, keep_alive)
        self._loop.create_task(self._run(request))

    def _maybe_continue(self, headers: dict[str, str]) -> None:
        if not self._continue_sent and headers.get("expect", "").lower() == "100-continue":
            self._continue_sent = True
            if self._transport is not None:
                self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    async def _run(self, request: _Request) -> None:
        try:
            status, content_type, chunks, extra = await self._server.handle(request)
        except PayloadTooLarge as exc:
            status, content_type, chunks, extra = exc.http_status, _JSON, [encode_error(exc.message)], {}
        except Exception as exc:
            log.exception("unhandled error serving %s %s", request.method, request.path)
            status, content_type, chunks, extra = 500, _JSON, [encode_error(f"internal error: {exc}")], {}
        self._respond(status, content_type, chunks, extra, request.keep_alive)
        self._busy = False
        if not request.keep_alive:
            self._close()
        elif self._buf and not self._closing and not self._paused:
            self._next()

    def _respond(
        self,
        status: int,
        content_type: str,
        chunks: list[bytes | memoryview],
        extra: dict[str, str],
        keep_alive: bool,
    ) -> None:
        transport = self._transport
        if transport is None:
            return
        length = 0
        for chunk in chunks:
            length += len(chunk)
        head = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {length}\r\n"
        ]
        for key, value in extra.items():
            head.append(f"{key}: {value}\r\n")
        if not keep_alive:
            head.append("Connection: close\r\n")
        head.append("\r\n")
        transport.writelines([("".join(head)).encode("latin-1"), *chunks])

    def _fail(self, status: int, message: str) -> None:
        self._respond(status, _JSON, [encode_error(message)], {}, False)
        self._close()

    def _close(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.close()


def _dechunk(buf: bytearray, start: int) -> tuple[bytes, int] | None:
    out = bytearray()
    pos = start
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(bytes(buf[pos:line_end]).split(b";")[0] or b"0", 16)
        pos = line_end + 2
        if size == 0:
            end = buf.find(b"\r\n", pos)
            if end < 0:
                return None
            return bytes(out), end + 2
        if len(buf) < pos + size + 2:
            return None
        out += buf[pos : pos + size]
        pos += size + 2


def _decompress(body: bytes, encoding: str) -> bytes:
    encoding = encoding.lower()
    if encoding == "gzip":
        return zlib.decompress(body, 16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "identity":
        return body
    raise ValueError(f"unsupported Content-Encoding {encoding!r} (use gzip, deflate or identity)")
