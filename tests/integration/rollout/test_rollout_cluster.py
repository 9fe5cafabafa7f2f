"""Canary rollouts end to end: the real API server, the real operator process, a real
Prometheus scraping the sidecar's real metric objects.

The pods are kwok's (no containers run), so the sidecar's traffic is played by
`SidecarTraffic`: per version, the numbers the sidecar would record, scraped with
the labels a pod scrape gives a GuardedModel's pods. What is under test is the
operator: version edit → canary at 10 % → checks against Prometheus → promotion
step by step, or a rollback with its phase, history entry and Event.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from operator_run import CANARY_ROLLOUT, install_crd, start_operator, wait_for_status
from sidecar_traffic import SidecarTraffic

from guardedmodel_testground.cluster import LocalCluster
from guardedmodel_testground.object_watch import ObjectWatch
from guardedmodel_testground.prometheus import Prometheus, ScrapeJob

pytestmark = pytest.mark.integration

MODEL = "classifier"
NAME = "clf"


def manifest(namespace: str, version: str) -> str:
    return json.dumps(
        {
            "apiVersion": "guardedmodel.io/v1alpha1",
            "kind": "GuardedModel",
            "metadata": {"name": NAME, "namespace": namespace},
            "spec": {
                "model": {"name": MODEL, "repository": "file:///srv/models", "version": version},
                "rollout": CANARY_ROLLOUT,
            },
        }
    )


def routings(watch: ObjectWatch) -> list[tuple[Any, Any, Any]]:
    """(stable, canary, weight) as the status went through them, each change once."""
    out: list[tuple[Any, Any, Any]] = []
    for status in watch.statuses():
        routing = (status.get("stableVersion"), status.get("canaryVersion"), status.get("canaryWeight"))
        if not out or out[-1] != routing:
            out.append(routing)
    return out


@dataclass
class Traffic:
    """Requests keep arriving at both versions while the test runs."""

    sidecar: SidecarTraffic
    canary_ood_fraction: float
    stop_flag: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Traffic:
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self) -> None:
        while not self.stop_flag.wait(0.25):
            self.sidecar.serve("1", 10)
            self.sidecar.serve("2", 10, ood_fraction=self.canary_ood_fraction)

    def stop(self) -> None:
        self.stop_flag.set()


@dataclass
class Scenario:
    cluster: LocalCluster
    namespace: str
    watch: ObjectWatch
    operator_log: Path

    def gm(self) -> dict[str, Any]:
        return self.cluster.kubectl_json("get", "guardedmodel", NAME, "-n", self.namespace)

    def wait_status(
        self, what: str, ok: Callable[[dict[str, Any]], bool], timeout: float = 60
    ) -> dict[str, Any]:
        return wait_for_status(
            self.cluster,
            self.namespace,
            NAME,
            what,
            ok,
            timeout=timeout,
            context=lambda: (
                f"routings seen: {routings(self.watch)}\noperator log tail:\n{_tail(self.operator_log)}"
            ),
        )

    def pods(self) -> dict[str, tuple[str, int]]:
        """The model's pods: uid → (ReplicaSet, restarts), once they are all Running."""
        deadline = time.monotonic() + 60
        while True:
            items = self.cluster.kubectl_json(
                "get", "pods", "-n", self.namespace, "-l", f"app.kubernetes.io/instance={NAME}"
            )["items"]
            if items and all((p.get("status") or {}).get("phase") == "Running" for p in items):
                return {
                    p["metadata"]["uid"]: (
                        p["metadata"]["ownerReferences"][0]["name"],
                        sum(c.get("restartCount", 0) for c in p["status"].get("containerStatuses") or []),
                    )
                    for p in items
                }
            if time.monotonic() > deadline:
                pytest.fail(f"the model's pods are not Running: {json.dumps(items, indent=1)[:4000]}")
            time.sleep(0.5)

    def replica_sets(self) -> list[str]:
        items = self.cluster.kubectl_json(
            "get", "replicasets", "-n", self.namespace, "-l", f"app.kubernetes.io/instance={NAME}"
        )["items"]
        return [r["metadata"]["name"] for r in items]

    def events(self, reason: str) -> list[dict[str, Any]]:
        items = self.cluster.kubectl_json(
            "get",
            "events",
            "-n",
            self.namespace,
            "--field-selector",
            f"involvedObject.name={NAME},reason={reason}",
        )["items"]
        return list(items)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@pytest.fixture
