"""The client to Triton: HTTP/1.1 keep-alive connections on asyncio protocols, binary tensors only.

Why not aiohttp's client: at ~0.1 ms of CPU per request its generality (cookies, redirects,
compression, per-request tracing) is a third of the sidecar's whole budget. Triton is on loopback,
speaks plain HTTP/1.1 with Content-Length bodies, and is ours to talk to, so this client keeps a pool
of open connections, writes one request with ``writelines`` (tensor buffers are not copied) and parses
one response per connection at a time. ``Accept-Encoding: identity`` keeps Triton from compressing.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence
from typing import Any

import orjson

from guardedmodel_sidecar.errors import ModelNotFound, Unavailable, UpstreamError
from guardedmodel_sidecar.protocol.http_codec import HEADER_LENGTH, decode_upstream_response
from guardedmodel_sidecar.protocol.model import InferResponse

_HEADER_LENGTH_LOWER = HEADER_LENGTH.lower()


class UpstreamResponse:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes | memoryview) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return orjson.loads(self.body) if len(self.body) else None


class _Connection(asyncio.Protocol):
    """One keep-alive connection; at most one request in flight."""

    def __init__(self, on_lost: collections.deque[_Connection]) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._waiter: asyncio.Future[UpstreamResponse] | None = None
        self._idle = on_lost
        self.closed = False
        # Cached: asyncio.get_running_loop() makes a getpid() system call on every use (Python 3.11).
        self.loop = asyncio.get_running_loop()
        self._reset_parse()

    def _reset_parse(self) -> None:
        self._head_end = -1
        self._status = 0
        self._headers: dict[str, str] = {}
        self._length = -1
        self._chunked = False
        self._keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionError(f"Triton closed the connection: {exc or 'EOF'}"))
        self._waiter = None

    def send(self, head: bytes, chunks: Sequence[bytes | memoryview]) -> asyncio.Future[UpstreamResponse]:
        assert self.transport is not None
        waiter: asyncio.Future[UpstreamResponse] = self.loop.create_future()
        self._waiter = waiter
        if chunks:
            self.transport.writelines([head, *chunks])
        else:
            self.transport.write(head)
        return waiter

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:
            # Nothing asked for: a protocol error on Triton's side; this connection cannot be trusted.
            self.closed = True
            if self.transport is not None:
                self.transport.close()
            return
        self._buf += data
        self._parse()

    def _parse(self) -> None:
        buf = self._buf
        if self._head_end < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            self._head_end = end + 4
            lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
            parts = lines[0].split(" ", 2)
            self._status = int(parts[1])
            headers = self._headers
            for line in lines[1:]:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
            if headers.get("transfer-encoding", "").lower() == "chunked":
                self._chunked = True
            else:
                self._length = int(headers.get("content-length", "0"))
            self._keep_alive = headers.get("connection", "").lower() != "close"
        start = self._head_end
        body: bytes | memoryview | None
        if self._chunked:
            body = self._dechunk(start)
            if body is None:
                return
        else:
            if len(buf) - start < self._length:
                return
            # Hand the buffer over instead of copying the body out of it.
            self._buf = bytearray()
            body = memoryview(buf)[start : start + self._length]
        waiter, self._waiter = self._waiter, None
        response = UpstreamResponse(self._status, self._headers, body)  # body is set on every path here
        keep = self._keep_alive
        self._reset_parse()
        if not keep:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    def _dechunk(self, start: int) -> bytes | None:
        buf = self._buf
        out = bytearray()
        pos = start
        while True:
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0:
                return None
            size = int(bytes(buf[pos:line_end]).split(b";")[0], 16)
            pos = line_end + 2
            if size == 0:
                trailer_end = buf.find(b"\r\n", pos)
                if trailer_end < 0:
                    return None
                self._buf = bytearray()
                return bytes(out)
            if len(buf) < pos + size + 2:
                return None
            out += buf[pos : pos + size]
            pos += size + 2


class TritonHttp:
    """A pool of keep-alive connections to one Triton HTTP endpoint ("host:port")."""

    def __init__(self, url: str, *, timeout_s: float = 60.0, max_idle: int = 64) -> None:
        host, _, port = url.rpartition(":")
        self.url = url
        self.host = host or "127.0.0.1"
        self.port = int(port)
        self.timeout_s = timeout_s
        self.max_idle = max_idle
        self._idle: collections.deque[_Connection] = collections.deque()
        self._host_header = f"Host: {url}\r\n"

    async def _acquire(self) -> _Connection:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(lambda: _Connection(idle), self.host, self.port)
        except OSError as exc:
            raise Unavailable(f"Triton at {self.url} is not reachable: {exc.strerror or exc}") from None
        return conn

    def _release(self, conn: _Connection) -> None:
        if not conn.closed and len(self._idle) < self.max_idle:
            self._idle.append(conn)
        elif conn.transport is not None and not conn.closed:
            conn.transport.close()

    async def request(
        self,
        method: str,
        path: str,
        chunks: Sequence[bytes | memoryview] = (),
        extra_headers: str = "",
        *,
        timeout_s: float | None = None,
    ) -> UpstreamResponse:
        length = sum(len(c) for c in chunks)
        head = (
            f"{method} {path} HTTP/1.1\r\n{self._host_header}Content-Length: {length}\r\n"
            f"Accept-Encoding: identity\r\n{extra_headers}\r\n"
        ).encode("latin-1")
        # A pooled connection may have been closed by Triton while idle: retry once on a fresh one
        # (safe: the request never reached Triton when the write hits a closed socket).
        for attempt in (1, 2):
            conn = await self._acquire()
            waiter = conn.send(head, chunks)
            timer = conn.loop.call_later(timeout_s or self.timeout_s, _expire, waiter, self.url)
            try:
                response = await waiter
            except ConnectionError as exc:
                if attempt == 2 or conn.transport is None:
                    raise Unavailable(f"Triton at {self.url}: {exc}") from None
                continue
            except asyncio.CancelledError:
                # The caller gave up (gRPC deadline or cancel): Triton's answer is still coming on this
                # connection, so it can never be reused; close it rather than leak it.
                conn.closed = True
                if conn.transport is not None:
                    conn.transport.close()
                raise
            except TimeoutError:
                if conn.transport is not None:
                    conn.transport.close()
                raise Unavailable(
                    f"Triton at {self.url} did not answer within {timeout_s or self.timeout_s} s"
                ) from None
            finally:
                timer.cancel()
            self._release(conn)
            return response
        raise AssertionError("unreachable")

    async def infer(
        self, model: str, version: str, header: bytes, buffers: Sequence[bytes | memoryview]
    ) -> InferResponse:
        path = f"/v2/models/{model}/versions/{version}/infer" if version else f"/v2/models/{model}/infer"
        response = await self.request("POST", path, [header, *buffers], f"{HEADER_LENGTH}: {len(header)}\r\n")
        if response.status != 200:
            raise _error_from(response, model, version)
        header_length = response.headers.get(_HEADER_LENGTH_LOWER)
        return decode_upstream_response(response.body, None if header_length is None else int(header_length))

    async def get_json(self, path: str, *, timeout_s: float | None = None) -> tuple[int, Any]:
        response = await self.request("GET", path, timeout_s=timeout_s)
        try:
            return response.status, response.json()
        except orjson.JSONDecodeError:
            return response.status, None

    async def post_json(self, path: str, body: Any, *, timeout_s: float | None = None) -> tuple[int, Any]:
        response = await self.request(
            "POST", path, [orjson.dumps(body)], "Content-Type: application/json\r\n", timeout_s=timeout_s
        )
        try:
            return response.status, response.json()
        except orjson.JSONDecodeError:
            return response.status, None

    async def is_live(self) -> bool:
        try:
            response = await self.request("GET", "/v2/health/live", timeout_s=2.0)
        except Unavailable:
            return False
        return response.status == 200

    async def is_ready(self) -> bool:
        try:
            response = await self.request("GET", "/v2/health/ready", timeout_s=2.0)
        except Unavailable:
            return False
        return response.status == 200

    def close(self) -> None:
        while self._idle:
            conn = self._idle.pop()
            if conn.transport is not None:
                conn.transport.close()


def _expire(waiter: asyncio.Future[UpstreamResponse], url: str) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError(f"Triton at {url} timed out"))


def _error_from(response: UpstreamResponse, model: str, version: str) -> Exception:
    try:
        message = (response.json() or {}).get("error") or f"HTTP {response.status}"
    except orjson.JSONDecodeError:
        message = bytes(response.body[:200]).decode("utf-8", "replace") or f"HTTP {response.status}"
    lowered = message.lower()
    if response.status in (400, 404) and ("unknown model" in lowered or "is not found" in lowered):
        where = f"'{model}' version {version}" if version else f"'{model}'"
        return ModelNotFound(f"model {where} is not available in Triton: {message}")
    if "not ready" in lowered or response.status == 503:
        return Unavailable(f"Triton cannot serve '{model}' version {version or 'default'}: {message}")
    return UpstreamError(f"Triton: {message}", response.status)
