"""Triton started with the restricted-API options the operator renders: its control APIs answer only
the sidecar's own calls, so nothing a caller sends through the sidecar can reach them."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import sidecar_config
from sidecar_toy import MODEL, toy_data
from test_sidecar_triton import http_infer

from guardedmodel_operator.builders import build_context
from guardedmodel_operator.builders.deployment import triton_args
from guardedmodel_operator.config import OperatorConfig
from guardedmodel_operator.spec import parse_spec
from guardedmodel_testground.triton import TritonServer

pytestmark = pytest.mark.integration


def post(url: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, data=b"{}", method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_only_the_sidecar_can_use_tritons_control_apis(
    tmp_path: Path, toy_repository: Path, triton_server_factory, sidecar_factory
) -> None:
    body = {
        "apiVersion": "guardedmodel.io/v1alpha1",
        "kind": "GuardedModel",
        "metadata": {"name": "toy", "namespace": "ml", "uid": "u-1", "generation": 1},
        "spec": {"model": {"name": MODEL, "repository": "pvc://models/toy", "version": "1"}},
    }
    ctx = build_context(body, parse_spec(body["spec"]), OperatorConfig())
    restricted = [a for a in triton_args(ctx) if "restricted" in a]
    assert len(restricted) == 2
    triton: TritonServer = triton_server_factory(
        toy_repository, model_control_mode="explicit", extra_args=restricted
    )
    name, value = restricted[0].split(":", 1)[1].split("=", 1)

    # Straight to Triton without the key: refused; the sidecar (which has it) loads and serves.
    assert post(f"http://{triton.http_url}/v2/repository/models/{MODEL}/load") == 403
    config = sidecar_config(triton, toy_repository, tmp_path)
    config["triton"]["restrictedHeader"] = {"name": name, "value": value}
    sidecar = sidecar_factory(config)
    x = toy_data().sample(1, seed=3)[0]
    assert http_infer(sidecar.http_url, x).get_response()["parameters"]["guard_decision"]
    # Through the sidecar a caller cannot load either (the allow-list), with or without the key.
    assert post(f"http://{sidecar.http_url}/v2/repository/models/{MODEL}/load", {name: value}) == 403
    assert post(f"http://{sidecar.http_url}/v2/repository/index") == 200  # forwarded with the key
