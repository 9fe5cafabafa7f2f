"""The v2 gRPC endpoint: Triton's own ``inference.GRPCInferenceService`` on grpcio's server.

grpcio (grpc-core's HTTP/2 transport, HPACK and flow control, with years of CVE fixes) does all the
framing; this module only decides what each call may do. Handlers take and return raw bytes (no
serializers), so a message is parsed once, with ``FromString``, and only where the sidecar must read
it:

- ``ServerLive`` / ``ServerReady`` answer from the sidecar's own view, without reading the request.
- ``ModelInfer`` and ``ModelStreamInfer`` go through the guard ``Pipeline``, like HTTP infer.
- ``ServerMetadata``, ``ModelReady``, ``ModelMetadata``, ``ModelConfig``, ``ModelStatistics`` and
  ``RepositoryIndex`` are read-only: their bytes are checked to parse, then forwarded to Triton unchanged,
  with the caller's deadline (capped by ``limits.request_timeout_s``).
- Model load/unload, log and trace settings, and the shared-memory calls are refused with
  PERMISSION_DENIED, before their body is read: the sidecar owns what Triton loads, a trace or log
  setting could write every caller's inputs to files, and a shared-memory input would reach the model
  without passing the guard. These are the same calls the HTTP side refuses with 403.
- Anything else is UNIMPLEMENTED.

Every decode failure is INVALID_ARGUMENT (RESOURCE_EXHAUSTED for size), never INTERNAL; error text goes
through ``errors.client_text``. A call's deadline becomes ``InferRequest.deadline`` so the Triton call
gives up with it, and a cancelled call (client cancel, deadline, disconnect: grpcio cancels the handler's
task) cancels its upstream work, micro-batched rows included.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2

from guardedmodel_sidecar.endpoints import GRPC_REFUSED
from guardedmodel_sidecar.errors import GuardError, InvalidRequest, PayloadTooLarge, client_text
from guardedmodel_sidecar.grpc_listener import SERVICE
from guardedmodel_sidecar.grpc_listener import (
    start_grpc_server as start_grpc_server,
)  # the app starts it from here
from guardedmodel_sidecar.limits import Limits
from guardedmodel_sidecar.pipeline import Pipeline
from guardedmodel_sidecar.protocol.grpc_codec import request_from_proto, response_to_proto
from guardedmodel_sidecar.protocol.model import InferRequest

log = logging.getLogger(__name__)


# The allow-list is ``endpoints``', shared with the HTTP side (a unit test holds the two equal).
# Read-only calls forwarded to Triton as bytes, with the request type that must parse first (a body
# Triton could not parse would come back as its INTERNAL; the caller gets INVALID_ARGUMENT instead).
FORWARDED: dict[str, Any] = {
    "ServerMetadata": service_pb2.ServerMetadataRequest,
    "ModelReady": service_pb2.ModelReadyRequest,
    "ModelMetadata": service_pb2.ModelMetadataRequest,
    "ModelConfig": service_pb2.ModelConfigRequest,
    "ModelStatistics": service_pb2.ModelStatisticsRequest,
    "RepositoryIndex": service_pb2.RepositoryIndexRequest,
}
TRITON_GRPC_KEY_PREFIX = "triton-grpc-protocol-"
# Calls in Triton's restricted "model-repository" group: they carry the sidecar's restricted-API header.
_RESTRICTED = frozenset({"RepositoryIndex"})
# Refused calls and why, the same reasons the HTTP side gives with its 403.
DENIED: dict[str, str] = GRPC_REFUSED

_LIVE = service_pb2.ServerLiveResponse(live=True).SerializeToString()
_READY = service_pb2.ServerReadyResponse(ready=True).SerializeToString()
_NOT_READY = service_pb2.ServerReadyResponse(ready=False).SerializeToString()

_parse_infer = service_pb2.ModelInferRequest.FromString
_StreamResponse = service_pb2.ModelStreamInferResponse
_InferResponse = service_pb2.ModelInferResponse


class GrpcStatus(Exception):
    """A call's non-OK end: a gRPC status code, a message, and trailing metadata."""

    def __init__(
        self, code: grpc.StatusCode, message: str, trailers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        message = client_text(message)
        super().__init__(message)
        self.code = code
        self.message = message
        self.trailers = trailers

    @classmethod
    def from_guard_error(cls, exc: GuardError) -> GrpcStatus:
        trailers = tuple((k.lower(), v) for k, v in exc.headers.items()) if exc.headers else ()
        return cls(exc.grpc_code, exc.message, trailers)


class GrpcService:
    """The calls of ``inference.GRPCInferenceService``; ``start_grpc_server`` serves them."""

    def __init__(
        self, pipeline: Pipeline, triton_grpc_url: str, is_ready: Callable[[], bool], *, limits: Limits
    ) -> None:
        self.pipeline = pipeline
        self.is_ready = is_ready
        self.limits = limits
        # Requests of one ModelStreamInfer in flight at once (answers still leave in order): as many as
        # one HTTP/1.1 connection may pipeline.
        self.stream_window = max(1, limits.max_pipelined_requests)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._channel = grpc.aio.insecure_channel(
            triton_grpc_url,
            options=[("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)],
        )
        header = pipeline.config.triton_restricted_header
        # Triton's gRPC endpoint reads the restricted-API key from metadata named with this prefix
        # (HTTP takes the bare header name).
        self._restricted_metadata: tuple[tuple[str, str], ...] | None = (
            ((TRITON_GRPC_KEY_PREFIX + header[0], header[1]),) if header else None
        )

    # ----------------------------------------------------------------------------- handlers

    def method_handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        """Every method of the service this sidecar answers, by name (allowed, forwarded, refused)."""
        handlers: dict[str, grpc.RpcMethodHandler] = {
            "ServerLive": grpc.unary_unary_rpc_method_handler(self.server_live),
            "ServerReady": grpc.unary_unary_rpc_method_handler(self.server_ready),
            "ModelInfer": grpc.unary_unary_rpc_method_handler(self.model_infer),
            "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(self.model_stream_infer),
        }
        for method in FORWARDED:
            handlers[method] = grpc.unary_unary_rpc_method_handler(self._forwarder(method))
        for method, reason in DENIED.items():
            handlers[method] = grpc.stream_stream_rpc_method_handler(_refuser(reason))
        return handlers

    async def server_live(self, body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return _LIVE

    async def server_ready(self, body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return _READY if self.is_ready() else _NOT_READY

    async def model_infer(self, body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            request = self._decode(body)
            remaining = context.time_remaining()
            if remaining is not None:
                request.deadline = self._now() + remaining
            result = await self.pipeline.infer(request)
            data: bytes = response_to_proto(result.response, result.parameters, request).SerializeToString()
            return data
        except GuardError as exc:
            status = GrpcStatus.from_guard_error(exc)
        except GrpcStatus as exc:
            status = exc
        except Exception as exc:
            status = _internal("ModelInfer", exc)
        if status.trailers:
            context.set_trailing_metadata(status.trailers)
        await context.abort(status.code, status.message)
        raise AssertionError("unreachable: abort raises")

    async def model_stream_infer(
        self, messages: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """One answer per request, in request order. Up to ``stream_window`` requests are worked on at
        once (so micro-batching can join them); the stream is not read further until the oldest is
        answered. A refused request is answered in the stream (``error_message``, with its id, model
        and version) and the stream goes on, as Triton does; a message that does not parse ends the
        stream with INVALID_ARGUMENT after the answers before it."""
        loop = self._running_loop()
        remaining = context.time_remaining()
        deadline = None if remaining is None else loop.time() + remaining
        window = asyncio.Semaphore(self.stream_window)
        answers: asyncio.Queue[asyncio.Task[bytes] | GrpcStatus | None] = asyncio.Queue()
        reader = loop.create_task(self._read_stream(messages, deadline, window, answers))
        status: GrpcStatus | None = None
        try:
            while True:
                item = await answers.get()
                if item is None:
                    break
                if isinstance(item, GrpcStatus):
                    status = item
                    break
                try:
                    reply = await item
                except GrpcStatus as exc:
                    status = exc
                    break
                except Exception as exc:
                    status = _internal("ModelStreamInfer", exc)
                    break
                window.release()
                yield reply
        finally:
            # Cancelled, failed or done: nothing of this stream keeps running (upstream calls included).
            reader.cancel()
            while not answers.empty():
                left = answers.get_nowait()
                if isinstance(left, asyncio.Task):
                    left.cancel()
        if status is not None:
            await context.abort(status.code, status.message)

    async def _read_stream(
        self,
        messages: AsyncIterator[bytes],
        deadline: float | None,
        window: asyncio.Semaphore,
        answers: asyncio.Queue[asyncio.Task[bytes] | GrpcStatus | None],
    ) -> None:
        loop = self._running_loop()
        iterator = messages.__aiter__()
        try:
            while True:
                # A free slot first, then the next message: at most ``stream_window`` requests are held.
                await window.acquire()
                try:
                    body = await iterator.__anext__()
                except StopAsyncIteration:
                    break
                try:
                    msg = _parse_infer(body)
                except DecodeError as exc:
                    self._audit_unparsed(exc, body)
                    answers.put_nowait(_unparsable(exc))
                    return
                answers.put_nowait(loop.create_task(self._stream_one(msg, body, deadline)))
        except Exception as exc:  # the transport failed under the reader: end the stream, not the sidecar
            answers.put_nowait(_internal("ModelStreamInfer (reading)", exc))
            return
        answers.put_nowait(None)

    async def _stream_one(self, msg: Any, body: bytes, deadline: float | None) -> bytes:
        try:
            request = self._decode_message(msg, body)
            request.deadline = deadline
            result = await self.pipeline.infer(request)
            infer_response = response_to_proto(result.response, result.parameters, request)
        except GuardError as exc:
            return stream_error(msg, exc.message)
        data: bytes = _StreamResponse(infer_response=infer_response).SerializeToString()
        return data

    def _forwarder(self, method: str) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]:
        call = self._channel.unary_unary(f"/{SERVICE}/{method}")
        request_type = FORWARDED[method]
        cap = self.limits.request_timeout_s
        metadata = self._restricted_metadata if method in _RESTRICTED else None

        async def forward(body: bytes, context: grpc.aio.ServicerContext) -> bytes:
            try:
                request_type.FromString(body)
            except DecodeError as exc:
                status = _unparsable(exc, request_type.__name__)
            else:
                remaining = context.time_remaining()
                timeout = cap if remaining is None else min(remaining, cap)
                try:
                    reply: bytes = await call(body, timeout=timeout, metadata=metadata)
                    return reply
                except grpc.aio.AioRpcError as exc:
                    status = GrpcStatus(exc.code(), exc.details() or f"Triton's {method} failed")
                except Exception as exc:
                    status = _internal(method, exc)
            await context.abort(status.code, status.message)
            raise AssertionError("unreachable: abort raises")

        return forward

    # ----------------------------------------------------------------------------- decoding

    def _decode(self, body: bytes) -> InferRequest:
        try:
            msg = _parse_infer(body)
        except DecodeError as exc:
            self._audit_unparsed(exc, body)
            raise _unparsable(exc) from None
        return self._decode_message(msg, body)

    def _decode_message(self, msg: Any, body: bytes) -> InferRequest:
        """``request_from_proto`` with every failure a client error, audited with the caller's bytes."""
        try:
            return request_from_proto(msg, self.pipeline.decode_budget)
        except GuardError as exc:
            error: GuardError = exc
        except MemoryError:
            error = PayloadTooLarge("the request's tensors do not fit in the sidecar's memory")
        except Exception as exc:  # a decoder gap must still be the caller's 400, not our 500
            log.warning(
                "gRPC infer request not decodable (%s); answered INVALID_ARGUMENT", type(exc).__name__
            )
            error = InvalidRequest(f"ModelInferRequest cannot be decoded ({type(exc).__name__})")
        self.pipeline.record_undecodable(msg.model_name, msg.model_version, error, body)
        raise error

    def _audit_unparsed(self, exc: DecodeError, body: bytes) -> None:
        self.pipeline.record_undecodable(
            "", "", InvalidRequest(f"ModelInferRequest does not parse: {exc}"), body
        )

    # ----------------------------------------------------------------------------- lifecycle

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        # Cached: asyncio.get_running_loop() makes a getpid() system call on every use (Python 3.11).
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def _now(self) -> float:
        return self._running_loop().time()

    async def close(self) -> None:
        await self._channel.close()


def stream_error(msg: Any, message: str) -> bytes:
    """A refused stream request's answer: tritonclient hands a stream callback only ``error_message``
    (as an InferenceServerException), so the request's id leads the text, in Triton's own
    ``[request id: ...]`` form; ``infer_response`` carries id, model and version for other clients."""
    rid = msg.id
    text = f"[request id: {client_text(rid, 128)}] {message}" if rid else message
    data: bytes = _StreamResponse(
        error_message=client_text(text),
        infer_response=_InferResponse(model_name=msg.model_name, model_version=msg.model_version, id=rid),
    ).SerializeToString()
    return data


def _unparsable(exc: DecodeError, what: str = "ModelInferRequest") -> GrpcStatus:
    return GrpcStatus(grpc.StatusCode.INVALID_ARGUMENT, f"the request is not a valid {what}: {exc}")


def _internal(method: str, exc: BaseException) -> GrpcStatus:
    """An error the sidecar did not expect: logged with where it happened but not its message (it may
    carry client bytes), answered INTERNAL with nothing of the caller's."""
    frames = "".join(traceback.format_tb(exc.__traceback__))
    log.error("unexpected %s serving gRPC %s; traceback:\n%s", type(exc).__name__, method, frames)
    return GrpcStatus(grpc.StatusCode.INTERNAL, f"internal error in the guard sidecar ({type(exc).__name__})")


def _refuser(reason: str) -> Callable[[AsyncIterator[bytes], grpc.aio.ServicerContext], Awaitable[None]]:
    async def refuse(messages: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, reason)

    return refuse
