"""The v2 HTTP/REST body codec: JSON tensors and the binary-tensor extension.

A binary body is a JSON header of ``Inference-Header-Content-Length`` bytes followed by the tensors'
raw bytes in the order of the header's ``binary_data_size`` parameters. This module decodes a caller's
request and encodes the answer in the form the caller asked for, splicing Triton's raw output bytes
instead of re-encoding them; the sidecar's own calls to Triton are triton_http_codec.py, the JSON
reading both share is http_json.py.

Decoding a caller's body is total: any bytes give an ``InferRequest`` or an ``InvalidRequest`` (400) /
``PayloadTooLarge`` (413) that names the field, never another exception. Every input's description
(name, datatype, shape, binary size) is read and its elements admitted by the ``DecodeBudget`` before
any tensor is converted or allocated, so the work is bounded by the budget and the body size:

- JSON: orjson refuses documents nested over 1024 levels; only the fields the protocol defines are
  walked, parameters must be scalars, and ``data`` is flat or nested exactly as its shape (at most
  ``max_json_depth`` levels in all), flattened one level at a time, never recursively.
- ``NaN`` / ``Infinity`` (Python's json writes them; tritonclient does for JSON tensors) are read by
  Python's json module, only when orjson failed on a body that contains them and only after a
  C-speed check of its nesting depth, so the gate can say which input holds non-finite values.
- Values are type-checked before conversion: strings, nulls or booleans among numbers, fractions or
  out-of-range integers for integer types, non-strings for BYTES are 400s, never numpy's silent casts.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from guardedmodel_sidecar.errors import InvalidRequest, PayloadTooLarge, client_repr
from guardedmodel_sidecar.protocol.budget import (
    DEFAULT_BUDGET,
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
from guardedmodel_sidecar.protocol.http_json import HEADER_LENGTH as HEADER_LENGTH  # read here by the servers
from guardedmodel_sidecar.protocol.model import (
    InferRequest,
    InferResponse,
    OutputTensor,
    RequestedOutput,
    Tensor,
)
from guardedmodel_sidecar.protocol.parameters import check_parameter

_JSON_OPTS = orjson.OPT_SERIALIZE_NUMPY


def checked_parameters(
    value: Any, what: object, budget: DecodeBudget, *, request_level: bool = False
) -> dict[str, Any]:
    """A v2 ``parameters`` object: at most ``max_parameters`` keys, each a string, a boolean, a
    64-bit integer or a number (the protocol's parameter types)."""
    if type(value) is not dict:
        raise InvalidRequest(f"{what}: 'parameters' must be an object, got {json_type(value)}")
    if len(value) > budget.max_parameters:
        raise InvalidRequest(f"{what}: {len(value)} parameters, at most {budget.max_parameters}")
    for key, item in value.items():
        if len(key) > budget.max_name_chars:
            raise InvalidRequest(
                f"{what}: a parameter name is {len(key)} characters, at most {budget.max_name_chars}"
            )
        kind = type(item)
        if kind is str or kind is bool or kind is float or (kind is int and -(2**63) <= item < 2**64):
            check_parameter(key, item, what, request_level=request_level)
            continue
        raise InvalidRequest(
            f"{what}: parameter {client_repr(key)} must be a string, a boolean or a 64-bit number, "
            f"got {json_type(item)}"
        )
    return value


def _tensor_from_json_data(
    name: str, datatype: str, shape: tuple[int, ...], count: int, data: Any, max_nesting: int
) -> Tensor:
    what = Subject("input", name)
    values = flat_values(data, shape, count, what, max_nesting)
    if datatype == BYTES:
        return Tensor(name, datatype, shape, bytes_from_strings(values, what), None)
    raw = array_from_values(values, datatype, what).tobytes()
    return Tensor(name, datatype, shape, raw, np.frombuffer(raw, dtype=NUMPY_DTYPES[datatype]).reshape(shape))


def _read_input(entry: Any, index: int, budget: DecodeBudget) -> tuple[str, str, tuple[int, ...], int | None]:
    """An input's name, datatype, shape and binary size (None: JSON data), nothing decoded yet."""
    if type(entry) is not dict:
        raise InvalidRequest(
            f"inputs[{index}] must be an object with a string 'name', got {json_type(entry)}"
        )
    name = checked_name(entry.get("name"), Subject(f"inputs[{index}]"), budget)
    what = Subject("input", name)
    datatype = checked_datatype(entry.get("datatype"), what)
    shape = checked_shape(entry.get("shape"), what)
    size = None
    params = entry.get("parameters")
    if params is not None:
        params = checked_parameters(params, what, budget)
        if "shared_memory_region" in params:
            raise InvalidRequest(f"{what}: shared-memory inputs cannot pass through the guard sidecar")
        size = params.get("binary_data_size")
        if size is not None and (type(size) is not int or size < 0):
            raise InvalidRequest(
                f"{what}: binary_data_size must be a non-negative integer, got {client_repr(size)}"
            )
    if size is None and "data" not in entry:
        raise InvalidRequest(f"{what}: neither 'data' nor a binary_data_size parameter given")
    return name, datatype, shape, size


def decode_infer_request(
    body: bytes | memoryview,
    header_length: int | str | None,
    model_name: str,
    model_version: str,
    budget: DecodeBudget | None = None,
) -> InferRequest:
    """Parse a caller's v2 HTTP infer body (JSON or JSON + binary tensors).

    ``header_length``: the ``Inference-Header-Content-Length`` header as received (str) or as an int;
    ``budget``: the model's ``DecodeBudget`` (the default limits when None)."""
    try:
        return _decode_request(
            memoryview(body),
            parse_header_length(header_length),
            model_name,
            model_version,
            budget or DEFAULT_BUDGET,
        )
    except RecursionError:  # not reachable by the checks above; a backstop that stays a client error
        raise InvalidRequest("request body is nested too deeply to be read") from None
    except MemoryError:
        raise PayloadTooLarge("the request's tensors do not fit in the sidecar's memory") from None


def _decode_request(
    view: memoryview, header_length: int | None, model_name: str, model_version: str, budget: DecodeBudget
) -> InferRequest:
    header, offset = load_json_header(view, header_length, "request", budget)
    entries = header.get("inputs")
    if entries is None or entries == []:
        raise InvalidRequest("request has no 'inputs': a v2 infer request needs at least one input tensor")
    if type(entries) is not list:
        raise InvalidRequest(f"'inputs' must be an array of input objects, got {json_type(entries)}")
    if len(entries) > budget.max_inputs:
        raise InvalidRequest(f"request has {len(entries)} inputs, at most {budget.max_inputs}")
    # Every input is described and admitted before any is decoded: a huge second input is refused
    # before the first is converted.
    planned: list[tuple[str, str, tuple[int, ...], int, Any]] = []
    spent = 0
    end = len(view)
    for index, entry in enumerate(entries):
        name, datatype, shape, size = _read_input(entry, index, budget)
        count = budget.admit(name, datatype, shape, raw=size is not None, spent=spent)
        spent += count
        if size is None:
            planned.append((name, datatype, shape, count, entry["data"]))
            continue
        if offset + size > end:
            raise InvalidRequest(
                f"input {client_repr(name)}: binary_data_size {size} runs past the end of the body "
                f"({end - offset} bytes left)"
            )
        if datatype != BYTES:
            expected = count * NUMPY_DTYPES[datatype].itemsize
            if size != expected:
                raise InvalidRequest(
                    f"input {client_repr(name)}: shape {client_repr(list(shape))} of {datatype} needs "
                    f"{expected} bytes, got {size}"
                )
        planned.append((name, datatype, shape, count, view[offset : offset + size]))
        offset += size
    if offset != end:
        raise InvalidRequest(
            f"request body has {end - offset} bytes after the last binary input; sizes do not add up"
        )
    max_nesting = max(1, budget.max_json_depth - DATA_DEPTH)
    inputs: list[Tensor] = []
    for name, datatype, shape, count, data in planned:
        if type(data) is not memoryview:
            inputs.append(_tensor_from_json_data(name, datatype, shape, count, data, max_nesting))
        elif datatype == BYTES:
            check_bytes_elements(data, count, Subject("input", name))
            inputs.append(Tensor(name, datatype, shape, data, None))
        else:
            array = np.frombuffer(data, dtype=NUMPY_DTYPES[datatype]).reshape(shape)
            inputs.append(Tensor(name, datatype, shape, data, array))
    params = header.get("parameters")
    params = {} if params is None else checked_parameters(params, "request", budget, request_level=True)
    binary_default = params.pop("binary_data_output", False)
    if type(binary_default) is not bool:
        raise InvalidRequest(
            f"request: binary_data_output must be a boolean, got {json_type(binary_default)}"
        )
    request_id = header.get("id", "")
    if type(request_id) is not str:
        raise InvalidRequest(f"request: 'id' must be a string, got {json_type(request_id)}")
    if len(request_id) > budget.max_name_chars:
        raise InvalidRequest(
            f"request: 'id' is {len(request_id)} characters, at most {budget.max_name_chars}"
        )
    return InferRequest(
        model_name=model_name,
        model_version=model_version,
        id=request_id,
        parameters=params,
        inputs=inputs,
        outputs=_requested_outputs(header.get("outputs"), binary_default, budget),
        binary_output_default=binary_default,
    )


def _requested_outputs(
    entries: Any, binary_default: bool, budget: DecodeBudget
) -> list[RequestedOutput] | None:
    if entries is None:
        return None
    if type(entries) is not list:
        raise InvalidRequest(f"'outputs' must be a list, got {json_type(entries)}")
    if len(entries) > budget.max_outputs:
        raise InvalidRequest(f"request asks for {len(entries)} outputs, at most {budget.max_outputs}")
    outputs: list[RequestedOutput] = []
    for index, out in enumerate(entries):
        if type(out) is not dict:
            raise InvalidRequest(
                f"outputs[{index}]: every entry of 'outputs' must be an object with a string 'name', "
                f"got {json_type(out)}"
            )
        name = checked_name(out.get("name"), Subject(f"outputs[{index}]"), budget)
        what = Subject("output", name)
        params = out.get("parameters")
        params = {} if params is None else dict(checked_parameters(params, what, budget))
        if "shared_memory_region" in params:
            raise InvalidRequest(f"{what}: shared-memory outputs cannot pass through the guard sidecar")
        if params.get("classification") or params.get("class_count"):
            raise InvalidRequest(
                f"{what}: the classification extension is not available through the guard "
                "sidecar; request the raw output and take the top classes client-side"
            )
        binary = params.pop("binary_data", binary_default)
        if type(binary) is not bool:
            raise InvalidRequest(f"{what}: binary_data must be a boolean, got {json_type(binary)}")
        outputs.append(RequestedOutput(name, binary, params or None))
    return outputs


def _json_data(out: OutputTensor) -> Any:
    array = out.as_numpy()
    if out.datatype == BYTES:
        return [e.decode("utf-8", errors="replace") for e in array.reshape(-1).tolist()]
    if array.dtype == np.float16:
        return array.reshape(-1).astype(np.float32)
    return array.reshape(-1)


def encode_infer_response(
    response: InferResponse,
    request: InferRequest,
    parameters: dict[str, Any],
) -> tuple[list[bytes | memoryview], int | None]:
    """Caller's v2 HTTP body: (chunks, JSON header length or None when the body is plain JSON).

    Only the outputs the caller asked for are returned (all of them when it named none), each in the
    form it asked for; outputs the guard fetched for itself (features) stay inside.
    """
    entries: list[dict[str, Any]] = []
    binaries: list[bytes | memoryview] = []
    if request.outputs is None:
        selected = [(o, request.binary_output_default) for o in response.outputs]
    else:
        # Triton answers in the model's output order, whatever order they were asked in.
        wanted = {w.name: w.binary for w in request.outputs}
        selected = [(o, wanted[o.name]) for o in response.outputs if o.name in wanted]
    for out, binary in selected:
        entry: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": out.shape}
        if binary:
            entry["parameters"] = {"binary_data_size": len(out.raw)}
            binaries.append(out.raw)
        else:
            entry["data"] = _json_data(out)
        entries.append(entry)
    header: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
    }
    if response.id:
        header["id"] = response.id
    header["parameters"] = {**response.parameters, **parameters}
    header["outputs"] = entries
    encoded = orjson.dumps(header, option=_JSON_OPTS)
    if binaries:
        return [encoded, *binaries], len(encoded)
    return [encoded], None


def encode_error(message: str) -> bytes:
    return orjson.dumps({"error": message})
