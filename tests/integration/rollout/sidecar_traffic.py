"""Serve the sidecar's real metric objects over HTTP and drive them like traffic would.

The exposition is the sidecar's own `SidecarMetrics` collector (the metric names,
labels and histogram buckets are the sidecar's, nothing is re-declared here); what
is simulated is only the traffic: per request, the numbers the pipeline would
record (calibrated confidence, OOD score, decision, latency, upstream errors).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.registry import Collector

from guardedmodel_sidecar.decision import ACCEPT, REJECT, REVIEW
from guardedmodel_sidecar.guard.artifact import DriftReference
from guardedmodel_sidecar.guard.drift import DriftAccumulator
from guardedmodel_sidecar.guard.drift_decision import DriftPolicy
from guardedmodel_sidecar.metrics import SidecarMetrics
from guardedmodel_sidecar.version_metrics import VersionMetrics
from guardedmodel_testground.procs import free_port

OOD_THRESHOLD = 0.0  # scores above it are out of distribution (the sidecar's convention)
CONFIDENCE_EDGES = np.linspace(0.5, 1.0, 6)


def reference() -> DriftReference:
    """What healthy traffic looks like: confidences mostly high, two classes evenly."""
    return DriftReference(
        feature_edges=np.zeros((0, 2)),
        feature_fractions=np.zeros((0, 1)),
        confidence_edges=CONFIDENCE_EDGES,
        confidence_fractions=np.array([0.02, 0.03, 0.05, 0.2, 0.7]),
        class_fractions=np.array([0.5, 0.5]),
    )


# The tests serve tens of requests per version: windows of 40 rows are tested.
SMALL_WINDOWS = DriftPolicy(min_samples=40)


class _Locked(Collector):
    """Scrapes run on the HTTP server's thread; traffic runs on the test's."""

    def __init__(self, inner: SidecarMetrics, lock: threading.Lock) -> None:
        self.inner, self.lock = inner, lock

    def collect(self) -> Iterator[Any]:
        with self.lock:
            return iter(list(self.inner.collect()))


class SidecarTraffic:
    def __init__(
        self, model: str, versions: Sequence[str], drift_policy: DriftPolicy = SMALL_WINDOWS
    ) -> None:
        self.metrics = SidecarMetrics(model, drift_policy)
        self.lock = threading.Lock()
        self.rng = np.random.default_rng(7)
        for version in versions:
            self.metrics.add_version(
                VersionMetrics(
                    model=model,
                    version=version,
                    method="energy",
                    ood_threshold=OOD_THRESHOLD,
                    drift=DriftAccumulator(reference()),
                    feature_dim=0,
                )
            )
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Locked(self.metrics, self.lock))
        self.port = 0
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> SidecarTraffic:
        self.port = free_port()
        self._server, self._thread = start_http_server(self.port, addr="127.0.0.1", registry=self.registry)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def serve(
        self,
        version: str,
        requests: int,
        *,
        ood_fraction: float = 0.0,
        review_fraction: float = 0.0,
        confidence: float | None = None,
        latency_s: float = 0.004,
    ) -> None:
        """`requests` single-sample requests to `version`, as the pipeline records them.

        Out-of-distribution samples are rejected (the spec's default action); review
        requests have a confidence under 0.5; the rest are accepted with confidences
        drawn from the reference (or pinned to `confidence`, which shows up as drift).
        """
        vm = self.metrics.versions[version]
        n_ood = round(requests * ood_fraction)
        n_review = round(requests * review_fraction)
        with self.lock:
            for i in range(requests):
                if i < n_ood:
                    decision, conf, ood = REJECT, 0.6, OOD_THRESHOLD + 1.0
                elif i < n_ood + n_review:
                    decision, conf, ood = REVIEW, 0.45, OOD_THRESHOLD - 1.0
                else:
                    decision, ood = ACCEPT, OOD_THRESHOLD - 1.0
                    conf = confidence if confidence is not None else self._healthy_confidence()
                vm.observe(np.array([conf]), np.array([i % 2]), np.array([ood]), None)
                vm.decisions[decision] += 1
                if decision == REVIEW:  # its review item goes to people
                    self.metrics.cost.count_review(version)
                vm.stages["total"].observe(latency_s)

    def triton_queue(self, version: str, requests: int, queue_ms: float) -> None:
        """`requests` more requests through Triton, each having waited `queue_ms` in its queue
        (what the sidecar republishes from Triton's counters)."""
        with self.lock:
            seconds, served = self.metrics.triton_queue.get(version, (0.0, 0.0))
            self.metrics.triton_queue[version] = (seconds + requests * queue_ms / 1000.0, served + requests)

    def triton_compute(self, version: str, requests: int, seconds_each: float) -> None:
        """`requests` more requests through Triton, each computed for `seconds_each` (what the sidecar
        republishes from Triton's counters, and charges at spec.cost's price)."""
        with self.lock:
            seconds, runs = self.metrics.triton_compute.get(version, (0.0, 0.0))
            self.metrics.triton_compute[version] = (seconds + requests * seconds_each, runs + requests)
            self.metrics.cost.observe_compute({v: c for v, (c, _) in self.metrics.triton_compute.items()})

    def upstream_errors(self, count: int, code: str = "503", version: str = "") -> None:
        with self.lock:
            for _ in range(count):
                self.metrics.count_upstream_error(code, version)

    def close_drift_windows(self) -> None:
        """End the sidecar's drift window: publishes drift score, the drift test's decision and p-value,
        and estimated accuracy."""
        with self.lock:
            self.metrics.close_windows()

    def _healthy_confidence(self) -> float:
        edges = CONFIDENCE_EDGES
        b = int(self.rng.choice(5, p=reference().confidence_fractions))
        return float(self.rng.uniform(edges[b], edges[b + 1]))
