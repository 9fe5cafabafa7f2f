"""The v2 HTTP/REST adapter: an HTTP/1.1 server on asyncio protocols, framed by httptools.

Why httptools: request framing is where smuggling, hangs and memory blow-ups live, so it is done by
llhttp (through httptools), the parser behind Node.js and uvicorn, with years of CVE fixes behind it,
kept at its strict defaults (no lenient flags). It refuses negative, duplicate and overflowing
Content-Length, Content-Length beside Transfer-Encoding, ``chunked`` anywhere but last, obs-fold, bare
LF or CR, bad chunk sizes and control characters. Where it is lenient this module checks itself: a
Transfer-Encoding other than ``chunked`` alone or in HTTP/1.0, request lines of other HTTP versions,
CONNECT and protocol upgrades, repeated headers the server reads.

Why not a framework around it (aiohttp, uvicorn): measured on this class of machine, HTTP plumbing is
~80 % of a Python proxy's CPU per request. So this module keeps only what sits around the parser: one
asyncio protocol per connection, the zero-copy path from socket to codec (a body that arrives in one
piece is handed on as is, a larger one is gathered in one buffer), in-order answers to pipelined
requests, ``Expect: 100-continue``, keep-alive and HTTP/1.0.

Every bound is checked before the work it bounds (see ``limits.py``): header bytes and fields while the
head is parsed, Content-Length before any body byte is read, chunked and inflated sizes as they grow,
header/body/idle time with one timer per connection, requests parsed ahead per connection, open
connections per server. A request refused for its framing or size gets a 4xx with a v2 error body and
the connection closes; a 500 means a bug in the sidecar, and never echoes a caller's bytes.

What is served is an allow-list (``endpoints.py``): infer requests go through the guard pipeline,
health answers from the sidecar's own view, a few read-only endpoints are forwarded to Triton as
requests rebuilt from their validated path, and everything else is refused (403, 404 or 405; the
connection stays open).
"""

from __future__ import annotations

import asyncio
import collections
import http
import logging
import traceback
import zlib
from collections.abc import Callable

import httptools
import orjson

from guardedmodel_sidecar.endpoints import FORWARD, INFER, LIVE, READY, Route, route
from guardedmodel_sidecar.errors import GuardError, InvalidRequest, client_text
from guardedmodel_sidecar.limits import Limits
from guardedmodel_sidecar.pipeline import Pipeline
from guardedmodel_sidecar.protocol.http_codec import (
    HEADER_LENGTH,
    decode_infer_request,
    encode_error,
    encode_infer_response,
    parse_header_length,
)
from guardedmodel_sidecar.upstream import TritonHttp

log = logging.getLogger(__name__)

_JSON = "application/json"
_BINARY = "application/octet-stream"
_EMPTY = memoryview(b"")
_METHODS = {b"GET": "GET", b"POST": "POST", b"HEAD": "HEAD"}
# The request headers the server reads (lower-case); all others are counted and dropped.
_CONTENT_LENGTH, _TRANSFER_ENCODING, _CONTENT_ENCODING, _HEADER_LENGTH, _EXPECT = range(5)
_WATCHED = {
    b"content-length": _CONTENT_LENGTH,
    b"transfer-encoding": _TRANSFER_ENCODING,
    b"content-encoding": _CONTENT_ENCODING,
    HEADER_LENGTH.lower().encode(): _HEADER_LENGTH,
    b"expect": _EXPECT,
}
_WATCHED_NAMES = ("Content-Length", "Transfer-Encoding", "Content-Encoding", HEADER_LENGTH, "Expect")
_ENCODINGS = {b"gzip": "gzip", b"x-gzip": "gzip", b"deflate": "deflate", b"identity": ""}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# Per framing byte allowance of a chunked body beyond its data (size line, CRLFs, short extensions).
_CHUNK_OVERHEAD = 64

Reply = tuple[int, str, list[bytes | memoryview], dict[str, str] | None]


