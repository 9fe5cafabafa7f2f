"""The v2 HTTP/REST body codec: JSON tensors and the binary-tensor extension.

A binary body is a JSON header of ``Inference-Header-Content-Length`` bytes followed by the tensors'
raw bytes in the order of the header's ``binary_data_size`` parameters. Requests upstream always use
binary tensors (4-6x cheaper for Triton than JSON at batch 32); responses go back to the caller in the
form the caller asked for, splicing Triton's raw output bytes instead of re-encoding them.

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

import json
import re
from collections.abc import Iterable
from itertools import chain
from typing import Any

import numpy as np
import orjson

from guardedmodel_sidecar.errors import InvalidRequest, PayloadTooLarge, UpstreamError, client_repr
from guardedmodel_sidecar.protocol.budget import (
    DEFAULT_BUDGET,
    MAX_DIMS,
    DecodeBudget,
    Subject,
    checked_shape,
)
from guardedmodel_sidecar.protocol.datatypes import (
    BYTES,
    KNOWN_DATATYPES,
    NUMPY_DTYPES,
    array_from_values,
    bytes_from_strings,
    check_bytes_elements,
    json_type,
)
from guardedmodel_sidecar.protocol.model import (
    InferRequest,
    InferResponse,
    OutputTensor,
    RequestedOutput,
    Tensor,
)
from guardedmodel_sidecar.protocol.parameters import check_parameter

HEADER_LENGTH = "Inference-Header-Content-Length"
_JSON_OPTS = orjson.OPT_SERIALIZE_NUMPY
# Levels of a request document above an input's data: {"inputs": [{"data": ...}]}.
_DATA_DEPTH = 3
_ORJSON_MAX_DEPTH = 1024
# Triton's response: sizes are the model's, not a caller's; only the shape of the reply is checked.
_UPSTREAM_BUDGET = DecodeBudget(
    max_elements=2**48,
    max_value_elements=2**48,
    max_bytes_elements=2**48,
    max_json_bytes=2**62,
    max_json_depth=MAX_DIMS + _DATA_DEPTH,
)


def parse_header_length(value: object) -> int | None:
    """The ``Inference-Header-Content-Length`` header value: None when absent, else ASCII digits only
    (``int()`` would also take " 12", "+12", "1_2" and non-ASCII digits). An int is taken as is; the
    decoder checks it against the body."""
    if value is None:
        return None
    if type(value) is int:
        return value
    text = value.decode("latin-1") if isinstance(value, bytes | bytearray) else value
    if not isinstance(text, str) or not 0 < len(text) <= 19 or not (text.isascii() and text.isdigit()):
        raise InvalidRequest(f"{HEADER_LENGTH} must be a whole number of bytes, got {client_repr(value)}")
    return int(text)


# A JSON string (closing quote optional, so an unterminated one ends the scan instead of restarting
# it at every later quote: linear time), and the bytes that are not brackets.
_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"?', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_BRACKET_STEP = np.zeros(256, np.int8)
_BRACKET_STEP[list(b"[{")] = 1
_BRACKET_STEP[list(b"]}")] = -1


def _json_depth_exceeds(doc: bytes, limit: int) -> bool:
    """Whether a JSON text nests deeper than ``limit``, at C speed and without recursion."""
    brackets = _JSON_STRING.sub(b"", doc).translate(None, _NOT_BRACKETS)
    if len(brackets) <= limit:
        return False
    depth = np.cumsum(_BRACKET_STEP[np.frombuffer(brackets, np.uint8)], dtype=np.int32)
    return int(depth.max()) > limit


def _orjson_int(text: str) -> int | float:
    # As orjson reads them: integers beyond 64 bits become floats (and int() of 4300+ digits fails).
    if len(text) <= 21:
        value = int(text)
        if -(2**63) <= value < 2**64:
            return value
    return float(text)


def _load_non_finite(doc: memoryview, exc: orjson.JSONDecodeError, what: str, max_depth: int) -> Any:
    """Read a body orjson refused, when that may be for NaN/Infinity, with Python's json module."""
    raw = bytes(doc)
    if b"NaN" not in raw and b"Infinity" not in raw:
        if "depth" in str(exc):
            raise InvalidRequest(f"{what} body is nested more than {_ORJSON_MAX_DEPTH} levels deep") from None
        raise InvalidRequest(f"{what} body is not valid JSON: {exc}") from None
    if _json_depth_exceeds(raw, max_depth):
        raise InvalidRequest(f"{what} body is nested more than {max_depth} levels deep")
    try:
        value = json.loads(raw.decode("utf-8"), parse_int=_orjson_int)
        # Python's json accepts lone surrogates (\ud800), which no later UTF-8 encoding would.
        orjson.dumps(value)
    except (ValueError, RecursionError, orjson.JSONEncodeError):
        raise InvalidRequest(f"{what} body is not valid JSON: {exc}") from None
    return value


