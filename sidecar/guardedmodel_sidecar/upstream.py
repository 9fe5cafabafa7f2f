"""The client to Triton: a bounded pool of HTTP/1.1 keep-alive connections on asyncio protocols.

Responses are parsed by httptools (llhttp, the parser behind Node.js and uvicorn, with years of CVE
fixes behind it; see triton_connection.py), never by hand: a Triton that answers garbage, or far too much, costs a connection
and an error, not the sidecar's memory. A response body is capped (``max_response_bytes``); a
Content-Length above the cap is refused before any of the body is read.

Why not aiohttp's client: at ~0.1 ms of CPU per request its generality (cookies, redirects,
compression, per-request tracing) is a third of the sidecar's whole budget. Triton is on loopback and
ours to talk to, so this client keeps at most ``max_connections`` connections open (callers beyond
that wait for one), writes a request with ``writelines`` (tensor buffers are not copied) and has one
request in flight per connection. ``Accept-Encoding: identity`` keeps Triton from compressing.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence
from typing import Any

import orjson

from guardedmodel_sidecar.errors import (
    DeadlineExceeded,
    ModelNotFound,
    Unavailable,
    UpstreamError,
    client_text,
)
from guardedmodel_sidecar.protocol.http_json import HEADER_LENGTH
from guardedmodel_sidecar.protocol.model import InferRequest, InferResponse
from guardedmodel_sidecar.protocol.triton_http_codec import decode_upstream_response, encode_upstream_request
from guardedmodel_sidecar.triton_connection import (
    ConnectionClosed,
    TritonConnection,
    UpstreamResponse,
)

_HEADER_LENGTH_LOWER = HEADER_LENGTH.lower()
GIB = 1024 * 1024 * 1024


class UpstreamTimeout(DeadlineExceeded, Unavailable):
    """Triton did not answer in time (the request timeout, or the caller's shorter deadline): 504 and
    DEADLINE_EXCEEDED, and still an ``Unavailable`` for the health probes that treat it so."""


def _expire(waiter: asyncio.Future[UpstreamResponse]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class TritonHttp:
    """A pool of keep-alive connections to one Triton HTTP endpoint ("host:port")."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 60.0,
        max_connections: int = 64,
        max_response_bytes: int = GIB,
        restricted_header: tuple[str, str] | None = None,
    ) -> None:
        host, _, port = url.rpartition(":")
        self.url = url
        self.host = host or "127.0.0.1"
        self.port = int(port)
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self.max_response_bytes = max_response_bytes
        self._idle: collections.deque[TritonConnection] = collections.deque()
        self._waiters: collections.deque[asyncio.Future[TritonConnection | None]] = collections.deque()
        self._open = 0
        # Connections with a request in flight, so that a hung Triton's calls can be abandoned.
        self._busy: set[TritonConnection] = set()
        # Why Triton is taken for down (set by the liveness watch, triton_watch.py); while set, every
        # call fails at once with this reason instead of waiting on a Triton that does not answer.
        self.down: str | None = None
        self._host_header = f"Host: {url}\r\n"
        # Triton's restricted-API header, on the sidecar's model-repository calls (index, load, unload)
        # only: those are the restricted calls it makes itself or forwards, rebuilt, for a caller.
        self._restricted = ""
        if restricted_header:
            name, value = restricted_header
            if not (name.isascii() and name.isprintable() and value.isascii() and value.isprintable()):
                raise ValueError("the restricted-API header needs a printable ASCII name and value")
            self._restricted = f"{name}: {value}\r\n"
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        # Cached: asyncio.get_running_loop() makes a getpid() system call on every use (Python 3.11).
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    @property
    def open_connections(self) -> int:
        return self._open

    # ------------------------------------------------------------------------------------ pool

    async def _acquire(self, deadline: float) -> TritonConnection:
        idle = self._idle
        while True:
            if self.down is not None:
                raise Unavailable(self.down)
            while idle:
                conn = idle.pop()
                if conn.usable():
                    conn.reused = True
                    return conn
                conn.abort()
            if self._open < self.max_connections:
                self._open += 1
                try:
                    return await self._connect(deadline)
                except BaseException:
                    self.slot_freed()
                    raise
            # Every connection is busy: wait for one to come back or to close.
            waiter: asyncio.Future[TritonConnection | None] = self.loop.create_future()
            self._waiters.append(waiter)
            try:
                got = await asyncio.wait_for(waiter, max(deadline - self.loop.time(), 0.0))
            except TimeoutError:
                raise UpstreamTimeout(
                    f"no connection to Triton at {self.url} came free in time "
                    f"({self.max_connections} are open and busy)"
                ) from None
            except BaseException:
                if waiter.done() and not waiter.cancelled() and waiter.result() is not None:
                    self._release(waiter.result())  # type: ignore[arg-type]
                raise
            if got is not None:
                got.reused = True
                return got

    async def _connect(self, deadline: float) -> TritonConnection:
        loop = self.loop
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: TritonConnection(self), self.host, self.port),
                max(deadline - loop.time(), 0.001),
            )
        except TimeoutError:
            raise UpstreamTimeout(f"Triton at {self.url} did not accept a connection in time") from None
        except OSError as exc:
            raise Unavailable(f"Triton at {self.url} is not reachable: {exc.strerror or exc}") from None
        return conn

    def _release(self, conn: TritonConnection) -> None:
        if not conn.usable():
            conn.abort()
            return
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._idle.append(conn)

    def slot_freed(self) -> None:
        self._open -= 1
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the waiter may open a connection of its own now
                return

    # -------------------------------------------------------------------------------- requests

    async def request(
        self,
        method: str,
        path: str,
        chunks: Sequence[bytes | memoryview] = (),
        extra_headers: str = "",
        *,
        timeout_s: float | None = None,
    ) -> UpstreamResponse:
        """One request; ``path`` and ``extra_headers`` are the sidecar's own, never a caller's bytes."""
        length = 0
        for chunk in chunks:
            length += len(chunk)
        if self._restricted and path.startswith("/v2/repository/"):
            extra_headers += self._restricted
        head = (
            f"{method} {path} HTTP/1.1\r\n{self._host_header}Content-Length: {length}\r\n"
            f"Accept-Encoding: identity\r\n{extra_headers}\r\n"
        ).encode("latin-1")
        loop = self.loop
        limit = self.timeout_s if timeout_s is None else timeout_s
        deadline = loop.time() + limit
        # A pooled connection may have been closed by Triton while idle: retry once on a fresh one
        # (safe: nothing of an answer came back, and the request never reached a live connection).
        for attempt in (1, 2):
            conn = await self._acquire(deadline)
            if self.down is not None:  # taken for down while this call was connecting
                self._release(conn)
                raise Unavailable(self.down)
            waiter = conn.send(head, chunks)
            timer = loop.call_at(deadline, _expire, waiter)
            busy = self._busy
            busy.add(conn)
            try:
                response = await waiter
            except ConnectionClosed as exc:
                if attempt == 1 and conn.reused and not exc.answered:
                    continue
                raise Unavailable(f"Triton at {self.url}: {exc}") from None
            except asyncio.CancelledError:
                # The caller gave up (gRPC deadline or cancel): Triton's answer is still coming on this
                # connection, so it can never be reused; close it rather than leak it.
                conn.abort()
                raise
            except TimeoutError:
                conn.abort()
                raise UpstreamTimeout(f"Triton at {self.url} did not answer within {limit:g} s") from None
            finally:
                timer.cancel()
                busy.discard(conn)
            self._release(conn)
            return response
        raise AssertionError("unreachable")

    async def infer(
        self,
        model: str,
        version: str,
        header: bytes,
        buffers: Sequence[bytes | memoryview],
        *,
        timeout_s: float | None = None,
    ) -> InferResponse:
        path = f"/v2/models/{model}/versions/{version}/infer" if version else f"/v2/models/{model}/infer"
        response = await self.request(
            "POST", path, [header, *buffers], f"{HEADER_LENGTH}: {len(header)}\r\n", timeout_s=timeout_s
        )
        if response.status != 200:
            raise _error_from(response, model, version)
        header_length = response.headers.get(_HEADER_LENGTH_LOWER)
        try:
            length = None if header_length is None else int(header_length)
        except ValueError:
            raise UpstreamError(
                f"Triton sent a bad {HEADER_LENGTH}: {client_text(header_length, 40)}", 502
            ) from None
        return decode_upstream_response(response.body, length)

    async def infer_request(
        self,
        model: str,
        version: str,
        request: InferRequest,
        outputs: list[str] | None,
        *,
        timeout_s: float | None = None,
    ) -> InferResponse:
        """``request`` to Triton in the v2 binary form, asking for ``outputs`` (None: all of them)."""
        header, buffers = encode_upstream_request(request, outputs)
        return await self.infer(model, version, header, buffers, timeout_s=timeout_s)

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

    # ------------------------------------------------------------------------------ Triton down

    def mark_down(self, reason: str, *, abandon: bool) -> None:
        """Take Triton for down: calls fail at once with ``reason`` (503, UNAVAILABLE) until
        ``mark_up``; callers waiting for a connection get it now. ``abandon``: Triton is hung (it
        accepts connections and answers nothing), so the calls in flight get it too, instead of
        waiting out their deadline on a Triton that may never answer; their connections are closed."""
        self.down = reason
        while self._idle:
            self._idle.pop().abort()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # _acquire sees ``down`` and refuses
        if abandon:
            for conn in list(self._busy):
                conn.fail(Unavailable(f"{reason}; the call was abandoned"))

    def mark_up(self) -> None:
        self.down = None

    def close(self) -> None:
        while self._idle:
            self._idle.pop().abort()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(Unavailable(f"the client to Triton at {self.url} is closed"))


def _error_from(response: UpstreamResponse, model: str, version: str) -> Exception:
    try:
        message = (response.json() or {}).get("error") or f"HTTP {response.status}"
    except (orjson.JSONDecodeError, AttributeError):
        message = bytes(response.body[:200]).decode("utf-8", "replace") or f"HTTP {response.status}"
    message = client_text(message)
    lowered = message.lower()
    if response.status in (400, 404) and ("unknown model" in lowered or "is not found" in lowered):
        where = f"'{model}' version {version}" if version else f"'{model}'"
        return ModelNotFound(f"model {where} is not available in Triton: {message}")
    if "not ready" in lowered or response.status == 503:
        return Unavailable(f"Triton cannot serve '{model}' version {version or 'default'}: {message}")
    # Triton's own failure (a crashed or wedged backend) is a bad gateway to the caller, apart from a
    # fault of the sidecar's (500): alerts and clients tell the two apart. Its 4xx pass unchanged.
    status = 502 if response.status >= 500 and response.status != 504 else response.status
    return UpstreamError(f"Triton: {message}", status)
