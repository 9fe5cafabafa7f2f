"""Every v2 decoder is total: whatever it is given, it returns a valid request or refuses with a client
error (400 / 413), bounded in time and memory, and never raises anything else.

Property-based (hypothesis): arbitrary bytes, arbitrary JSON, structured v2 requests mutated at a
random place, binary-extension bodies with any header length, arbitrary protobuf bytes and
``ModelInferRequest`` messages with random shapes, datatypes, contents and raw contents. Valid requests
must survive the trip upstream unchanged. ``make test`` runs a few cases per property;
``HYPOTHESIS_PROFILE=fuzz`` (``make fuzz``) runs many more.
"""

from __future__ import annotations

import json
import os
import re
import tracemalloc
from typing import Any, Literal

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2

from guardedmodel_sidecar.config import InputSpec
from guardedmodel_sidecar.errors import InvalidRequest, PayloadTooLarge, UpstreamError
from guardedmodel_sidecar.limits import Limits
from guardedmodel_sidecar.protocol.budget import DecodeBudget, budget_for
from guardedmodel_sidecar.protocol.datatypes import (
    BYTES,
    KNOWN_DATATYPES,
    NUMPY_DTYPES,
    deserialize_bytes_elements,
    element_count,
    serialize_bytes_elements,
)
from guardedmodel_sidecar.protocol.grpc_codec import decode_infer_request_proto, request_from_proto
from guardedmodel_sidecar.protocol.http_codec import decode_infer_request
from guardedmodel_sidecar.protocol.model import InferRequest
from guardedmodel_sidecar.protocol.triton_http_codec import decode_upstream_response, encode_upstream_request

_FUZZ = os.environ.get("HYPOTHESIS_PROFILE") == "fuzz"
_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]


def cases(n: int) -> settings:
    """``n`` cases under ``make test``; the fuzz profile's count under HYPOTHESIS_PROFILE=fuzz."""
    if _FUZZ:
        return settings(deadline=None, suppress_health_check=_SLOW_OK)
    return settings(max_examples=n, deadline=None, suppress_health_check=_SLOW_OK)


# A small budget, so that shapes drawn at random cross its limits often.
SMALL = DecodeBudget(
    max_elements=4096, max_value_elements=1024, max_bytes_elements=256, max_json_bytes=1 << 20
)
BUDGETS = st.sampled_from([None, SMALL])
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def check_valid(request: InferRequest) -> None:
    """What every decoded request guarantees to the pipeline and the upstream encoder."""
    assert isinstance(request, InferRequest)
    assert request.inputs and isinstance(request.id, str)
    for tensor in request.inputs:
        assert isinstance(tensor.name, str) and tensor.name
        assert tensor.datatype in KNOWN_DATATYPES
        assert all(type(d) is int and d >= 0 for d in tensor.shape)
        count = element_count(tensor.shape)
        if tensor.datatype == BYTES:
            assert tensor.array is None
            assert len(deserialize_bytes_elements(tensor.raw)) == count
        else:
            dtype = NUMPY_DTYPES[tensor.datatype]
            assert tensor.array is not None
            assert tensor.array.shape == tensor.shape and tensor.array.dtype == dtype
            assert len(tensor.raw) == count * dtype.itemsize
    for value in request.parameters.values():
        assert type(value) in (str, int, float, bool)
    if request.outputs is not None:
        assert all(isinstance(o.name, str) and type(o.binary) is bool for o in request.outputs)
    # Whatever decodes must also encode for Triton.
    header, buffers = encode_upstream_request(request, None)
    assert orjson.loads(header)["inputs"]
    assert len(buffers) == len(request.inputs)


def check_refusal(exc: InvalidRequest) -> None:
    assert exc.http_status in (400, 413)
    assert (exc.http_status == 413) == isinstance(exc, PayloadTooLarge)
    assert len(exc.message) <= 1024 and not _CONTROL.search(exc.message)


def decodes_or_refuses(decode: Any, *args: Any, **kwargs: Any) -> InferRequest | None:
    try:
        request = decode(*args, **kwargs)
    except InvalidRequest as exc:  # PayloadTooLarge is one too
        check_refusal(exc)
        return None
    check_valid(request)
    return request


