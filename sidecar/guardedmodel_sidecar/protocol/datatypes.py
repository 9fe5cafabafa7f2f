"""v2 tensor datatypes and their little-endian numpy equivalents."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from guardedmodel_sidecar.errors import InvalidRequest, client_repr

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


def serialize_bytes_elements(elements: Sequence[Any]) -> bytes:
    """The v2 binary form of a BYTES tensor: each element as a 4-byte little-endian length, then its bytes.

    Elements are bytes or str (UTF-8; a lone surrogate raises UnicodeEncodeError, a ValueError)."""
    encoded = [e if type(e) is bytes else e.encode() if type(e) is str else bytes(e) for e in elements]
    return _length_prefixed(encoded)


def _length_prefixed(encoded: list[bytes]) -> bytes:
    parts: list[bytes] = [b""] * (2 * len(encoded))
    parts[0::2] = map(_LEN.pack, map(len, encoded))
    parts[1::2] = encoded
    return b"".join(parts)


def check_bytes_elements(raw: bytes | memoryview, count: int, what: object) -> None:
    """Refuse (InvalidRequest) a v2 binary BYTES tensor that is not exactly ``count`` length-prefixed
    elements. Reads only the prefixes, in place, and stops after ``count`` + 1 of them."""
    unpack = _LEN.unpack_from
    end = len(raw)
    offset = 0
    seen = 0
    while offset < end:
        if seen == count:
            raise InvalidRequest(
                f"{what}: BYTES data holds more than the {count} elements its shape declares"
            )
        if offset + 4 > end:
            raise InvalidRequest(f"{what}: BYTES data is truncated: an element length prefix is cut off")
        offset += 4 + unpack(raw, offset)[0]
        seen += 1
    if offset > end:
        raise InvalidRequest(f"{what}: BYTES data is truncated: an element is shorter than its length prefix")
    if seen != count:
        raise InvalidRequest(f"{what}: BYTES data holds {seen} elements, its shape declares {count}")


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for error messages."""
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


_JSON_TYPE_NAMES = {
    str: "string",
    bool: "boolean",
    int: "integer",
    float: "non-integer number",
    list: "array",
    dict: "object",
    type(None): "null",
}
_NUMBERS = frozenset([int, float])
_INTEGERS = frozenset([int])
_BOOLEANS = frozenset([bool])
_STRINGS = frozenset([str])


def refuse_types(found: set[type], allowed: frozenset[type], datatype: str, what: object) -> InvalidRequest:
    names = sorted(_JSON_TYPE_NAMES.get(t, t.__name__) for t in found - allowed)
    if "array" in names:
        return InvalidRequest(
            f"{what}: 'data' mixes arrays and values, or is nested deeper than its shape "
            "(send it flat, or nested exactly as the shape)"
        )
    takes = {_NUMBERS: "numbers", _INTEGERS: "integers", _BOOLEANS: "booleans", _STRINGS: "strings"}[allowed]
    return InvalidRequest(
        f"{what}: 'data' holds {' and '.join(names)} values; {datatype} data must be {takes}"
    )


def array_from_values(values: list[Any], datatype: str, what: object) -> np.ndarray:
    """A flat list of JSON values as a 1-D array of ``datatype`` (not BYTES), refusing what the v2
    protocol does not allow: strings, nulls or booleans among numbers, fractions or out-of-range
    integers for integer types. Numbers too large for FP16/FP32 become inf (the gate refuses them)."""
    dtype = NUMPY_DTYPES[datatype]
    if not values:
        return np.empty(0, dtype)
    found = set(map(type, values))
    if datatype in FLOAT_DATATYPES:
        if not found <= _NUMBERS:
            raise refuse_types(found, _NUMBERS, datatype, what)
        try:
            if datatype == "FP64":
                return np.asarray(values, dtype=dtype)
            with np.errstate(over="ignore"):
                return np.asarray(values, dtype=dtype)
        except OverflowError:  # an integer beyond float64 (only JSON read with Python's json module)
            raise InvalidRequest(f"{what}: 'data' holds an integer too large for {datatype}") from None
    if datatype == "BOOL":
        if found != _BOOLEANS:
            raise refuse_types(found, _BOOLEANS, datatype, what)
        return np.asarray(values, dtype=dtype)
    if found != _INTEGERS:
        raise refuse_types(found, _INTEGERS, datatype, what)
    info = np.iinfo(dtype)
    low, high = min(values), max(values)
    if low < info.min or high > info.max:
        bad = low if low < info.min else high
        raise InvalidRequest(
            f"{what}: value {client_repr(bad)} is outside the range of {datatype} [{info.min}, {info.max}]"
        )
    return np.asarray(values, dtype=dtype)


def bytes_from_strings(values: list[Any], what: object) -> bytes:
    """The v2 binary form of a BYTES tensor sent as JSON strings (the only JSON form of BYTES)."""
    if values:
        found = set(map(type, values))
        if found != _STRINGS:
            raise refuse_types(found, _STRINGS, BYTES, what)
    try:
        return _length_prefixed(list(map(str.encode, values)))
    except UnicodeEncodeError:  # a lone surrogate escape, only from JSON read with Python's json module
        raise InvalidRequest(f"{what}: a BYTES element is not valid Unicode text") from None


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
