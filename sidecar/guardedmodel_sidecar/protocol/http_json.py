"""Reading the JSON of v2 HTTP bodies, shared by the caller's requests and Triton's responses.

The JSON header's length (``Inference-Header-Content-Length``), the header itself (orjson, with a
bounded fallback to Python's json for NaN/Infinity), and the checks every tensor description gets
(name, datatype, ``data`` flat or nested exactly as its shape) before anything is converted.
"""

from __future__ import annotations

import json
import re
from itertools import chain
from typing import Any

import numpy as np
import orjson

from guardedmodel_sidecar.errors import InvalidRequest, PayloadTooLarge, client_repr
from guardedmodel_sidecar.protocol.budget import (
    DecodeBudget,
)
from guardedmodel_sidecar.protocol.datatypes import (
    KNOWN_DATATYPES,
    json_type,
)

HEADER_LENGTH = "Inference-Header-Content-Length"
# Levels of a request document above an input's data: {"inputs": [{"data": ...}]}.
DATA_DEPTH = 3
_ORJSON_MAX_DEPTH = 1024


def parse_header_length(value: object) -> int | None:
    """The ``Inference-Header-Content-Length`` header value: None when absent, else ASCII digits only
    (``int()`` would also take " 12", "+12", "1_2" and non-ASCII digits). An int is taken as is; the
    decoder checks it against the body."""
    if value is None:
        return None
    if type(value) is int:
        return value
    text = value.decode("latin-1") if isinstance(value, bytes | bytearray) else value
    if not isinstance(text, str) or not 0 < len(text) <= 19 or not (text.isascii() and text.isdigit()):
        raise InvalidRequest(f"{HEADER_LENGTH} must be a whole number of bytes, got {client_repr(value)}")
    return int(text)


# A JSON string (closing quote optional, so an unterminated one ends the scan instead of restarting
# it at every later quote: linear time), and the bytes that are not brackets.
_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"?', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_BRACKET_STEP = np.zeros(256, np.int8)
_BRACKET_STEP[list(b"[{")] = 1
_BRACKET_STEP[list(b"]}")] = -1


def _json_depth_exceeds(doc: bytes, limit: int) -> bool:
    """Whether a JSON text nests deeper than ``limit``, at C speed and without recursion."""
    brackets = _JSON_STRING.sub(b"", doc).translate(None, _NOT_BRACKETS)
    if len(brackets) <= limit:
        return False
    depth = np.cumsum(_BRACKET_STEP[np.frombuffer(brackets, np.uint8)], dtype=np.int32)
    return int(depth.max()) > limit


def _orjson_int(text: str) -> int | float:
    # As orjson reads them: integers beyond 64 bits become floats (and int() of 4300+ digits fails).
    if len(text) <= 21:
        value = int(text)
        if -(2**63) <= value < 2**64:
            return value
    return float(text)


def _load_non_finite(doc: memoryview, exc: orjson.JSONDecodeError, what: str, max_depth: int) -> Any:
    """Read a body orjson refused, when that may be for NaN/Infinity, with Python's json module."""
    raw = bytes(doc)
    if b"NaN" not in raw and b"Infinity" not in raw:
        if "depth" in str(exc):
            raise InvalidRequest(f"{what} body is nested more than {_ORJSON_MAX_DEPTH} levels deep") from None
        raise InvalidRequest(f"{what} body is not valid JSON: {exc}") from None
    if _json_depth_exceeds(raw, max_depth):
        raise InvalidRequest(f"{what} body is nested more than {max_depth} levels deep")
    try:
        value = json.loads(raw.decode("utf-8"), parse_int=_orjson_int)
        # Python's json accepts lone surrogates (\ud800), which no later UTF-8 encoding would.
        orjson.dumps(value)
    except (ValueError, RecursionError, orjson.JSONEncodeError):
        raise InvalidRequest(f"{what} body is not valid JSON: {exc}") from None
    return value


def load_json_header(
    body: memoryview, header_length: int | None, what: str, budget: DecodeBudget
) -> tuple[dict[str, Any], int]:
    end = len(body) if header_length is None else header_length
    if end < 0 or end > len(body):
        raise InvalidRequest(
            f"{HEADER_LENGTH} is {client_repr(header_length)} but the {what} body has only {len(body)} bytes"
        )
    if end > budget.max_json_bytes:
        raise PayloadTooLarge(
            f"the JSON part of the {what} is {end} bytes, above the limit of {budget.max_json_bytes}; "
            "send tensors as binary data (the binary tensor extension)"
        )
    doc = body[:end]
    try:
        header = orjson.loads(doc)
    except orjson.JSONDecodeError as exc:
        header = _load_non_finite(doc, exc, what, budget.max_json_depth)
    if type(header) is not dict:
        raise InvalidRequest(f"{what} body must be a JSON object, got {json_type(header)}")
    return header, end


def checked_name(value: Any, what: object, budget: DecodeBudget) -> str:
    if type(value) is not str or not value:
        raise InvalidRequest(f"{what}: 'name' must be a non-empty string, got {client_repr(value)}")
    if len(value) > budget.max_name_chars:
        raise InvalidRequest(f"{what}: 'name' is {len(value)} characters, at most {budget.max_name_chars}")
    return value


def checked_datatype(value: Any, what: object) -> str:
    if type(value) is str and value in KNOWN_DATATYPES:
        return value
    hint = ""
    if type(value) is str and len(value) < 8 and value.upper() in KNOWN_DATATYPES:
        hint = f" (datatypes are upper case: {value.upper()})"
    raise InvalidRequest(
        f"{what}: unknown datatype {client_repr(value)}{hint}; one of {', '.join(sorted(KNOWN_DATATYPES))}"
    )


def flat_values(data: Any, shape: tuple[int, ...], count: int, what: object, max_nesting: int) -> list[Any]:
    """An input's ``data`` as a flat list of ``count`` values: a flat array, or arrays nested exactly
    as ``shape``. One pass per nesting level, no recursion; each level is checked before it is
    flattened, so ragged or misshapen data is refused before it is copied."""
    if type(data) is not list:
        raise InvalidRequest(f"{what}: 'data' must be a JSON array, got {json_type(data)}")
    if not data or type(data[0]) is not list:
        if len(data) != count:
            raise InvalidRequest(
                f"{what}: shape {client_repr(list(shape))} needs {count} elements, data has {len(data)}"
            )
        return data
    shown = client_repr(list(shape))
    if len(shape) < 2:
        raise InvalidRequest(f"{what}: 'data' is nested deeper than shape {shown}; send it flat")
    if len(shape) > max_nesting:
        raise InvalidRequest(f"{what}: nested 'data' would be {len(shape)} levels deep; send it flat")
    if len(data) != shape[0]:
        raise InvalidRequest(
            f"{what}: nested 'data' does not follow shape {shown}: {len(data)} entries at the top level"
        )
    level: list[Any] = data
    for depth in range(1, len(shape)):
        if not level:
            break  # a zero dimension: nothing below it
        if set(map(type, level)) != {list}:
            raise InvalidRequest(
                f"{what}: nested 'data' mixes arrays and values at nesting level {depth + 1}; "
                f"send it flat, or nested exactly as shape {shown}"
            )
        if set(map(len, level)) != {shape[depth]}:
            raise InvalidRequest(
                f"{what}: nested 'data' does not follow shape {shown}: the arrays at nesting level "
                f"{depth + 1} must each have {shape[depth]} entries (ragged or misshapen data)"
            )
        level = list(chain.from_iterable(level))
    return level
