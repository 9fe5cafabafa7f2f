"""The v2 codecs: JSON and binary tensors in, binary upstream, the caller's form back; every malformed
body or message a client error that names the field (the properties: test_sidecar_decode_properties)."""

from __future__ import annotations

import grpc
import numpy as np
import orjson
import pytest
from tritonclient.grpc import service_pb2

from guardedmodel_sidecar.errors import InvalidRequest, PayloadTooLarge, UpstreamError
from guardedmodel_sidecar.protocol.budget import DecodeBudget
from guardedmodel_sidecar.protocol.datatypes import deserialize_bytes_elements, serialize_bytes_elements
from guardedmodel_sidecar.protocol.grpc_codec import decode_infer_request_proto, request_from_proto
from guardedmodel_sidecar.protocol.http_codec import decode_infer_request, encode_infer_response
from guardedmodel_sidecar.protocol.triton_http_codec import decode_upstream_response, encode_upstream_request


def binary_body(
    arrays: dict[str, np.ndarray], outputs: list[dict] | None = None, **extra
) -> tuple[bytes, int]:
    header = {
        "inputs": [
            {
                "name": n,
                "datatype": "FP32",
                "shape": list(a.shape),
                "parameters": {"binary_data_size": a.nbytes},
            }
            for n, a in arrays.items()
        ],
        **extra,
    }
    if outputs is not None:
        header["outputs"] = outputs
    encoded = orjson.dumps(header)
    return encoded + b"".join(a.tobytes() for a in arrays.values()), len(encoded)


def test_json_request_is_decoded_into_a_shaped_array_and_its_binary_form() -> None:
    body = orjson.dumps(
        {"id": "r1", "inputs": [{"name": "X", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3, 4]}]}
    )
    request = decode_infer_request(body, None, "m", "")
    x = request.inputs[0]
    assert request.id == "r1" and request.outputs is None
    np.testing.assert_array_equal(np.asarray(x.array), np.array([[1, 2], [3, 4]], dtype=np.float32))
    assert bytes(x.raw) == np.array([1, 2, 3, 4], dtype=np.float32).tobytes()


def test_binary_request_is_a_zero_copy_view_of_the_body() -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.ones((2, 1), dtype=np.float32)
    body, hlen = binary_body({"A": a, "B": b}, outputs=[{"name": "Y", "parameters": {"binary_data": True}}])
    request = decode_infer_request(body, hlen, "m", "3")
    assert request.model_version == "3"
    np.testing.assert_array_equal(np.asarray(request.inputs[0].array), a)
    np.testing.assert_array_equal(np.asarray(request.inputs[1].array), b)
    assert request.outputs is not None and request.outputs[0].binary


@pytest.mark.parametrize(
    ("body", "hlen", "message"),
    [
        (b"{not json", None, "not valid JSON"),
        (b"[]", None, "must be a JSON object"),
        (b'{"inputs": []}', None, "no 'inputs'"),
        (
            b'{"inputs": [{"name": "X", "datatype": "FP33", "shape": [1], "data": [1]}]}',
            None,
            "unknown datatype",
        ),
        (
            b'{"inputs": [{"name": "X", "datatype": "FP32", "shape": [3], "data": [1, 2]}]}',
            None,
            "needs 3 elements",
        ),
        (
            b'{"inputs": [{"name": "X", "datatype": "FP32", "shape": [-1], "data": [1]}]}',
            None,
            "non-negative",
        ),
        (
            b'{"inputs": [{"name": "X", "datatype": "INT32", "shape": [1], "data": ["a"]}]}',
            None,
            "holds string values; INT32 data must be integers",
        ),
        (
            b'{"inputs": [{"name": "X", "datatype": "FP32", "shape": [1], '
            b'"parameters": {"shared_memory_region": "r"}}]}',
            None,
            "shared-memory",
        ),
    ],
)
def test_malformed_requests_are_refused_with_the_reason(body: bytes, hlen: int | None, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        decode_infer_request(body, hlen, "m", "")


def test_binary_sizes_that_do_not_add_up_are_refused() -> None:
    a = np.zeros((1, 4), dtype=np.float32)
    body, hlen = binary_body({"X": a})
    with pytest.raises(InvalidRequest, match="runs past the end"):
        decode_infer_request(body[:-4], hlen, "m", "")
    with pytest.raises(InvalidRequest, match="bytes after the last binary input"):
        decode_infer_request(body + b"xx", hlen, "m", "")
    with pytest.raises(InvalidRequest, match="Inference-Header-Content-Length"):
        decode_infer_request(body, len(body) + 10, "m", "")
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "X", "datatype": "FP32", "shape": [1, 3], "parameters": {"binary_data_size": 16}}
            ]
        }
    )
    with pytest.raises(InvalidRequest, match="needs 12 bytes, got 16"):
        decode_infer_request(header + bytes(16), len(header), "m", "")


