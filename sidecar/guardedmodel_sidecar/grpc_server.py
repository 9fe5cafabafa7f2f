"""The v2 gRPC service: Triton's own ``GRPCInferenceService`` (messages shipped in tritonclient).

Transport-free: it takes and returns serialized messages and raises ``GrpcStatus``, so the HTTP/2
server in ``grpc_http2`` (the default) and grpcio's server (``tuning.grpcServer: grpcio``) are thin
adapters over the same calls. ModelInfer and ModelStreamInfer go through the same guard pipeline as
HTTP.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2

from guardedmodel_sidecar.errors import GuardError
from guardedmodel_sidecar.pipeline import Pipeline
from guardedmodel_sidecar.protocol.grpc_codec import request_from_proto, response_to_proto

log = logging.getLogger(__name__)

_FORWARDED = (
    "ServerMetadata",
    "ModelReady",
    "ModelMetadata",
    "ModelConfig",
    "ModelStatistics",
    "RepositoryIndex",
    "SystemSharedMemoryStatus",
    "SystemSharedMemoryRegister",
    "SystemSharedMemoryUnregister",
    "CudaSharedMemoryStatus",
    "CudaSharedMemoryRegister",
    "CudaSharedMemoryUnregister",
    "TraceSetting",
    "LogSettings",
)



class GrpcStatus(Exception):
    """A call's non-OK end: a gRPC status code, a message, and trailing metadata."""

    def __init__(
        self, code: grpc.StatusCode, message: str, trailers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.trailers = trailers

    @classmethod
    def from_guard_error(cls, exc: GuardError) -> GrpcStatus:
        trailers = tuple((k.lower(), v) for k, v in exc.headers.items()) if exc.headers else ()
        return cls(exc.grpc_code, exc.message, trailers)


SERVICE = "inference.GRPCInferenceService"
UNARY_METHODS = frozenset(
    ("ModelInfer", "ServerLive", "ServerReady", "RepositoryModelLoad", "RepositoryModelUnload", *_FORWARDED)
)
STREAM_METHODS = frozenset(("ModelStreamInfer",))


class GrpcService:
    """Triton's ``GRPCInferenceService`` on serialized messages, for any gRPC transport.

    Infer calls go through the guard pipeline; liveness and readiness answer from the sidecar's view;
    the read-only calls are forwarded to Triton's gRPC endpoint as bytes, never parsed; model
    load/unload are refused because the sidecar owns them.
    """

    def __init__(self, pipeline: Pipeline, triton_grpc_url: str, is_ready: Callable[[], bool]) -> None:
        self.pipeline = pipeline
        self.is_ready = is_ready
        self._channel = grpc.aio.insecure_channel(
            triton_grpc_url, options=[("grpc.max_receive_message_length", -1)]
        )
        # No serializers: the forwarded calls carry the caller's bytes and Triton's bytes unchanged.
        self._forward = {method: self._channel.unary_unary(f"/{SERVICE}/{method}") for method in _FORWARDED}

    async def unary(self, method: str, body: bytes) -> bytes:
        if method == "ModelInfer":
            return await self._guarded(_parse(service_pb2.ModelInferRequest, body))
        if method == "ServerLive":
            return service_pb2.ServerLiveResponse(live=True).SerializeToString()
        if method == "ServerReady":
            return service_pb2.ServerReadyResponse(ready=self.is_ready()).SerializeToString()
        if method in ("RepositoryModelLoad", "RepositoryModelUnload"):
            raise GrpcStatus(
                grpc.StatusCode.PERMISSION_DENIED,
                "model loading is managed by the guard sidecar from the GuardedModel routing",
            )
        forward = self._forward.get(method)
        if forward is None:
            raise GrpcStatus(
                grpc.StatusCode.UNIMPLEMENTED, f"method {method} is not served by the guard sidecar"
            )
        try:
            reply: bytes = await forward(body, timeout=30)
        except grpc.aio.AioRpcError as exc:
            raise GrpcStatus(exc.code(), exc.details() or f"Triton {method} failed") from None
        return reply

    async def stream(self, method: str, messages: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """ModelStreamInfer: one response per request, in order; a refused request is answered with
        an ``error_message`` and the stream goes on, as Triton does."""
        if method not in STREAM_METHODS:
            raise GrpcStatus(
                grpc.StatusCode.UNIMPLEMENTED, f"method {method} is not served by the guard sidecar"
            )
        async for body in messages:
            msg = _parse(service_pb2.ModelInferRequest, body)
            try:
                response = service_pb2.ModelStreamInferResponse(infer_response=await self._infer(msg))
            except GuardError as exc:
                response = service_pb2.ModelStreamInferResponse(
                    error_message=exc.message,
                    infer_response=service_pb2.ModelInferResponse(
                        model_name=msg.model_name, model_version=msg.model_version, id=msg.id
                    ),
                )
            yield response.SerializeToString()

    async def _infer(self, msg: Any) -> Any:
        try:
            request = request_from_proto(msg)
        except GuardError as exc:
            self.pipeline.record_undecodable(msg.model_name, msg.model_version, exc, msg.SerializeToString())
            raise
        result = await self.pipeline.infer(request)
        return response_to_proto(result.response, result.parameters, request)

    async def _guarded(self, msg: Any) -> bytes:
        try:
            response = await self._infer(msg)
        except GuardError as exc:
            raise GrpcStatus.from_guard_error(exc) from None
        data: bytes = response.SerializeToString()
        return data

    async def close(self) -> None:
        await self._channel.close()


def _parse(message_type: Any, body: bytes) -> Any:
    try:
        return message_type.FromString(body)
    except DecodeError as exc:
        raise GrpcStatus(
            grpc.StatusCode.INVALID_ARGUMENT, f"cannot parse {message_type.__name__}: {exc}"
        ) from None


async def start_grpcio_server(
    service: GrpcService, host: str, port: int, max_message: int, *, reuse_port: bool = False
) -> tuple[grpc.aio.Server, int]:
    """grpcio's server over the same service (``tuning.grpcServer: grpcio``): about twice the CPU per
    call of ``grpc_http2``, kept for clients that need a gRPC feature the lean server lacks."""

    def unary(method: str) -> Callable[[bytes, grpc.aio.ServicerContext], Any]:
        async def handle(body: bytes, context: grpc.aio.ServicerContext) -> bytes:
            try:
                return await service.unary(method, body)
            except GrpcStatus as status:
                if status.trailers:
                    context.set_trailing_metadata(status.trailers)
                await context.abort(status.code, status.message)
                raise  # abort raises; this keeps type checkers aware of it
            except Exception as exc:
                log.exception("unhandled error serving gRPC %s", method)
                await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {exc}")
                raise

        return handle

    def stream(method: str) -> Callable[[AsyncIterator[bytes], grpc.aio.ServicerContext], Any]:
        async def handle(
            messages: AsyncIterator[bytes], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[bytes]:
            try:
                async for reply in service.stream(method, messages):
                    yield reply
            except GrpcStatus as status:
                await context.abort(status.code, status.message)

        return handle

    handlers = {m: grpc.unary_unary_rpc_method_handler(unary(m)) for m in UNARY_METHODS}
    handlers.update({m: grpc.stream_stream_rpc_method_handler(stream(m)) for m in STREAM_METHODS})
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ]
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen for gRPC on {host}:{port}")
    await server.start()
    return server, bound
