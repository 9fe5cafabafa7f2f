"""One HTTP/1.1 client connection: requests answered in order, one at a time, with one timer.

Why not a framework (aiohttp, uvicorn): measured on this class of machine, HTTP plumbing is ~80 % of
a Python proxy's CPU per request. So the adapter keeps only what sits around the parser: one asyncio
protocol per connection, in-order answers to pipelined requests, ``Expect: 100-continue``, keep-alive
and HTTP/1.0. Reading is in ``http_request_reader.py``; what to answer is ``V2HttpServer``'s.

Header/body/idle time is bounded with one timer per connection, requests parsed ahead per connection
and open connections per server (see ``limits.py``). A request refused for its framing or size gets a
4xx with a v2 error body and the connection closes; a 500 means a bug in the sidecar, and never echoes
a caller's bytes.
"""

from __future__ import annotations

import asyncio
import collections
import http
import logging
import traceback
from typing import TYPE_CHECKING

import httptools

from guardedmodel_sidecar.errors import client_text
from guardedmodel_sidecar.http_request_reader import HttpRequestReader
from guardedmodel_sidecar.http_types import CONTINUE, JSON, Failure, Reject, Reply, Request
from guardedmodel_sidecar.protocol.http_codec import encode_error

if TYPE_CHECKING:
    from guardedmodel_sidecar.http_server import V2HttpServer

log = logging.getLogger(__name__)


def _bug_text(exc: BaseException) -> str:
    """One log line about a bug, without any caller byte unescaped (the traceback has frames only)."""
    frames = "".join(traceback.format_tb(exc.__traceback__))
    return f"{type(exc).__name__}: {client_text(exc)}\n{frames}"


# How long a connection closed by a graceful stop reads (and drops) what its client still sends.
LINGER_S = 1.0

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


class HttpConnection(HttpRequestReader):
    """One client connection: httptools parses, requests queue in order, one is answered at a time."""

    def __init__(self, server: V2HttpServer) -> None:
        self._server = server
        self._limits = server.limits
        self._max_pipelined = server.limits.max_pipelined_requests
        self._transport: asyncio.Transport | None = None
        # Cached: asyncio.get_running_loop() makes a getpid() system call on every use (Python 3.11).
        self._loop = asyncio.get_running_loop()
        # Requests parsed and not yet answered, the first one in flight when ``_busy``.
        self._queue: collections.deque[Request | Failure] = collections.deque()
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
        self._parser = httptools.HttpRequestParser(self)
        self._init_message_state()

    # ----------------------------------------------------------------------------- transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        server = self._server
        server.open.add(self)
        if server.draining:
            transport.close()  # accepted just before the listening socket closed
            return
        if server.connections > self._limits.max_connections:
            self._stopped = True
            message = f"the sidecar has {self._limits.max_connections} connections open; retry shortly"
            self._write(503, JSON, [encode_error(message)], {"Retry-After": "1"}, False, False, False)
            transport.close()
            return
        self._idle_since = self._loop.time()
        self._want(self._idle_since + self._limits.idle_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.open.discard(self)
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

    # ------------------------------------------------------------------------------------ answers

    def _pump(self) -> None:
        """Answer queued requests in order: at once when no waiting is needed, else in one task."""
        queue = self._queue
        server = self._server
        while queue and not self._busy and not self._write_paused and self._transport is not None:
            item = queue[0]
            if type(item) is Failure:
                queue.clear()
                self._write(item.status, JSON, [encode_error(item.message)], None, False, False, False)
                self._close()
                return
            assert isinstance(item, Request)
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

    async def _run(self, request: Request) -> None:
        try:
            reply = await self._server.answer(request)
        except Exception as exc:
            reply = self._bug_reply(exc, request)
        self._busy = False
        if self._transport is not None and self._finish(request, reply):
            self._pump()

    def _finish(self, request: Request, reply: Reply) -> bool:
        """Write the answer to the first queued request; False once the connection is done."""
        self._queue.popleft()
        status, content_type, chunks, extra = reply
        keep_alive = request.keep_alive and not (self._server.draining and not self._queue)
        self._write(status, content_type, chunks, extra, keep_alive, request.http10, request.head_only)
        if not keep_alive or (self._eof and not self._queue):
            if self._server.draining:
                self._close_lingering()
            else:
                self._close()
            return False
        if self._queue_full and len(self._queue) < self._max_pipelined:
            self._queue_full = False
            self._update_reading()
            self._refresh_deadlines()
        if not self._queue:
            if self._continue_pending and self._transport is not None:
                self._continue_pending = False
                self._transport.write(CONTINUE)
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

    def _bug_reply(self, exc: BaseException, request: Request) -> Reply:
        log.error(
            "bug while serving %s %s: %s", request.method, client_text(request.target, 200), _bug_text(exc)
        )
        message = f"internal error in the guard sidecar ({type(exc).__name__}); it is logged"
        return 500, JSON, [encode_error(message)], None

    # ------------------------------------------------------------------------------------ refusals

    def _refuse(self, exc: BaseException) -> None:
        if isinstance(exc, Reject):
            self._fail(exc.status, exc.message)
            return
        log.error("bug while reading a request: %s", _bug_text(exc))
        self._fail(
            500, f"internal error in the guard sidecar ({type(exc).__name__}) while reading the request"
        )

    def _fail(self, status: int, message: str) -> None:
        """Refuse the request being read: answered after those before it, then the connection closes."""
        if self._queue and type(self._queue[-1]) is Failure:
            return
        log.debug("refused a request with %d: %s", status, message)
        self._stop_reading()
        self._in_message = False
        self._continue_pending = False
        self._queue.append(Failure(status, client_text(message)))
        self._pump()

    def drain(self) -> None:
        """The server is stopping: read no more requests, answer those read, then close (a request
        only partly read is dropped, unanswered, as when a client's connection breaks)."""
        self._stop_reading()
        self._in_message = False
        self._continue_pending = False
        if not self._queue and not self._busy:
            self._close()

    def _close_lingering(self) -> None:
        """Close after the last answer of a graceful stop without resetting the connection: the client
        may have sent another request meanwhile, and closing a socket with unread bytes sends a reset,
        which can destroy answers the client has not read yet. So: FIN first, then read and discard
        what still comes until the client closes, for at most LINGER_S (nginx's lingering close)."""
        transport = self._transport
        if transport is None:
            return
        self._stopped = True  # data_received discards from here on
        if self._timer is not None:
            self._timer.cancel()
        if self._eof or not transport.can_write_eof():  # the client has sent all it will send
            self._close()
            return
        transport.write_eof()
        transport.resume_reading()
        self._timer = self._loop.call_later(LINGER_S, transport.close)

    def abort(self) -> None:
        self._stopped = True
        if self._transport is not None:
            self._transport.abort()

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