class _Reject(Exception):
    """Raised inside a parser callback: the request is refused with ``status`` and the connection closes."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Request:
    __slots__ = ("body", "head_only", "header_length", "http10", "keep_alive", "method", "route", "target")

    def __init__(
        self, method: str, target: str, keep_alive: bool, http10: bool, header_length: bytes | None
    ) -> None:
        self.method = method
        self.target = target
        self.keep_alive = keep_alive
        self.http10 = http10
        self.head_only = method == "HEAD"
        self.header_length = header_length
        self.body: memoryview = _EMPTY
        self.route: Route | None = None


class _Failure:
    """A terminal answer, queued behind the requests before it; the connection closes after it."""

    __slots__ = ("message", "status")

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message


class V2HttpServer:
    """Routes v2 requests; one instance serves every connection of one listening socket."""

    def __init__(
        self, pipeline: Pipeline, triton: TritonHttp, *, limits: Limits, is_ready: Callable[[], bool]
    ) -> None:
        self.pipeline = pipeline
        self.triton = triton
        self.limits = limits
        self.is_ready = is_ready
        self.connections = 0

    def protocol(self) -> _HttpConnection:
        return _HttpConnection(self)

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        return await loop.create_server(
            self.protocol, host, port, reuse_address=True, reuse_port=reuse_port or None, backlog=1024
        )

    def answer_now(self, request: _Request) -> Reply | None:
        """The answer when it needs no waiting (health, refusals); None when ``answer`` must run."""
        try:
            found = route(request.method, request.target)
        except GuardError as exc:
            return _error_reply(exc)
        kind = found.kind
        if kind == LIVE:
            return 200, _JSON, [], None
        if kind == READY:
            if self.is_ready():
                return 200, _JSON, [], None
            message = "not ready: Triton or a routed model version is not ready"
            return 503, _JSON, [encode_error(message)], None
        request.route = found
        return None

    async def answer(self, request: _Request) -> Reply:
        found = request.route
        assert found is not None
        try:
            if found.kind == INFER:
                return await self._infer(request, found)
            assert found.kind == FORWARD
            return await self._forward(found, request.body)
        except GuardError as exc:
            return _error_reply(exc)

    async def _infer(self, request: _Request, found: Route) -> Reply:
        model, version = found.model, found.version
        try:
            header_length = parse_header_length(request.header_length)
            infer_request = decode_infer_request(
                request.body, header_length, model, version, self.pipeline.decode_budget
            )
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

    async def _forward(self, found: Route, body: memoryview) -> Reply:
        # Rebuilt from the validated path: no caller header, query or raw byte reaches Triton.
        if found.path == "/v2/repository/index":
            response = await self.triton.request(
                "POST", found.path, [_index_body(body)], "Content-Type: application/json\r\n"
            )
        else:
            response = await self.triton.request("GET", found.path)
        return response.status, response.headers.get("content-type", _JSON), [response.body], None


def _index_body(body: memoryview) -> bytes:
    """The repository-index request, re-encoded from the caller's: only its optional 'ready' flag."""
    if not len(body):
        return b"{}"
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequest("the repository index request body is not valid JSON") from None
    if not isinstance(doc, dict) or set(doc) - {"ready"} or not isinstance(doc.get("ready", False), bool):
        raise InvalidRequest('the repository index takes an empty body or {"ready": true|false}')
    return orjson.dumps(doc)


def _error_reply(exc: GuardError) -> Reply:
    return exc.http_status, _JSON, [encode_error(exc.message)], exc.headers or None


def _bug_text(exc: BaseException) -> str:
    """One log line about a bug, without any caller byte unescaped (the traceback has frames only)."""
    frames = "".join(traceback.format_tb(exc.__traceback__))
    return f"{type(exc).__name__}: {client_text(exc)}\n{frames}"


_STATUS_LINES: dict[int, str] = {}


def _status_line(status: int) -> str:
    line = _STATUS_LINES.get(status)
    if line is None:
        try:
            reason = http.HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
        line = _STATUS_LINES[status] = f"HTTP/1.1 {status} {reason}\r\n"
    return line


def _header_value(value: str) -> str:
    # Guard headers can carry a caller's request id: never let it break the response head.
    if value.isascii() and value.isprintable():
        return value
    return client_text(value).encode("ascii", "backslashreplace").decode("ascii")


