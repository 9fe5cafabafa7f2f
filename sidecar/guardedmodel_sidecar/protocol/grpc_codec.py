"""The v2 gRPC message codec: Triton's ``ModelInferRequest`` / ``ModelInferResponse`` protobufs to and
from the protocol-neutral ``InferRequest`` / ``InferResponse``, so the gRPC adapter stays a thin shell."""

from __future__ import annotations

from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2

from guardedmodel_sidecar.errors import InvalidRequest
from guardedmodel_sidecar.protocol.datatypes import (
    BYTES,
    KNOWN_DATATYPES,
    NUMPY_DTYPES,
    element_count,
    serialize_bytes_elements,
)
from guardedmodel_sidecar.protocol.model import InferRequest, InferResponse, RequestedOutput, Tensor

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


def response_to_proto(response: InferResponse, parameters: dict[str, Any], request: InferRequest) -> Any:
    msg = service_pb2.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id
    )
    for key, value in {**response.parameters, **parameters}.items():
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
