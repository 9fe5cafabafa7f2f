"""Reading HTTP/1.1 requests off one connection: httptools framing, every bound checked as bytes arrive.

Why httptools: request framing is where smuggling, hangs and memory blow-ups live, so it is done by
llhttp (through httptools), the parser behind Node.js and uvicorn, with years of CVE fixes behind it,
kept at its strict defaults (no lenient flags). It refuses negative, duplicate and overflowing
Content-Length, Content-Length beside Transfer-Encoding, ``chunked`` anywhere but last, obs-fold, bare
LF or CR, bad chunk sizes and control characters. Where it is lenient this module checks itself: a
Transfer-Encoding other than ``chunked`` alone or in HTTP/1.0, request lines of other HTTP versions,
CONNECT and protocol upgrades, repeated headers the server reads.

Every bound is checked before the work it bounds (see ``limits.py``): header bytes and fields while the
head is parsed, Content-Length before any body byte is read, chunked and inflated sizes as they grow.
A body that arrives in one piece is handed on as is (zero-copy), a larger one is gathered in one
buffer. Parsed requests go to the connection's queue (``http_connection.py``), which answers them.
"""

from __future__ import annotations

import asyncio
import collections
import zlib
from typing import TYPE_CHECKING

import httptools

from guardedmodel_sidecar.errors import client_text
from guardedmodel_sidecar.http_types import CONTINUE, EMPTY, Failure, Reject, Request
from guardedmodel_sidecar.limits import Limits
from guardedmodel_sidecar.protocol.http_codec import HEADER_LENGTH

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
# Per framing byte allowance of a chunked body beyond its data (size line, CRLFs, short extensions).
_CHUNK_OVERHEAD = 64


class HttpRequestReader(asyncio.Protocol):
    """The parsing half of a connection: httptools callbacks that turn bytes into queued requests.

    ``HttpConnection`` sets the connection's fields declared here (the message's are set by
    ``_init_message_state``) and provides the answering, refusing and timer methods this half calls."""

    # Set by HttpConnection.__init__.
    _limits: Limits
    _max_pipelined: int
    _transport: asyncio.Transport | None
    _parser: httptools.HttpRequestParser
    _loop: asyncio.AbstractEventLoop
    _queue: collections.deque[Request | Failure]
    _queue_full: bool
    _stopped: bool
    _final: bool
    _msg_start: float
    _last_body: float

    if TYPE_CHECKING:

        def _want(self, deadline: float) -> None: ...
        def _fail(self, status: int, message: str) -> None: ...
        def _refuse(self, exc: BaseException) -> None: ...
        def _pump(self) -> None: ...
        def _stop_reading(self) -> None: ...
        def _update_reading(self) -> None: ...

    def _init_message_state(self) -> None:
        """The state of the message being parsed, before the first one."""
        self._in_message = False
        self._head_done = False
        self._seq = 0
        self._url = b""
        self._fields = 0
        self._head_bytes = 0
        self._head_raw = 0
        self._watched: list[bytes | None] = [None] * len(_WATCHED_NAMES)
        self._request: Request | None = None
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
            raise Reject(
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
            raise Reject(414, f"request target is longer than {self._limits.max_header_bytes} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        self._head_bytes += len(name) + len(value) + 4
        limits = self._limits
        if self._fields > limits.max_header_count:
            raise Reject(431, f"request has more than {limits.max_header_count} header fields")
        if self._head_bytes > limits.max_header_bytes:
            raise Reject(431, f"request head is larger than {limits.max_header_bytes} bytes")
        if self._head_done:
            return  # a trailer field of a chunked body: counted against the limits, never used
        which = _WATCHED.get(name.lower())
        if which is not None:
            if self._watched[which] is not None:
                raise Reject(400, f"request has more than one {_WATCHED_NAMES[which]} header")
            self._watched[which] = value

    def on_headers_complete(self) -> None:
        self._head_done = True
        parser = self._parser
        limits = self._limits
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            raise Reject(
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
                raise Reject(
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
                raise Reject(
                    413, f"request body of {length} bytes is above the limit of {limit} for {kind} bodies"
                )
        self._encoding = ""
        if encoding is not None:
            known = _ENCODINGS.get(encoding.strip().lower())
            if known is None:
                raise Reject(
                    415,
                    f"Content-Encoding {client_text(encoding.decode('latin-1'), 40)!r} is not accepted "
                    "(use gzip, deflate or identity)",
                )
            self._encoding = known
        has_body = chunked or length > 0
        if parser.should_upgrade():
            if raw_method == b"CONNECT":
                raise Reject(405, "CONNECT is not served by the guard sidecar")
            if has_body:
                raise Reject(400, "a request that asks to switch protocols cannot carry a body here")
            keep_alive = False  # the switch is not made; what follows the request is not HTTP to us
        if expect is not None:
            if expect.strip().lower() != b"100-continue":
                raise Reject(417, "only 'Expect: 100-continue' is supported")
            if has_body and not http10:
                # A 100 may only go out once every answer before it has been written.
                if self._queue:
                    self._continue_pending = True
                elif self._transport is not None:
                    self._transport.write(CONTINUE)
        if chunked:
            self._chunks = []
            self._max_chunks = 1024 + limit // 1024
        self._request = Request(method, self._url.decode("latin-1"), keep_alive, http10, header_length)
        if has_body:
            self._last_body = now = self._loop.time()
            self._want(now + limits.body_timeout_s)

    def on_chunk_header(self) -> None:
        self._nchunks += 1
        if self._nchunks > self._max_chunks:
            raise Reject(400, f"chunked body has more than {self._max_chunks} chunks; send larger chunks")

    def on_body(self, data: bytes) -> None:
        received = self._received + len(data)
        self._last_body = self._loop.time()
        if self._chunks is not None:
            if received > self._limit:
                raise Reject(413, f"chunked request body is above the limit of {self._limit} bytes")
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
            body = EMPTY
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
                raise Reject(413, f"the {encoding} request body inflates to more than {cap} bytes")
            data = inflater.unconsumed_tail
            if inflater.eof or (not piece and not data):
                break
    except zlib.error as exc:
        raise Reject(400, f"the {encoding} request body cannot be inflated: {exc}") from None
    if not inflater.eof:
        raise Reject(400, f"the {encoding} request body is truncated")
    if inflater.unused_data:
        raise Reject(400, f"bytes follow the end of the {encoding} request body")
    return memoryview(out)
