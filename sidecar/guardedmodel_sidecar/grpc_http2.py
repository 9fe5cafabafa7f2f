"""gRPC over HTTP/2 (prior knowledge, no TLS) on asyncio protocols: the sidecar's gRPC server.

Why not grpcio's server: measured here, grpc.aio's own per-call work (its completion-queue poller,
the hand-off into asyncio, a task per call) costs 0.4-0.5 ms of CPU per call on top of everything
else the sidecar does (~0.5 ms), and held the gRPC batch-1 throughput through the sidecar to
0.63-0.72 of Triton's. A gRPC server for one service needs a small part of HTTP/2: frames
(``protocol.grpc_wire``), HPACK (``protocol.hpack_codec``), flow control, SETTINGS/PING/GOAWAY/
RST_STREAM, and gRPC's 5-byte message framing with its status in the trailers. This module is the
connection state machine; the calls themselves live in ``grpc_server.GrpcService``.

Flow control: we grant a 1 MiB window per stream and 16 MiB per connection and top both up as data
arrives (a request's size is bounded by ``max_message``, not by the window); responses honour the
client's windows and frame size, queueing what does not fit until a WINDOW_UPDATE.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import zlib
from collections.abc import AsyncIterator

import grpc

from guardedmodel_sidecar.grpc_server import SERVICE, STREAM_METHODS, UNARY_METHODS, GrpcService, GrpcStatus
from guardedmodel_sidecar.protocol.grpc_wire import (
    ACK,
    COMPRESSION_ERROR,
    CONNECTION_WINDOW,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    FLOW_CONTROL_ERROR,
    FRAME_HEAD,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADERS,
    MAX_FRAME,
    MAX_HEADER_BLOCK,
    MAX_STREAMS,
    MAX_WINDOW,
    MESSAGE_HEAD,
    NO_ERROR,
    OK_TRAILERS,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    PRIORITY_FLAG,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    REFUSED_STREAM,
    RESPONSE_HEADERS,
    RST_STREAM,
    SETTING,
    SETTINGS,
    SETTINGS_ENABLE_PUSH,
    SETTINGS_INITIAL_WINDOW_SIZE,
    SETTINGS_MAX_CONCURRENT_STREAMS,
    SETTINGS_MAX_FRAME_SIZE,
    SETTINGS_MAX_HEADER_LIST_SIZE,
    STREAM_CLOSED,
    STREAM_WINDOW,
    WINDOW_UPDATE,
    frame,
    frame_head,
    parse_timeout,
    status_block,
)
from guardedmodel_sidecar.protocol.hpack_codec import Decoder, HpackError, encode_headers

log = logging.getLogger(__name__)


# Kinds of what a stream has left to send.
_DATA, _TRAILERS, _END = 0, 1, 2
_NOT_GRPC_HEADERS = encode_headers([(b":status", b"415"), (b"content-type", b"text/plain")])
_NOT_GRPC_BODY = b"this port serves gRPC (POST, content-type application/grpc); use the HTTP port for REST\n"
_PSEUDO_REQUEST = frozenset((b":method", b":scheme", b":path", b":authority"))
_CONNECTION_SPECIFIC = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)


def request_header_problem(headers: tuple[tuple[bytes, bytes], ...]) -> str | None:
    """What makes a request's header list malformed (RFC 9113 §8.2-8.3), or None."""
    seen: set[bytes] = set()
    regular = False
    for name, value in headers:
        if name[:1] == b":":
            if regular:
                return f"pseudo-header {name!r} after a regular header"
            if name not in _PSEUDO_REQUEST:
                return f"unknown or response pseudo-header {name!r}"
            if name in seen:
                return f"pseudo-header {name!r} given twice"
            seen.add(name)
            continue
        regular = True
        if name != name.lower():
            return f"header name {name!r} is not lower case"
        if name in _CONNECTION_SPECIFIC:
            return f"connection-specific header {name!r}"
        if name == b"te" and value != b"trailers":
            return "te header other than 'trailers'"
    for required in (b":method", b":scheme", b":path"):
        if required not in seen:
            return f"missing {required!r}"
    if not dict(headers)[b":path"]:
        return "empty :path"
    return None


