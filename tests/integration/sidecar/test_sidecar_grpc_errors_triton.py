"""How the sidecar's gRPC endpoint answers what it refuses, with the real guard in front of a real Triton:
the status code, the message a caller can act on, the guard's trailers, and the audit record of a
request that never decoded. Driven by grpcio's own client on loopback.

Malformed HTTP/2 and metadata written byte by byte are the attack suite's (test_sidecar_attacks.py);
what only a controllable guard can show (a bug inside the guard, a stalled call, a stream's window) is
tests/unit/sidecar/test_sidecar_grpc_service.py."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from conftest import SidecarProcess, triton_and_sidecar
from sidecar_toy import MODEL, toy_data
from tritonclient.grpc import service_pb2

from guardedmodel_sidecar.audit_file import iter_records
from guardedmodel_testground.triton import TritonServer

pytestmark = pytest.mark.integration

SERVICE = "inference.GRPCInferenceService"
MAX_MESSAGE_BYTES = 16 * 1024
MAX_HEADER_BYTES = 8192
GARBAGE = b"\x0a\xff\xff\xff\xff\x0f\x00"


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, toy_repository: Path
) -> Iterator[tuple[TritonServer, SidecarProcess]]:
    """The toy model's sidecar with OOD inputs refused, and small message and header limits."""
    gate = {
        "inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [8], "min": 0.0, "max": 1.0}],
        "ood": {"method": "mahalanobis", "action": "reject"},
    }
    limits = {"maxGrpcMessageBytes": MAX_MESSAGE_BYTES, "maxHeaderBytes": MAX_HEADER_BYTES}
    work = tmp_path_factory.mktemp("grpc-errors")
    with triton_and_sidecar(toy_repository, work, spec={"gate": gate}, limits=limits) as started:
        yield started


@pytest.fixture(scope="module")
def channel(stack: tuple[TritonServer, SidecarProcess]) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(
        stack[1].grpc_url, options=[("grpc.max_send_message_length", -1)]
    ) as open_channel:
        yield open_channel


def call(channel: grpc.Channel, method: str, body: bytes, **kwargs: Any) -> bytes:
    answer: bytes = channel.unary_unary(f"/{SERVICE}/{method}")(body, timeout=10, **kwargs)
    return answer