# ------------------------------------------------------------------------------------ strategies

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()  # NaN and infinities: written as bare words, read through the json fallback
    | st.text(max_size=8)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
SHAPES = st.lists(st.integers(0, 3), max_size=3)
NAMES = st.sampled_from(["INPUT", "X", "MASK"]) | st.text(max_size=6)


def values_for(datatype: str, count: int) -> st.SearchStrategy[list[Any]]:
    if datatype == BYTES:
        element: st.SearchStrategy[Any] = st.text(max_size=6)
    elif datatype == "BOOL":
        element = st.booleans()
    elif datatype.startswith("FP"):
        width: Literal[16, 32, 64] = 16 if datatype == "FP16" else 32 if datatype == "FP32" else 64
        element = st.floats(width=width, allow_nan=False, allow_infinity=False)
    else:
        info = np.iinfo(NUMPY_DTYPES[datatype])
        element = st.integers(int(info.min), int(info.max))
    return st.lists(element, min_size=count, max_size=count)


def nest(flat: list[Any], shape: list[int]) -> list[Any]:
    """``flat`` nested as ``shape`` (row-major)."""
    if len(shape) <= 1:
        return flat
    step = len(flat) // shape[0] if shape[0] else 0
    return [nest(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


@st.composite
def json_inputs(draw: st.DrawFn) -> tuple[dict[str, Any], list[Any]]:
    """A valid JSON input entry and its flat values."""
    datatype = draw(st.sampled_from(sorted(KNOWN_DATATYPES)))
    shape = draw(SHAPES)
    flat = draw(values_for(datatype, element_count(tuple(shape))))
    nested = len(shape) > 1 and element_count(tuple(shape)) > 0 and draw(st.booleans())
    data = nest(flat, shape) if nested else flat
    entry = {"name": draw(st.sampled_from(["A", "B", "C", "D"])), "datatype": datatype, "shape": shape}
    entry["data"] = data
    return entry, flat


@st.composite
def json_requests(draw: st.DrawFn) -> dict[str, Any]:
    entries = draw(st.lists(json_inputs(), min_size=1, max_size=3))
    request: dict[str, Any] = {"inputs": [e for e, _ in entries]}
    if draw(st.booleans()):
        request["id"] = draw(st.text(max_size=8))
    if draw(st.booleans()):
        request["parameters"] = {"binary_data_output": draw(st.booleans()), "priority": 1}
    if draw(st.booleans()):
        request["outputs"] = [{"name": "OUT", "parameters": {"binary_data": draw(st.booleans())}}]
    return request


@st.composite
def mutated(draw: st.DrawFn, value: Any, depth: int = 0) -> Any:
    """``value`` with one place changed: a key dropped, a value replaced by any JSON, an entry
    duplicated, or a change further down (first: hypothesis favours the first choice, and the
    deep paths are the ones worth reaching)."""
    if depth < 6 and isinstance(value, dict) and value:
        key = draw(st.sampled_from(sorted(value)))
        out = dict(value)
        action = draw(st.sampled_from(["deeper", "replace", "delete"]))
        if action == "deeper":
            out[key] = draw(mutated(value[key], depth + 1))
        elif action == "replace":
            out[key] = draw(JSON_VALUES)
        else:
            del out[key]
        return out
    if depth < 6 and isinstance(value, list) and value:
        index = draw(st.integers(0, len(value) - 1))
        out_list = list(value)
        action = draw(st.sampled_from(["deeper", "replace", "duplicate", "delete"]))
        if action == "deeper":
            out_list[index] = draw(mutated(value[index], depth + 1))
        elif action == "replace":
            out_list[index] = draw(JSON_VALUES)
        elif action == "duplicate":
            out_list.append(value[index])
        else:
            del out_list[index]
        return out_list
    return draw(
        st.sampled_from([True, -1, 2**40, 2**64, 1.5, "FP32", "fp32", [], {}, [[1]], None]) | JSON_VALUES
    )


def json_bytes(value: Any) -> bytes:
    # Python's json module: NaN/Infinity as bare words and integers of any size, as real clients send.
    return json.dumps(value).encode()


# ------------------------------------------------------------------------------------ JSON bodies


@given(body=st.binary(max_size=256), header_length=st.none() | st.integers(-10, 300), budget=BUDGETS)
@cases(300)
def test_any_bytes_decode_or_are_refused(body: bytes, header_length: int | None, budget: Any) -> None:
    decodes_or_refuses(decode_infer_request, body, header_length, "m", "", budget)


@given(value=JSON_VALUES, wrap=st.booleans(), budget=BUDGETS)
@cases(300)
def test_any_json_decodes_or_is_refused(value: Any, wrap: bool, budget: Any) -> None:
    document = {"inputs": value} if wrap else value
    decodes_or_refuses(decode_infer_request, json_bytes(document), None, "m", "", budget)


@given(request=json_requests(), data=st.data(), budget=BUDGETS)
@cases(400)
def test_mutated_json_requests_decode_or_are_refused(request: dict[str, Any], data: Any, budget: Any) -> None:
    decodes_or_refuses(decode_infer_request, json_bytes(data.draw(mutated(request))), None, "m", "", budget)


@given(request=json_requests())
@cases(150)
def test_valid_json_requests_decode_and_round_trip_upstream(request: dict[str, Any]) -> None:
    decoded = decodes_or_refuses(decode_infer_request, json_bytes(request), None, "m", "")
    assert decoded is not None
    assert decoded.id == request.get("id", "")
    header, buffers = encode_upstream_request(decoded, None)
    upstream = orjson.loads(header)
    for sent, entry, buffer in zip(request["inputs"], upstream["inputs"], buffers, strict=True):
        assert (entry["name"], entry["datatype"], entry["shape"]) == (
            sent["name"],
            sent["datatype"],
            sent["shape"],
        )
        assert entry["parameters"]["binary_data_size"] == len(buffer)
        flat = np.asarray(sent["data"], dtype=object).reshape(-1).tolist() if sent["data"] else []
        if sent["datatype"] == BYTES:
            assert deserialize_bytes_elements(buffer) == [s.encode() for s in flat]
        else:
            expected = np.asarray(flat, dtype=NUMPY_DTYPES[sent["datatype"]])
            assert bytes(buffer) == expected.tobytes()


# ------------------------------------------------------------------------------------ binary extension

HEADER_LENGTHS = (
    st.none()
    | st.integers(-(2**70), 2**70)
    | st.text(max_size=24)
    | st.sampled_from(["", " 12", "12 ", "+12", "-1", "1_2", "\u0661\u0662", "0x10", "1e3", "9" * 40])
)


@st.composite
def binary_bodies(draw: st.DrawFn) -> tuple[bytes, int]:
    """A valid binary-extension body (JSON header + raw tensors) and its header length."""
    entries = []
    tails = []
    for index in range(draw(st.integers(1, 3))):
        datatype = draw(st.sampled_from(sorted(KNOWN_DATATYPES)))
        shape = draw(SHAPES)
        count = element_count(tuple(shape))
        if datatype == BYTES:
            raw = serialize_bytes_elements(
                draw(st.lists(st.binary(max_size=5), min_size=count, max_size=count))
            )
        else:
            raw = np.asarray(draw(values_for(datatype, count)), dtype=NUMPY_DTYPES[datatype]).tobytes()
        entries.append(
            {
                "name": f"IN{index}",
                "datatype": datatype,
                "shape": shape,
                "parameters": {"binary_data_size": len(raw)},
            }
        )
        tails.append(raw)
    header = orjson.dumps({"inputs": entries})
    return header + b"".join(tails), len(header)


@given(valid=binary_bodies(), header_length=HEADER_LENGTHS, tail=st.binary(max_size=64), budget=BUDGETS)
@cases(300)
def test_binary_bodies_with_any_header_length_and_tail(
    valid: tuple[bytes, int], header_length: Any, tail: bytes, budget: Any
) -> None:
    body, _ = valid
    decodes_or_refuses(decode_infer_request, body + tail, header_length, "m", "", budget)


@given(valid=binary_bodies(), data=st.data())
@cases(200)
def test_binary_bodies_cut_or_mutated_decode_or_are_refused(valid: tuple[bytes, int], data: Any) -> None:
    body, header_length = valid
    header = orjson.loads(body[:header_length])
    changed = json_bytes(data.draw(mutated(header)))
    cut = data.draw(st.integers(0, len(body) - header_length))
    for candidate, length in (
        (body[: header_length + cut], header_length),
        (changed + body[header_length:], len(changed)),
    ):
        decodes_or_refuses(decode_infer_request, candidate, length, "m", "", SMALL)
        decodes_or_refuses(decode_infer_request, candidate, str(length), "m", "")


@given(valid=binary_bodies())
@cases(150)
def test_valid_binary_bodies_round_trip_zero_copy(valid: tuple[bytes, int]) -> None:
    body, header_length = valid
    decoded = decodes_or_refuses(decode_infer_request, body, str(header_length), "m", "")
    assert decoded is not None
    _, buffers = encode_upstream_request(decoded, ["OUT"])
    assert b"".join(bytes(b) for b in buffers) == body[header_length:]


# ------------------------------------------------------------------------------------ protobuf

_CONTENT_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "bool_contents": st.booleans(),
    "int_contents": st.integers(-(2**31), 2**31 - 1),
    "int64_contents": st.integers(-(2**63), 2**63 - 1),
    "uint_contents": st.integers(0, 2**32 - 1),
    "uint64_contents": st.integers(0, 2**64 - 1),
    "fp32_contents": st.floats(width=32),
    "fp64_contents": st.floats(),
    "bytes_contents": st.binary(max_size=6),
}
_PARAM_CHOICES: dict[str, st.SearchStrategy[Any]] = {
    "bool_param": st.booleans(),
    "int64_param": st.integers(-(2**63), 2**63 - 1),
    "string_param": st.text(max_size=6),
    "double_param": st.floats(),
    "uint64_param": st.integers(0, 2**64 - 1),
}
PROTO_DATATYPES = st.sampled_from(sorted(KNOWN_DATATYPES)) | st.text(max_size=5)
PROTO_SHAPES = st.lists(st.integers(-3, 4) | st.sampled_from([2**31, 2**62, -(2**63)]), max_size=4)


def fill_parameters(draw: st.DrawFn, target: Any) -> None:
    for key in draw(
        st.lists(
            st.sampled_from(["priority", "binary_data_size", "shared_memory_region", "k"])
            | st.text(max_size=4),
            max_size=3,
        )
    ):
        choice = draw(st.sampled_from([None, *sorted(_PARAM_CHOICES)]))
        param = target[key]
        if choice is not None:
            setattr(param, choice, draw(_PARAM_CHOICES[choice]))


@st.composite
def random_proto_requests(draw: st.DrawFn) -> Any:
    msg = service_pb2.ModelInferRequest(model_name="m", id=draw(st.text(max_size=6)))
    for _ in range(draw(st.integers(0, 3))):
        add_random_input(draw, msg)
    msg.raw_input_contents.extend(draw(st.lists(st.binary(max_size=24), max_size=3)))
    for _ in range(draw(st.integers(0, 2))):
        out = msg.outputs.add()
        out.name = draw(NAMES)
        fill_parameters(draw, out.parameters)
    fill_parameters(draw, msg.parameters)
    return msg


def add_random_input(draw: st.DrawFn, msg: Any) -> None:
    tensor = msg.inputs.add()
    tensor.name = draw(NAMES)
    tensor.datatype = draw(PROTO_DATATYPES)
    tensor.shape.extend(draw(PROTO_SHAPES))
    fill_parameters(draw, tensor.parameters)
    for field in draw(st.lists(st.sampled_from(sorted(_CONTENT_VALUES)), max_size=2)):
        getattr(tensor.contents, field).extend(draw(st.lists(_CONTENT_VALUES[field], max_size=8)))


@st.composite
def mutated_proto_requests(draw: st.DrawFn) -> Any:
    """A valid message with one to three things changed."""
    msg, _ = draw(valid_proto_requests())
    for _ in range(draw(st.integers(1, 3))):
        tensor = msg.inputs[draw(st.integers(0, len(msg.inputs) - 1))]
        action = draw(st.integers(0, 9))
        if action == 0:
            tensor.datatype = draw(PROTO_DATATYPES)
        elif action == 1:
            del tensor.shape[:]
            tensor.shape.extend(draw(PROTO_SHAPES))
        elif action == 2:
            field = draw(st.sampled_from(sorted(_CONTENT_VALUES)))
            getattr(tensor.contents, field).extend(
                draw(st.lists(_CONTENT_VALUES[field], min_size=1, max_size=4))
            )
        elif action == 3 and msg.raw_input_contents:
            index = draw(st.integers(0, len(msg.raw_input_contents) - 1))
            msg.raw_input_contents[index] = draw(st.binary(max_size=24))
        elif action == 4:
            msg.raw_input_contents.append(draw(st.binary(max_size=8)))
        elif action == 5 and msg.raw_input_contents:
            del msg.raw_input_contents[-1]
        elif action == 6:
            add_random_input(draw, msg)
        elif action == 7:
            fill_parameters(draw, draw(st.sampled_from([tensor.parameters, msg.parameters])))
        elif action == 8:
            out = msg.outputs.add()
            out.name = draw(NAMES)
            fill_parameters(draw, out.parameters)
        else:
            for _, values in tensor.contents.ListFields():
                del values[-1:]
    return msg


PROTO_REQUESTS = random_proto_requests() | mutated_proto_requests()


@st.composite
def valid_proto_requests(draw: st.DrawFn) -> tuple[Any, list[tuple[str, str, list[int], bytes]]]:
    """A valid ModelInferRequest (typed contents or raw contents) and each input's v2 raw bytes."""
    msg = service_pb2.ModelInferRequest(model_name="m", id=draw(st.text(max_size=6)))
    use_raw = draw(st.booleans())
    expected = []
    for index in range(draw(st.integers(1, 3))):
        datatype = draw(st.sampled_from(sorted(KNOWN_DATATYPES - ({"FP16"} if not use_raw else set()))))
        shape = draw(SHAPES)
        count = element_count(tuple(shape))
        values = draw(
            values_for(datatype, count)
            if datatype != BYTES
            else st.lists(st.binary(max_size=5), min_size=count, max_size=count)
        )
        tensor = msg.inputs.add(name=f"IN{index}", datatype=datatype, shape=shape)
        if datatype == BYTES:
            raw = serialize_bytes_elements(values)
        else:
            raw = np.asarray(values, dtype=NUMPY_DTYPES[datatype]).tobytes()
        if use_raw:
            msg.raw_input_contents.append(raw)
        elif datatype == BYTES:
            tensor.contents.bytes_contents.extend(values)
        else:
            field = {"BOOL": "bool"}.get(datatype, "")
            name = (
                field
                or {
                    "INT8": "int",
                    "INT16": "int",
                    "INT32": "int",
                    "INT64": "int64",
                    "UINT8": "uint",
                    "UINT16": "uint",
                    "UINT32": "uint",
                    "UINT64": "uint64",
                    "FP32": "fp32",
                    "FP64": "fp64",
                }[datatype]
            )
            getattr(tensor.contents, f"{name}_contents").extend(values)
        expected.append((f"IN{index}", datatype, shape, raw))
    return msg, expected


@given(body=st.binary(max_size=256), budget=BUDGETS)
@cases(300)
def test_any_protobuf_bytes_decode_or_are_refused(body: bytes, budget: Any) -> None:
    decodes_or_refuses(decode_infer_request_proto, body, budget)


@given(msg=PROTO_REQUESTS, budget=BUDGETS)
@cases(400)
def test_random_model_infer_requests_decode_or_are_refused(msg: Any, budget: Any) -> None:
    decodes_or_refuses(request_from_proto, msg, budget)
    decodes_or_refuses(decode_infer_request_proto, msg.SerializeToString(), budget)


@given(valid=valid_proto_requests())
@cases(150)
def test_valid_model_infer_requests_round_trip(valid: tuple[Any, list[Any]]) -> None:
    msg, expected = valid
    decoded = decodes_or_refuses(request_from_proto, msg)
    assert decoded is not None and decoded.id == msg.id
    header, buffers = encode_upstream_request(decoded, None)
    upstream = orjson.loads(header)
    for (name, datatype, shape, raw), entry, buffer in zip(
        expected, upstream["inputs"], buffers, strict=True
    ):
        assert (entry["name"], entry["datatype"], entry["shape"]) == (name, datatype, shape)
        assert bytes(buffer) == raw


# ------------------------------------------------------------------------------------ bounds


@pytest.mark.parametrize(
    "make",
    [
        lambda: orjson.dumps(
            {"inputs": [{"name": "X", "datatype": "FP32", "shape": [2**20, 2**20], "data": [0]}]}
        ),
        lambda: orjson.dumps(
            {"inputs": [{"name": "X", "datatype": "BYTES", "shape": [2**40], "data": ["a"]}]}
        ),
    ],
)
def test_a_2_to_the_40_element_shape_is_refused_before_allocation(make: Any) -> None:
    body = make()
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLarge, match="1099511627776 elements"):
            decode_infer_request(body, None, "m", "")
        header = orjson.dumps(
            {
                "inputs": [
                    {"name": "X", "datatype": "FP64", "shape": [2**40], "parameters": {"binary_data_size": 8}}
                ]
            }
        )
        with pytest.raises(PayloadTooLarge, match="1099511627776 elements"):
            decode_infer_request(header + bytes(8), str(len(header)), "m", "")
        msg = service_pb2.ModelInferRequest(model_name="m")
        msg.inputs.add(name="X", datatype="FP32", shape=[2**40]).contents.fp32_contents.append(1.0)
        with pytest.raises(PayloadTooLarge, match="1099511627776 elements"):
            request_from_proto(msg)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * 1024 * 1024