class _HttpConnection(asyncio.Protocol):
    """One client connection: httptools parses, requests queue in order, one is answered at a time."""

    def __init__(self, server: V2HttpServer) -> None:
        self._server = server
        self._limits = server.limits
        self._max_pipelined = server.limits.max_pipelined_requests
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        # Cached: asyncio.get_running_loop() makes a getpid() system call on every use (Python 3.11).
        self._loop = asyncio.get_running_loop()
        # Requests parsed and not yet answered, the first one in flight when ``_busy``.
        self._queue: collections.deque[_Request | _Failure] = collections.deque()
        self._busy = False
        self._reading = True
        self._queue_full = False  # reading paused: max_pipelined_requests are waiting
        self._write_paused = False  # reading paused: the client does not read its answers
        self._stopped = False  # no more requests are read (refused, Connection: close, upgrade, EOF)
        self._final = False  # the last request was read; what follows on the wire is ignored
        self._eof = False
        # The one timer: header, body-progress, idle or write-stall deadline, re-armed lazily.
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._idle_since = self._msg_start = self._last_body = self._stall_since = 0.0
        # The message being parsed.
        self._in_message = False
        self._head_done = False
        self._seq = 0
        self._url = b""
        self._fields = 0
        self._head_bytes = 0
        self._head_raw = 0
        self._watched: list[bytes | None] = [None] * len(_WATCHED_NAMES)
        self._request: _Request | None = None
        self._limit = 0
        self._length = 0
        self._encoding = ""
        self._body: bytes | None = None
        self._fill: bytearray | None = None
        self._chunks: list[bytes] | None = None
        self._received = 0
        self._framing = 0
        self._nchunks = 0
        self._max_chunks = 0
        self._continue_pending = False

    # ----------------------------------------------------------------------------- transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        server = self._server
        server.connections += 1
        if server.connections > self._limits.max_connections:
            self._stopped = True
            message = f"the sidecar has {self._limits.max_connections} connections open; retry shortly"
            self._write(503, _JSON, [encode_error(message)], {"Retry-After": "1"}, False, False, False)
            transport.close()
            return
        self._idle_since = self._loop.time()
        self._want(self._idle_since + self._limits.idle_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections -= 1
        self._transport = None
        self._stopped = True
        self._in_message = False
        self._queue.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def eof_received(self) -> bool:
        # The client sent all it will send; answer what was read, then close.
        self._eof = True
        self._stopped = True
        self._in_message = False  # a request cut short is dropped
        return bool(self._queue or self._busy)  # False: nothing to answer, the transport closes

    def pause_writing(self) -> None:
        # The transport's buffer is above its high-water mark. Stop reading too, so a client that
        # pipelines requests without reading the answers cannot make the sidecar buffer without bound.
        self._write_paused = True
        self._stall_since = self._loop.time()
        self._update_reading()
        self._want(self._stall_since + self._limits.idle_timeout_s)

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()
        self._refresh_deadlines()
        self._pump()

    def data_received(self, data: bytes) -> None:
        if self._stopped:
            return
        was_in_message = self._in_message
        in_head = was_in_message and not self._head_done
        in_chunks = was_in_message and self._chunks is not None
        seq, received = self._seq, self._received
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            self._refuse(exc.__context__ or exc)
            return
        except httptools.HttpParserUpgrade:
            # The request asked to switch protocols; it is answered (and the connection closed) as
            # plain HTTP, and what follows it on the wire is not read.
            self._stop_reading()
            return
        except httptools.HttpParserError as exc:
            if self._final:
                self._stop_reading()  # bytes after a request that closes the connection
            else:
                self._fail(400, f"malformed HTTP/1.1 request: {client_text(exc, 200)}")
            return
        except Exception as exc:  # never let a bug escape into the event loop's transport
            self._refuse(exc)
            return
        if self._in_message:
            same = seq == self._seq  # still the message that was open before this data
            fresh = not was_in_message and self._seq == seq + 1
            self._account(data, in_head and same, in_chunks and same, fresh, received)

    def _account(self, data: bytes, in_head: bool, in_chunks: bool, fresh: bool, received: int) -> None:
        """Bound what httptools holds for an unfinished message: a header line it is still reading, or
        chunk framing (size lines, extensions, trailers) that carries no data. ``fresh``: ``data``
        began with this message, so every byte of it belongs to the message."""
        limits = self._limits
        if not self._head_done:
            if in_head:
                self._head_raw += len(data)
            else:
                self._head_raw = len(data) if fresh else self._head_bytes
            if self._head_raw > limits.max_header_bytes:
                self._fail(431, f"request head is larger than {limits.max_header_bytes} bytes")
        elif self._chunks is not None:
            if in_chunks:
                self._framing += len(data) - (self._received - received)
            elif fresh:
                self._framing = len(data) - self._head_bytes - self._received
            if self._framing > limits.max_header_bytes + _CHUNK_OVERHEAD * self._nchunks:
                self._fail(400, "chunked body framing (chunk extensions or trailers) is too large")

    # --------------------------------------------------------------------------- parser callbacks

    def on_message_begin(self) -> None:
        if len(self._queue) >= self._max_pipelined:
            raise _Reject(
                429, f"more than {self._max_pipelined} requests pipelined on one connection; wait for answers"
            )
        self._in_message = True
        self._head_done = False
        self._seq += 1
        self._url = b""
        self._fields = self._head_bytes = self._head_raw = 0
        self._watched = [None] * len(_WATCHED_NAMES)
        self._request = None
        self._body = self._fill = self._chunks = None
        self._received = self._framing = self._nchunks = 0
        self._continue_pending = False
        self._msg_start = self._last_body = now = self._loop.time()
        self._want(now + self._limits.header_timeout_s)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > self._limits.max_header_bytes:
            raise _Reject(414, f"request target is longer than {self._limits.max_header_bytes} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        self._head_bytes += len(name) + len(value) + 4
        limits = self._limits
        if self._fields > limits.max_header_count:
            raise _Reject(431, f"request has more than {limits.max_header_count} header fields")
        if self._head_bytes > limits.max_header_bytes:
            raise _Reject(431, f"request head is larger than {limits.max_header_bytes} bytes")
        if self._head_done:
            return  # a trailer field of a chunked body: counted against the limits, never used
        which = _WATCHED.get(name.lower())
        if which is not None:
            if self._watched[which] is not None:
                raise _Reject(400, f"request has more than one {_WATCHED_NAMES[which]} header")
            self._watched[which] = value

    def on_headers_complete(self) -> None:
        self._head_done = True
        parser = self._parser
        limits = self._limits
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            raise _Reject(
                400, f"HTTP/{version} is not served on this port; send HTTP/1.1 (gRPC has its own port)"
            )
        http10 = version == "1.0"
        raw_method = parser.get_method()
        method = _METHODS.get(raw_method) or raw_method.decode("ascii", "replace")
        keep_alive = parser.should_keep_alive()  # asked now: llhttp clears its flags after the message
        length_value, transfer, encoding, header_length, expect = self._watched
        chunked = False
        if transfer is not None:
            # llhttp refuses Transfer-Encoding with Content-Length and chunked anywhere but last; accept
            # only a body that is chunked and nothing else, and never in HTTP/1.0 (RFC 9112, 6.1).
            if transfer.strip().lower() != b"chunked" or http10:
                raise _Reject(
                    400, "Transfer-Encoding must be 'chunked' alone, in HTTP/1.1 (or send Content-Length)"
                )
            chunked = True
        binary = header_length is not None
        limit = self._limit = limits.max_body_bytes if binary else limits.max_json_body_bytes
        length = self._length = 0
        if length_value is not None:
            # llhttp has checked it: digits only, no overflow, no duplicate, not beside chunked.
            length = self._length = int(length_value)
            if length > limit:
                kind = "binary-tensor" if binary else "JSON"
                raise _Reject(
                    413, f"request body of {length} bytes is above the limit of {limit} for {kind} bodies"
                )
        self._encoding = ""
        if encoding is not None:
            known = _ENCODINGS.get(encoding.strip().lower())
            if known is None:
                raise _Reject(
                    415,
                    f"Content-Encoding {client_text(encoding.decode('latin-1'), 40)!r} is not accepted "
                    "(use gzip, deflate or identity)",
                )
            self._encoding = known
        has_body = chunked or length > 0
        if parser.should_upgrade():
            if raw_method == b"CONNECT":
                raise _Reject(405, "CONNECT is not served by the guard sidecar")
            if has_body:
                raise _Reject(400, "a request that asks to switch protocols cannot carry a body here")
            keep_alive = False  # the switch is not made; what follows the request is not HTTP to us
        if expect is not None:
            if expect.strip().lower() != b"100-continue":
                raise _Reject(417, "only 'Expect: 100-continue' is supported")
            if has_body and not http10:
                # A 100 may only go out once every answer before it has been written.
                if self._queue:
                    self._continue_pending = True
                elif self._transport is not None:
                    self._transport.write(_CONTINUE)
        if chunked:
            self._chunks = []
            self._max_chunks = 1024 + limit // 1024
        self._request = _Request(method, self._url.decode("latin-1"), keep_alive, http10, header_length)
        if has_body:
            self._last_body = now = self._loop.time()
            self._want(now + limits.body_timeout_s)

    def on_chunk_header(self) -> None:
        self._nchunks += 1
        if self._nchunks > self._max_chunks:
            raise _Reject(400, f"chunked body has more than {self._max_chunks} chunks; send larger chunks")

    def on_body(self, data: bytes) -> None:
        received = self._received + len(data)
        self._last_body = self._loop.time()
        if self._chunks is not None:
            if received > self._limit:
                raise _Reject(413, f"chunked request body is above the limit of {self._limit} bytes")
            self._chunks.append(data)
        elif self._fill is not None:
            self._fill += data
        elif self._received == 0 and received == self._length:
            self._body = data  # the whole body in one piece: handed on as is, no copy
        else:
            # Gathered as it arrives rather than allocated from Content-Length up front: memory follows
            # the bytes a client really sent, not the size it announced.
            self._fill = bytearray(data)
        self._received = received

    def on_message_complete(self) -> None:
        request = self._request
        assert request is not None
        self._in_message = False
        self._continue_pending = False
        if self._body is not None:
            body = memoryview(self._body)
        elif self._fill is not None:
            body = memoryview(self._fill)
        elif self._chunks:
            body = memoryview(self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks))
        else:
            body = _EMPTY
        self._body = self._fill = self._chunks = None
        if self._encoding and len(body):
            body = _inflate(body, self._encoding, min(self._limits.max_decompressed_bytes, self._limit))
        request.body = body
        self._request = None
        self._queue.append(request)
        if not request.keep_alive:
            self._final = True
            self._stop_reading()
        elif len(self._queue) >= self._max_pipelined:
            self._queue_full = True
            self._update_reading()
        self._pump()

    # ------------------------------------------------------------------------------------ answers

    def _pump(self) -> None:
        """Answer queued requests in order: at once when no waiting is needed, else in one task."""
        queue = self._queue
        server = self._server
        while queue and not self._busy and not self._write_paused and self._transport is not None:
            item = queue[0]
            if type(item) is _Failure:
                queue.clear()
                self._write(item.status, _JSON, [encode_error(item.message)], None, False, False, False)
                self._close()
                return
            assert isinstance(item, _Request)
            try:
                reply = server.answer_now(item)
            except Exception as exc:
                reply = self._bug_reply(exc, item)
            if reply is None:
                self._busy = True
                self._loop.create_task(self._run(item))
                return
            if not self._finish(item, reply):
                return

    async def _run(self, request: _Request) -> None:
        try:
            reply = await self._server.answer(request)
        except Exception as exc:
            reply = self._bug_reply(exc, request)
        self._busy = False
        if self._transport is not None and self._finish(request, reply):
            self._pump()

    def _finish(self, request: _Request, reply: Reply) -> bool:
        """Write the answer to the first queued request; False once the connection is done."""
        self._queue.popleft()
        status, content_type, chunks, extra = reply
        self._write(
            status, content_type, chunks, extra, request.keep_alive, request.http10, request.head_only
        )
        if not request.keep_alive or (self._eof and not self._queue):
            self._close()
            return False
        if self._queue_full and len(self._queue) < self._max_pipelined:
            self._queue_full = False
            self._update_reading()
            self._refresh_deadlines()
        if not self._queue:
            if self._continue_pending and self._transport is not None:
                self._continue_pending = False
                self._transport.write(_CONTINUE)
            if not self._in_message:
                self._idle_since = now = self._loop.time()
                self._want(now + self._limits.idle_timeout_s)
        return True

    def _write(
        self,
        status: int,
        content_type: str,
        chunks: list[bytes | memoryview],
        extra: dict[str, str] | None,
        keep_alive: bool,
        http10: bool,
        head_only: bool,
    ) -> None:
        transport = self._transport
        if transport is None:
            return
        length = 0
        for chunk in chunks:
            length += len(chunk)
        head = f"{_status_line(status)}Content-Type: {content_type}\r\nContent-Length: {length}\r\n"
        if extra:
            for key, value in extra.items():
                head += f"{key}: {_header_value(value)}\r\n"
        if not keep_alive:
            head += "Connection: close\r\n"
        elif http10:
            head += "Connection: keep-alive\r\n"
        if head_only or not chunks:
            transport.write((head + "\r\n").encode("latin-1"))
        else:
            transport.writelines([(head + "\r\n").encode("latin-1"), *chunks])

    def _bug_reply(self, exc: BaseException, request: _Request) -> Reply:
        log.error(
            "bug while serving %s %s: %s", request.method, client_text(request.target, 200), _bug_text(exc)
        )
        message = f"internal error in the guard sidecar ({type(exc).__name__}); it is logged"
        return 500, _JSON, [encode_error(message)], None

    # ------------------------------------------------------------------------------------ refusals

    def _refuse(self, exc: BaseException) -> None:
        if isinstance(exc, _Reject):
            self._fail(exc.status, exc.message)
            return
        log.error("bug while reading a request: %s", _bug_text(exc))
        self._fail(
            500, f"internal error in the guard sidecar ({type(exc).__name__}) while reading the request"
        )

    def _fail(self, status: int, message: str) -> None:
        """Refuse the request being read: answered after those before it, then the connection closes."""
        if self._queue and type(self._queue[-1]) is _Failure:
            return
        log.debug("refused a request with %d: %s", status, message)
        self._stop_reading()
        self._in_message = False
        self._continue_pending = False
        self._queue.append(_Failure(status, client_text(message)))
        self._pump()

    def _stop_reading(self) -> None:
        self._stopped = True
        self._update_reading()

    def _close(self) -> None:
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.close()

    def _update_reading(self) -> None:
        want = not (self._stopped or self._queue_full or self._write_paused)
        if want != self._reading and self._transport is not None:
            self._reading = want
            if want:
                self._transport.resume_reading()
            else:
                self._transport.pause_reading()

    # -------------------------------------------------------------------------------------- timers

    def _want(self, deadline: float) -> None:
        """Make the timer fire no later than ``deadline`` (it re-checks the state when it fires)."""
        timer = self._timer
        if timer is not None:
            if self._timer_at <= deadline:
                return
            timer.cancel()
        self._timer_at = deadline
        self._timer = self._loop.call_at(deadline, self._on_timer)

    def _refresh_deadlines(self) -> None:
        # Reading resumed: time spent paused by the sidecar does not count against the client.
        now = self._loop.time()
        if self._in_message:
            self._msg_start = self._last_body = now
            self._want(now + min(self._limits.header_timeout_s, self._limits.body_timeout_s))

    def _on_timer(self) -> None:
        self._timer = None
        if self._transport is None:
            return
        try:
            self._check_deadlines()
        except Exception as exc:  # a timer callback must not take the loop down either
            log.error("bug in a connection timer: %s", _bug_text(exc))
            self._close()

    def _check_deadlines(self) -> None:
        now = self._loop.time()
        limits = self._limits
        if self._write_paused:
            deadline = self._stall_since + limits.idle_timeout_s
            if now >= deadline:
                log.debug(
                    "closing a connection whose client has not read its answers for %g s",
                    limits.idle_timeout_s,
                )
                assert self._transport is not None
                self._stopped = True
                self._transport.abort()
                return
        elif self._stopped or self._queue_full:
            return
        elif self._in_message:
            if not self._head_done:
                deadline = self._msg_start + limits.header_timeout_s
                if now >= deadline:
                    self._fail(408, f"the request head was not complete within {limits.header_timeout_s:g} s")
                    return
            else:
                deadline = self._last_body + limits.body_timeout_s
                if now >= deadline:
                    self._fail(408, f"no request body bytes arrived for {limits.body_timeout_s:g} s")
                    return
        elif self._queue or self._busy:
            return
        else:
            deadline = self._idle_since + limits.idle_timeout_s
            if now >= deadline:
                self._close()  # an idle keep-alive connection: closed without a word, as nginx does
                return
        self._want(deadline)


def _inflate(body: memoryview, encoding: str, cap: int) -> memoryview:
    """Inflate a gzip/deflate body, never holding more than ``cap`` + 1 inflated bytes."""
    if encoding == "gzip":
        wbits = 16 + zlib.MAX_WBITS
    elif len(body) >= 2 and body[0] & 0x0F == 8 and (body[0] * 256 + body[1]) % 31 == 0:
        wbits = zlib.MAX_WBITS  # "deflate" as RFC 9110 means it: a zlib stream
    else:
        wbits = -zlib.MAX_WBITS  # raw deflate, as some clients send it
    inflater = zlib.decompressobj(wbits)
    out = bytearray()
    data: bytes | memoryview = body
    try:
        while True:
            piece = inflater.decompress(data, cap + 1 - len(out))
            out += piece
            if len(out) > cap:
                raise _Reject(413, f"the {encoding} request body inflates to more than {cap} bytes")
            data = inflater.unconsumed_tail
            if inflater.eof or (not piece and not data):
                break
    except zlib.error as exc:
        raise _Reject(400, f"the {encoding} request body cannot be inflated: {exc}") from None
    if not inflater.eof:
        raise _Reject(400, f"the {encoding} request body is truncated")
    if inflater.unused_data:
        raise _Reject(400, f"bytes follow the end of the {encoding} request body")
    return memoryview(out)
