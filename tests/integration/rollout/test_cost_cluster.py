"""status.cost end to end: the real API server, the real operator process, a real Prometheus scraping
the sidecar's real metric objects (the pods are kwok's: Triton's compute time and the review items are
played by `SidecarTraffic`). The operator writes status.cost at its checks, once while the figures
are steady, again on a price edit, and removes it with spec.cost."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_run import (
    CANARY_ROLLOUT,
    install_crd,
    log_tail,
    model_manifest,
    scraped_sidecar,
    start_operator,
    wait_for_status,
)
from sidecar_traffic import SidecarTraffic

from guardedmodel_testground.cluster import LocalCluster
from guardedmodel_testground.object_watch import ObjectWatch
from guardedmodel_testground.prometheus import Prometheus

pytestmark = pytest.mark.integration

NAME = "priced"
# 3600 per hour: one unit of money per compute second.
COST = {"currency": "EUR", "gpuHourPrice": 3600, "reviewPrice": 0.5}
COMPUTE_S = 0.002  # per request
REVIEW_FRACTION = 0.1


class Load:
    """Requests keep arriving at version 1: 2 ms of compute each, one in ten sent to review."""

    def __init__(self, sidecar: SidecarTraffic) -> None:
        self.sidecar = sidecar
        self.stop_flag = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self.stop_flag.wait(0.25):
            self.sidecar.serve("1", 10, review_fraction=REVIEW_FRACTION)
            self.sidecar.triton_compute("1", 10, COMPUTE_S)

    def stop(self) -> None:
        self.stop_flag.set()


@pytest.fixture
def priced_model(
    k8s_cluster: LocalCluster, prometheus_factory: Callable[..., Prometheus], tmp_path: Path
) -> Iterator[tuple[str, Path, ObjectWatch]]:
    install_crd(k8s_cluster)
    namespace = f"cost-{uuid.uuid4().hex[:6]}"
    k8s_cluster.kubectl("create", "namespace", namespace)
    sidecar, prometheus = scraped_sidecar(prometheus_factory, namespace, NAME, ["1"])
    load = Load(sidecar)
    log_path = tmp_path / "operator.log"
    # A window longer than the traffic so far, as the default one (60 s) is at a model's start:
    # increase() then extrapolates a young series by half a scrape interval only. A window of a few
    # scrapes read compute per prediction up to a third low here (its counters start at different
    # levels, and increase() stops extrapolating each at its own zero), which would stand until
    # a move of 1.5x.
    stop_operator = start_operator(
        k8s_cluster, namespace, prometheus.url, log_path, {"GUARDEDMODEL_ROLLOUT_MIN_WINDOW_S": "60"}
    )
    spec = {"rollout": CANARY_ROLLOUT, "cost": COST}
    k8s_cluster.kubectl("apply", "-f", "-", input=model_manifest(namespace, NAME, spec))
    watch = ObjectWatch(k8s_cluster, "guardedmodel", NAME, namespace)
    try:
        yield namespace, log_path, watch
    finally:
        watch.stop()
        load.stop()
        stop_operator()
        sidecar.stop()
        k8s_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def _figures(status: dict[str, Any]) -> dict[str, Any] | None:
    versions = (status.get("cost") or {}).get("versions") or []
    return next((v for v in versions if v.get("version") == "1"), None)


def test_status_cost_is_written_once_while_steady_then_on_a_price_edit_and_removed_with_spec_cost(
    k8s_cluster: LocalCluster, priced_model: tuple[str, Path, ObjectWatch]
) -> None:
    namespace, log, watch = priced_model

    def wait(what: str, ok: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        return wait_for_status(
            k8s_cluster, namespace, NAME, what, ok, timeout=90, context=lambda: log_tail(log)
        )

    status = wait("status.cost of version 1", lambda st: _figures(st) is not None)
    figures = _figures(status)
    assert figures is not None and status["cost"]["currency"] == "EUR"
    assert figures["gpuSecondsPerPrediction"] == pytest.approx(COMPUTE_S, rel=0.2)
    assert figures["reviewsPerThousand"] == pytest.approx(1000 * REVIEW_FRACTION, rel=0.2)
    expected = 1000 * COMPUTE_S / 3600 * COST["gpuHourPrice"] + 1000 * REVIEW_FRACTION * COST["reviewPrice"]
    assert figures["costPerThousand"] == pytest.approx(expected, rel=0.2)

    # Steady traffic over four more checks (3 s interval): the figures do not move, nothing is written.
    time.sleep(12)
    written = [s.get("cost") for s in watch.statuses() if s.get("cost")]
    assert len({json.dumps(c, sort_keys=True) for c in written}) == 1, written

    patch = {"spec": {"cost": {"reviewPrice": 0.25}}}
    k8s_cluster.kubectl(
        "patch", "guardedmodel", NAME, "-n", namespace, "--type=merge", "-p", json.dumps(patch)
    )
    cheaper = 1000 * COMPUTE_S / 3600 * COST["gpuHourPrice"] + 1000 * REVIEW_FRACTION * 0.25
    status = wait(
        "status.cost at the new review price",
        lambda st: (
            (f := _figures(st)) is not None and f["costPerThousand"] == pytest.approx(cheaper, rel=0.2)
        ),
    )

    k8s_cluster.kubectl(
        "patch",
        "guardedmodel",
        NAME,
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"cost": None}}),
    )
    wait("status.cost removed with spec.cost", lambda st: "cost" not in st)