def test_classification_extension_is_refused_clearly() -> None:
    body = orjson.dumps(
        {
            "inputs": [{"name": "X", "datatype": "FP32", "shape": [1], "data": [1]}],
            "outputs": [{"name": "Y", "parameters": {"classification": 3}}],
        }
    )
    with pytest.raises(InvalidRequest, match="classification extension"):
        decode_infer_request(body, None, "m", "")


def test_upstream_request_is_binary_and_asks_for_the_guard_outputs() -> None:
    body = orjson.dumps({"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]})
    request = decode_infer_request(body, None, "m", "")
    header, buffers = encode_upstream_request(request, ["LOGITS", "FEATURES"])
    parsed = orjson.loads(header)
    assert parsed["inputs"][0]["parameters"] == {"binary_data_size": 8}
    assert [o["name"] for o in parsed["outputs"]] == ["LOGITS", "FEATURES"]
    assert all(o["parameters"]["binary_data"] for o in parsed["outputs"])
    header, _ = encode_upstream_request(request, None)
    assert orjson.loads(header)["parameters"] == {"binary_data_output": True}
    assert bytes(buffers[0]) == np.array([1, 2], dtype=np.float32).tobytes()


def triton_response(logits: np.ndarray, features: np.ndarray) -> tuple[bytes, int]:
    header = orjson.dumps(
        {
            "model_name": "m",
            "model_version": "1",
            "outputs": [
                {
                    "name": "LOGITS",
                    "datatype": "FP32",
                    "shape": list(logits.shape),
                    "parameters": {"binary_data_size": logits.nbytes},
                },
                {
                    "name": "FEATURES",
                    "datatype": "FP32",
                    "shape": list(features.shape),
                    "parameters": {"binary_data_size": features.nbytes},
                },
            ],
        }
    )
    return header + logits.tobytes() + features.tobytes(), len(header)


def test_response_returns_only_the_requested_outputs_in_the_requested_form() -> None:
    logits = np.array([[0.5, -1.0, 2.0]], dtype=np.float32)
    features = np.arange(4, dtype=np.float32).reshape(1, 4)
    body, hlen = triton_response(logits, features)
    response = decode_upstream_response(body, hlen)
    out = response.output("FEATURES")
    assert out is not None
    np.testing.assert_array_equal(out.as_numpy(), features)

    json_request = decode_infer_request(
        orjson.dumps(
            {
                "inputs": [{"name": "X", "datatype": "FP32", "shape": [1], "data": [0]}],
                "outputs": [{"name": "LOGITS"}],
            }
        ),
        None,
        "m",
        "",
    )
    chunks, json_length = encode_infer_response(response, json_request, {"guard_decision": "accept"})
    assert json_length is None
    parsed = orjson.loads(b"".join(chunks))
    assert [o["name"] for o in parsed["outputs"]] == ["LOGITS"]
    assert np.allclose(parsed["outputs"][0]["data"], logits.ravel())
    assert parsed["parameters"]["guard_decision"] == "accept"

    binary_request = decode_infer_request(
        orjson.dumps(
            {
                "inputs": [{"name": "X", "datatype": "FP32", "shape": [1], "data": [0]}],
                "parameters": {"binary_data_output": True},
            }
        ),
        None,
        "m",
        "",
    )
    chunks, json_length = encode_infer_response(response, binary_request, {})
    assert json_length is not None
    out_header = orjson.loads(chunks[0])
    assert [o["name"] for o in out_header["outputs"]] == ["LOGITS", "FEATURES"]
    assert b"".join(bytes(c) for c in chunks[1:]) == logits.tobytes() + features.tobytes()


def test_bytes_elements_round_trip_and_truncation_is_refused() -> None:
    raw = serialize_bytes_elements([b"ab", "c", b""])
    assert deserialize_bytes_elements(raw) == [b"ab", b"c", b""]
    with pytest.raises(InvalidRequest, match="truncated"):
        deserialize_bytes_elements(raw[:-1] + b"\x09")


# ------------------------------------------------------------------------------------ total decoding


def one_input(**fields) -> bytes:
    entry = {"name": "X", "datatype": "FP32", "shape": [1], "data": [1.0], **fields}
    return orjson.dumps({"inputs": [{k: v for k, v in entry.items() if v is not ...}]})


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested more than 1024 levels"),
        (b'{"a": ' + b"[" * 100_000 + b"NaN" + b"]" * 100_000 + b"}", "nested more than 32 levels"),
        (b'{"inputs": {"name": "X"}}', "'inputs' must be an array"),
        (b'{"inputs": [3]}', r"inputs\[0\] must be an object"),
        (one_input(name=7), "'name' must be a non-empty string, got 7"),
        (one_input(name=""), "'name' must be a non-empty string"),
        (one_input(datatype="fp32"), r"unknown datatype 'fp32' \(datatypes are upper case: FP32\)"),
        (one_input(datatype=None), "unknown datatype None"),
        (one_input(shape=[True]), "'shape' must be a list of non-negative integers, got \\[True\\]"),
        (one_input(shape=[1.0]), "'shape' must be a list of non-negative integers"),
        (one_input(shape="1"), "'shape' must be a list of non-negative integers"),
        (one_input(shape=[1] * 33), "33 dimensions; at most 32"),
        (one_input(parameters=[1]), "'parameters' must be an object, got array"),
        (one_input(parameters={"p": {"nested": 1}}), "parameter 'p' must be a string, a boolean or a 64-bit"),
        (
            one_input(data=..., parameters={"binary_data_size": True}),
            "binary_data_size must be a non-negative",
        ),
        (
            one_input(data=..., parameters={"binary_data_size": 4.0}),
            "binary_data_size must be a non-negative",
        ),
        (
            one_input(data=..., parameters={"binary_data_size": "4"}),
            "binary_data_size must be a non-negative",
        ),
        (one_input(data=1.0), "'data' must be a JSON array, got non-integer number"),
        (one_input(data=["1.0"]), "holds string values; FP32 data must be numbers"),
        (one_input(data=[True]), "holds boolean values; FP32 data must be numbers"),
        (one_input(data=[None]), "holds null values"),
        (
            one_input(datatype="INT32", data=[1.5]),
            "holds non-integer number values; INT32 data must be integers",
        ),
        (
            one_input(datatype="INT64", data=[2**63]),
            r"value 9223372036854775808 is outside the range of INT64",
        ),
        (one_input(datatype="UINT8", data=[-1]), r"value -1 is outside the range of UINT8 \[0, 255\]"),
        (one_input(datatype="BOOL", data=[1]), "holds integer values; BOOL data must be booleans"),
        (one_input(datatype="BYTES", data=[1]), "holds integer values; BYTES data must be strings"),
        (one_input(datatype="BYTES", shape=[2], data=["x", ["y"]]), "mixes arrays and values"),
        (one_input(shape=[2, 2], data=[[1, 2], [3]]), "ragged or misshapen"),
        (one_input(shape=[2, 2], data=[[1, 2], 3]), "mixes arrays and values at nesting level 2"),
        (one_input(shape=[4], data=[[1, 2], [3, 4]]), "nested deeper than shape"),
        (one_input(shape=[1, 2], data=[[[1], [2]]]), "mixes arrays and values, or is nested deeper"),
        (one_input(shape=[3, 1], data=[[1], [2]]), "2 entries at the top level"),
        (
            b'{"inputs": [{"name": "X", "datatype": "FP32", "shape": [1], "data": [1]}], "id": 5}',
            "'id' must be a string",
        ),
        (
            b'{"inputs": [{"name": "X", "datatype": "FP32", "shape": [1], "data": [1]}], "outputs": {}}',
            "'outputs' must be a list",
        ),
        (
            b'{"inputs": [{"name": "X", "datatype": "FP32", "shape": [1], "data": [1]}], "outputs": [1]}',
            "every entry of 'outputs'",
        ),
        (
            b'{"inputs": [{"name": "X", "datatype": "FP32", "shape": [1], "data": [1]}], "outputs": [{"name": "Y", "parameters": {"binary_data": 1}}]}',
            "binary_data must be a boolean",
        ),
        (
            b'{"inputs": [{"name": "X", "datatype": "FP32", "shape": [1], "data": [1]}], "parameters": {"binary_data_output": "yes"}}',
            "binary_data_output must be a boolean",
        ),
    ],
)
def test_wrong_types_and_shapes_are_400s_naming_the_field(body: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message) as info:
        decode_infer_request(body, None, "m", "")
    assert info.value.http_status == 400


