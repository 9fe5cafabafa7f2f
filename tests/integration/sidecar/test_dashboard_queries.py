"""Every query of the shipped Grafana dashboard answers with data from a real Prometheus.

The real sidecar in front of a real Triton (CPU) serves a mix of accepted, reviewed, rejected,
out-of-distribution and malformed requests; a real Prometheus scrapes it every second with the
labels a pod scrape gives a GuardedModel's pods, and scrapes the operator's own metrics registry
(honorLabels, as the chart's ServiceMonitor), on which the operator's rollout and scaling metric
code records a canary start, a step, a rollback and a scale-up. Then each panel's query, with the
template variables filled in (the cost panels with a spec.cost set), must return at least one series, and each annotation's query must
return one over the run.

Set GUARDEDMODEL_DASHBOARD_PNG to a path to also draw the panels over the run into it
(`make dashboard-png`; GUARDEDMODEL_DASHBOARD_SECONDS makes the run longer).
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import SidecarProcess, WebhookReceiver, sidecar_config
from fault_traffic import http_body
from prometheus_client import start_http_server
from sidecar_toy import MODEL, toy_data

from guardedmodel_cli import dashboard
from guardedmodel_cli.dashboard import Query, Variables
from guardedmodel_operator import metrics as operator_metrics
from guardedmodel_operator.rollout import metrics as rollout_metrics
from guardedmodel_operator.rollout.verdict import Kind, Verdict
from guardedmodel_operator.scaling import metrics as scaling_metrics
from guardedmodel_operator.scaling.policy import SCALED_UP, ScaleVerdict
from guardedmodel_testground.procs import free_port
from guardedmodel_testground.prometheus import Prometheus, ScrapeJob
from guardedmodel_testground.triton import TritonServer

pytestmark = pytest.mark.integration

NAMESPACE = "ml"
# The pod scrape's labels (what files/alerts.yaml groups by); the GuardedModel is named as its model.
POD_LABELS = {"namespace": NAMESPACE, "guardedmodel_io_name": MODEL}
VARIABLES = Variables(namespace=NAMESPACE, model=MODEL, rate_interval="10s")
# The cost series exist only for a model with spec.cost.
COST = {"currency": "USD", "gpuHourPrice": 2.5, "reviewPrice": 0.08}
PNG = os.environ.get("GUARDEDMODEL_DASHBOARD_PNG", "")
TRAFFIC_S = float(os.environ.get("GUARDEDMODEL_DASHBOARD_SECONDS", "16"))


@dataclass
class MixedTraffic:
    """One HTTP caller cycling through accepted, reviewed, OOD, out-of-range and malformed requests;
    the middle third of the run sends more uncertain and OOD inputs (a drifting input)."""

    address: str
    seconds: float
    statuses: dict[int, int] = field(default_factory=dict)
    error: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> MixedTraffic:
        self._thread = threading.Thread(target=self._run, name="dashboard-traffic", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        if self.error is not None:
            raise AssertionError("the traffic thread failed") from self.error

    def _bodies(self, drifting: bool, seed: int) -> Iterator[bytes]:
        data = toy_data()
        good, _ = data.sample(4, seed)
        yield from (http_body(good, f"accept-{seed}-{i}") for i in range(6 if not drifting else 2))
        yield http_body(data.ambiguous(2 if not drifting else 4, seed), f"review-{seed}")
        yield http_body(data.far_ood(1 if not drifting else 4, seed), f"ood-{seed}")
        # Above the gate's max: refused.
        yield http_body(np.full((1, 8), 2.0, dtype=np.float32), f"out-of-range-{seed}")
        yield b'{"inputs": [{"name": "INPUT"'  # malformed

    def _run(self) -> None:
        try:
            self._send_until_stopped()
        except BaseException as exc:
            self.error = exc

    def _send_until_stopped(self) -> None:
        host, _, port = self.address.rpartition(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        started, seed = time.monotonic(), 0
        while not self._stop.is_set():
            elapsed = (time.monotonic() - started) / max(self.seconds, 1e-9)
            seed += 1
            for body in self._bodies(1 / 3 <= elapsed % 1 < 2 / 3, seed):
                try:
                    conn.request(
                        "POST", f"/v2/models/{MODEL}/infer", body, {"Content-Type": "application/json"}
                    )
                    response = conn.getresponse()
                    response.read()
                    self.statuses[response.status] = self.statuses.get(response.status, 0) + 1
                    if response.will_close:
                        conn.close()
                except (OSError, http.client.HTTPException):
                    conn.close()
                    self.statuses[0] = self.statuses.get(0, 0) + 1
            time.sleep(0.02)
        conn.close()


@dataclass
class OperatorMetrics:
    """The operator's metrics registry served on loopback, recorded on by its own rollout and
    scaling metric code as the controllers would on a canary that is stepped and rolled back."""

    port: int

    def start_canary(self) -> None:
        rollout_metrics.count(
            NAMESPACE, MODEL, Verdict(Kind.START_CANARY, "CanaryStarted", "", "2", weight=20)
        )
        scaling_metrics.observe(NAMESPACE, MODEL, ScaleVerdict(1, 1, "Steady", "", ()))

    def step(self) -> None:
        rollout_metrics.count(
            NAMESPACE, MODEL, Verdict(Kind.PROMOTE_STEP, "CanaryStepped", "", "2", weight=50)
        )
        scaling_metrics.observe(NAMESPACE, MODEL, ScaleVerdict(2, 1, SCALED_UP, "", ()))

    def roll_back(self) -> None:
        rollout_metrics.count(NAMESPACE, MODEL, Verdict(Kind.ROLLBACK, "RolledBack", "", "2", target="1"))


@pytest.fixture
def operator_registry() -> Iterator[OperatorMetrics]:
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=operator_metrics.REGISTRY)
    yield OperatorMetrics(port)
    server.shutdown()
    thread.join(5)
    rollout_metrics.forget(NAMESPACE, MODEL)
    scaling_metrics.forget(NAMESPACE, MODEL)


def prometheus_api(prometheus: Prometheus, path: str, **params: str) -> list[dict[str, Any]]:
    url = f"{prometheus.url}/api/v1/{path}?" + urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"{params['query']!r}: {exc.read().decode()}") from exc
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def series_counts(prometheus: Prometheus, start: float, end: float) -> dict[Query, int]:
    """How many series each of the dashboard's queries returns (panels at `end`, annotations over
    the run)."""
    counts = {}
    for query in dashboard.queries(json.loads(dashboard.shipped_path().read_text())):
        expr = VARIABLES.substitute(query.expr)
        if query.annotation:
            found = prometheus_api(
                prometheus, "query_range", query=expr, start=str(start), end=str(end), step="1"
            )
        else:
            found = prometheus_api(prometheus, "query", query=expr, time=str(end))
        counts[query] = len(found)
    return counts


def test_every_dashboard_query_returns_series(
    toy_repository: Path,
    toy_triton: TritonServer,
    sidecar_factory: Callable[..., SidecarProcess],
    webhook_receiver: Callable[..., WebhookReceiver],
    prometheus_factory: Callable[..., Prometheus],
    operator_registry: OperatorMetrics,
    tmp_path: Path,
) -> None:
    webhook = webhook_receiver()
    sidecar = sidecar_factory(
        sidecar_config(
            toy_triton,
            toy_repository,
            tmp_path,
            spec={
                "confidence": {"reviewBelow": 0.8, "review": {"webhook": webhook.url, "maxFraction": 1.0}},
                "drift": {"window": "2s", "minSamples": 20},
                "cost": COST,
            },
        )
    )
    target = sidecar.metrics_url.removeprefix("http://").removesuffix("/metrics")
    prometheus = prometheus_factory(
        [
            ScrapeJob("sidecar", [target], labels=POD_LABELS),
            ScrapeJob("operator", [f"127.0.0.1:{operator_registry.port}"], honor_labels=True),
        ]
    )
    prometheus.wait_for(f'guardedmodel_triton_ready{{namespace="{NAMESPACE}"}}')
    prometheus.wait_for("guardedmodel_operator_coalesced_triggers_total")
    time.sleep(1.5)  # a scrape of the zero counters first, so rates see the whole run

    start = time.time()
    traffic = MixedTraffic(sidecar.http_url, TRAFFIC_S).start()
    try:
        steps = [operator_registry.start_canary, operator_registry.step, operator_registry.roll_back]
        for index, step in enumerate(steps):
            time.sleep(max(TRAFFIC_S * (index + 1) / (len(steps) + 1) - (time.time() - start), 0))
            step()
        time.sleep(max(TRAFFIC_S - (time.time() - start), 0))
        time.sleep(2.5)  # the last changes scraped
        end = time.time()
        counts = series_counts(prometheus, start, end)
    finally:
        traffic.stop()
    assert traffic.statuses.get(200, 0) > 0 and traffic.statuses.get(400, 0) > 0, traffic.statuses
    assert not traffic.statuses.get(0), f"connections failed: {traffic.statuses}"
    # Zero rates are series too: the traffic itself must show, every decision of the mix.
    requests = prometheus_api(
        prometheus,
        "query",
        query=f'sum by (decision) (increase(guardedmodel_requests_total{{namespace="{NAMESPACE}"}}[1h]))',
        time=str(end),
    )
    counted = {r["metric"]["decision"]: float(r["value"][1]) for r in requests}
    assert all(counted.get(decision, 0) > 0 for decision in ("accept", "review", "reject")), counted
    print("\n".join(f"{count} series: {query.panel} / {query.legend}" for query, count in counts.items()))
    empty = [query for query, count in counts.items() if not count]
    assert not empty, "queries without series:\n" + "\n".join(
        f"  {query.panel} / {query.legend}: {VARIABLES.substitute(query.expr)}" for query in empty
    )
    if PNG:
        from guardedmodel_cli.dashboard_png import draw

        draw(prometheus.url, VARIABLES, start, end, Path(PNG))
