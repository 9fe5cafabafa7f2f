"""A deliberately small, deliberately permissive HTTP/2 client for attack tests.

A real client (grpcio, h2) refuses to send what an attacker sends: reserved metadata such as a
400-digit ``grpc-timeout``, a message flagged as compressed with bytes we built ourselves, PADDED
frames with no payload, floods of empty CONTINUATION frames or of reset streams. This client writes
frames exactly as told. It encodes header fields as HPACK literals without indexing and without
Huffman coding (always valid, RFC 7541 6.2.2), and decodes the server's answers with the ``hpack``
package when it is installed, else with a minimal decoder (static + dynamic table, raw literals),
which is all grpc core's encoder emits for the fields these tests read.

Test code only: it never serves anyone, and the product never imports it.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from attack_wire import RawSocket

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    range(10)
)
END_STREAM, ACK, END_HEADERS, PADDED = 0x1, 0x1, 0x4, 0x8

SERVICE = "inference.GRPCInferenceService"


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes((kind, flags)) + struct.pack(">I", stream_id) + payload


def _int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """HPACK integer (RFC 7541 5.1) with ``first`` holding the pattern bits above the prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_fields(fields: Iterable[tuple[bytes | str, bytes | str]]) -> bytes:
    """Literal header fields without indexing, new names, raw strings: any bytes pass as they are."""
    out = bytearray()
    for name, value in fields:
        n = name.encode() if isinstance(name, str) else name
        v = value.encode() if isinstance(value, str) else value
        out += b"\x00" + _int(len(n), 7) + n + _int(len(v), 7) + v
    return bytes(out)


def grpc_message(payload: bytes, *, compressed: bool = False) -> bytes:
    return bytes((1 if compressed else 0,)) + struct.pack(">I", len(payload)) + payload


def grpc_request_fields(
    method: str, extra: Iterable[tuple[str | bytes, str | bytes]] = (), *, authority: str = "sidecar"
) -> list[tuple[bytes | str, bytes | str]]:
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", f"/{SERVICE}/{method}"),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        *extra,
    ]


# ------------------------------------------------------------------------------------ HPACK decoding

