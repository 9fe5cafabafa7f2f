"""The v2 HTTP body of the sidecar's own calls to Triton: the request it sends, the response it reads.

Requests upstream always use binary tensors (4-6x cheaper for Triton than JSON at batch 32). Triton's
response is read with the same checks as a caller's body, under a budget that only checks its shape:
its sizes are the model's, not a caller's.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from guardedmodel_sidecar.errors import InvalidRequest, UpstreamError, client_repr
from guardedmodel_sidecar.protocol.budget import (
    MAX_DIMS,
    DecodeBudget,
    Subject,
    checked_shape,
)
from guardedmodel_sidecar.protocol.datatypes import (
    BYTES,
    NUMPY_DTYPES,
    array_from_values,
    bytes_from_strings,
    check_bytes_elements,
    json_type,
)
from guardedmodel_sidecar.protocol.http_json import (
    DATA_DEPTH,
    checked_datatype,
    checked_name,
    flat_values,
    load_json_header,
    parse_header_length,
)
from guardedmodel_sidecar.protocol.model import (
    InferRequest,
    InferResponse,
    OutputTensor,
)

# Triton's response: sizes are the model's, not a caller's; only the shape of the reply is checked.
_UPSTREAM_BUDGET = DecodeBudget(
    max_elements=2**48,
    max_value_elements=2**48,
    max_bytes_elements=2**48,
    max_json_bytes=2**62,
    max_json_depth=MAX_DIMS + DATA_DEPTH,
)


def encode_upstream_request(
    request: InferRequest, output_names: Iterable[str] | None
) -> tuple[bytes, list[bytes | memoryview]]:
    """Triton request in binary form: (JSON header, raw tensor buffers). None asks for every output."""
    inputs = [
        {
            "name": t.name,
            "datatype": t.datatype,
            "shape": t.shape,
            "parameters": {"binary_data_size": len(t.raw)},
        }
        for t in request.inputs
    ]
    header: dict[str, Any] = {"inputs": inputs}
    if request.id:
        header["id"] = request.id
    params = dict(request.parameters)
    if output_names is None:
        params["binary_data_output"] = True
    else:
        header["outputs"] = [{"name": n, "parameters": {"binary_data": True}} for n in output_names]
    if params:
        header["parameters"] = params
    return orjson.dumps(header), [t.raw for t in request.inputs]


def decode_upstream_response(body: bytes | memoryview, header_length: int | str | None) -> InferResponse:
    """Triton's infer response. Triton is trusted to answer within the protocol, not to be free of
    bugs: a reply that does not parse or whose sizes do not add up is an ``UpstreamError`` 502
    (gRPC UNAVAILABLE) naming what is wrong, never an exception from deeper in the guard."""
    try:
        return _decode_response(memoryview(body), parse_header_length(header_length))
    except InvalidRequest as exc:
        raise UpstreamError(f"Triton's response cannot be read: {exc.message}", 502) from None
    except (RecursionError, MemoryError) as exc:
        raise UpstreamError(f"Triton's response cannot be read ({type(exc).__name__})", 502) from None


def _decode_response(view: memoryview, header_length: int | None) -> InferResponse:
    budget = _UPSTREAM_BUDGET
    header, offset = load_json_header(view, header_length, "Triton response", budget)
    entries = header.get("outputs", [])
    if type(entries) is not list:
        raise InvalidRequest(f"'outputs' must be a list, got {json_type(entries)}")
    end = len(view)
    outputs: list[OutputTensor] = []
    for index, entry in enumerate(entries):
        if type(entry) is not dict:
            raise InvalidRequest(f"outputs[{index}] must be an object, got {json_type(entry)}")
        name = checked_name(entry.get("name"), Subject(f"outputs[{index}]"), budget)
        what = Subject("output", name)
        datatype = entry.get("datatype")
        if type(datatype) is not str or not datatype:
            raise InvalidRequest(f"{what}: 'datatype' must be a string, got {client_repr(datatype)}")
        shape = checked_shape(entry.get("shape"), what)
        count = budget.admit(name, datatype, shape, raw=True, spent=0)
        params = entry.get("parameters")
        size = None if type(params) is not dict else params.get("binary_data_size")
        if size is not None:
            if type(size) is not int or size < 0 or offset + size > end:
                raise InvalidRequest(
                    f"{what}: binary_data_size {client_repr(size)} does not fit the body ({end - offset} bytes left)"
                )
            raw = view[offset : offset + size]
            offset += size
            if datatype in NUMPY_DTYPES:
                if size != count * NUMPY_DTYPES[datatype].itemsize:
                    raise InvalidRequest(
                        f"{what}: shape {list(shape)} of {datatype} does not match {size} bytes"
                    )
            elif datatype == BYTES:
                check_bytes_elements(raw, count, what)
            # Other datatypes (BF16) pass through to the caller as bytes; the guard cannot read them.
            outputs.append(OutputTensor(name, datatype, shape, raw))
            continue
        datatype = checked_datatype(datatype, what)
        values = flat_values(entry.get("data"), shape, count, what, MAX_DIMS)
        if datatype == BYTES:
            outputs.append(OutputTensor(name, datatype, shape, bytes_from_strings(values, what)))
        else:
            array = array_from_values(values, datatype, what).reshape(shape)
            outputs.append(OutputTensor(name, datatype, shape, array.tobytes(), array))
    if offset != end:
        raise InvalidRequest(f"{end - offset} bytes after the last binary output; sizes do not add up")
    model_name = header.get("model_name", "")
    model_version = header.get("model_version", "")
    response_id = header.get("id", "")
    parameters = header.get("parameters") or {}
    if type(model_name) is not str or type(response_id) is not str or type(parameters) is not dict:
        raise InvalidRequest("'model_name' and 'id' must be strings and 'parameters' an object")
    if type(model_version) is not str and type(model_version) is not int:
        raise InvalidRequest(f"'model_version' must be a string, got {json_type(model_version)}")
    return InferResponse(
        model_name=model_name,
        model_version=str(model_version),
        id=response_id,
        parameters=parameters,
        outputs=outputs,
    )