class _Stream:
    __slots__ = (
        "body",
        "encoding",
        "ended",
        "expected_length",
        "headers_sent",
        "id",
        "method",
        "pending",
        "queue",
        "received",
        "refusal",
        "send_window",
        "streaming",
        "task",
        "timeout",
        "unacked",
    )

    def __init__(self, stream_id: int, method: str, streaming: bool, send_window: int) -> None:
        self.id = stream_id
        self.method = method
        self.streaming = streaming
        self.body = bytearray()
        self.ended = False
        self.headers_sent = False
        self.send_window = send_window
        # What is still to be sent, in order, as the client's flow-control windows allow.
        self.pending: collections.deque[tuple[int, bytes | memoryview]] = collections.deque()
        self.queue: asyncio.Queue[bytes | GrpcStatus | None] | None = None
        self.task: asyncio.Task[None] | None = None
        self.timeout: float | None = None
        self.encoding = b""
        self.unacked = 0
        self.received = 0
        self.expected_length: int | None = None  # a content-length header, checked at the end
        # Set for a request we refuse (not gRPC, unknown method): the answer waits for the end of
        # the request, so the stream's frames are still checked until then.
        self.refusal: tuple[bytes, bytes] | None = None  # (header block, body); empty body: trailers-only


class _ConnectionError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Http2GrpcServer:
    """Serves one ``GrpcService`` on every connection."""

    def __init__(self, service: GrpcService, *, max_message: int) -> None:
        self.service = service
        self.max_message = max_message
        self.connections: set[_Http2Connection] = set()
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Http2Connection(self),
            host,
            port,
            reuse_address=True,
            reuse_port=reuse_port or None,
            backlog=1024,
        )
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self, grace: float = 1.0) -> None:
        """Stop accepting, tell clients to go away, give in-flight calls ``grace`` seconds."""
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.go_away(NO_ERROR, "server shutting down", close=False)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while any(c.busy() for c in self.connections) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        for connection in list(self.connections):
            connection.abort()


