"""Routing follows the GuardedModel's status on a real API server, and survives losing it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
import yaml
from conftest import sidecar_config
from sidecar_toy import MODEL, toy_data

from guardedmodel_testground.procs import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]


def served_version(url: str, x: np.ndarray) -> str:
    client = httpclient.InferenceServerClient(url)
    inp = httpclient.InferInput("INPUT", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(MODEL, [inp]).get_response()["parameters"]["model_version"]


def wait_version(url: str, x: np.ndarray, want: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    seen = served_version(url, x)
    while seen != want:
        assert time.monotonic() < deadline, f"still serving version {seen}, expected {want}"
        time.sleep(0.2)
        seen = served_version(url, x)


def test_routing_follows_the_guardedmodel_status(
    tmp_path: Path, k8s_cluster, toy_repository: Path, toy_triton, sidecar_factory
) -> None:
    k8s_cluster.kubectl("apply", "-f", str(ROOT / "crds" / "guardedmodel.io_guardedmodels.yaml"))
    k8s_cluster.kubectl(
        "wait", "--for=condition=Established", "crd/guardedmodels.guardedmodel.io", "--timeout=30s"
    )
    name = f"toy-{free_port()}"
    manifest = {
        "apiVersion": "guardedmodel.io/v1alpha1",
        "kind": "GuardedModel",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"model": {"name": MODEL, "repository": f"file://{toy_repository}", "version": "1"}},
    }
    k8s_cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))
    try:
        config = sidecar_config(toy_triton, toy_repository, tmp_path)
        config["guardedModel"] = {"namespace": "default", "name": name}
        sidecar = sidecar_factory(config, extra_args=("--kubeconfig", str(k8s_cluster.kubeconfig)))
        x = toy_data().sample(1, seed=40)[0]
        assert served_version(sidecar.http_url, x) == "1"

        def set_status(status: dict) -> None:
            result = k8s_cluster.kubectl(
                "patch",
                "guardedmodel",
                name,
                "--subresource=status",
                "--type=merge",
                "-p",
                json.dumps({"status": status}),
                check=False,
            )
            assert result.returncode == 0, result.stderr

        set_status({"stableVersion": "1", "canaryVersion": "2", "canaryWeight": 100})
        wait_version(sidecar.http_url, x, "2")
        direct = httpclient.InferenceServerClient(toy_triton.http_url)
        assert direct.is_model_ready(MODEL, "1") and direct.is_model_ready(MODEL, "2")
        set_status(
            {"stableVersion": "1", "canaryVersion": None, "canaryWeight": 0}
        )  # rollback: a routing flip
        wait_version(sidecar.http_url, x, "1")
    finally:
        k8s_cluster.kubectl("delete", "guardedmodel", name, "--wait=false", check=False)


def test_an_unreachable_api_server_keeps_the_last_routing(
    tmp_path: Path, toy_repository: Path, toy_triton, sidecar_factory
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "gone", "cluster": {"server": f"http://127.0.0.1:{free_port()}"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "gone", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    config = sidecar_config(toy_triton, toy_repository, tmp_path, routing={"stableVersion": "2"})
    config["guardedModel"] = {"namespace": "default", "name": "toy"}
    sidecar = sidecar_factory(config, extra_args=("--kubeconfig", str(kubeconfig)))
    x = toy_data().sample(1, seed=41)[0]
    for _ in range(5):
        assert served_version(sidecar.http_url, x) == "2"
        time.sleep(0.3)
    assert "API server unreachable" in sidecar.log_path.read_text()
