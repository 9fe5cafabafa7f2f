"""The values passed between the parts of the HTTP adapter: a parsed request, a refusal, a reply."""

from __future__ import annotations

from guardedmodel_sidecar.endpoints import Route

JSON = "application/json"
EMPTY = memoryview(b"")
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

# (status, content type, body chunks, extra headers): what the v2 layer answers and the connection writes.
Reply = tuple[int, str, list[bytes | memoryview], dict[str, str] | None]


class Reject(Exception):
    """Raised inside a parser callback: the request is refused with ``status`` and the connection closes."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Request:
    __slots__ = ("body", "head_only", "header_length", "http10", "keep_alive", "method", "route", "target")

    def __init__(
        self, method: str, target: str, keep_alive: bool, http10: bool, header_length: bytes | None
    ) -> None:
        self.method = method
        self.target = target
        self.keep_alive = keep_alive
        self.http10 = http10
        self.head_only = method == "HEAD"
        self.header_length = header_length
        self.body: memoryview = EMPTY
        self.route: Route | None = None


class Failure:
    """A terminal answer, queued behind the requests before it; the connection closes after it."""

    __slots__ = ("message", "status")

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