def test_nan_and_infinity_as_python_writes_them_are_read_for_the_gate() -> None:
    body = b'{"inputs": [{"name": "X", "datatype": "FP32", "shape": [2, 2], "data": [[1, NaN], [Infinity, -Infinity]]}]}'
    x = decode_infer_request(body, None, "m", "").inputs[0].array
    assert x is not None
    assert np.isnan(x[0, 1]) and x[1, 0] == np.inf and x[1, 1] == -np.inf
    # Python's json would take a lone surrogate; nothing later could encode it.
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        decode_infer_request(b'{"id": "\\ud800", "inputs": [NaN]}', None, "m", "")


def test_bytes_elements_from_json_are_length_prefixed_utf8() -> None:
    body = one_input(datatype="BYTES", shape=[2], data=["caf\u00e9", ""])
    assert deserialize_bytes_elements(decode_infer_request(body, None, "m", "").inputs[0].raw) == [
        "caf\u00e9".encode(),
        b"",
    ]


@pytest.mark.parametrize("value", [" 12", "12 ", "+12", "-1", "1_2", "\u0661\u0662", "0x1", "", "9" * 40])
def test_the_header_length_header_is_digits_only(value: str) -> None:
    a = np.zeros((1, 3), dtype=np.float32)
    body, hlen = binary_body({"X": a})
    assert decode_infer_request(body, str(hlen), "m", "").inputs[0].shape == (1, 3)
    with pytest.raises(InvalidRequest, match="Inference-Header-Content-Length must be a whole number"):
        decode_infer_request(body, value, "m", "")


