"""The v2 HTTP codec: JSON and binary tensors in, binary upstream, the caller's form back."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from guardedmodel_sidecar.errors import InvalidRequest
from guardedmodel_sidecar.protocol.datatypes import deserialize_bytes_elements, serialize_bytes_elements
from guardedmodel_sidecar.protocol.http_codec import (
    decode_infer_request,
    decode_upstream_response,
    encode_infer_response,
    encode_upstream_request,
)


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
    np.testing.assert_array_equal(x.array, np.array([[1, 2], [3, 4]], dtype=np.float32))
    assert bytes(x.raw) == np.array([1, 2, 3, 4], dtype=np.float32).tobytes()


def test_binary_request_is_a_zero_copy_view_of_the_body() -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.ones((2, 1), dtype=np.float32)
    body, hlen = binary_body({"A": a, "B": b}, outputs=[{"name": "Y", "parameters": {"binary_data": True}}])
    request = decode_infer_request(body, hlen, "m", "3")
    assert request.model_version == "3"
    np.testing.assert_array_equal(request.inputs[0].array, a)
    np.testing.assert_array_equal(request.inputs[1].array, b)
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
            "cannot be read",
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
    np.testing.assert_array_equal(response.output("FEATURES").as_numpy(), features)

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
