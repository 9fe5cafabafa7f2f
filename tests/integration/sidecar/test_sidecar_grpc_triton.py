"""The sidecar's gRPC endpoint (grpcio's server) in front of a real Triton, driven by unchanged
tritonclient.grpc: guarded infer, a stream whose refused request is matched by its id, the control calls
refused, and a client deadline shorter than a slow model call."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import SidecarProcess, triton_and_sidecar
from sidecar_toy import MODEL, reference_outputs, toy_data, write_toy_repository
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from guardedmodel_sidecar.endpoints import GRPC_FORWARDED, GRPC_GUARDED, GRPC_LOCAL, GRPC_REFUSED
from guardedmodel_testground.triton import TritonServer

pytestmark = pytest.mark.integration

# The toy model, made slow (2 s) for any batch holding a row whose first value is this marker.
SLOW_MARKER = 0.123


def make_slowable(model_py: Path) -> None:
    lines = model_py.read_text().splitlines(keepends=True)
    (at,) = [i for i, line in enumerate(lines) if "as_numpy()" in line and "INPUT" in line]
    indent = lines[at][: len(lines[at]) - len(lines[at].lstrip())]
    lines[at + 1 : at + 1] = [
        f"{indent}if np.any(np.abs(x[:, 0] - {SLOW_MARKER}) < 1e-6):\n",
        f"{indent}    __import__('time').sleep(2.0)\n",
    ]
    model_py.write_text("".join(lines))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TritonServer, SidecarProcess]]:
    """Triton with the (slowable) toy model and the sidecar with micro-batching on."""
    work = tmp_path_factory.mktemp("grpc-stack")
    repository = write_toy_repository(work, versions=("1",))
    make_slowable(repository / MODEL / "1" / "model.py")
    with triton_and_sidecar(repository, work, tuning={"microBatching": {"enabled": True}}) as stack:
        yield stack


def infer_input(x: np.ndarray) -> Any:
    inp = grpcclient.InferInput("INPUT", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


def test_guarded_infer_answers_as_triton_does_with_the_guards_parameters(stack) -> None:
    triton, sidecar = stack
    x = toy_data().sample(3, seed=21)[0]
    direct = grpcclient.InferenceServerClient(triton.grpc_url).infer(
        MODEL, [infer_input(x)], request_id="g-1"
    )
    guarded = grpcclient.InferenceServerClient(sidecar.grpc_url).infer(
        MODEL, [infer_input(x)], request_id="g-1"
    )
    for name in ("LOGITS", "FEATURES"):
        np.testing.assert_array_equal(guarded.as_numpy(name), direct.as_numpy(name))
    response = guarded.get_response()
    assert response.id == "g-1" and response.model_version == "1"
    assert response.parameters["guard_decision"].string_param in ("accept", "review")


def test_a_refused_stream_request_is_matched_by_its_id(stack) -> None:
    _, sidecar = stack
    good = toy_data().sample(1, seed=22)[0]
    bad = np.full((1, 8), np.nan, np.float32)
    results: list[Any] = []
    errors: list[InferenceServerException] = []
    client = grpcclient.InferenceServerClient(sidecar.grpc_url)
    client.start_stream(
        callback=lambda result, error: errors.append(error) if error else results.append(result)
    )
    try:
        for rid, x in (("s-1", good), ("s-2-nan", bad), ("s-3", good)):
            client.async_stream_infer(MODEL, [infer_input(x)], request_id=rid)
        deadline = time.monotonic() + 15
        while len(results) + len(errors) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        client.stop_stream()
    assert [r.get_response().id for r in results] == ["s-1", "s-3"]
    (error,) = errors
    # tritonclient hands the callback only the error text: the id it sent leads it.
    assert error.message().startswith("[request id: s-2-nan] ") and "NaN" in error.message()
    for result in results:
        np.testing.assert_allclose(result.as_numpy("LOGITS"), reference_outputs(good)[0], rtol=1e-5)


@pytest.mark.parametrize(
    ("call", "reason"),
    [
        (lambda c: c.load_model(MODEL), "model loading is managed by the guard sidecar"),
        (lambda c: c.unload_model(MODEL), "model loading is managed by the guard sidecar"),
        (lambda c: c.update_trace_settings(MODEL, {"trace_level": ["TENSORS"]}), "trace"),
        (lambda c: c.get_trace_settings(), "trace"),
        (lambda c: c.update_log_settings({"log_verbose_level": 1}), "log settings"),
        (lambda c: c.get_system_shared_memory_status(), "shared-memory"),
        (lambda c: c.register_system_shared_memory("r", "/gm-test", 64), "shared-memory"),
        (lambda c: c.unregister_cuda_shared_memory(), "shared-memory"),
    ],
    ids=[
        "load",
        "unload",
        "trace-update",
        "trace-read",
        "log",
        "shm-status",
        "shm-register",
        "cuda-unregister",
    ],
)
def test_control_calls_are_permission_denied(stack, call, reason: str) -> None:
    _, sidecar = stack
    with pytest.raises(InferenceServerException) as refused:
        call(grpcclient.InferenceServerClient(sidecar.grpc_url))
    assert refused.value.status() == "StatusCode.PERMISSION_DENIED"
    assert reason in refused.value.message()


def test_read_only_calls_are_forwarded(stack) -> None:
    triton, sidecar = stack
    direct, guarded = (grpcclient.InferenceServerClient(u) for u in (triton.grpc_url, sidecar.grpc_url))
    assert guarded.is_server_live() and guarded.is_server_ready() and guarded.is_model_ready(MODEL)
    assert guarded.get_model_config(MODEL, as_json=True) == direct.get_model_config(MODEL, as_json=True)
    assert (
        guarded.get_server_metadata(as_json=True)["name"] == direct.get_server_metadata(as_json=True)["name"]
    )
    # The repository index is in Triton's restricted group: forwarded with the sidecar's key when set.
    assert [m["name"] for m in guarded.get_model_repository_index(as_json=True)["models"]] == [MODEL]
    assert MODEL in str(guarded.get_inference_statistics(MODEL, as_json=True))


def test_a_client_deadline_shorter_than_the_model_ends_the_call_at_the_deadline(stack) -> None:
    _, sidecar = stack
    slow = toy_data().sample(1, seed=23)[0]
    slow[0, 0] = SLOW_MARKER
    client = grpcclient.InferenceServerClient(sidecar.grpc_url)
    started = time.monotonic()
    with pytest.raises(InferenceServerException) as expired:
        client.infer(MODEL, [infer_input(slow)], client_timeout=0.5)
    elapsed = time.monotonic() - started
    assert expired.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert elapsed < 1.5, f"the call ended {elapsed:.2f} s after it started, its deadline was 0.5 s"
    # The sidecar stays ready, and serves the next call once Triton is done with the slow one.
    assert client.is_server_ready()
    x = toy_data().sample(1, seed=24)[0]
    result = client.infer(MODEL, [infer_input(x)], client_timeout=10.0)
    np.testing.assert_allclose(result.as_numpy("LOGITS"), reference_outputs(x)[0], rtol=1e-5)


def test_every_method_of_tritons_service_is_answered_by_real_triton_as_the_allow_list_says(stack) -> None:
    """Every method of the service, from its descriptor, on a raw channel: a forwarded call answers
    Triton's own bytes, a refused one is PERMISSION_DENIED and never takes effect in Triton."""
    triton, sidecar = stack
    methods = [m.name for m in service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods]
    assert GRPC_LOCAL | GRPC_GUARDED | GRPC_FORWARDED | set(GRPC_REFUSED) <= set(methods)
    bodies = {
        "ModelMetadata": service_pb2.ModelMetadataRequest(name=MODEL),
        "ModelReady": service_pb2.ModelReadyRequest(name=MODEL),
        "ModelConfig": service_pb2.ModelConfigRequest(name=MODEL),
        "RepositoryIndex": service_pb2.RepositoryIndexRequest(ready=True),
        "RepositoryModelUnload": service_pb2.RepositoryModelUnloadRequest(model_name=MODEL),
        "RepositoryModelLoad": service_pb2.RepositoryModelLoadRequest(model_name=MODEL),
    }
    with grpc.insecure_channel(sidecar.grpc_url) as guarded, grpc.insecure_channel(triton.grpc_url) as direct:

        def call(channel: grpc.Channel, method: str) -> bytes:
            body = bodies.get(method)
            path = f"/inference.GRPCInferenceService/{method}"
            return channel.unary_unary(path)(b"" if body is None else body.SerializeToString(), timeout=10)

        for method in methods:
            if method in GRPC_GUARDED or method == "ModelStatistics":
                continue  # guarded: the tests above; statistics move with every call
            if method in GRPC_FORWARDED or method in GRPC_LOCAL:
                assert call(guarded, method) == call(direct, method), method
                continue
            with pytest.raises(grpc.RpcError) as refused:
                call(guarded, method)
            expected = (
                grpc.StatusCode.PERMISSION_DENIED if method in GRPC_REFUSED else grpc.StatusCode.UNIMPLEMENTED
            )
            assert refused.value.code() == expected, method
        stats = service_pb2.ModelStatisticsRequest(name=MODEL).SerializeToString()
        answer = guarded.unary_unary("/inference.GRPCInferenceService/ModelStatistics")(stats, timeout=10)
        assert service_pb2.ModelStatisticsResponse.FromString(answer).model_stats[0].name == MODEL
    # The refused unload never reached Triton: the model is still loaded and ready there.
    assert grpcclient.InferenceServerClient(triton.grpc_url).is_model_ready(MODEL)
