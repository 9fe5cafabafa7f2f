"""The sidecar in front of the real Triton started with the restricted-API options the operator renders:
Triton's control APIs answer only the sidecar's own calls (it loads and serves; nothing a caller sends
through it reaches them), read-only gRPC calls come back as Triton's own bytes, Triton's refusals reach
the caller unchanged, and refused control calls leave Triton's state as it was."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from conftest import sidecar_config
from sidecar_toy import MODEL, toy_data
from test_sidecar_triton import http_infer
from tritonclient.grpc import service_pb2

from guardedmodel_operator.builders import build_context
from guardedmodel_operator.builders.deployment import triton_args
from guardedmodel_operator.config import OperatorConfig
from guardedmodel_operator.spec import parse_spec
from guardedmodel_sidecar.endpoints import GRPC_REFUSED

pytestmark = pytest.mark.integration
SERVICE = "/inference.GRPCInferenceService/"


def call(url: str, method: str, body: bytes, metadata: tuple[tuple[str, str], ...] = ()) -> bytes:
    with grpc.insecure_channel(url) as channel:
        reply: bytes = channel.unary_unary(SERVICE + method)(body, timeout=10, metadata=metadata)
        return reply


def refusal(url: str, method: str, body: bytes) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(url, method, body)
    return caught.value


@pytest.fixture
def restricted(tmp_path: Path, toy_repository: Path, triton_server_factory, sidecar_factory):
    body = {
        "metadata": {"name": "toy", "namespace": "ml", "uid": "u-2", "generation": 1},
        "spec": {"model": {"name": MODEL, "repository": "pvc://models/toy", "version": "1"}},
    }
    flags = [
        a
        for a in triton_args(build_context(body, parse_spec(body["spec"]), OperatorConfig()))
        if "restricted" in a
    ]
    triton = triton_server_factory(toy_repository, model_control_mode="explicit", extra_args=flags)
    name, value = flags[0].split(":", 1)[1].split("=", 1)
    config = sidecar_config(triton, toy_repository, tmp_path)
    config["triton"]["restrictedHeader"] = {"name": name, "value": value}
    return triton, sidecar_factory(config), (name, value)


def grpc_key(key: tuple[str, str]) -> tuple[str, str]:
    """Triton's gRPC endpoint reads the key from metadata named with this prefix (HTTP: the bare name)."""
    return ("triton-grpc-protocol-" + key[0], key[1])


def post(url: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, data=b"{}", method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_only_the_sidecar_can_use_tritons_control_apis_over_http(restricted) -> None:
    triton, sidecar, (name, value) = restricted
    # Straight to Triton without the key: refused; the sidecar (which has it) loaded and serves.
    assert post(f"http://{triton.http_url}/v2/repository/models/{MODEL}/load") == 403
    x = toy_data().sample(1, seed=3)[0]
    assert http_infer(sidecar.http_url, x).get_response()["parameters"]["guard_decision"]
    # Through the sidecar a caller cannot load either (the allow-list), with or without the key.
    assert post(f"http://{sidecar.http_url}/v2/repository/models/{MODEL}/load", {name: value}) == 403
    assert post(f"http://{sidecar.http_url}/v2/repository/index") == 200  # forwarded with the key


def test_read_only_calls_are_tritons_own_answers_and_its_refusals(restricted) -> None:
    triton, sidecar, key = restricted
    for method, request in (
        ("ServerMetadata", service_pb2.ServerMetadataRequest()),
        ("ModelMetadata", service_pb2.ModelMetadataRequest(name=MODEL, version="1")),
        ("ModelConfig", service_pb2.ModelConfigRequest(name=MODEL, version="1")),
        ("ModelReady", service_pb2.ModelReadyRequest(name=MODEL, version="1")),
    ):
        body = request.SerializeToString()
        assert call(sidecar.grpc_url, method, body) == call(triton.grpc_url, method, body), method
    # The index is in Triton's restricted model-repository group: refused without the key, answered
    # through the sidecar, which carries it.
    index = service_pb2.RepositoryIndexRequest().SerializeToString()
    assert refusal(triton.grpc_url, "RepositoryIndex", index).code() != grpc.StatusCode.OK
    assert call(sidecar.grpc_url, "RepositoryIndex", index) == call(
        triton.grpc_url, "RepositoryIndex", index, (grpc_key(key),)
    )
    # Triton's own refusal reaches the caller unchanged.
    unknown = service_pb2.ModelMetadataRequest(name="no-such-model").SerializeToString()
    direct, through = (
        refusal(triton.grpc_url, "ModelMetadata", unknown),
        refusal(sidecar.grpc_url, "ModelMetadata", unknown),
    )
    assert (through.code(), through.details()) == (direct.code(), direct.details())


def test_refused_control_calls_leave_triton_as_it_was(restricted) -> None:
    triton, sidecar, key = restricted
    unload = service_pb2.RepositoryModelUnloadRequest(model_name=MODEL).SerializeToString()
    log_level = service_pb2.LogSettingsRequest()
    log_level.settings["log_verbose_level"].uint32_param = 3
    bodies = {"RepositoryModelUnload": unload, "LogSettings": log_level.SerializeToString()}
    for method in sorted(GRPC_REFUSED):
        error = refusal(sidecar.grpc_url, method, bodies.get(method, b""))
        assert (error.code(), error.details()) == (grpc.StatusCode.PERMISSION_DENIED, GRPC_REFUSED[method])
    ready = service_pb2.ModelReadyRequest(name=MODEL, version="1").SerializeToString()
    assert service_pb2.ModelReadyResponse.FromString(call(triton.grpc_url, "ModelReady", ready)).ready
    settings = service_pb2.LogSettingsResponse.FromString(
        call(
            triton.grpc_url,
            "LogSettings",
            service_pb2.LogSettingsRequest().SerializeToString(),
            (grpc_key(key),),
        )
    )
    assert settings.settings["log_verbose_level"].uint32_param == 0