def test_binary_bytes_tensors_must_be_length_prefixed_as_their_shape_says() -> None:
    def body_of(raw: bytes, count: int) -> tuple[bytes, int]:
        header = orjson.dumps(
            {
                "inputs": [
                    {
                        "name": "S",
                        "datatype": "BYTES",
                        "shape": [count],
                        "parameters": {"binary_data_size": len(raw)},
                    }
                ]
            }
        )
        return header + raw, len(header)

    good = serialize_bytes_elements([b"ab", b""])
    assert decode_infer_request(*body_of(good, 2), "m", "").inputs[0].raw == good
    for raw, count, message in [
        (good, 1, "holds more than the 1 elements"),
        (good, 3, "holds 2 elements, its shape declares 3"),
        (good[:-1], 2, "length prefix is cut off"),
        (b"\xff\xff\xff\xff", 1, "shorter than its length prefix"),
    ]:
        with pytest.raises(InvalidRequest, match=message):
            decode_infer_request(*body_of(raw, count), "m", "")


def test_a_json_header_over_the_json_limit_is_413() -> None:
    body = one_input(shape=[3], data=[0.5, 0.25, 0.125])
    with pytest.raises(PayloadTooLarge, match="JSON part of the request is"):
        decode_infer_request(body, None, "m", "", DecodeBudget(max_json_bytes=16))


