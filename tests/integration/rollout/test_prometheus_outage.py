"""Prometheus unreachable or erroring during a canary, end to end: the real API server, the real
operator process, a real Prometheus scraping the sidecar's real metric objects, stopped mid-rollout
(or behind a small HTTP server that answers 500s, then hangs).

The canary holds and says so (status.rollout, the MetricsAvailable condition with since when, one
Held Event), is never promoted on missing data, and is rolled back as Inconclusive once
spec.rollout.noDataTimeout has passed; a Prometheus back before the bound lets it go on.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from operator_run import install_crd, log_tail, model_manifest, scraped_sidecar, start_operator
from sidecar_traffic import SidecarTraffic

from guardedmodel_testground import faulty_http
from guardedmodel_testground.cluster import LocalCluster
from guardedmodel_testground.faulty_http import FaultyHTTP
from guardedmodel_testground.object_watch import ObjectWatch, Seen
from guardedmodel_testground.procs import free_port
from guardedmodel_testground.prometheus import Prometheus

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

NAME = "clf"
INTERVAL_S = 2
QUERY_TIMEOUT_S = 1.0  # the operator's Prometheus timeout here, so that a hang costs little
# Every step of the canary is checked against these; the operator may not take longer than the
# bound plus one interval and one query timeout, and a loaded 2-core box gets this much on top.
MARGIN_S = 20.0


def spec(version: str, no_data_timeout_s: int) -> dict[str, Any]:
    return {
        "model": {"name": "classifier", "repository": "file:///srv/models", "version": version},
        "rollout": {
            "steps": [10, 50, 100],
            "interval": f"{INTERVAL_S}s",
            "noDataTimeout": f"{no_data_timeout_s}s",
            "minRequests": 20,
        },
    }


def weights(watch: ObjectWatch) -> list[int]:
    """The canary weights the status ever had."""
    return sorted({st.get("canaryWeight") or 0 for st in watch.statuses() if st.get("canaryVersion")})


@dataclass
class Outage:
    cluster: LocalCluster
    namespace: str
    prometheus: Prometheus
    proxy: FaultyHTTP | None
    log: Path
    cleanups: list[Callable[[], None]]
    metrics_port: int
    watch: ObjectWatch | None = None  # from the first apply on
    stop_flag: threading.Event = field(default_factory=threading.Event)

    def apply(self, version: str, no_data_timeout_s: int) -> None:
        manifest = model_manifest(self.namespace, NAME, spec(version, no_data_timeout_s))
        self.cluster.kubectl("apply", "-f", "-", input=manifest)
        if self.watch is None:  # kubectl watches one object only once it exists
            self.watch = ObjectWatch(self.cluster, "guardedmodel", NAME, self.namespace)
            self.cleanups.append(self.watch.stop)

    def watched(self) -> ObjectWatch:
        assert self.watch is not None, "nothing applied yet"
        return self.watch

    def status(self) -> dict[str, Any]:
        return (
            self.cluster.kubectl_json("get", "guardedmodel", NAME, "-n", self.namespace).get("status") or {}
        )

    def wait(
        self, what: str, ok: Callable[[dict[str, Any]], bool], timeout: float = 90, after: Seen | None = None
    ) -> Seen:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = self.watch.first(ok, after) if self.watch is not None else None
            if seen is not None:
                return seen
            time.sleep(0.2)
        pytest.fail(
            f"timed out waiting for {what}; status: {json.dumps(self.status(), indent=1)}\n"
            f"operator log tail:\n{log_tail(self.log)}"
        )

    def no_data_checks(self) -> float:
        """The operator's count of checks that found no data (all its models: this test has one)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        wanted = 'guardedmodel_operator_rollout_checks_total{result="no_data"} '
        return next((float(line.split()[-1]) for line in text.splitlines() if line.startswith(wanted)), 0.0)

    def events(self, reason: str) -> list[dict[str, Any]]:
        selector = f"involvedObject.name={NAME},reason={reason}"
        return list(
            self.cluster.kubectl_json("get", "events", "-n", self.namespace, "--field-selector", selector)[
                "items"
            ]
        )

    def serve(self, sidecar: SidecarTraffic) -> None:
        """Healthy requests to both versions, all the test long: data is there, only Prometheus fails."""
        while not self.stop_flag.wait(0.25):
            sidecar.serve("1", 10)
            sidecar.serve("2", 10)


@pytest.fixture
def outage(
    k8s_cluster: LocalCluster, prometheus_factory: Callable[..., Prometheus], tmp_path: Path
) -> Iterator[Callable[[bool], Outage]]:
    install_crd(k8s_cluster)
    cleanups: list[Callable[[], None]] = []

    def start(behind_proxy: bool) -> Outage:
        namespace = f"promfault-{uuid.uuid4().hex[:6]}"
        k8s_cluster.kubectl("create", "namespace", namespace)
        cleanups.append(
            lambda: k8s_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        )
        sidecar, prometheus = scraped_sidecar(prometheus_factory, namespace, NAME, ["1", "2"])
        cleanups.append(sidecar.stop)
        proxy = FaultyHTTP(prometheus.url).start() if behind_proxy else None
        if proxy is not None:
            cleanups.append(proxy.stop)
        log_path = tmp_path / f"operator-{namespace}.log"
        env = {
            "GUARDEDMODEL_ROLLOUT_MIN_WINDOW_S": "3",
            "GUARDEDMODEL_PROMETHEUS_TIMEOUT_S": str(QUERY_TIMEOUT_S),
        }
        url = proxy.url if proxy is not None else prometheus.url
        metrics_port = free_port()
        metrics = ["--metrics-host", "127.0.0.1", "--metrics-port", str(metrics_port)]
        cleanups.append(start_operator(k8s_cluster, namespace, url, log_path, env, args=metrics))
        o = Outage(k8s_cluster, namespace, prometheus, proxy, log_path, cleanups, metrics_port)
        threading.Thread(target=o.serve, args=(sidecar,), daemon=True).start()
        cleanups.append(o.stop_flag.set)
        return o

    yield start
    for cleanup in reversed(cleanups):
        cleanup()


