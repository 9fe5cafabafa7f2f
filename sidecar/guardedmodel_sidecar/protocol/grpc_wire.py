"""The bytes gRPC puts on the wire: HTTP/2 frame layout and constants (RFC 9113), gRPC's message
prefix, and its status, message and timeout encodings ("gRPC over HTTP/2"). Pure: no I/O, no state."""

from __future__ import annotations

import struct

import grpc

from guardedmodel_sidecar.protocol.hpack_codec import encode_headers, encode_literal

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types (RFC 9113 §6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    range(10)
)
# Flags.
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
# Error codes.
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
# Settings.
SETTINGS_HEADER_TABLE_SIZE = 0x1
SETTINGS_ENABLE_PUSH = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5
SETTINGS_MAX_HEADER_LIST_SIZE = 0x6

MAX_WINDOW = (1 << 31) - 1
STREAM_WINDOW = 1 << 20
CONNECTION_WINDOW = 1 << 24
# The protocol's default, which we keep: bigger frames would save ~3 µs per 16 KiB of a large
# request, and some clients ignore the setting. Frames we send follow the client's setting.
MAX_FRAME = 16384
MAX_STREAMS = 1000
MAX_HEADER_BLOCK = 1 << 16

FRAME_HEAD = struct.Struct(">HBBBL")  # 24-bit length as 16+8 bits, type, flags, stream id
SETTING = struct.Struct(">HL")
MESSAGE_HEAD = struct.Struct(">BL")

RESPONSE_HEADERS = encode_headers([(b":status", b"200"), (b"content-type", b"application/grpc")])
OK_TRAILERS = encode_literal(b"grpc-status", b"0")
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return FRAME_HEAD.pack(n >> 8, n & 0xFF, kind, flags, stream_id) + payload


def frame_head(kind: int, flags: int, stream_id: int, n: int) -> bytes:
    return FRAME_HEAD.pack(n >> 8, n & 0xFF, kind, flags, stream_id)


def percent_encode(message: str) -> bytes:
    """grpc-message is percent-encoded UTF-8 (gRPC over HTTP/2, "Responses")."""
    out = bytearray()
    for byte in message.encode("utf-8"):
        if 0x20 <= byte <= 0x7E and byte != 0x25:
            out.append(byte)
        else:
            out += b"%%%02X" % byte
    return bytes(out)


def status_block(code: grpc.StatusCode, message: str, trailers: tuple[tuple[str, str], ...]) -> bytes:
    parts = [encode_literal(b"grpc-status", str(code.value[0]).encode())]
    if message:
        parts.append(encode_literal(b"grpc-message", percent_encode(message)))
    for key, value in trailers:
        parts.append(encode_literal(key.encode("ascii"), value.encode("latin-1")))
    return b"".join(parts)


def parse_timeout(value: bytes) -> float | None:
    """grpc-timeout: up to 8 digits and a unit (H M S m u n); None when absent or malformed."""
    text = value.decode("ascii", "replace")
    if len(text) < 2 or not text[:-1].isdigit() or text[-1] not in _TIMEOUT_UNITS:
        return None
    return int(text[:-1]) * _TIMEOUT_UNITS[text[-1]]