def test_error_text_quotes_client_names_bounded_and_escaped() -> None:
    name = "\x1b[31m" + "N" * 1000 + "\r\nforged log line"
    with pytest.raises(InvalidRequest) as info:
        decode_infer_request(one_input(name=name, datatype="FP33"), None, "m", "")
    message = info.value.message
    assert len(message) < 400 and "\x1b" not in message and "\n" not in message
    assert message.startswith("input '\\x1b[31mNNNN")
    with pytest.raises(InvalidRequest, match="'name' is 5022 characters, at most 1024"):
        decode_infer_request(one_input(name="N" * 5022), None, "m", "")
    with pytest.raises(InvalidRequest) as info:
        decode_infer_request(one_input(shape=[b"\x00".decode()] * 100), None, "m", "")
    assert "\x00" not in info.value.message and len(info.value.message) < 300


@pytest.mark.parametrize(
    ("header", "tail", "message"),
    [
        ({"outputs": {}}, b"", "'outputs' must be a list"),
        (
            {
                "outputs": [
                    {"name": "Y", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}}
                ]
            },
            b"1234",
            "does not fit the body",
        ),
        (
            {
                "outputs": [
                    {"name": "Y", "datatype": "FP32", "shape": [3], "parameters": {"binary_data_size": 8}}
                ]
            },
            bytes(8),
            "does not match 8 bytes",
        ),
        (
            {"outputs": [{"name": "Y", "datatype": "FP32", "shape": [-3], "data": []}]},
            b"",
            "non-negative integers",
        ),
        (
            {"outputs": [{"name": "Y", "datatype": "FP32", "shape": [2], "data": [1]}]},
            b"",
            "needs 2 elements",
        ),
        (
            {"outputs": [{"name": "Y", "datatype": "FP32", "shape": [1], "data": [1]}], "id": 3},
            b"",
            "must be strings",
        ),
        ({"outputs": []}, b"xx", "2 bytes after the last binary output"),
    ],
)
def test_malformed_triton_responses_are_upstream_errors(header: dict, tail: bytes, message: str) -> None:
    encoded = orjson.dumps(header)
    with pytest.raises(UpstreamError, match=message) as info:
        decode_upstream_response(encoded + tail, str(len(encoded)))
    assert info.value.http_status == 502 and info.value.grpc_code == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(UpstreamError, match="cannot be read"):
        decode_upstream_response(b"{", None)


# ------------------------------------------------------------------------------------ protobuf


def proto_request(**fields) -> service_pb2.ModelInferRequest:
    msg = service_pb2.ModelInferRequest(model_name="m")
    tensor = msg.inputs.add(name="X", datatype=fields.pop("datatype", "FP32"), shape=fields.pop("shape", [2]))
    for field, values in fields.pop("contents", {"fp32_contents": [1.0, 2.0]}).items():
        getattr(tensor.contents, field).extend(values)
    msg.raw_input_contents.extend(fields.pop("raw", []))
    return msg


def test_typed_and_raw_proto_contents_decode() -> None:
    x = request_from_proto(proto_request()).inputs[0].array
    assert x is not None
    np.testing.assert_array_equal(x, np.array([1, 2], np.float32))
    x = (
        request_from_proto(proto_request(datatype="INT8", contents={"int_contents": [-128, 127]}))
        .inputs[0]
        .array
    )
    assert x is not None and x.dtype == np.int8 and x.tolist() == [-128, 127]
    raw = np.arange(2, dtype=np.float32).tobytes()
    assert request_from_proto(proto_request(contents={}, raw=[raw])).inputs[0].raw == raw


