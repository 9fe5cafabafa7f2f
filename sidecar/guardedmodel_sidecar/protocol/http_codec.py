"""The v2 HTTP/REST body codec: JSON tensors and the binary-tensor extension.

A binary body is a JSON header of ``Inference-Header-Content-Length`` bytes followed by the tensors'
raw bytes in the order of the header's ``binary_data_size`` parameters. Requests upstream always use
binary tensors (4-6x cheaper for Triton than JSON at batch 32); responses go back to the caller in the
form the caller asked for, splicing Triton's raw output bytes instead of re-encoding them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import numpy as np
import orjson

from guardedmodel_sidecar.errors import InvalidRequest
from guardedmodel_sidecar.protocol.datatypes import (
    BYTES,
    KNOWN_DATATYPES,
    NUMPY_DTYPES,
    element_count,
    serialize_bytes_elements,
)
from guardedmodel_sidecar.protocol.model import (
    InferRequest,
    InferResponse,
    OutputTensor,
    RequestedOutput,
    Tensor,
)

HEADER_LENGTH = "Inference-Header-Content-Length"
_JSON_OPTS = orjson.OPT_SERIALIZE_NUMPY


def _load_json_header(body: memoryview, header_length: int | None, what: str) -> tuple[dict[str, Any], int]:
    end = len(body) if header_length is None else header_length
    if end < 0 or end > len(body):
        raise InvalidRequest(
            f"{HEADER_LENGTH} is {header_length} but the {what} body has only {len(body)} bytes"
        )
    try:
        header = orjson.loads(body[:end])
    except orjson.JSONDecodeError as exc:
        # Python's json module writes NaN/Infinity as bare words (tritonclient does so for JSON
        # tensors); read them so that the gate can say which input holds non-finite values.
        try:
            header = json.loads(bytes(body[:end]))
        except (ValueError, UnicodeDecodeError):
            raise InvalidRequest(f"{what} body is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise InvalidRequest(f"{what} body must be a JSON object, got {type(header).__name__}")
    return header, end


def _shape_of(entry: dict[str, Any], name: str) -> tuple[int, ...]:
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise InvalidRequest(
            f"input '{name}': 'shape' must be a list of non-negative integers, got {shape!r}"
        )
    return tuple(shape)


def _tensor_from_json_data(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> Tensor:
    count = element_count(shape)
    if datatype == BYTES:
        flat = np.asarray(data, dtype=np.object_).reshape(-1).tolist() if data is not None else []
        if len(flat) != count:
            raise InvalidRequest(
                f"input '{name}': shape {list(shape)} needs {count} elements, data has {len(flat)}"
            )
        return Tensor(name, datatype, shape, serialize_bytes_elements(flat), None)
    dtype = NUMPY_DTYPES[datatype]
    try:
        array = np.asarray(data, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidRequest(f"input '{name}': data cannot be read as {datatype}: {exc}") from None
    if array.size != count:
        raise InvalidRequest(
            f"input '{name}': shape {list(shape)} needs {count} elements, data has {array.size}"
        )
    array = array.reshape(shape)
    return Tensor(name, datatype, shape, array.tobytes(), array)


def decode_infer_request(
    body: bytes | memoryview,
    header_length: int | None,
    model_name: str,
    model_version: str,
) -> InferRequest:
    """Parse a caller's v2 HTTP infer body (JSON or JSON + binary tensors)."""
    view = memoryview(body)
    header, offset = _load_json_header(view, header_length, "request")
    entries = header.get("inputs")
    if not isinstance(entries, list) or not entries:
        raise InvalidRequest("request has no 'inputs': a v2 infer request needs at least one input tensor")
    inputs: list[Tensor] = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise InvalidRequest("every entry of 'inputs' must be an object with a string 'name'")
        name = entry["name"]
        datatype = entry.get("datatype")
        if datatype not in KNOWN_DATATYPES:
            raise InvalidRequest(f"input '{name}': unknown datatype {datatype!r}")
        shape = _shape_of(entry, name)
        params = entry.get("parameters") or {}
        if "shared_memory_region" in params:
            raise InvalidRequest(
                f"input '{name}': shared-memory inputs cannot pass through the guard sidecar"
            )
        size = params.get("binary_data_size")
        if size is None:
            if "data" not in entry:
                raise InvalidRequest(f"input '{name}': neither 'data' nor a binary_data_size parameter given")
            inputs.append(_tensor_from_json_data(name, datatype, shape, entry["data"]))
            continue
        if not isinstance(size, int) or size < 0:
            raise InvalidRequest(f"input '{name}': binary_data_size must be a non-negative integer")
        if offset + size > len(view):
            raise InvalidRequest(
                f"input '{name}': binary_data_size {size} runs past the end of the body "
                f"({len(view) - offset} bytes left)"
            )
        raw = view[offset : offset + size]
        offset += size
        if datatype == BYTES:
            inputs.append(Tensor(name, datatype, shape, raw, None))
            continue
        dtype = NUMPY_DTYPES[datatype]
        expected = element_count(shape) * dtype.itemsize
        if size != expected:
            raise InvalidRequest(
                f"input '{name}': shape {list(shape)} of {datatype} needs {expected} bytes, got {size}"
            )
        inputs.append(Tensor(name, datatype, shape, raw, np.frombuffer(raw, dtype=dtype).reshape(shape)))
    if offset != len(view):
        raise InvalidRequest(
            f"request body has {len(view) - offset} bytes after the last binary input; sizes do not add up"
        )
    params = header.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidRequest("'parameters' must be an object")
    binary_default = bool(params.pop("binary_data_output", False))
    outputs: list[RequestedOutput] | None = None
    out_entries = header.get("outputs")
    if out_entries is not None:
        if not isinstance(out_entries, list):
            raise InvalidRequest("'outputs' must be a list")
        outputs = []
        for out in out_entries:
            if not isinstance(out, dict) or not isinstance(out.get("name"), str):
                raise InvalidRequest("every entry of 'outputs' must be an object with a string 'name'")
            oparams = dict(out.get("parameters") or {})
            if "shared_memory_region" in oparams:
                raise InvalidRequest(
                    f"output '{out['name']}': shared-memory outputs cannot pass through the guard sidecar"
                )
            if oparams.get("classification") or oparams.get("class_count"):
                raise InvalidRequest(
                    f"output '{out['name']}': the classification extension is not available through the guard "
                    "sidecar; request the raw output and take the top classes client-side"
                )
            binary = bool(oparams.pop("binary_data", binary_default))
            outputs.append(RequestedOutput(out["name"], binary, oparams or None))
    request_id = header.get("id", "")
    return InferRequest(
        model_name=model_name,
        model_version=model_version,
        id=request_id if isinstance(request_id, str) else str(request_id),
        parameters=params,
        inputs=inputs,
        outputs=outputs,
        binary_output_default=binary_default,
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


def decode_upstream_response(body: bytes | memoryview, header_length: int | None) -> InferResponse:
    view = memoryview(body)
    header, offset = _load_json_header(view, header_length, "Triton response")
    outputs: list[OutputTensor] = []
    for entry in header.get("outputs", ()):
        name = entry["name"]
        datatype = entry["datatype"]
        shape = tuple(entry["shape"])
        size = (entry.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            raw: bytes | memoryview = view[offset : offset + size]
            offset += size
            outputs.append(OutputTensor(name, datatype, shape, raw))
        elif datatype == BYTES:
            outputs.append(OutputTensor(name, datatype, shape, serialize_bytes_elements(entry["data"])))
        else:
            array = np.asarray(entry["data"], dtype=NUMPY_DTYPES[datatype]).reshape(shape)
            outputs.append(OutputTensor(name, datatype, shape, array.tobytes(), array))
    return InferResponse(
        model_name=header.get("model_name", ""),
        model_version=str(header.get("model_version", "")),
        id=header.get("id", ""),
        parameters=header.get("parameters") or {},
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
