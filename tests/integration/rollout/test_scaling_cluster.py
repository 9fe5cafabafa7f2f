"""Scaling end to end: the real API server, the real operator process, a real Prometheus scraping the
sidecar's real metric objects.

The pods are kwok's, so the queue time Triton would report through the sidecar is played by
`SidecarTraffic.triton_queue`. What is under test is the operator: queue time above the target →
status.scaling and the Deployment's replicas go up (at most doubling per step, never above max);
queue time low for the scale-down window → they come back down; Events say why.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_run import install_crd, log_tail, model_manifest, scraped_sidecar, start_operator
from sidecar_traffic import SidecarTraffic

from guardedmodel_testground.cluster import LocalCluster
from guardedmodel_testground.prometheus import Prometheus

pytestmark = pytest.mark.integration

NAME = "scaled"
SPEC = {"replicas": {"min": 1, "max": 3}, "scaling": {"targetQueueTimeMs": 50}}


class Load:
    """Requests keep reaching Triton; each waits `queue_ms` in its queue (changeable)."""

    def __init__(self, sidecar: SidecarTraffic, queue_ms: float) -> None:
        self.sidecar, self.queue_ms = sidecar, queue_ms
        self.stop_flag = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self.stop_flag.wait(0.2):
            self.sidecar.triton_queue("1", 20, self.queue_ms)

    def stop(self) -> None:
        self.stop_flag.set()


@pytest.fixture
def scaled_model(
    k8s_cluster: LocalCluster, prometheus_factory: Callable[..., Prometheus], tmp_path: Path
) -> Iterator[tuple[str, Load, Path]]:
    install_crd(k8s_cluster)
    namespace = f"scaling-{uuid.uuid4().hex[:6]}"
    k8s_cluster.kubectl("create", "namespace", namespace)
    sidecar, prometheus = scraped_sidecar(prometheus_factory, namespace, NAME, ["1"])
    load = Load(sidecar, queue_ms=200.0)  # four times the target
    prometheus.wait_for(f'guardedmodel_triton_requests_total{{namespace="{namespace}"}}')
    log_path = tmp_path / "operator.log"
    stop_operator = start_operator(
        k8s_cluster,
        namespace,
        prometheus.url,
        log_path,
        {
            "GUARDEDMODEL_ROLLOUT_MIN_WINDOW_S": "3",
            "GUARDEDMODEL_SCALE_INTERVAL_S": "1",
            "GUARDEDMODEL_SCALE_DOWN_WINDOW_S": "6",
        },
    )
    k8s_cluster.kubectl("apply", "-f", "-", input=model_manifest(namespace, NAME, SPEC))
    try:
        yield namespace, load, log_path
    finally:
        load.stop()
        stop_operator()
        sidecar.stop()
        k8s_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def wait_for_replicas(
    cluster: LocalCluster, namespace: str, what: str, target: int, log: Path
) -> dict[str, Any]:
    """Until the scaler wants `target` replicas and the Deployment has them; returns the status."""
    deadline = time.monotonic() + 90
    status: dict[str, Any] = {}
    replicas = -1
    while time.monotonic() < deadline:
        status = cluster.kubectl_json("get", "guardedmodel", NAME, "-n", namespace).get("status") or {}
        deployment = cluster.kubectl("get", "deployment", NAME, "-n", namespace, "-o", "json", check=False)
        replicas = json.loads(deployment.stdout)["spec"]["replicas"] if deployment.returncode == 0 else -1
        if (status.get("scaling") or {}).get("desiredReplicas") == target and replicas == target:
            return status
        time.sleep(0.5)
    pytest.fail(
        f"timed out waiting for {what}; Deployment replicas {replicas}; status.scaling "
        f"{json.dumps(status.get('scaling'))}\noperator log tail:\n{log_tail(log)}"
    )


def test_queue_time_scales_the_deployment_up_and_back_down(
    k8s_cluster: LocalCluster, scaled_model: tuple[str, Load, Path]
) -> None:
    namespace, load, log = scaled_model
    status = wait_for_replicas(k8s_cluster, namespace, "scale-up to max", 3, log)
    scaling = status["scaling"]
    assert scaling["reason"] == "ScaledUp" and "target 50 ms" in scaling["message"]
    assert scaling["queueTimeMs"] > 50 and scaling["lastScaleTime"]
    events = k8s_cluster.kubectl_json(
        "get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={NAME},reason=ScaledUp"
    )["items"]
    messages = [e["message"] for e in events]
    assert any("1 → 2 replicas" in m for m in messages), messages  # at most doubling per step
    assert any("2 → 3 replicas" in m for m in messages), messages  # and never above max

    load.queue_ms = 5.0  # a tenth of the target: one replica is enough
    went_down_at = time.monotonic()
    status = wait_for_replicas(k8s_cluster, namespace, "scale-down to min", 1, log)
    assert time.monotonic() - went_down_at >= 5  # not before the scale-down window (6 s) has passed
    assert status["scaling"]["reason"] == "ScaledDown"
    # The core's reconciles keep the scaler's count (and the status says Ready throughout).
    time.sleep(3)
    deployment = k8s_cluster.kubectl_json("get", "deployment", NAME, "-n", namespace)
    assert deployment["spec"]["replicas"] == 1