def _load_json_header(
    body: memoryview, header_length: int | None, what: str, budget: DecodeBudget
) -> tuple[dict[str, Any], int]:
    end = len(body) if header_length is None else header_length
    if end < 0 or end > len(body):
        raise InvalidRequest(
            f"{HEADER_LENGTH} is {client_repr(header_length)} but the {what} body has only {len(body)} bytes"
        )
    if end > budget.max_json_bytes:
        raise PayloadTooLarge(
            f"the JSON part of the {what} is {end} bytes, above the limit of {budget.max_json_bytes}; "
            "send tensors as binary data (the binary tensor extension)"
        )
    doc = body[:end]
    try:
        header = orjson.loads(doc)
    except orjson.JSONDecodeError as exc:
        header = _load_non_finite(doc, exc, what, budget.max_json_depth)
    if type(header) is not dict:
        raise InvalidRequest(f"{what} body must be a JSON object, got {json_type(header)}")
    return header, end


def _checked_name(value: Any, what: object, budget: DecodeBudget) -> str:
    if type(value) is not str or not value:
        raise InvalidRequest(f"{what}: 'name' must be a non-empty string, got {client_repr(value)}")
    if len(value) > budget.max_name_chars:
        raise InvalidRequest(f"{what}: 'name' is {len(value)} characters, at most {budget.max_name_chars}")
    return value


def _checked_datatype(value: Any, what: object) -> str:
    if type(value) is str and value in KNOWN_DATATYPES:
        return value
    hint = ""
    if type(value) is str and len(value) < 8 and value.upper() in KNOWN_DATATYPES:
        hint = f" (datatypes are upper case: {value.upper()})"
    raise InvalidRequest(
        f"{what}: unknown datatype {client_repr(value)}{hint}; one of {', '.join(sorted(KNOWN_DATATYPES))}"
    )


def checked_parameters(value: Any, what: object, budget: DecodeBudget) -> dict[str, Any]:
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
            check_parameter(key, item, what, request_level=what == "request")
            continue
        raise InvalidRequest(
            f"{what}: parameter {client_repr(key)} must be a string, a boolean or a 64-bit number, "
            f"got {json_type(item)}"
        )
    return value


def _flat_values(data: Any, shape: tuple[int, ...], count: int, what: object, max_nesting: int) -> list[Any]:
    """An input's ``data`` as a flat list of ``count`` values: a flat array, or arrays nested exactly
    as ``shape``. One pass per nesting level, no recursion; each level is checked before it is
    flattened, so ragged or misshapen data is refused before it is copied."""
    if type(data) is not list:
        raise InvalidRequest(f"{what}: 'data' must be a JSON array, got {json_type(data)}")
    if not data or type(data[0]) is not list:
        if len(data) != count:
            raise InvalidRequest(
                f"{what}: shape {client_repr(list(shape))} needs {count} elements, data has {len(data)}"
            )
        return data
    shown = client_repr(list(shape))
    if len(shape) < 2:
        raise InvalidRequest(f"{what}: 'data' is nested deeper than shape {shown}; send it flat")
    if len(shape) > max_nesting:
        raise InvalidRequest(f"{what}: nested 'data' would be {len(shape)} levels deep; send it flat")
    if len(data) != shape[0]:
        raise InvalidRequest(
            f"{what}: nested 'data' does not follow shape {shown}: {len(data)} entries at the top level"
        )
    level: list[Any] = data
    for depth in range(1, len(shape)):
        if not level:
            break  # a zero dimension: nothing below it
        if set(map(type, level)) != {list}:
            raise InvalidRequest(
                f"{what}: nested 'data' mixes arrays and values at nesting level {depth + 1}; "
                f"send it flat, or nested exactly as shape {shown}"
            )
        if set(map(len, level)) != {shape[depth]}:
            raise InvalidRequest(
                f"{what}: nested 'data' does not follow shape {shown}: the arrays at nesting level "
                f"{depth + 1} must each have {shape[depth]} entries (ragged or misshapen data)"
            )
        level = list(chain.from_iterable(level))
    return level


def _tensor_from_json_data(
    name: str, datatype: str, shape: tuple[int, ...], count: int, data: Any, max_nesting: int
) -> Tensor:
    what = Subject("input", name)
    values = _flat_values(data, shape, count, what, max_nesting)
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
    name = _checked_name(entry.get("name"), Subject(f"inputs[{index}]"), budget)
    what = Subject("input", name)
    datatype = _checked_datatype(entry.get("datatype"), what)
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
    header, offset = _load_json_header(view, header_length, "request", budget)
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
    max_nesting = max(1, budget.max_json_depth - _DATA_DEPTH)
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
    params = {} if params is None else checked_parameters(params, "request", budget)
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
        name = _checked_name(out.get("name"), Subject(f"outputs[{index}]"), budget)
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
    header, offset = _load_json_header(view, header_length, "Triton response", budget)
    entries = header.get("outputs", [])
    if type(entries) is not list:
        raise InvalidRequest(f"'outputs' must be a list, got {json_type(entries)}")
    end = len(view)
    outputs: list[OutputTensor] = []
    for index, entry in enumerate(entries):
        if type(entry) is not dict:
            raise InvalidRequest(f"outputs[{index}] must be an object, got {json_type(entry)}")
        name = _checked_name(entry.get("name"), Subject(f"outputs[{index}]"), budget)
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
        datatype = _checked_datatype(datatype, what)
        values = _flat_values(entry.get("data"), shape, count, what, MAX_DIMS)
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
