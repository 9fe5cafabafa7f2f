"""The v2 gRPC message codec: Triton's ``ModelInferRequest`` / ``ModelInferResponse`` protobufs to and
from the protocol-neutral ``InferRequest`` / ``InferResponse``, so the gRPC adapter stays a thin shell.

Decoding is total, as on HTTP: any message (any bytes, with ``decode_infer_request_proto``) gives an
``InferRequest`` or an ``InvalidRequest`` (INVALID_ARGUMENT) / ``PayloadTooLarge`` (RESOURCE_EXHAUSTED).
Every input is described and admitted by the ``DecodeBudget`` before any tensor is converted; raw
BYTES contents are checked prefix by prefix in place; typed contents must sit in the one field of
the input's datatype, with values in its range.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2

from guardedmodel_sidecar.errors import InvalidRequest, PayloadTooLarge, client_repr
from guardedmodel_sidecar.protocol.budget import DEFAULT_BUDGET, DecodeBudget, Subject, checked_shape
from guardedmodel_sidecar.protocol.datatypes import (
    BYTES,
    KNOWN_DATATYPES,
    NUMPY_DTYPES,
    check_bytes_elements,
    serialize_bytes_elements,
)
from guardedmodel_sidecar.protocol.model import InferRequest, InferResponse, RequestedOutput, Tensor
from guardedmodel_sidecar.protocol.parameters import check_parameter

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
    "BYTES": "bytes_contents",
}
# Datatypes narrower than their contents field: read at the field's width, then range-checked.
_WIDE_DTYPES = {
    "INT8": np.dtype(np.int32),
    "INT16": np.dtype(np.int32),
    "UINT8": np.dtype(np.uint32),
    "UINT16": np.dtype(np.uint32),
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


def _checked_name(value: str, what: object, budget: DecodeBudget) -> str:
    if not value:
        raise InvalidRequest(f"{what}: 'name' must not be empty")
    if len(value) > budget.max_name_chars:
        raise InvalidRequest(f"{what}: 'name' is {len(value)} characters, at most {budget.max_name_chars}")
    return value


def _params_from_proto(
    params: Any, what: object, budget: DecodeBudget, *, request_level: bool = False
) -> dict[str, Any]:
    if len(params) > budget.max_parameters:
        raise InvalidRequest(f"{what}: {len(params)} parameters, at most {budget.max_parameters}")
    out: dict[str, Any] = {}
    for key, param in params.items():
        which = param.WhichOneof("parameter_choice")
        if which is None:
            raise InvalidRequest(f"{what}: parameter {client_repr(key)} has no value")
        if len(key) > budget.max_name_chars:
            raise InvalidRequest(
                f"{what}: a parameter name is {len(key)} characters, at most {budget.max_name_chars}"
            )
        value = getattr(param, which)
        check_parameter(key, value, what, request_level=request_level)
        out[key] = value
    return out


def decode_infer_request_proto(data: bytes, budget: DecodeBudget | None = None) -> InferRequest:
    """A serialized ``ModelInferRequest`` to an ``InferRequest`` (for callers holding bytes)."""
    try:
        msg = service_pb2.ModelInferRequest.FromString(data)
    except DecodeError as exc:
        raise InvalidRequest(f"ModelInferRequest does not parse: {exc}") from None
    return request_from_proto(msg, budget)


def request_from_proto(msg: Any, budget: DecodeBudget | None = None) -> InferRequest:
    """A parsed ``ModelInferRequest`` to an ``InferRequest``, within ``budget`` (default limits: None)."""
    try:
        return _from_proto(msg, budget or DEFAULT_BUDGET)
    except MemoryError:
        raise PayloadTooLarge("the request's tensors do not fit in the sidecar's memory") from None


def _from_proto(msg: Any, budget: DecodeBudget) -> InferRequest:
    entries = msg.inputs
    if not entries:
        raise InvalidRequest("request has no inputs: a v2 infer request needs at least one input tensor")
    if len(entries) > budget.max_inputs:
        raise InvalidRequest(f"request has {len(entries)} inputs, at most {budget.max_inputs}")
    raw_contents = msg.raw_input_contents
    if raw_contents and len(raw_contents) != len(entries):
        raise InvalidRequest(f"raw_input_contents has {len(raw_contents)} entries for {len(entries)} inputs")
    if len(msg.id) > budget.max_name_chars:
        raise InvalidRequest(f"request: 'id' is {len(msg.id)} characters, at most {budget.max_name_chars}")
    # Every input is described and admitted before any is decoded.
    planned: list[tuple[str, str, tuple[int, ...], int, Any]] = []
    spent = 0
    for index, entry in enumerate(entries):
        name = _checked_name(entry.name, Subject(f"inputs[{index}]"), budget)
        what = Subject("input", name)
        datatype = entry.datatype
        if datatype not in KNOWN_DATATYPES:
            raise InvalidRequest(
                f"{what}: unknown datatype {client_repr(datatype)}; one of {', '.join(sorted(KNOWN_DATATYPES))}"
            )
        shape = checked_shape(entry.shape, what)
        if "shared_memory_region" in entry.parameters:
            raise InvalidRequest(f"{what}: shared-memory inputs cannot pass through the guard sidecar")
        _params_from_proto(entry.parameters, what, budget)
        given = [fd.name for fd, _ in entry.contents.ListFields()]
        count = budget.admit(name, datatype, shape, raw=bool(raw_contents), spent=spent)
        spent += count
        if raw_contents:
            if given:
                raise InvalidRequest(f"{what}: contents ({given[0]}) given together with raw_input_contents")
            raw: bytes = raw_contents[index]
            if datatype != BYTES and len(raw) != count * NUMPY_DTYPES[datatype].itemsize:
                raise InvalidRequest(
                    f"{what}: shape {client_repr(list(shape))} of {datatype} needs "
                    f"{count * NUMPY_DTYPES[datatype].itemsize} bytes, got {len(raw)}"
                )
            planned.append((name, datatype, shape, count, raw))
            continue
        field = _CONTENTS_FIELD.get(datatype)
        if field is None:
            raise InvalidRequest(f"{what}: {datatype} must be sent in raw_input_contents")
        if any(g != field for g in given):
            wrong = next(g for g in given if g != field)
            raise InvalidRequest(f"{what}: {wrong} given for a {datatype} input; its values go in {field}")
        values = getattr(entry.contents, field)
        if len(values) != count:
            raise InvalidRequest(
                f"{what}: shape {client_repr(list(shape))} needs {count} elements, {field} has {len(values)}"
            )
        planned.append((name, datatype, shape, count, values))
    inputs = [
        _tensor(name, datatype, shape, count, data, bool(raw_contents))
        for name, datatype, shape, count, data in planned
    ]
    outputs = None
    if msg.outputs:
        if len(msg.outputs) > budget.max_outputs:
            raise InvalidRequest(f"request asks for {len(msg.outputs)} outputs, at most {budget.max_outputs}")
        outputs = []
        for index, out in enumerate(msg.outputs):
            name = _checked_name(out.name, Subject(f"outputs[{index}]"), budget)
            what = Subject("output", name)
            params = _params_from_proto(out.parameters, what, budget)
            if "shared_memory_region" in params:
                raise InvalidRequest(f"{what}: shared-memory outputs cannot pass through the guard")
            if params.get("classification") or params.get("class_count"):
                raise InvalidRequest(
                    f"{what}: the classification extension is not available through the guard sidecar"
                )
            outputs.append(RequestedOutput(name, True, params or None))
    return InferRequest(
        model_name=msg.model_name,
        model_version=msg.model_version,
        id=msg.id,
        parameters=_params_from_proto(msg.parameters, "request", budget, request_level=True),
        inputs=inputs,
        outputs=outputs,
    )


def _tensor(name: str, datatype: str, shape: tuple[int, ...], count: int, data: Any, raw: bool) -> Tensor:
    what = Subject("input", name)
    if raw:
        if datatype == BYTES:
            check_bytes_elements(data, count, what)
            return Tensor(name, datatype, shape, data, None)
        return Tensor(
            name, datatype, shape, data, np.frombuffer(data, dtype=NUMPY_DTYPES[datatype]).reshape(shape)
        )
    if datatype == BYTES:
        return Tensor(name, datatype, shape, serialize_bytes_elements(data), None)
    dtype = NUMPY_DTYPES[datatype]
    wide = _WIDE_DTYPES.get(datatype)
    if wide is None:
        array = np.fromiter(data, dtype=dtype, count=count)
    else:
        array = np.fromiter(data, dtype=wide, count=count)
        if count:
            info = np.iinfo(dtype)
            low, high = int(array.min()), int(array.max())
            if low < info.min or high > info.max:
                bad = low if low < info.min else high
                raise InvalidRequest(
                    f"{what}: value {bad} is outside the range of {datatype} [{info.min}, {info.max}]"
                )
        array = array.astype(dtype)
    raw_bytes = array.tobytes()
    return Tensor(name, datatype, shape, raw_bytes, np.frombuffer(raw_bytes, dtype=dtype).reshape(shape))


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
