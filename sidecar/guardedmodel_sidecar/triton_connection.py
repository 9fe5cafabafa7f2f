"""One keep-alive HTTP/1.1 connection to Triton, its responses parsed by httptools.

The pool that owns the connections (``TritonHttp`` in upstream.py) caps their number and the size of a
response; a connection tells it when it closes, so a waiting caller can open a new one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Protocol

import httptools
import orjson

from guardedmodel_sidecar.errors import GuardError, UpstreamError, client_text
from guardedmodel_sidecar.protocol.http_json import HEADER_LENGTH

# The only response headers the sidecar reads (lower-case); others are parsed and dropped.
_KEPT = {b"content-type": "content-type", HEADER_LENGTH.lower().encode(): HEADER_LENGTH.lower()}


class ConnectionPool(Protocol):
    """What a connection needs of the pool that owns it."""

    max_response_bytes: int

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    def slot_freed(self) -> None:
        """A connection closed for good: its place in the pool is free."""


class UpstreamResponse:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes | memoryview) -> None:
        self.status = status
        # Lower-case names; only Content-Type and Inference-Header-Content-Length are kept.
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return orjson.loads(self.body) if len(self.body) else None


class ConnectionClosed(ConnectionError):
    def __init__(self, message: str, answered: bool) -> None:
        super().__init__(message)
        # Whether any byte of an answer arrived: only a request with none may be sent again.
        self.answered = answered


class TritonConnection(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[UpstreamResponse] | None = None
        self._answered = False
        self._reset()

    def _reset(self) -> None:
        self._headers: dict[str, str] = {}
        self._length = -1
        self._body: bytes | None = None
        self._fill: bytearray | None = None
        self._chunks: list[bytes] | None = None
        self._received = 0
        self._keep_alive = True
        self._status = 0

    # --------------------------------------------------------------------------- transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._lost()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else (exc or "EOF")
            waiter.set_exception(ConnectionClosed(f"Triton closed the connection ({reason})", self._answered))

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:
            # Nothing asked for: a protocol error on Triton's side; this connection cannot be trusted.
            self.abort()
            return
        self._answered = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            self.fail(cause if isinstance(cause, GuardError) else malformed(exc))
        except httptools.HttpParserError as exc:
            self.fail(malformed(exc))
        except httptools.HttpParserUpgrade:
            self.fail(
                UpstreamError("Triton answered with a protocol switch the sidecar never asked for", 502)
            )

    # ------------------------------------------------------------------------ httptools callbacks

    def on_message_begin(self) -> None:
        if self._waiter is None:
            raise UpstreamError("Triton sent a second response to one request", 502)
        self._reset()

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.lower()
        if key == b"content-length":
            # llhttp has checked the digits and refused duplicates and Content-Length with chunked.
            self._length = int(value)
            if self._length > self.pool.max_response_bytes:
                raise UpstreamError(
                    f"Triton's response of {self._length} bytes is above the sidecar's limit of "
                    f"{self.pool.max_response_bytes}",
                    502,
                )
        else:
            kept = _KEPT.get(key)
            if kept is not None:
                self._headers[kept] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        # Asked here: llhttp clears the connection flags once the message is complete.
        self._keep_alive = self._parser.should_keep_alive()

    def on_body(self, data: bytes) -> None:
        received = self._received + len(data)
        if self._length >= 0:
            if self._fill is None:
                if received == self._length:  # the whole body in one piece: keep it, no copy
                    self._body = data
                    self._received = received
                    return
                self._fill = bytearray(self._length)
            self._fill[self._received : received] = data
        else:
            if received > self.pool.max_response_bytes:
                raise UpstreamError(
                    f"Triton's chunked response passed the sidecar's limit of {self.pool.max_response_bytes} bytes",
                    502,
                )
            if self._chunks is None:
                self._chunks = [data]
            else:
                self._chunks.append(data)
        self._received = received

    def on_message_complete(self) -> None:
        if self._status < 200:
            return  # an interim 1xx answer; the final one follows on the same connection
        body: bytes | memoryview
        if self._body is not None:
            body = self._body
        elif self._fill is not None:
            body = memoryview(self._fill)
        elif self._chunks is not None:
            body = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        else:
            body = b""
        response = UpstreamResponse(self._status, self._headers, body)
        keep_alive = self._keep_alive
        waiter, self._waiter = self._waiter, None
        self._reset()
        if not keep_alive:
            self.abort()
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    # --------------------------------------------------------------------------------- requests

    def send(self, head: bytes, chunks: Sequence[bytes | memoryview]) -> asyncio.Future[UpstreamResponse]:
        assert self.transport is not None
        waiter: asyncio.Future[UpstreamResponse] = self.pool.loop.create_future()
        self._waiter = waiter
        self._answered = False
        if chunks:
            self.transport.writelines([head, *chunks])
        else:
            self.transport.write(head)
        return waiter

    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def fail(self, exc: Exception) -> None:
        """End the request in flight with ``exc`` and close for good."""
        waiter, self._waiter = self._waiter, None
        self.abort()
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def abort(self) -> None:
        """Close for good (an abandoned call, a protocol error); frees the pool slot at once."""
        if self.transport is not None:
            self.transport.close()
        self._lost()

    def _lost(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool.slot_freed()


def malformed(exc: Exception) -> UpstreamError:
    return UpstreamError(f"Triton sent a malformed HTTP response ({client_text(exc, 200)})", 502)
