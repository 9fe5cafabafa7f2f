"""Domain errors of the data plane and the one place that maps them to HTTP status and gRPC codes.

Every refusal carries a message a caller can act on ("input 'INPUT': 3 values are NaN"); the HTTP and
gRPC adapters never invent their own status codes, so both protocols refuse the same input the same way.
"""

from __future__ import annotations

import re
import reprlib

import grpc

# Error text sent to a caller (and written to logs) never exceeds this, whatever the caller sent.
MAX_ERROR_CHARS = 1024
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def client_text(value: object, limit: int = MAX_ERROR_CHARS) -> str:
    """``value`` made safe to echo to a caller or a log: control characters escaped, length capped.

    Client bytes reach messages through names, paths and header values; escaping keeps them from
    forging log lines or terminal escapes, the cap keeps a huge name from becoming a huge reply."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit * 4:
        text = text[: limit * 4]
    text = _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    if len(text) > limit:
        text = text[: limit - 15] + "... (truncated)"
    return text


class _ClientRepr(reprlib.Repr):
    """reprlib with the sizes of a one-line error message; bytes and huge integers by size only."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxlist = self.maxtuple = self.maxdict = self.maxset = 8
        self.maxstring = self.maxother = 80
        self.maxlong = 40

    def repr_bytes(self, value: bytes, level: int) -> str:
        return f"<{len(value)} bytes>"

    def repr_bytearray(self, value: bytearray, level: int) -> str:
        return f"<{len(value)} bytes>"

    def repr_memoryview(self, value: memoryview, level: int) -> str:
        return f"<{value.nbytes} bytes>"

    def repr_int(self, value: int, level: int) -> str:
        # repr() of an integer over 4300 digits raises ValueError; its size is all a reader needs.
        if value.bit_length() > 128:
            return f"<integer of {value.bit_length()} bits>"
        return super().repr_int(value, level)


_CLIENT_REPR = _ClientRepr()


def client_repr(value: object) -> str:
    """A client-given value (a name, a shape, a wrong-typed field) quoted for an error message: a
    bounded repr, at most 8 entries of a list and 80 characters of a string, never raw bytes."""
    return client_text(_CLIENT_REPR.repr(value), 200)


class GuardError(Exception):
    """Base of every error the data plane reports to a caller."""

    http_status: int = 500
    grpc_code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        message = client_text(message)
        super().__init__(message)
        self.message = message
        # Guard results of a post-model refusal (scores, decision) still travel with the error.
        self.headers = headers or {}


class InvalidRequest(GuardError):
    """The request is not a well-formed v2 inference request (bad JSON, sizes that do not add up)."""

    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class InputRefused(InvalidRequest):
    """The input gate refused an input: wrong name, datatype, shape, value range, NaN/Inf, size."""


class PayloadTooLarge(InvalidRequest):
    http_status = 413
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class OutOfDistribution(GuardError):
    """The scorer found the input out of distribution and the spec says to reject it."""

    http_status = 422
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class ModelNotFound(GuardError):
    http_status = 404
    grpc_code = grpc.StatusCode.NOT_FOUND


class Unavailable(GuardError):
    """Triton (or the model version routing chose) cannot serve right now; retrying later may work."""

    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(GuardError):
    """The caller's deadline (gRPC) passed before Triton answered; Triton was not asked, or no longer."""

    http_status = 504
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class Overloaded(Unavailable):
    """More requests are in flight than ``limits.maxInflightRequests``; the caller should retry."""


class Forbidden(GuardError):
    """An operation the sidecar owns (loading/unloading models) that callers may not do through it."""

    http_status = 403
    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class UpstreamError(GuardError):
    """Triton answered with an error: its message is passed on, its status too except that Triton's own
    failures (5xx) are a 502, a bad gateway, never the sidecar's 500."""

    def __init__(self, message: str, http_status: int) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.grpc_code = grpc_code_for_http(http_status)


_HTTP_TO_GRPC = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ALREADY_EXISTS,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    502: grpc.StatusCode.UNAVAILABLE,  # Triton's reply unreadable; gRPC's HTTP mapping
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def grpc_code_for_http(status: int) -> grpc.StatusCode:
    return _HTTP_TO_GRPC.get(status, grpc.StatusCode.INTERNAL if status >= 500 else grpc.StatusCode.UNKNOWN)
