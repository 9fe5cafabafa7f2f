"""The v2 HTTP/REST adapter's answers: ``V2HttpServer`` routes each request to the guard, health or Triton.

The connection (``http_connection.py``) and request reading (``http_request_reader.py``) carry the
HTTP/1.1 framing; this module decides the answers.

What is served is an allow-list (``endpoints.py``): infer requests go through the guard pipeline,
health answers from the sidecar's own view, a few read-only endpoints are forwarded to Triton as
requests rebuilt from their validated path, and everything else is refused (403, 404 or 405; the
connection stays open).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson

from guardedmodel_sidecar.endpoints import FORWARD, INFER, LIVE, READY, Route, route
from guardedmodel_sidecar.errors import GuardError, InvalidRequest
from guardedmodel_sidecar.http_connection import HttpConnection
from guardedmodel_sidecar.http_types import JSON, Reply, Request
from guardedmodel_sidecar.limits import Limits
from guardedmodel_sidecar.pipeline import Pipeline
from guardedmodel_sidecar.protocol.http_codec import (
    HEADER_LENGTH,
    decode_infer_request,
    encode_error,
    encode_infer_response,
    parse_header_length,
)
from guardedmodel_sidecar.upstream import TritonHttp

_BINARY = "application/octet-stream"


class V2HttpServer:
    """Routes v2 requests; one instance serves every connection of one listening socket."""

    def __init__(
        self, pipeline: Pipeline, triton: TritonHttp, *, limits: Limits, is_ready: Callable[[], bool]
    ) -> None:
        self.pipeline = pipeline
        self.triton = triton
        self.limits = limits
        self.is_ready = is_ready
        self.open: set[HttpConnection] = set()
        # Stopping: no request is read any more, those read are answered, then connections close.
        self.draining = False

    @property
    def connections(self) -> int:
        return len(self.open)

    def drain(self) -> None:
        """Begin a graceful stop (the listening socket is closed by its owner): idle connections close
        now, busy ones after answering the requests already read, the last answer with Connection: close."""
        self.draining = True
        for conn in list(self.open):
            conn.drain()

    def abort(self) -> None:
        """The grace period is over: close what is still open, unanswered."""
        for conn in list(self.open):
            conn.abort()

    def protocol(self) -> HttpConnection:
        return HttpConnection(self)

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        return await loop.create_server(
            self.protocol, host, port, reuse_address=True, reuse_port=reuse_port or None, backlog=1024
        )

    def answer_now(self, request: Request) -> Reply | None:
        """The answer when it needs no waiting (health, refusals); None when ``answer`` must run."""
        try:
            found = route(request.method, request.target)
        except GuardError as exc:
            return _error_reply(exc)
        kind = found.kind
        if kind == LIVE:
            return 200, JSON, [], None
        if kind == READY:
            if self.is_ready():
                return 200, JSON, [], None
            message = "not ready: Triton or a routed model version is not ready"
            return 503, JSON, [encode_error(message)], None
        request.route = found
        return None

    async def answer(self, request: Request) -> Reply:
        found = request.route
        assert found is not None
        try:
            if found.kind == INFER:
                return await self._infer(request, found)
            assert found.kind == FORWARD
            return await self._forward(found, request.body)
        except GuardError as exc:
            return _error_reply(exc)

    async def _infer(self, request: Request, found: Route) -> Reply:
        model, version = found.model, found.version
        try:
            header_length = parse_header_length(request.header_length)
            infer_request = decode_infer_request(
                request.body, header_length, model, version, self.pipeline.decode_budget
            )
        except GuardError as exc:
            self.pipeline.record_undecodable(model, version, exc, request.body)
            raise
        result = await self.pipeline.infer(infer_request)
        chunks, json_length = encode_infer_response(result.response, infer_request, result.parameters)
        headers = dict(result.headers)
        if json_length is not None:
            headers[HEADER_LENGTH] = str(json_length)
            return 200, _BINARY, chunks, headers
        return 200, JSON, chunks, headers

    async def _forward(self, found: Route, body: memoryview) -> Reply:
        # Rebuilt from the validated path: no caller header, query or raw byte reaches Triton.
        if found.path == "/v2/repository/index":
            response = await self.triton.request(
                "POST", found.path, [_index_body(body)], "Content-Type: application/json\r\n"
            )
        else:
            response = await self.triton.request("GET", found.path)
        return response.status, response.headers.get("content-type", JSON), [response.body], None


def _index_body(body: memoryview) -> bytes:
    """The repository-index request, re-encoded from the caller's: only its optional 'ready' flag."""
    if not len(body):
        return b"{}"
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequest("the repository index request body is not valid JSON") from None
    if not isinstance(doc, dict) or set(doc) - {"ready"} or not isinstance(doc.get("ready", False), bool):
        raise InvalidRequest('the repository index takes an empty body or {"ready": true|false}')
    return orjson.dumps(doc)


def _error_reply(exc: GuardError) -> Reply:
    return exc.http_status, JSON, [encode_error(exc.message)], exc.headers or None
