"""Idle models end to end: the real API server, the real operator process, a real Prometheus scraping
the sidecar's real metric objects (`SidecarTraffic`; the pods are kwok's).

With spec.scaling.idleAfter of a few seconds: a model nobody calls turns Idle (condition, Event,
the operator's gauge), stays so without a single status write, and turns back when requests come.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from operator_run import install_crd, log_tail, model_manifest, scraped_sidecar, start_operator
from sidecar_traffic import SidecarTraffic

from guardedmodel_testground.cluster import LocalCluster
from guardedmodel_testground.procs import free_port
from guardedmodel_testground.prometheus import Prometheus

pytestmark = pytest.mark.integration

NAME = "sleepy"
IDLE_AFTER_S = 4
# pinned: nothing scales it, and it is still watched for idleness
SPEC = {"replicas": {"min": 1, "max": 1}, "scaling": {"idleAfter": f"{IDLE_AFTER_S}s"}}


@dataclass
class IdleModel:
    namespace: str
    sidecar: SidecarTraffic
    log: Path
    metrics_url: str


@pytest.fixture
def idle_model(
    k8s_cluster: LocalCluster, prometheus_factory: Callable[..., Prometheus], tmp_path: Path
) -> Iterator[IdleModel]:
    install_crd(k8s_cluster)
    namespace = f"idle-{uuid.uuid4().hex[:6]}"
    k8s_cluster.kubectl("create", "namespace", namespace)
    sidecar, prometheus = scraped_sidecar(prometheus_factory, namespace, NAME, ["1"])
    log_path = tmp_path / "operator.log"
    metrics_port = free_port()
    stop_operator = start_operator(
        k8s_cluster,
        namespace,
        prometheus.url,
        log_path,
        {"GUARDEDMODEL_ROLLOUT_MIN_WINDOW_S": "2", "GUARDEDMODEL_IDLE_INTERVAL_S": "0.5"},
        args=["--metrics-host", "127.0.0.1", "--metrics-port", str(metrics_port)],
    )
    k8s_cluster.kubectl("apply", "-f", "-", input=model_manifest(namespace, NAME, SPEC))
    try:
        yield IdleModel(namespace, sidecar, log_path, f"http://127.0.0.1:{metrics_port}/metrics")
    finally:
        stop_operator()
        sidecar.stop()
        k8s_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


class Traffic:
    """A few requests every 200 ms until stopped."""

    def __init__(self, sidecar: SidecarTraffic) -> None:
        self.sidecar = sidecar
        self.stop_flag = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self.stop_flag.wait(0.2):
            self.sidecar.serve("1", 3)

    def stop(self) -> None:
        self.stop_flag.set()


def model(cluster: LocalCluster, namespace: str) -> dict[str, Any]:
    return cluster.kubectl_json("get", "guardedmodel", NAME, "-n", namespace)


def idle_condition(obj: dict[str, Any]) -> dict[str, Any]:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Idle"), {})


def wait_for_idle(cluster: LocalCluster, m: IdleModel, status: str, what: str) -> dict[str, Any]:
    """Until the Idle condition has `status` (and the phase is Ready); returns the model."""
    deadline = time.monotonic() + 60  # the kwok pods' readiness included, on a loaded machine
    obj: dict[str, Any] = {}
    while time.monotonic() < deadline:
        obj = model(cluster, m.namespace)
        if idle_condition(obj).get("status") == status and obj["status"].get("phase") == "Ready":
            return obj
        time.sleep(0.3)
    pytest.fail(
        f"timed out waiting for {what}; status {json.dumps(obj.get('status'))}\n"
        f"operator log tail:\n{log_tail(m.log)}"
    )


def idle_gauge(m: IdleModel) -> float | None:
    with urllib.request.urlopen(m.metrics_url, timeout=5) as response:
        text = response.read().decode()
    wanted = f'guardedmodel_operator_model_idle{{name="{NAME}",namespace="{m.namespace}"}} '
    line = next((line for line in text.splitlines() if line.startswith(wanted)), None)
    return None if line is None else float(line.split()[-1])


def events(cluster: LocalCluster, namespace: str, reason: str) -> list[str]:
    items = cluster.kubectl_json(
        "get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={NAME},reason={reason}"
    )["items"]
    return [e["message"] for e in items]


def test_a_model_without_requests_turns_idle_and_back_when_traffic_comes(
    k8s_cluster: LocalCluster, idle_model: IdleModel
) -> None:
    m = idle_model
    created = time.monotonic()
    obj = wait_for_idle(k8s_cluster, m, "True", "Idle=True without traffic")
    assert (
        time.monotonic() - created >= IDLE_AFTER_S - 1
    )  # not before idleAfter (timestamps are whole seconds)
    idle = idle_condition(obj)
    assert idle["reason"] == "NoTraffic"
    assert idle["message"] == (
        f"no requests for {IDLE_AFTER_S}s; still runs 1 replica(s), as replicas.min = replicas.max"
    )
    assert events(k8s_cluster, m.namespace, "Idle") == [idle["message"]]
    # the core's conditions are all still there next to it
    assert {c["type"] for c in obj["status"]["conditions"]} == {"Ready", "Progressing", "Degraded", "Idle"}

    # Steady state: checks go on twice a second, and nobody writes the status.
    time.sleep(1.0)
    before = model(k8s_cluster, m.namespace)
    time.sleep(3.0)
    after = model(k8s_cluster, m.namespace)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"], log_tail(m.log)
    assert idle_gauge(m) == 1.0

    traffic = Traffic(m.sidecar)
    try:
        obj = wait_for_idle(k8s_cluster, m, "False", "Idle=False once requests come")
        back = idle_condition(obj)
        assert (back["reason"], back["message"]) == (
            "Serving",
            f"served requests in the last {IDLE_AFTER_S}s",
        )
        assert back["lastTransitionTime"] >= idle["lastTransitionTime"]
        assert events(k8s_cluster, m.namespace, "Active") == [back["message"]]
        assert idle_gauge(m) == 0.0
        # serving steadily: no more writes either
        time.sleep(1.0)
        before = model(k8s_cluster, m.namespace)
        time.sleep(2.0)
        assert (
            model(k8s_cluster, m.namespace)["metadata"]["resourceVersion"]
            == before["metadata"]["resourceVersion"]
        )
    finally:
        traffic.stop()


def test_the_gauge_goes_when_the_model_does(k8s_cluster: LocalCluster, idle_model: IdleModel) -> None:
    m = idle_model
    wait_for_idle(k8s_cluster, m, "True", "Idle=True without traffic")
    assert idle_gauge(m) == 1.0
    k8s_cluster.kubectl("delete", "guardedmodel", NAME, "-n", m.namespace)
    deadline = time.monotonic() + 15
    while idle_gauge(m) is not None and time.monotonic() < deadline:
        time.sleep(0.3)
    assert idle_gauge(m) is None, log_tail(m.log)