def test_declared_inputs_bound_each_input_by_shape_times_max_batch() -> None:
    budget = budget_for((InputSpec("X", "FP32", (4,)), InputSpec("M", "INT32", (-1,))), 8, Limits())
    assert budget.per_input["X"] == 32 and budget.per_input["M"] == Limits().max_elements
    ok = orjson.dumps({"inputs": [{"name": "X", "datatype": "FP32", "shape": [8, 4], "data": [0.0] * 32}]})
    assert decode_infer_request(ok, None, "m", "", budget).inputs[0].shape == (8, 4)
    over = orjson.dumps({"inputs": [{"name": "X", "datatype": "FP32", "shape": [9, 4], "data": [0.0] * 36}]})
    with pytest.raises(
        PayloadTooLarge, match=r"input 'X': shape \[9, 4\] holds 36 elements, above the limit of 32"
    ):
        decode_infer_request(over, None, "m", "", budget)
    # No inputs declared: only the request-wide limits apply.
    assert budget_for((), 8, Limits()).per_input == {}


def test_the_request_limit_counts_every_input_before_any_is_decoded() -> None:
    budget = DecodeBudget(max_elements=10)
    body = orjson.dumps(
        {
            "inputs": [
                {"name": "A", "datatype": "FP32", "shape": [6], "data": [0] * 6},
                {"name": "B", "datatype": "FP32", "shape": [6], "data": "not even an array"},
            ]
        }
    )
    with pytest.raises(PayloadTooLarge, match="bring the request to 12, above the limit of 10"):
        decode_infer_request(body, None, "m", "", budget)


