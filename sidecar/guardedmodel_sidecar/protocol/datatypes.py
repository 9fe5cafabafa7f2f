"""v2 tensor datatypes and their little-endian numpy equivalents."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from guardedmodel_sidecar.errors import InvalidRequest

NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
BYTES = "BYTES"
KNOWN_DATATYPES = frozenset([*NUMPY_DTYPES, BYTES])
FLOAT_DATATYPES = frozenset(["FP16", "FP32", "FP64"])

_LEN = struct.Struct("<I")


def element_count(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def serialize_bytes_elements(elements: list[Any]) -> bytes:
    """The v2 binary form of a BYTES tensor: each element as a 4-byte little-endian length, then its bytes."""
    parts: list[bytes] = []
    for element in elements:
        data = element if isinstance(element, bytes | bytearray) else str(element).encode()
        parts.append(_LEN.pack(len(data)))
        parts.append(bytes(data))
    return b"".join(parts)


def deserialize_bytes_elements(raw: bytes | memoryview) -> list[bytes]:
    view = memoryview(raw)
    out: list[bytes] = []
    offset = 0
    end = len(view)
    while offset < end:
        if offset + 4 > end:
            raise InvalidRequest("BYTES tensor is truncated: an element length prefix is cut off")
        (length,) = _LEN.unpack_from(view, offset)
        offset += 4
        if offset + length > end:
            raise InvalidRequest("BYTES tensor is truncated: an element is shorter than its length prefix")
        out.append(bytes(view[offset : offset + length]))
        offset += length
    return out
