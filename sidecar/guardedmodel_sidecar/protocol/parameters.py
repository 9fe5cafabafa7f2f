"""v2 ``parameters`` checked once for both protocols, before anything reaches Triton.

Requests always go upstream as JSON, so a parameter must survive that trip and mean to Triton what the
caller meant: names are non-empty text without control characters (Triton reads names as C strings, so
a NUL would cut one short), string values carry no NUL, numbers are finite (JSON has no NaN), and the
parameters Triton itself interprets have the types and bounds it parses them with. Triton answers a
wrongly typed ``priority``, or a string ``sequence_id`` over 128 bytes, with a 500; here it is the
caller's 400 / INVALID_ARGUMENT, naming the parameter.
"""

from __future__ import annotations

import math
import re
from typing import Any

from guardedmodel_sidecar.errors import InvalidRequest, client_repr

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# Triton refuses a longer string correlation ID, counted in bytes, with a 500.
MAX_SEQUENCE_ID_BYTES = 128

# Request-level parameters Triton parses itself, and the types it accepts for each.
_UINT64 = "a non-negative integer"
_RESERVED: dict[str, str] = {
    "priority": _UINT64,
    "timeout": _UINT64,
    "sequence_id": f"{_UINT64} or a string of at most 128 bytes (UTF-8)",
    "sequence_start": "a boolean",
    "sequence_end": "a boolean",
}


def _fits(name: str, value: Any) -> bool:
    kind = type(value)
    if name in ("sequence_start", "sequence_end"):
        return kind is bool
    if kind is int and 0 <= value < 2**64:
        return True
    return (
        name == "sequence_id"
        and kind is str
        and len(value.encode("utf-8", "surrogatepass")) <= MAX_SEQUENCE_ID_BYTES
    )


def check_parameter(name: str, value: Any, what: object, *, request_level: bool) -> None:
    """Raise InvalidRequest unless ``name: value`` is a parameter Triton will read as sent."""
    if not name or _CONTROL.search(name):
        raise InvalidRequest(
            f"{what}: parameter name {client_repr(name)} must be non-empty, without control characters"
        )
    if type(value) is str and "\x00" in value:
        raise InvalidRequest(f"{what}: parameter {client_repr(name)} must not contain a NUL character")
    if type(value) is float and not math.isfinite(value):
        raise InvalidRequest(f"{what}: parameter {client_repr(name)} must be a finite number")
    if request_level and name in _RESERVED and not _fits(name, value):
        raise InvalidRequest(
            f"{what}: parameter {client_repr(name)} must be {_RESERVED[name]}, got {client_repr(value)}"
        )