def stable(version: str) -> Callable[[dict[str, Any]], bool]:
    return lambda st: (
        st.get("stableVersion") == version and not st.get("canaryVersion") and st.get("phase") == "Ready"
    )


def metrics_available(status: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == "MetricsAvailable"), {})


def holding_canary(status: dict[str, Any]) -> bool:
    return status.get("canaryVersion") == "2" and metrics_available(status).get("status") == "False"


def rolled_back(status: dict[str, Any]) -> bool:
    return status.get("phase") == "RolledBack" and not status.get("canaryVersion")


def assert_held_then_rolled_back(o: Outage, bound_s: int, cause: str) -> dict[str, float]:
    """The hold says so, lasts the bound, ends in a rollback as Inconclusive; returns the figures."""
    held = o.wait("the canary holding for lack of data", holding_canary)
    checks_before = o.no_data_checks()
    condition = metrics_available(held.status)
    assert condition["reason"] == "NoData" and cause in condition["message"], condition
    assert condition["lastTransitionTime"] == held.status["rollout"]["noDataSince"]
    assert "rolled back as inconclusive at" in condition["message"]

    back = o.wait("the rollback as inconclusive", rolled_back, timeout=bound_s + 60)
    rollback_write = o.wait("the rollback's write", lambda st: not st.get("canaryVersion"), after=held)
    status = back.status
    entry = status["history"][-1]
    assert (entry["version"], entry["outcome"]) == ("2", "RolledBack") and "as inconclusive" in entry[
        "reason"
    ]
    degraded = next(c for c in o.status()["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "Inconclusive"), degraded
    assert status["stableVersion"] == "1" and status["rollout"]["blockedReason"] == "Inconclusive"
    assert weights(o.watched()) == [10], "promoted on missing data"

    # In the status's own whole-second times: never before the bound, and not much after.
    since = _seconds(held.status["rollout"]["noDataSince"])
    decided = _seconds(entry["at"])
    assert bound_s <= decided - since <= bound_s + INTERVAL_S + QUERY_TIMEOUT_S + MARGIN_S
    assert [e["type"] for e in o.events("Inconclusive")] == ["Warning"]
    held_events = [e for e in o.events("Held") if "canary 2" in e["message"]]
    assert len(held_events) == 1 and held_events[0].get("count", 1) == 1, held_events
    return {
        "bound_s": bound_s,
        "to_inconclusive_s": decided - since,
        # after the hold's own write, until the rollback's: the core's Progressing condition
        # following the hold's message is the one expected, and none per check
        "writes_during_hold": o.watched().writes_between(held, rollback_write),
        "checks_during_hold": o.no_data_checks() - checks_before,
    }


def _seconds(text: str) -> float:
    return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))


def test_a_stopped_prometheus_rolls_the_canary_back_as_inconclusive(outage: Callable[[bool], Outage]) -> None:
    bound_s = 8
    o = outage(False)
    o.apply("1", bound_s)
    o.wait("version 1 stable", stable("1"))
    o.prometheus.stop()
    o.apply("2", bound_s)  # a canary starts without metrics; its first check finds none

    figures = assert_held_then_rolled_back(o, bound_s, "did not answer")
    print(f"\nFIGURES stopped Prometheus: {figures}")
    assert figures["writes_during_hold"] <= 1, figures
    assert figures["checks_during_hold"] >= bound_s / INTERVAL_S - 1, figures  # it kept looking


def test_a_proxy_answering_500_then_hanging_rolls_the_canary_back(outage: Callable[[bool], Outage]) -> None:
    bound_s = 10
    o = outage(True)
    assert o.proxy is not None
    o.apply("1", bound_s)
    o.wait("version 1 stable", stable("1"))
    o.proxy.set(faulty_http.ERROR_500)
    o.apply("2", bound_s)
    o.wait("the canary holding for lack of data", holding_canary)
    o.proxy.set(faulty_http.HANG)  # from now on every query hangs until the operator gives up on it

    figures = assert_held_then_rolled_back(o, bound_s, "HTTP 500")
    # Every query hung (for up to two minutes): the rollback on time says each check timed out.
    print(f"\nFIGURES 500 then hang: {figures}, requests {o.proxy.requests}, faulted {o.proxy.faults}")
    assert figures["writes_during_hold"] <= 1, figures


def test_prometheus_back_before_the_bound_lets_the_canary_go_on(outage: Callable[[bool], Outage]) -> None:
    bound_s = 120
    o = outage(False)
    o.apply("1", bound_s)
    o.wait("version 1 stable", stable("1"))
    o.prometheus.stop()
    o.apply("2", bound_s)
    held = o.wait("the canary holding for lack of data", holding_canary)
    assert o.events("Held"), "no Held Event"
    o.prometheus.start()  # same address, same data: Prometheus is back

    done = o.wait("version 2 promoted", stable("2"), timeout=90)
    assert weights(o.watched()) == [10, 50, 100]
    assert done.at - held.at < bound_s
    assert not [h for h in done.status["history"] if h["outcome"] == "RolledBack"]
    assert metrics_available(done.status)["status"] == "True"
    assert len(o.events("MetricsAvailable")) == 1
    print(f"\nFIGURES Prometheus back: held {done.at - held.at:.1f}s until promoted (bound {bound_s}s)")