# ------------------------------------------------------------------------------------ upstream


@given(body=st.binary(max_size=128), header_length=st.none() | st.integers(-4, 200) | st.text(max_size=4))
@cases(200)
def test_any_triton_response_decodes_or_is_an_upstream_error(body: bytes, header_length: Any) -> None:
    try:
        decode_upstream_response(body, header_length)
    except UpstreamError as exc:
        assert exc.http_status == 502


@given(data=st.data())
@cases(200)
def test_mutated_triton_responses_decode_or_are_upstream_errors(data: Any) -> None:
    logits = np.arange(3, dtype=np.float32)
    header = {
        "model_name": "m",
        "model_version": "1",
        "outputs": [
            {"name": "LOGITS", "datatype": "FP32", "shape": [1, 3], "parameters": {"binary_data_size": 12}},
            {"name": "LABEL", "datatype": "BYTES", "shape": [1], "data": ["cat"]},
        ],
    }
    changed = json_bytes(data.draw(mutated(header)))
    try:
        response = decode_upstream_response(changed + logits.tobytes(), len(changed))
    except UpstreamError as exc:
        assert exc.http_status == 502
        return
    for out in response.outputs:
        if out.datatype in NUMPY_DTYPES or out.datatype == BYTES:
            assert out.as_numpy().shape == out.shape
