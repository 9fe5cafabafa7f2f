"""Metric samples read from a real Prometheus scraping the sidecar's real metric objects."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import pytest
from sidecar_traffic import SidecarTraffic

from guardedmodel_operator.prometheus import PrometheusSettings, PrometheusSource
from guardedmodel_operator.rollout.metrics_source import fetch_samples
from guardedmodel_operator.rollout.types import MetricSamples
from guardedmodel_sidecar.guard.drift_decision import DriftPolicy
from guardedmodel_testground.procs import free_port
from guardedmodel_testground.prometheus import Prometheus, ScrapeJob

pytestmark = pytest.mark.integration

NAMESPACE, NAME = "ml", "classifier"
WINDOW_S = 10.0


@pytest.fixture
def traffic() -> Iterator[SidecarTraffic]:
    served = SidecarTraffic("classifier", ["1", "2"]).start()
    yield served
    served.stop()


def scrape(traffic: SidecarTraffic, namespace: str = NAMESPACE, name: str = NAME) -> ScrapeJob:
    # The labels a Kubernetes pod scrape config gives a GuardedModel's pods.
    return ScrapeJob(
        f"{namespace}-{name}", [traffic.target], labels={"namespace": namespace, "guardedmodel_io_name": name}
    )


def read(url: str, versions: tuple[str, ...], **kw: object) -> dict[str, MetricSamples]:
    async def go() -> dict[str, MetricSamples]:
        source = PrometheusSource(PrometheusSettings(url, min_window_s=0, **kw))  # type: ignore[arg-type]
        try:
            return await fetch_samples(source, NAMESPACE, NAME, versions, WINDOW_S)
        finally:
            await source.close()

    return asyncio.run(go())


def wait_for_samples(
    url: str, versions: tuple[str, ...], ready: Callable[[dict[str, MetricSamples]], bool]
) -> dict[str, MetricSamples]:
    deadline = time.monotonic() + 30
    last: dict[str, MetricSamples] = {}
    while time.monotonic() < deadline:
        last = read(url, versions)
        if ready(last):
            return last
        time.sleep(0.5)
    pytest.fail(f"Prometheus never had the samples; last read: {last}")


def test_figures_per_version(prometheus_factory: Callable[..., Prometheus], traffic: SidecarTraffic) -> None:
    # A second GuardedModel with the same model name in another namespace must not leak in.
    other = SidecarTraffic("classifier", ["2"]).start()
    try:
        prometheus = prometheus_factory([scrape(traffic), scrape(other, namespace="other")])
        prometheus.wait_for('guardedmodel_requests_total{namespace="ml"}')
        prometheus.wait_for('guardedmodel_requests_total{namespace="other"}')
        time.sleep(1.5)  # a scrape of the zero counters, so increase() sees the whole traffic
        traffic.serve("1", 200, review_fraction=0.1)
        traffic.serve("2", 50, ood_fraction=0.4, confidence=0.55, latency_s=0.3)
        traffic.upstream_errors(5, version="2")
        traffic.close_drift_windows()
        other.serve("2", 500, ood_fraction=1.0)

        got = wait_for_samples(
            prometheus.url,
            ("1", "2", "3"),
            lambda s: (
                s["1"].requests is not None
                and s["1"].requests >= 200
                and s["2"].drift_score is not None
                and s["2"].requests is not None
                and s["2"].requests >= 50
            ),
        )
    finally:
        other.stop()
    v1, v2, v3 = got["1"], got["2"], got["3"]
    # increase() extrapolates to the window's edges, a little differently per series
    # (it stops at a counter's zero point), so counts are scaled and ratios nearly exact.
    assert 200 <= v1.requests <= 200 * 1.5  # type: ignore[operator]
    scale = v1.requests / 200  # type: ignore[operator]
    assert v2.requests == pytest.approx(50 * scale, rel=0.02)
    assert v1.ood_rate == pytest.approx(0.0) and v2.ood_rate == pytest.approx(0.4, rel=0.02)
    assert v1.review_rate == pytest.approx(0.1, rel=0.02) and v2.review_rate == pytest.approx(0.0)
    assert v2.reject_rate == pytest.approx(0.4, rel=0.02)
    assert v2.estimated_accuracy == pytest.approx(0.4 * 0.6 + 0.6 * 0.55, rel=0.02)
    assert 0.85 < v1.estimated_accuracy < 0.95  # type: ignore[operator]
    # drift: version 2's confidences sit in one low bin, far from the reference
    assert v1.drift_score is not None and v2.drift_score is not None
    assert v2.drift_score > 0.5 and v2.drift_score > 3 * v1.drift_score
    # upstream errors and latency are counted per version (the error series is born inside
    # the window and counts whole, unextrapolated): a slow canary does not slow the stable one
    assert v2.error_rate == pytest.approx(5 / (50 * scale + 5), rel=0.02)
    assert "error_rate" not in v2.model_wide
    assert v1.error_rate == 0.0
    assert v2.p99_latency_ms is not None and 250 <= v2.p99_latency_ms <= 1000
    assert v1.p99_latency_ms is not None and v1.p99_latency_ms <= 10
    assert not v1.model_wide and not v2.model_wide
    # a version with no series at all: no data, not zeros
    assert v3 == MetricSamples("3", WINDOW_S, error_rate=None)
    assert v3.requests is None and v3.ood_rate is None and v3.estimated_accuracy is None


def test_no_errors_series_means_no_errors(
    prometheus_factory: Callable[..., Prometheus], traffic: SidecarTraffic
) -> None:
    prometheus = prometheus_factory([scrape(traffic)])
    prometheus.wait_for("guardedmodel_requests_total")
    time.sleep(1.5)
    traffic.serve("1", 40)
    got = wait_for_samples(
        prometheus.url, ("1",), lambda s: s["1"].requests is not None and s["1"].requests >= 40
    )
    assert got["1"].error_rate == 0.0
    assert got["1"].drift_score is None  # no drift window closed yet: no data, not "no drift"
    assert got["1"].drift_decision is None and got["1"].drift_p_value is None


def test_the_drift_decision_and_the_drifted_windows_psi_per_version(
    prometheus_factory: Callable[..., Prometheus], traffic: SidecarTraffic
) -> None:
    prometheus = prometheus_factory([scrape(traffic)])
    prometheus.wait_for("guardedmodel_requests_total")
    traffic.serve("1", 300)  # confidences drawn from the reference
    traffic.serve("2", 200, confidence=0.55)  # all in one low bin
    traffic.close_drift_windows()
    got = wait_for_samples(
        prometheus.url,
        ("1", "2"),
        lambda s: s["1"].drift_decision is not None and s["2"].drifted_score is not None,
    )
    v1, v2 = got["1"], got["2"]
    assert v1.drift_decision == "stable" and v1.drifted_score is None
    assert v1.drift_p_value is not None and v1.drift_p_value > 0.001
    # version 2's window is called drifted, and the PSI read with it is that same window's
    assert v2.drift_decision == "drifted" and v2.drift_p_value is not None and v2.drift_p_value < 1e-6
    assert v2.drifted_score == pytest.approx(v2.drift_score) and v2.drift_score > 0.5  # type: ignore[operator]


def test_a_window_too_small_to_test_is_insufficient_data_not_stable(
    prometheus_factory: Callable[..., Prometheus],
) -> None:
    traffic = SidecarTraffic("classifier", ["1"], DriftPolicy(min_samples=100)).start()
    try:
        prometheus = prometheus_factory([scrape(traffic)])
        prometheus.wait_for("guardedmodel_requests_total")
        traffic.serve("1", 60, confidence=0.55)  # far from the reference, but only 60 rows
        traffic.close_drift_windows()
        got = wait_for_samples(prometheus.url, ("1",), lambda s: s["1"].drift_score is not None)
    finally:
        traffic.stop()
    assert got["1"].drift_score > 0.5  # type: ignore[operator]
    assert got["1"].drift_decision is None and got["1"].drifted_score is None


def test_unreachable_prometheus_is_no_data_with_a_reason() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    got = read(url, ("1",), timeout_s=2.0)
    assert got["1"].requests is None
    assert got["1"].error is not None and url in got["1"].error and "prometheusUrl" in got["1"].error