def scenario(
    k8s_cluster: LocalCluster, prometheus_factory: Callable[..., Prometheus], tmp_path: Path
) -> Iterator[Callable[[float], tuple[Scenario, Traffic]]]:
    install_crd(k8s_cluster)
    cleanups: list[Callable[[], None]] = []

    def start(canary_ood_fraction: float) -> tuple[Scenario, Traffic]:
        namespace = f"rollout-{uuid.uuid4().hex[:6]}"
        k8s_cluster.kubectl("create", "namespace", namespace)
        sidecar = SidecarTraffic(MODEL, ["1", "2"]).start()
        cleanups.append(sidecar.stop)
        prometheus = prometheus_factory(
            [
                ScrapeJob(
                    namespace, [sidecar.target], labels={"namespace": namespace, "guardedmodel_io_name": NAME}
                )
            ]
        )
        prometheus.wait_for(f'guardedmodel_requests_total{{namespace="{namespace}"}}')
        log_path = tmp_path / f"operator-{namespace}.log"
        # Prometheus scrapes every second here; a 3 s window holds enough scrapes.
        stop_operator = start_operator(
            k8s_cluster, namespace, prometheus.url, log_path, {"GUARDEDMODEL_ROLLOUT_MIN_WINDOW_S": "3"}
        )
        cleanups.append(stop_operator)
        cleanups.append(
            lambda: k8s_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        )
        traffic = Traffic(sidecar, canary_ood_fraction).start()
        cleanups.append(traffic.stop)
        k8s_cluster.kubectl("apply", "-f", "-", input=manifest(namespace, "1"))
        watch = ObjectWatch(k8s_cluster, "guardedmodel", NAME, namespace)
        cleanups.append(watch.stop)
        return Scenario(k8s_cluster, namespace, watch, log_path), traffic

    yield start
    for cleanup in reversed(cleanups):
        cleanup()


def test_canary_breaking_a_threshold_is_rolled_back(
    scenario: Callable[[float], tuple[Scenario, Traffic]],
) -> None:
    s, _ = scenario(0.5)  # half of version 2's inputs are out of distribution
    s.wait_status(
        "version 1 stable", lambda st: st.get("stableVersion") == "1" and st.get("phase") == "Ready"
    )
    pods = s.pods()

    s.cluster.kubectl("apply", "-f", "-", input=manifest(s.namespace, "2"))
    status = s.wait_status(
        "the rollback",
        lambda st: st.get("phase") == "RolledBack" and not st.get("canaryVersion"),
    )
    assert ("1", "2", 10) in routings(s.watch)  # the canary got 10 % first
    assert ("1", "2", 50) not in routings(s.watch)  # and never more
    assert status["stableVersion"] == "1" and status["canaryWeight"] == 0
    last = status["history"][-1]
    assert (last["version"], last["outcome"]) == ("2", "RolledBack")
    assert "maxOodRate" in last["reason"] and "oodRate 0.5" in last["reason"]
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "RolledBack")
    events = s.events("RolledBack")
    assert any("maxOodRate" in e["message"] and e["type"] == "Warning" for e in events), events

    # The core's next reconciles keep the rollback: phase stays RolledBack, routing stays on 1.
    time.sleep(4)
    later = s.gm()["status"]
    assert later["phase"] == "RolledBack" and later["stableVersion"] == "1" and not later.get("canaryVersion")

    # Setting the spec back acknowledges the rollback. The canary start, the rollback and the
    # acknowledgement all moved through routing: the same pods, never restarted, one ReplicaSet.
    s.cluster.kubectl("apply", "-f", "-", input=manifest(s.namespace, "1"))
    s.wait_status("the rollback acknowledged", lambda st: st.get("phase") == "Ready")
    assert s.pods() == pods
    assert len(s.replica_sets()) == 1, s.replica_sets()


def test_healthy_canary_is_promoted_step_by_step(
    scenario: Callable[[float], tuple[Scenario, Traffic]],
) -> None:
    s, _ = scenario(0.0)
    s.wait_status(
        "version 1 stable", lambda st: st.get("stableVersion") == "1" and st.get("phase") == "Ready"
    )
    pods = s.pods()

    s.cluster.kubectl("apply", "-f", "-", input=manifest(s.namespace, "2"))
    status = s.wait_status(
        "version 2 promoted",
        lambda st: (
            st.get("stableVersion") == "2" and not st.get("canaryVersion") and st.get("phase") == "Ready"
        ),
    )
    seen = routings(s.watch)
    steps = [r for r in seen if r[1] == "2"]
    assert [w for _, _, w in steps] == [10, 50, 100], seen
    assert status["lastGoodVersion"] == "1"
    assert [(h["version"], h["outcome"]) for h in status["history"][-2:]] == [
        ("2", "CanaryStarted"),
        ("2", "Promoted"),
    ]
    assert s.events("Promoted")
    assert status["metrics"]["version"] == "2" and status["metrics"]["oodRate"] == 0.0
    # The canary start and every promotion moved through routing: the same pods, no restart.
    assert s.pods() == pods
    assert len(s.replica_sets()) == 1, s.replica_sets()