_STATIC = [
    (b":authority", b""), (b":method", b"GET"), (b":method", b"POST"), (b":path", b"/"),
    (b":path", b"/index.html"), (b":scheme", b"http"), (b":scheme", b"https"), (b":status", b"200"),
    (b":status", b"204"), (b":status", b"206"), (b":status", b"304"), (b":status", b"400"),
    (b":status", b"404"), (b":status", b"500"), (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"), (b"accept-language", b""), (b"accept-ranges", b""),
    (b"accept", b""), (b"access-control-allow-origin", b""), (b"age", b""), (b"allow", b""),
    (b"authorization", b""), (b"cache-control", b""), (b"content-disposition", b""),
    (b"content-encoding", b""), (b"content-language", b""), (b"content-length", b""),
    (b"content-location", b""), (b"content-range", b""), (b"content-type", b""), (b"cookie", b""),
    (b"date", b""), (b"etag", b""), (b"expect", b""), (b"expires", b""), (b"from", b""), (b"host", b""),
    (b"if-match", b""), (b"if-modified-since", b""), (b"if-none-match", b""), (b"if-range", b""),
    (b"if-unmodified-since", b""), (b"last-modified", b""), (b"link", b""), (b"location", b""),
    (b"max-forwards", b""), (b"proxy-authenticate", b""), (b"proxy-authorization", b""), (b"range", b""),
    (b"referer", b""), (b"refresh", b""), (b"retry-after", b""), (b"server", b""), (b"set-cookie", b""),
    (b"strict-transport-security", b""), (b"transfer-encoding", b""), (b"user-agent", b""), (b"vary", b""),
    (b"via", b""), (b"www-authenticate", b""),
]  # fmt: skip


class HuffmanValue(Exception):
    """The minimal decoder met a Huffman-coded string (install ``hpack`` to read it)."""


class MiniDecoder:
    """RFC 7541 decoding without Huffman: static and dynamic tables, all literal forms, size updates."""

    def __init__(self) -> None:
        self.table: list[tuple[bytes, bytes]] = []
        self.max_size = 4096

    def _size(self) -> int:
        return sum(len(n) + len(v) + 32 for n, v in self.table)

    def _evict(self) -> None:
        while self.table and self._size() > self.max_size:
            self.table.pop()

    def _entry(self, index: int) -> tuple[bytes, bytes]:
        if 1 <= index <= len(_STATIC):
            return _STATIC[index - 1]
        return self.table[index - len(_STATIC) - 1]

    @staticmethod
    def _read_int(data: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
        limit = (1 << prefix_bits) - 1
        value = data[pos] & limit
        pos += 1
        if value < limit:
            return value, pos
        shift = 0
        while True:
            byte = data[pos]
            pos += 1
            value += (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value, pos

    def _read_str(self, data: bytes, pos: int) -> tuple[bytes, int]:
        huffman = bool(data[pos] & 0x80)
        length, pos = self._read_int(data, pos, 7)
        raw = data[pos : pos + length]
        if huffman:
            raise HuffmanValue("Huffman-coded header string")
        return raw, pos + length

    def decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        pos = 0
        while pos < len(block):
            byte = block[pos]
            if byte & 0x80:  # indexed field
                index, pos = self._read_int(block, pos, 7)
                out.append(self._entry(index))
            elif byte & 0x40:  # literal with incremental indexing
                index, pos = self._read_int(block, pos, 6)
                name = self._entry(index)[0] if index else None
                if name is None:
                    name, pos = self._read_str(block, pos)
                value, pos = self._read_str(block, pos)
                out.append((name, value))
                self.table.insert(0, (name, value))
                self._evict()
            elif byte & 0x20:  # dynamic table size update
                self.max_size, pos = self._read_int(block, pos, 5)
                self._evict()
            else:  # literal without indexing / never indexed
                index, pos = self._read_int(block, pos, 4)
                name = self._entry(index)[0] if index else None
                if name is None:
                    name, pos = self._read_str(block, pos)
                value, pos = self._read_str(block, pos)
                out.append((name, value))
        return out


def _decoder() -> object:
    try:
        import hpack  # type: ignore[import-not-found,unused-ignore]

        decoder = hpack.Decoder()
        decoder.max_header_list_size = 1 << 20
        return decoder
    except ImportError:
        return MiniDecoder()


def _decode(decoder: object, block: bytes) -> list[tuple[bytes, bytes]]:
    fields = (
        decoder.decode(block, raw=True) if not isinstance(decoder, MiniDecoder) else decoder.decode(block)
    )  # type: ignore[attr-defined]
    return [(bytes(n), bytes(v)) for n, v in fields]


# ------------------------------------------------------------------------------------ the connection


@dataclass
class StreamResult:
    """What came back on one stream; ``grpc_status`` is None when the stream carried none."""

    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    data: bytes = b""
    rst_code: int | None = None  # RST_STREAM error code
    goaway_code: int | None = None  # GOAWAY error code, if the connection was ended
    closed: bool = False  # the socket was closed (or reset) before the stream ended
    ended: bool = False  # END_STREAM seen

    def header(self, name: bytes) -> bytes | None:
        for key, value in reversed(self.headers):
            if key == name:
                return value
        return None

    @property
    def grpc_status(self) -> int | None:
        value = self.header(b"grpc-status")
        return int(value) if value is not None and value.isdigit() else None

    @property
    def grpc_message(self) -> str:
        return (self.header(b"grpc-message") or b"").decode("utf-8", "replace")

    @property
    def refused(self) -> bool:
        """The server ended the stream or the connection without a gRPC status."""
        return self.grpc_status is None and (
            self.rst_code is not None or self.goaway_code is not None or self.closed
        )


class RawH2(RawSocket):
    """One HTTP/2 connection over a blocking socket; the test decides every byte that is sent."""

    def __init__(self, host: str, port: int, *, timeout: float = 5.0, settings: bytes = b"") -> None:
        super().__init__((host, port), timeout=timeout)
        self.timeout = timeout
        self._buf = b""
        self._decoder = _decoder()
        self._next_stream = 1
        self.peer_initial_window = 65535
        self.peer_max_frame = 16384
        self.conn_window = 65535
        self.stream_windows: dict[int, int] = {}
        self.streams: dict[int, StreamResult] = {}
        self.goaway_code: int | None = None
        self.closed = False
        self._header_block: tuple[int, int, bytearray] | None = None  # (stream, flags, fragments)
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0, settings))

    def new_stream(self) -> int:
        stream_id = self._next_stream
        self._next_stream += 2
        self.streams[stream_id] = StreamResult()
        self.stream_windows[stream_id] = self.peer_initial_window
        return stream_id

    def peer_closed(self) -> None:
        self.closed = True

    def send_headers(
        self, stream_id: int, fields: Iterable[tuple[bytes | str, bytes | str]], *, end_stream: bool = False
    ) -> bool:
        block = encode_fields(fields)
        flags = END_HEADERS | (END_STREAM if end_stream else 0)
        if len(block) <= self.peer_max_frame:
            return self.send(frame(HEADERS, flags, stream_id, block))
        chunks = [block[i : i + self.peer_max_frame] for i in range(0, len(block), self.peer_max_frame)]
        out = frame(HEADERS, END_STREAM if end_stream else 0, stream_id, chunks[0])
        for i, chunk in enumerate(chunks[1:], 1):
            out += frame(CONTINUATION, END_HEADERS if i == len(chunks) - 1 else 0, stream_id, chunk)
        return self.send(out)

    def send_data(
        self, stream_id: int, payload: bytes, *, end_stream: bool = True, deadline: float = 10.0
    ) -> bool:
        """DATA within the peer's flow-control windows, waiting for WINDOW_UPDATEs; False when the
        stream or connection ended first (the server refused before taking everything)."""
        until = time.monotonic() + deadline
        pos = 0
        while pos < len(payload) or (end_stream and pos == len(payload) == 0):
            stream = self.streams[stream_id]
            if stream.ended or stream.rst_code is not None or self.goaway_code is not None or self.closed:
                return False
            room = min(self.conn_window, self.stream_windows.get(stream_id, 0), self.peer_max_frame)
            if room <= 0 and pos < len(payload):
                if time.monotonic() > until:
                    return False
                self._pump(min(0.5, max(0.01, until - time.monotonic())))
                continue
            chunk = payload[pos : pos + room]
            pos += len(chunk)
            last = pos >= len(payload)
            if not self.send(frame(DATA, END_STREAM if (last and end_stream) else 0, stream_id, chunk)):
                return False
            self.conn_window -= len(chunk)
            self.stream_windows[stream_id] = self.stream_windows.get(stream_id, 0) - len(chunk)
            if last:
                return True
        return True

    def call(
        self,
        method: str,
        body: bytes = b"",
        *,
        extra: Iterable[tuple[str | bytes, str | bytes]] = (),
        compressed: bool = False,
        wait: float = 5.0,
    ) -> StreamResult:
        """One unary gRPC call with exactly these headers and this (possibly compressed) message."""
        stream_id = self.new_stream()
        self.send_headers(stream_id, grpc_request_fields(method, extra))
        self.send_data(stream_id, grpc_message(body, compressed=compressed), deadline=wait)
        return self.wait(stream_id, wait)

    def wait(self, stream_id: int, timeout: float) -> StreamResult:
        deadline = time.monotonic() + timeout
        result = self.streams[stream_id]
        while not (
            result.ended or result.rst_code is not None or result.goaway_code is not None or result.closed
        ):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._pump(left)
        return result

    def wait_closed(self, timeout: float) -> bool:
        """True when the server closed the connection (after a GOAWAY or not) within ``timeout``."""
        deadline = time.monotonic() + timeout
        while not self.closed and time.monotonic() < deadline:
            self._pump(deadline - time.monotonic())
        return self.closed

    def drain(self, timeout: float) -> None:
        """Read and handle whatever arrives for ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not self.closed and time.monotonic() < deadline:
            self._pump(deadline - time.monotonic())

    # -------------------------------------------------------------------------------- reading

    def _pump(self, timeout: float) -> None:
        if self.closed:
            return
        chunk = self.receive(max(0.001, timeout))
        if chunk is None:
            return
        if not chunk:
            self._mark_closed()
            return
        self._buf += chunk
        while len(self._buf) >= 9:
            length = int.from_bytes(self._buf[:3], "big")
            if len(self._buf) < 9 + length:
                break
            kind, flags = self._buf[3], self._buf[4]
            stream_id = int.from_bytes(self._buf[5:9], "big") & 0x7FFFFFFF
            payload = self._buf[9 : 9 + length]
            self._buf = self._buf[9 + length :]
            self._handle(kind, flags, stream_id, payload)

    def _mark_closed(self) -> None:
        self.closed = True
        for result in self.streams.values():
            if not result.ended:
                result.closed = True

    def _handle(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if kind == SETTINGS and not flags & ACK:
            for i in range(0, len(payload) - 5, 6):
                key, value = struct.unpack(">HI", payload[i : i + 6])
                if key == 4:  # INITIAL_WINDOW_SIZE
                    delta = value - self.peer_initial_window
                    self.peer_initial_window = value
                    for sid in self.stream_windows:
                        self.stream_windows[sid] += delta
                elif key == 5:
                    self.peer_max_frame = value
            self.send(frame(SETTINGS, ACK, 0))
        elif kind == PING and not flags & ACK:
            self.send(frame(PING, ACK, 0, payload))
        elif kind == WINDOW_UPDATE and len(payload) == 4:
            increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
            if stream_id == 0:
                self.conn_window += increment
            else:
                self.stream_windows[stream_id] = self.stream_windows.get(stream_id, 0) + increment
        elif kind in (HEADERS, CONTINUATION):
            fragment = payload
            if kind == HEADERS:
                if flags & PADDED and payload:
                    fragment = payload[1 : len(payload) - payload[0]]
                if flags & 0x20:  # PRIORITY
                    fragment = fragment[5:]
                self._header_block = (stream_id, flags, bytearray(fragment))
            elif self._header_block is not None:
                self._header_block[2].extend(fragment)
            if flags & END_HEADERS and self._header_block is not None:
                sid, first_flags, block = self._header_block
                self._header_block = None
                result = self.streams.setdefault(sid, StreamResult())
                result.headers.extend(_decode(self._decoder, bytes(block)))
                if first_flags & END_STREAM:
                    result.ended = True
        elif kind == DATA:
            result = self.streams.setdefault(stream_id, StreamResult())
            data = payload[1 : len(payload) - payload[0]] if flags & PADDED and payload else payload
            result.data += data
            if payload:  # give the credit back at once: these tests read everything
                self.send(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", len(payload))))
                self.send(frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", len(payload))))
            if flags & END_STREAM:
                result.ended = True
        elif kind == RST_STREAM and len(payload) == 4:
            self.streams.setdefault(stream_id, StreamResult()).rst_code = int.from_bytes(payload, "big")
        elif kind == GOAWAY and len(payload) >= 8:
            self.goaway_code = int.from_bytes(payload[4:8], "big")
            last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            for sid, result in self.streams.items():
                if sid > last and not result.ended:
                    result.goaway_code = self.goaway_code