def rpc_error(channel: grpc.Channel, method: str, body: bytes, **kwargs: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(channel, method, body, **kwargs)
    return caught.value


def infer_request(x: np.ndarray, model: str = MODEL, rid: str = "") -> service_pb2.ModelInferRequest:
    msg = service_pb2.ModelInferRequest(model_name=model, id=rid)
    msg.inputs.add(name="INPUT", datatype="FP32", shape=list(x.shape))
    msg.raw_input_contents.append(np.ascontiguousarray(x, np.float32).tobytes())
    return msg


def good_request(rows: int = 1, **kwargs: Any) -> service_pb2.ModelInferRequest:
    return infer_request(toy_data().sample(rows, seed=31)[0], **kwargs)


def triton_executions(triton: TritonServer) -> int:
    with grpc.insecure_channel(triton.grpc_url) as direct:
        body = service_pb2.ModelStatisticsRequest(name=MODEL).SerializeToString()
        stats = service_pb2.ModelStatisticsResponse.FromString(call(direct, "ModelStatistics", body))
    return sum(s.execution_count for s in stats.model_stats)


def decode_records(sidecar: SidecarProcess, digest: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The audit records of refused-before-decoding requests whose body hashes to ``digest``, once the
    sidecar's audit writer has flushed them."""
    deadline = time.monotonic() + timeout
    while True:
        found = [
            r
            for r in iter_records(sidecar.audit_dir)
            if r.get("stage") == "decode" and r.get("input_digest") == digest
        ]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def refused_before_decoding(
    stack, channel: grpc.Channel, body: bytes
) -> tuple[grpc.RpcError, dict[str, Any]]:
    """ModelInfer's error for `body` and the one audit record of it; Triton executed nothing for it."""
    triton, sidecar = stack
    before = triton_executions(triton)
    error = rpc_error(channel, "ModelInfer", body)
    (record,) = decode_records(sidecar, hashlib.sha256(body).hexdigest()[:32])
    assert triton_executions(triton) == before
    return error, record


def test_methods_of_other_services_are_unimplemented(channel: grpc.Channel) -> None:
    for path in ("/grpc.health.v1.Health/Check", f"/{SERVICE}/ModelGenerate", "/x"):
        with pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary(path)(b"", timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED, path


def test_a_forwarded_body_that_does_not_parse_is_invalid_and_not_forwarded(channel: grpc.Channel) -> None:
    error = rpc_error(channel, "ModelMetadata", b"\x0a\xff\xff\xff\xff\x0f")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Triton would name no proto type; the sidecar refused the body before forwarding it.
    assert "ModelMetadataRequest" in (error.details() or "")


def test_a_body_that_does_not_parse_is_invalid_argument_and_audited(stack, channel: grpc.Channel) -> None:
    error, record = refused_before_decoding(stack, channel, GARBAGE)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid ModelInferRequest" in (error.details() or "")
    assert (record["model"], record["status"], record["decision"]) == ("", 400, "reject")


def test_a_request_that_does_not_decode_is_invalid_argument_with_the_reason(
    stack, channel: grpc.Channel
) -> None:
    msg = good_request()
    msg.raw_input_contents.append(b"one too many")
    error, record = refused_before_decoding(stack, channel, msg.SerializeToString())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "raw_input_contents has 2 entries for 1 inputs" in (error.details() or "")
    assert record["model"] == MODEL and record["status"] == 400


def test_a_declared_shape_over_the_element_budget_is_refused_before_decoding(
    stack, channel: grpc.Channel
) -> None:
    msg = good_request()
    del msg.inputs[0].shape[:]
    msg.inputs[0].shape.extend([1 << 40, 8])  # 32 bytes of data claiming 2^43 elements
    error, _ = refused_before_decoding(stack, channel, msg.SerializeToString())
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "elements" in (error.details() or "")


def test_an_oversized_message_is_resource_exhausted(stack, channel: grpc.Channel) -> None:
    before = triton_executions(stack[0])
    body = good_request(rows=1000).SerializeToString()
    assert len(body) > MAX_MESSAGE_BYTES
    error = rpc_error(channel, "ModelInfer", body)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert triton_executions(stack[0]) == before


def test_guard_refusals_keep_their_code_message_and_guard_trailers(channel: grpc.Channel) -> None:
    far = infer_request(toy_data().far_ood(1, seed=32), rid="far-1")
    error = rpc_error(channel, "ModelInfer", far.SerializeToString())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "out of distribution" in (error.details() or "")
    trailers = dict(error.trailing_metadata() or ())
    assert trailers["guard-decision"] == "reject" and "guard-ood-score" in trailers
    # The same model answers an in-distribution request.
    reply = service_pb2.ModelInferResponse.FromString(
        call(channel, "ModelInfer", good_request().SerializeToString())
    )
    assert [o.name for o in reply.outputs] and reply.model_name == MODEL


def test_long_and_control_character_messages_are_escaped_and_capped(channel: grpc.Channel) -> None:
    name = "\x1b[31mred" + "m" * 5000
    error = rpc_error(channel, "ModelInfer", good_request(model=name).SerializeToString())
    details = error.details() or ""
    assert error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), error.code()
    assert len(details) <= 1024 and "\x1b" not in details and "\\x1b[31mred" in details


def test_metadata_over_the_header_limit_is_resource_exhausted(channel: grpc.Channel) -> None:
    error = rpc_error(channel, "ServerLive", b"", metadata=(("x-big", "a" * (MAX_HEADER_BYTES + 808)),))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert service_pb2.ServerLiveResponse.FromString(call(channel, "ServerLive", b"")).live


def test_a_stream_message_that_does_not_parse_ends_the_stream_after_the_answers_before_it(
    stack, channel: grpc.Channel
) -> None:
    before = triton_executions(stack[0])
    messages = [
        good_request(rid="ok").SerializeToString(),
        GARBAGE,
        good_request(rid="never").SerializeToString(),
    ]
    received: list[bytes] = []
    with pytest.raises(grpc.RpcError) as caught:
        for reply in channel.stream_stream(f"/{SERVICE}/ModelStreamInfer")(iter(messages), timeout=20):
            received.append(reply)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    answers = [service_pb2.ModelStreamInferResponse.FromString(r) for r in received]
    assert [(a.infer_response.id, a.error_message) for a in answers] == [("ok", "")]
    assert triton_executions(stack[0]) == before + 1  # "never" never reached Triton
    # The server goes on serving.
    assert service_pb2.ServerLiveResponse.FromString(call(channel, "ServerLive", b"")).live