class _Http2Connection(asyncio.Protocol):
    def __init__(self, server: Http2GrpcServer) -> None:
        self._server = server
        self._service = server.service
        self._max_message = server.max_message
        self._transport: asyncio.Transport | None = None
        # Cached: asyncio.get_running_loop() makes a getpid() system call on every use (Python 3.11).
        self._loop = asyncio.get_running_loop()
        self._buf = bytearray()
        self._preface = False
        self._decoder = Decoder()
        self._streams: dict[int, _Stream] = {}
        self._reset_by_us: set[int] = set()  # their frames still in flight are dropped quietly
        self._checked: dict[tuple[tuple[bytes, bytes], ...], str | None] = {}
        self._last_stream = 0
        self._continuation: tuple[int, bytearray, int] | None = None  # stream, block, HEADERS flags
        # The client's settings and our send windows.
        self._peer_window = 65535
        self._peer_frame = 16384
        self._send_window = 65535
        self._recv_unacked = 0
        self._out: list[bytes | memoryview] = []
        self._closed = False
        self._going_away = False  # GOAWAY sent: calls in flight finish, new ones are refused

    # ---------------------------------------------------------------------------- connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        assert self._transport is not None
        self._server.connections.add(self)
        settings = b"".join(
            SETTING.pack(key, value)
            for key, value in (
                (SETTINGS_MAX_CONCURRENT_STREAMS, MAX_STREAMS),
                (SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW),
                (SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_BLOCK),
            )
        )
        self._transport.writelines(
            [
                frame(SETTINGS, 0, 0, settings),
                frame(WINDOW_UPDATE, 0, 0, (CONNECTION_WINDOW - 65535).to_bytes(4, "big")),
            ]
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._transport = None
        self._server.connections.discard(self)
        for stream in self._streams.values():
            if stream.task is not None:
                stream.task.cancel()
        self._streams.clear()

    def pause_writing(self) -> None:
        # The client is not reading: stop reading its frames (and new calls) until it catches up.
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None:
            self._transport.resume_reading()

    def busy(self) -> bool:
        return any(s.task is not None and not s.task.done() for s in self._streams.values())

    def go_away(self, code: int, message: str, *, close: bool = True) -> None:
        if self._transport is None:
            return
        if code != NO_ERROR:
            # A client bug or a non-gRPC client on the gRPC port: worth a line for whoever runs it.
            peer = self._transport.get_extra_info("peername")
            log.warning("gRPC connection from %s closed with HTTP/2 error %d: %s", peer, code, message)
        self._going_away = True
        payload = self._last_stream.to_bytes(4, "big") + code.to_bytes(4, "big") + message.encode()[:256]
        self._transport.write(frame(GOAWAY, 0, 0, payload))
        if close:
            self.abort()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._closed = True

    def _flush_out(self) -> None:
        if self._out and self._transport is not None:
            self._transport.writelines(self._out)
        self._out = []

    # ---------------------------------------------------------------------------- reading

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return  # sent away already; what the client still had in flight is not read
        buf = self._buf
        buf += data
        pos = 0
        try:
            if not self._preface:
                if len(buf) < len(PREFACE):
                    if not PREFACE.startswith(bytes(buf)):
                        raise _ConnectionError(PROTOCOL_ERROR, "not an HTTP/2 gRPC connection")
                    return
                if not buf.startswith(PREFACE):
                    raise _ConnectionError(PROTOCOL_ERROR, "not an HTTP/2 gRPC connection")
                self._preface = True
                pos = len(PREFACE)
            end = len(buf)
            while end - pos >= 9:
                hi, lo, kind, flags, stream_id = FRAME_HEAD.unpack_from(buf, pos)
                length = (hi << 8) | lo
                if length > MAX_FRAME:
                    raise _ConnectionError(FRAME_SIZE_ERROR, f"frame of {length} bytes is above {MAX_FRAME}")
                if end - pos - 9 < length:
                    break
                payload = memoryview(buf)[pos + 9 : pos + 9 + length]
                pos += 9 + length
                try:
                    self._on_frame(kind, flags, stream_id & 0x7FFFFFFF, payload)
                finally:
                    payload.release()
        except _ConnectionError as exc:
            self._flush_out()
            self.go_away(exc.code, str(exc))
            return
        except HpackError as exc:
            self._flush_out()
            self.go_away(COMPRESSION_ERROR, str(exc))
            return
        del buf[:pos]
        self._flush_out()

    def _on_frame(self, kind: int, flags: int, stream_id: int, payload: memoryview) -> None:
        if self._continuation is not None and kind != CONTINUATION:
            raise _ConnectionError(PROTOCOL_ERROR, "expected a CONTINUATION frame")
        if kind == DATA:
            self._on_data(flags, stream_id, payload)
        elif kind == HEADERS:
            self._on_headers(flags, stream_id, payload)
        elif kind == CONTINUATION:
            self._on_continuation(flags, stream_id, payload)
        elif kind == SETTINGS:
            self._on_settings(flags, stream_id, payload)
        elif kind == PING:
            if stream_id:
                raise _ConnectionError(PROTOCOL_ERROR, "PING on a stream")
            if len(payload) != 8:
                raise _ConnectionError(FRAME_SIZE_ERROR, "PING payload must be 8 bytes")
            if not flags & ACK:
                self._out.append(frame(PING, ACK, 0, bytes(payload)))
        elif kind == WINDOW_UPDATE:
            self._on_window_update(stream_id, payload)
        elif kind == RST_STREAM:
            self._on_rst_stream(stream_id, payload)
        elif kind == PRIORITY:
            self._on_priority(stream_id, payload)
        elif kind == GOAWAY:
            if stream_id:
                raise _ConnectionError(PROTOCOL_ERROR, "GOAWAY on a stream")
            # The client opens no more streams; the ones in flight still get answers.
        elif kind == PUSH_PROMISE:
            raise _ConnectionError(PROTOCOL_ERROR, "clients must not send PUSH_PROMISE")
        # Unknown frame types are ignored (RFC 9113 §5.5).

    def _on_rst_stream(self, stream_id: int, payload: memoryview) -> None:
        if stream_id == 0:
            raise _ConnectionError(PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            raise _ConnectionError(FRAME_SIZE_ERROR, "RST_STREAM payload must be 4 bytes")
        if stream_id > self._last_stream:
            raise _ConnectionError(PROTOCOL_ERROR, f"RST_STREAM on idle stream {stream_id}")
        stream = self._streams.pop(stream_id, None)
        if stream is not None and stream.task is not None:
            stream.task.cancel()

    def _on_priority(self, stream_id: int, payload: memoryview) -> None:
        # Priorities are advisory and ignored, but a malformed PRIORITY frame is still an error.
        if stream_id == 0:
            raise _ConnectionError(PROTOCOL_ERROR, "PRIORITY on stream 0")
        if len(payload) != 5:
            self._stream_error(stream_id, FRAME_SIZE_ERROR)
            return
        if int.from_bytes(payload[:4], "big") & 0x7FFFFFFF == stream_id:
            self._stream_error(stream_id, PROTOCOL_ERROR)

    def _on_settings(self, flags: int, stream_id: int, payload: memoryview) -> None:
        if stream_id:
            raise _ConnectionError(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if len(payload):
                raise _ConnectionError(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise _ConnectionError(FRAME_SIZE_ERROR, "SETTINGS payload is not a multiple of 6")
        for offset in range(0, len(payload), 6):
            key, value = SETTING.unpack_from(payload, offset)
            if key == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise _ConnectionError(FLOW_CONTROL_ERROR, "initial window size above 2^31-1")
                delta = value - self._peer_window
                self._peer_window = value
                for stream in self._streams.values():
                    stream.send_window += delta
            elif key == SETTINGS_ENABLE_PUSH and value > 1:
                raise _ConnectionError(PROTOCOL_ERROR, f"SETTINGS_ENABLE_PUSH must be 0 or 1, got {value}")
            elif key == SETTINGS_MAX_FRAME_SIZE:
                if not 16384 <= value <= 16777215:
                    raise _ConnectionError(PROTOCOL_ERROR, f"max frame size {value} is out of range")
                self._peer_frame = value
            # Header table size only bounds an encoder's dynamic table; ours never uses one.
        self._out.append(frame(SETTINGS, ACK, 0))
        self._flush_pending()

    def _on_window_update(self, stream_id: int, payload: memoryview) -> None:
        if len(payload) != 4:
            raise _ConnectionError(FRAME_SIZE_ERROR, "WINDOW_UPDATE payload must be 4 bytes")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if stream_id == 0:
            if increment == 0:
                raise _ConnectionError(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise _ConnectionError(FLOW_CONTROL_ERROR, "connection window above 2^31-1")
            self._flush_pending()
            return
        if stream_id > self._last_stream:
            raise _ConnectionError(PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {stream_id}")
        stream = self._streams.get(stream_id)
        if stream is None:
            return  # a stream we have finished with
        if increment == 0:
            self._stream_error(stream_id, PROTOCOL_ERROR)
            return
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            self._stream_error(stream_id, FLOW_CONTROL_ERROR)
            return
        self._flush_stream(stream)

    def _on_headers(self, flags: int, stream_id: int, payload: memoryview) -> None:
        if stream_id == 0:
            raise _ConnectionError(PROTOCOL_ERROR, "HEADERS on stream 0")
        start, stop = 0, len(payload)
        if flags & PADDED:
            stop -= payload[0]
            start = 1
        if flags & PRIORITY_FLAG:
            if (
                stop - start >= 5
                and int.from_bytes(payload[start : start + 4], "big") & 0x7FFFFFFF == stream_id
            ):
                self._stream_error(stream_id, PROTOCOL_ERROR)  # a stream cannot depend on itself
                return
            start += 5
        if stop < start:
            raise _ConnectionError(PROTOCOL_ERROR, "HEADERS padding exceeds the frame")
        block = bytes(payload[start:stop])
        if not flags & END_HEADERS:
            self._continuation = (stream_id, bytearray(block), flags)
            return
        self._on_header_block(stream_id, block, flags)

    def _on_continuation(self, flags: int, stream_id: int, payload: memoryview) -> None:
        if self._continuation is None or self._continuation[0] != stream_id:
            raise _ConnectionError(PROTOCOL_ERROR, "CONTINUATION without HEADERS")
        block = self._continuation[1]
        block += payload
        if len(block) > MAX_HEADER_BLOCK:
            raise _ConnectionError(PROTOCOL_ERROR, "header block above 64 KiB")
        if flags & END_HEADERS:
            headers_flags = self._continuation[2]
            self._continuation = None
            self._on_header_block(stream_id, bytes(block), headers_flags)

    def _on_header_block(self, stream_id: int, block: bytes, flags: int) -> None:
        headers = self._decoder.decode(block)  # always: the dynamic table must stay in step
        stream = self._streams.get(stream_id)
        if stream is not None:  # trailers from the client end its half of the stream
            if stream.ended:
                self._stream_error(stream_id, STREAM_CLOSED)
            elif not flags & END_STREAM:
                self._stream_error(stream_id, PROTOCOL_ERROR)  # trailers must end the stream
            else:
                self._end_of_input(stream)
            return
        if stream_id % 2 == 0 or stream_id <= self._last_stream:
            raise _ConnectionError(PROTOCOL_ERROR, f"stream {stream_id} cannot be opened by the client")
        self._last_stream = stream_id
        problem = self._checked.get(headers, "")
        if problem == "":
            problem = request_header_problem(headers)
            if len(self._checked) < 64:
                self._checked[headers] = problem
        if problem is not None:
            log.debug("stream %d: malformed request: %s", stream_id, problem)
            self._stream_error(stream_id, PROTOCOL_ERROR)
            return
        if len(self._streams) >= MAX_STREAMS or self._going_away:
            self._stream_error(stream_id, REFUSED_STREAM)  # not processed: safe for the client to retry
            return
        fields = dict(headers)
        path = fields[b":path"]
        content_type = fields.get(b"content-type", b"")
        service, _, call = path.decode("latin-1").lstrip("/").partition("/")
        streaming = call in STREAM_METHODS
        stream = _Stream(stream_id, call, streaming, self._peer_window)
        self._streams[stream_id] = stream
        length = fields.get(b"content-length")
        if length is not None:
            stream.expected_length = int(length) if length.isdigit() else -1
        if fields[b":method"] != b"POST" or not content_type.startswith(b"application/grpc"):
            stream.refusal = (_NOT_GRPC_HEADERS, _NOT_GRPC_BODY)
        elif service != SERVICE or not (streaming or call in UNARY_METHODS):
            message = f"method {path.decode('latin-1')} is not served here"
            block = RESPONSE_HEADERS + status_block(grpc.StatusCode.UNIMPLEMENTED, message, ())
            stream.refusal = (block, b"")
        else:
            timeout = fields.get(b"grpc-timeout")
            if timeout:
                stream.timeout = parse_timeout(timeout)
            stream.encoding = fields.get(b"grpc-encoding", b"")
            if streaming:
                stream.queue = asyncio.Queue()
                stream.task = self._loop.create_task(self._run_stream(stream))
        if flags & END_STREAM:
            self._end_of_input(stream)

    def _on_data(self, flags: int, stream_id: int, payload: memoryview) -> None:
        size = len(payload)
        if stream_id == 0 or stream_id > self._last_stream:
            raise _ConnectionError(PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
        data = payload
        if flags & PADDED:
            if not size or payload[0] >= size:
                raise _ConnectionError(PROTOCOL_ERROR, "DATA padding exceeds the frame")
            data = payload[1 : size - payload[0]]
        self._recv_unacked += size
        if self._recv_unacked >= CONNECTION_WINDOW // 2:
            self._out.append(frame(WINDOW_UPDATE, 0, 0, self._recv_unacked.to_bytes(4, "big")))
            self._recv_unacked = 0
        stream = self._streams.get(stream_id)
        if stream is None or stream.ended:
            if stream is not None or stream_id not in self._reset_by_us:
                self._stream_error(stream_id, STREAM_CLOSED)  # DATA after the client's END_STREAM
            return
        stream.received += len(data)
        if stream.refusal is None:
            stream.body += data
        if len(stream.body) > self._max_message + 5:
            self._finish(
                stream,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"request message is larger than the limit of {self._max_message} bytes",
            )
            return
        if not flags & END_STREAM:
            stream.unacked += size
            if stream.unacked >= STREAM_WINDOW // 2:
                self._out.append(frame(WINDOW_UPDATE, 0, stream_id, stream.unacked.to_bytes(4, "big")))
                stream.unacked = 0
            if stream.streaming and stream.refusal is None:
                self._deliver_messages(stream)
            return
        self._end_of_input(stream)

    def _end_of_input(self, stream: _Stream) -> None:
        stream.ended = True
        if stream.expected_length is not None and stream.expected_length != stream.received:
            self._stream_error(stream.id, PROTOCOL_ERROR)  # content-length does not match the body
            return
        if stream.refusal is not None:
            block, body = stream.refusal
            stream.headers_sent = True
            if body:
                self._out.append(frame(HEADERS, END_HEADERS, stream.id, block))
                stream.pending.extend(((_DATA, memoryview(body)), (_END, b"")))
            else:
                stream.pending.append((_TRAILERS, block))
            self._flush_stream(stream)
            return
        if stream.streaming:
            self._deliver_messages(stream)
            if stream.queue is not None:
                stream.queue.put_nowait(None)
            return
        try:
            messages = self._messages(stream)
        except GrpcStatus as status:
            self._finish(stream, status.code, status.message)
            return
        if len(messages) != 1 or stream.body:
            self._finish(
                stream,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"a unary call takes exactly one request message, got {len(messages)}"
                + (" and a partial one" if stream.body else ""),
            )
            return
        stream.task = self._loop.create_task(self._run_unary(stream, messages[0]))

    def _messages(self, stream: _Stream) -> list[bytes]:
        """Complete gRPC messages off the stream's buffer (the rest stays for the next DATA)."""
        body = stream.body
        out: list[bytes] = []
        pos = 0
        while len(body) - pos >= 5:
            compressed, length = MESSAGE_HEAD.unpack_from(body, pos)
            if len(body) - pos - 5 < length:
                break
            message = bytes(body[pos + 5 : pos + 5 + length])
            pos += 5 + length
            if compressed:
                message = self._decompress(stream, message)
            out.append(message)
        del body[:pos]
        return out

    def _decompress(self, stream: _Stream, message: bytes) -> bytes:
        encoding = stream.encoding
        try:
            if encoding == b"gzip":
                data = zlib.decompress(message, 16 + zlib.MAX_WBITS)
            elif encoding == b"deflate":
                data = zlib.decompress(message)
            else:
                raise GrpcStatus(
                    grpc.StatusCode.UNIMPLEMENTED,
                    f"compressed message with grpc-encoding {encoding.decode('latin-1') or 'unset'}; "
                    "use identity, gzip or deflate",
                )
        except zlib.error as exc:
            raise GrpcStatus(
                grpc.StatusCode.INTERNAL, f"cannot decompress the request message: {exc}"
            ) from None
        if len(data) > self._max_message:
            raise GrpcStatus(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"request message is larger than the limit of {self._max_message} bytes",
            )
        return data

    def _deliver_messages(self, stream: _Stream) -> None:
        assert stream.queue is not None
        try:
            for message in self._messages(stream):
                stream.queue.put_nowait(message)
        except GrpcStatus as status:
            stream.queue.put_nowait(status)

    # ---------------------------------------------------------------------------- calls

    async def _run_unary(self, stream: _Stream, message: bytes) -> None:
        try:
            if stream.timeout is None:
                reply = await self._service.unary(stream.method, message)
            else:
                reply = await asyncio.wait_for(self._service.unary(stream.method, message), stream.timeout)
        except GrpcStatus as status:
            self._finish(stream, status.code, status.message, status.trailers)
        except TimeoutError:
            self._finish(stream, grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
        except asyncio.CancelledError:
            return  # the client reset the stream or the connection went away
        except Exception as exc:
            log.exception("unhandled error serving gRPC %s", stream.method)
            self._finish(stream, grpc.StatusCode.INTERNAL, f"internal error: {exc}")
        else:
            self._reply(stream, reply, final=True)
        self._flush_out()

    async def _run_stream(self, stream: _Stream) -> None:
        try:
            if stream.timeout is None:
                await self._stream_replies(stream)
            else:
                await asyncio.wait_for(self._stream_replies(stream), stream.timeout)
        except GrpcStatus as status:
            self._finish(stream, status.code, status.message, status.trailers)
        except TimeoutError:
            self._finish(stream, grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
        except asyncio.CancelledError:
            return
        except Exception as exc:
            log.exception("unhandled error serving gRPC %s", stream.method)
            self._finish(stream, grpc.StatusCode.INTERNAL, f"internal error: {exc}")
        else:
            self._finish(stream, grpc.StatusCode.OK, "")
        self._flush_out()

    async def _stream_replies(self, stream: _Stream) -> None:
        async for reply in self._service.stream(stream.method, self._incoming(stream)):
            self._reply(stream, reply, final=False)
            self._flush_out()

    async def _incoming(self, stream: _Stream) -> AsyncIterator[bytes]:
        assert stream.queue is not None
        while True:
            item = await stream.queue.get()
            if item is None:
                return
            if isinstance(item, GrpcStatus):
                raise item
            yield item

    # ---------------------------------------------------------------------------- writing

    def _reply(self, stream: _Stream, reply: bytes, *, final: bool) -> None:
        if self._closed or self._streams.get(stream.id) is not stream:
            return
        if not stream.headers_sent:
            stream.headers_sent = True
            self._out.append(frame(HEADERS, END_HEADERS, stream.id, RESPONSE_HEADERS))
        stream.pending.append((_DATA, memoryview(MESSAGE_HEAD.pack(0, len(reply)) + reply)))
        if final:
            stream.pending.append((_TRAILERS, OK_TRAILERS))
        self._flush_stream(stream)

    def _finish(
        self,
        stream: _Stream,
        code: grpc.StatusCode,
        message: str,
        trailers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        """End a call with a status: trailers after any reply, or a trailers-only response."""
        if self._closed or self._streams.get(stream.id) is not stream:
            return
        block = status_block(code, message, trailers)
        if not stream.headers_sent:
            stream.headers_sent = True
            block = RESPONSE_HEADERS + block
        stream.pending.append((_TRAILERS, block))
        self._flush_stream(stream)

    def _flush_pending(self) -> None:
        for stream in list(self._streams.values()):
            if stream.pending:
                self._flush_stream(stream)

    def _flush_stream(self, stream: _Stream) -> None:
        pending = stream.pending
        out = self._out
        while pending:
            kind, item = pending[0]
            if kind == _END:
                pending.popleft()
                out.append(frame(DATA, END_STREAM, stream.id))  # empty: needs no window
                self._close_stream(stream)
                return
            if kind == _TRAILERS:
                pending.popleft()
                out.append(frame(HEADERS, END_HEADERS | END_STREAM, stream.id, bytes(item)))
                self._close_stream(stream)
                return
            allowed = min(self._send_window, stream.send_window, self._peer_frame)
            if allowed <= 0:
                return
            view = memoryview(item)
            chunk = view[:allowed]
            out.append(frame_head(DATA, 0, stream.id, len(chunk)))
            out.append(chunk)
            self._send_window -= len(chunk)
            stream.send_window -= len(chunk)
            if len(chunk) == len(view):
                pending.popleft()
            else:
                pending[0] = (_DATA, view[allowed:])

    def _close_stream(self, stream: _Stream) -> None:
        self._streams.pop(stream.id, None)
        task = stream.task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()  # ended from outside its task (a message over the limit): stop the call
        if stream.ended:
            return
        # We answered before the client finished sending: ask it to stop (RFC 9113 §8.1), and drop
        # quietly what it had already sent.
        self._reset_by_us.add(stream.id)
        self._out.append(frame(RST_STREAM, 0, stream.id, NO_ERROR.to_bytes(4, "big")))

    def _stream_error(self, stream_id: int, code: int) -> None:
        """End one stream with RST_STREAM; the connection and its other streams go on."""
        stream = self._streams.pop(stream_id, None)
        if stream is not None and stream.task is not None:
            stream.task.cancel()
        if len(self._reset_by_us) > 4096:
            self._reset_by_us.clear()
        self._reset_by_us.add(stream_id)
        self._out.append(frame(RST_STREAM, 0, stream_id, code.to_bytes(4, "big")))
