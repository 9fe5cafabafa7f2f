"""The v2 gRPC adapter: Triton's own ``GRPCInferenceService`` (stubs shipped in tritonclient).

ModelInfer and ModelStreamInfer go through the same guard pipeline as HTTP; ServerLive/ServerReady
answer from the sidecar's view; metadata, config, statistics and the other read-only calls are
forwarded to Triton's gRPC endpoint unchanged; model load/unload are refused (the sidecar owns them).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

from guardedmodel_sidecar.errors import GuardError, InvalidRequest
from guardedmodel_sidecar.pipeline import GuardedResult, Pipeline
from guardedmodel_sidecar.protocol.datatypes import (
    BYTES,
    KNOWN_DATATYPES,
    NUMPY_DTYPES,
    element_count,
    serialize_bytes_elements,
)
from guardedmodel_sidecar.protocol.model import InferRequest, RequestedOutput, Tensor

log = logging.getLogger(__name__)

_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}

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


def _param_value(param: Any) -> Any:
    which = param.WhichOneof("parameter_choice")
    return getattr(param, which) if which else None


def _set_param(target: Any, value: Any) -> None:
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    else:
        target.string_param = str(value)


def request_from_proto(msg: Any) -> InferRequest:
    raw_contents = msg.raw_input_contents
    if raw_contents and len(raw_contents) != len(msg.inputs):
        raise InvalidRequest(
            f"raw_input_contents has {len(raw_contents)} entries for {len(msg.inputs)} inputs"
        )
    inputs: list[Tensor] = []
    for index, entry in enumerate(msg.inputs):
        name, datatype = entry.name, entry.datatype
        if datatype not in KNOWN_DATATYPES:
            raise InvalidRequest(f"input '{name}': unknown datatype {datatype!r}")
        shape = tuple(int(d) for d in entry.shape)
        if any(d < 0 for d in shape):
            raise InvalidRequest(f"input '{name}': negative dimension in shape {list(shape)}")
        if "shared_memory_region" in entry.parameters:
            raise InvalidRequest(
                f"input '{name}': shared-memory inputs cannot pass through the guard sidecar"
            )
        count = element_count(shape)
        if raw_contents:
            raw: bytes | memoryview = raw_contents[index]
            if datatype == BYTES:
                inputs.append(Tensor(name, datatype, shape, raw, None))
                continue
            dtype = NUMPY_DTYPES[datatype]
            if len(raw) != count * dtype.itemsize:
                raise InvalidRequest(
                    f"input '{name}': shape {list(shape)} of {datatype} needs {count * dtype.itemsize} bytes, "
                    f"got {len(raw)}"
                )
            inputs.append(Tensor(name, datatype, shape, raw, np.frombuffer(raw, dtype=dtype).reshape(shape)))
            continue
        if datatype == BYTES:
            elements = list(entry.contents.bytes_contents)
            if len(elements) != count:
                raise InvalidRequest(
                    f"input '{name}': shape {list(shape)} needs {count} elements, got {len(elements)}"
                )
            inputs.append(Tensor(name, datatype, shape, serialize_bytes_elements(elements), None))
            continue
        field = _CONTENTS_FIELD.get(datatype)
        if field is None:
            raise InvalidRequest(f"input '{name}': {datatype} must be sent in raw_input_contents")
        values = getattr(entry.contents, field)
        if len(values) != count:
            raise InvalidRequest(
                f"input '{name}': shape {list(shape)} needs {count} elements, got {len(values)}"
            )
        array = np.asarray(values, dtype=NUMPY_DTYPES[datatype]).reshape(shape)
        inputs.append(Tensor(name, datatype, shape, array.tobytes(), array))
    if not inputs:
        raise InvalidRequest("request has no inputs: a v2 infer request needs at least one input tensor")
    outputs = None
    if msg.outputs:
        outputs = []
        for out in msg.outputs:
            params = {k: _param_value(v) for k, v in out.parameters.items()}
            if "shared_memory_region" in params:
                raise InvalidRequest(
                    f"output '{out.name}': shared-memory outputs cannot pass through the guard"
                )
            if params.get("classification") or params.get("class_count"):
                raise InvalidRequest(
                    f"output '{out.name}': the classification extension is not available through the guard sidecar"
                )
            outputs.append(RequestedOutput(out.name, True, params or None))
    return InferRequest(
        model_name=msg.model_name,
        model_version=msg.model_version,
        id=msg.id,
        parameters={k: _param_value(v) for k, v in msg.parameters.items()},
        inputs=inputs,
        outputs=outputs,
    )


def response_to_proto(result: GuardedResult, request: InferRequest) -> Any:
    response = result.response
    msg = service_pb2.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id
    )
    for key, value in {**response.parameters, **result.parameters}.items():
        _set_param(msg.parameters[key], value)
    if request.outputs is None:
        selected = response.outputs
    else:
        wanted = {w.name for w in request.outputs}
        selected = [o for o in response.outputs if o.name in wanted]
    for out in selected:
        tensor = msg.outputs.add()
        tensor.name = out.name
        tensor.datatype = out.datatype
        tensor.shape.extend(out.shape)
        msg.raw_output_contents.append(bytes(out.raw))
    return msg


class GuardServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, pipeline: Pipeline, triton_grpc_url: str, is_ready: Callable[[], bool]) -> None:
        self.pipeline = pipeline
        self.is_ready = is_ready
        self._channel = grpc.aio.insecure_channel(
            triton_grpc_url, options=[("grpc.max_receive_message_length", -1)]
        )
        self._triton = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        for method in _FORWARDED:
            setattr(self, method, self._forwarder(method))

    def _forwarder(self, method: str) -> Callable[[Any, grpc.aio.ServicerContext], Any]:
        async def forward(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await getattr(self._triton, method)(request, timeout=30)
            except grpc.aio.AioRpcError as exc:
                await context.abort(exc.code(), exc.details() or f"Triton {method} failed")

        return forward

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return service_pb2.ServerReadyResponse(ready=self.is_ready())

    async def RepositoryModelLoad(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            "model loading is managed by the guard sidecar from the GuardedModel routing",
        )

    RepositoryModelUnload = RepositoryModelLoad

    async def _guarded(self, msg: Any) -> Any:
        try:
            request = request_from_proto(msg)
        except GuardError as exc:
            self.pipeline.record_undecodable(msg.model_name, msg.model_version, exc, msg.SerializeToString())
            raise
        result = await self.pipeline.infer(request)
        return response_to_proto(result, request)

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await self._guarded(request)
        except GuardError as exc:
            if exc.headers:
                context.set_trailing_metadata(tuple((k.lower(), v) for k, v in exc.headers.items()))
            await context.abort(exc.grpc_code, exc.message)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        async for msg in request_iterator:
            try:
                yield service_pb2.ModelStreamInferResponse(infer_response=await self._guarded(msg))
            except GuardError as exc:
                yield service_pb2.ModelStreamInferResponse(
                    error_message=exc.message,
                    infer_response=service_pb2.ModelInferResponse(
                        model_name=msg.model_name, model_version=msg.model_version, id=msg.id
                    ),
                )

    async def close(self) -> None:
        await self._channel.close()


async def start_grpc_server(
    servicer: GuardServicer, host: str, port: int, max_message: int, *, reuse_port: bool = False
) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ]
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen for gRPC on {host}:{port}")
    await server.start()
    return server, bound