@pytest.mark.parametrize(
    ("msg", "message"),
    [
        (
            proto_request(raw=[bytes(8), bytes(8)], contents={}),
            "raw_input_contents has 2 entries for 1 inputs",
        ),
        (proto_request(raw=[bytes(4)], contents={}), "needs 8 bytes, got 4"),
        (proto_request(raw=[bytes(8)]), r"contents \(fp32_contents\) given together with raw_input_contents"),
        (
            proto_request(datatype="BYTES", raw=[b"\x05\x00\x00\x00ab"], contents={}),
            "shorter than its length prefix",
        ),
        (proto_request(contents={"fp32_contents": [1.0]}), "needs 2 elements, fp32_contents has 1"),
        (proto_request(contents={"int_contents": [1, 2]}), "int_contents given for a FP32 input"),
        (
            proto_request(datatype="INT8", contents={"int_contents": [1, 300]}),
            "value 300 is outside the range of INT8",
        ),
        (proto_request(datatype="FP16", contents={}), "FP16 must be sent in raw_input_contents"),
        (proto_request(datatype="fp32"), "unknown datatype 'fp32'"),
        (proto_request(shape=[-2]), "non-negative integers"),
        (proto_request(shape=[2**31, 2**31]), "4611686018427387904 elements"),
    ],
)
def test_malformed_model_infer_requests_are_client_errors(msg, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        request_from_proto(msg)


def test_proto_parameters_without_a_value_and_unparsable_bytes_are_400s() -> None:
    msg = proto_request()
    msg.parameters["p"].CopyFrom(service_pb2.InferParameter())
    with pytest.raises(InvalidRequest, match="parameter 'p' has no value"):
        request_from_proto(msg)
    msg = proto_request()
    msg.inputs[0].name = ""
    with pytest.raises(InvalidRequest, match="'name' must not be empty"):
        request_from_proto(msg)
    with pytest.raises(InvalidRequest, match="ModelInferRequest does not parse") as info:
        decode_infer_request_proto(b"\xff\xff\xff")
    assert info.value.grpc_code == grpc.StatusCode.INVALID_ARGUMENT


def _json_with_parameters(request: dict, inp: dict | None = None) -> bytes:
    entry = {"name": "INPUT", "datatype": "FP32", "shape": [1, 2], "data": [0.5, 0.5]}
    if inp is not None:
        entry["parameters"] = inp
    return orjson.dumps({"inputs": [entry], "parameters": request})


@pytest.mark.parametrize(
    ("request_params", "input_params", "message"),
    [
        ({"priority": -1}, None, "'priority' must be a non-negative integer"),
        ({"priority": "high"}, None, "'priority' must be a non-negative integer"),
        ({"timeout": 1.5}, None, "'timeout' must be a non-negative integer"),
        ({"sequence_id": True}, None, "'sequence_id' must be a non-negative integer or a string"),
        ({"sequence_id": "s" * 129}, None, "'sequence_id' must be .* at most 128 bytes"),
        (
            {"sequence_id": "\u00e9" * 65},
            None,
            "'sequence_id' must be .* at most 128 bytes",
        ),  # 65 chars, 130 bytes
        ({"sequence_start": 1}, None, "'sequence_start' must be a boolean"),
        ({"a\u0000b": 1}, None, "without control characters"),
        ({"": 1}, None, "must be non-empty"),
        ({"note": "a\u0000"}, None, "NUL"),
        ({}, {"x\nInjected": 1}, "without control characters"),
    ],
)
def test_parameters_triton_would_misread_are_400s_on_both_protocols(
    request_params: dict, input_params: dict | None, message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message):
        decode_infer_request(_json_with_parameters(request_params, input_params), None, "m", "")
    msg = service_pb2.ModelInferRequest(model_name="m")
    entry = msg.inputs.add(name="INPUT", datatype="FP32", shape=[1, 2])
    entry.contents.fp32_contents.extend([0.5, 0.5])
    for target, params in ((msg.parameters, request_params), (entry.parameters, input_params or {})):
        for key, value in params.items():
            if isinstance(value, bool):
                target[key].bool_param = value
            elif isinstance(value, int):
                target[key].int64_param = value
            elif isinstance(value, float):
                target[key].double_param = value
            else:
                target[key].string_param = value
    with pytest.raises(InvalidRequest, match=message):
        request_from_proto(msg)


@pytest.mark.parametrize("sequence_id", ["s-1", "s" * 128, "\u00e9" * 64, 2**64 - 1])
def test_parameters_triton_reads_pass_when_well_typed(sequence_id: str | int) -> None:
    params = {"priority": 2, "timeout": 10_000, "sequence_id": sequence_id, "sequence_start": True, "x": -3}
    assert decode_infer_request(_json_with_parameters(params), None, "m", "").parameters == params
