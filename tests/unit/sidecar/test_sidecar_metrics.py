"""Metrics: batched observations come out as parseable Prometheus text with the right numbers."""

from __future__ import annotations

import math

import numpy as np
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from guardedmodel_sidecar.guard.artifact import DriftReference
from guardedmodel_sidecar.guard.drift import DriftAccumulator
from guardedmodel_sidecar.metrics import SidecarMetrics, VersionMetrics, ood_buckets


def reference() -> DriftReference:
    edges = np.linspace(0, 1, 5)
    return DriftReference(
        feature_edges=np.tile(edges, (2, 1)),
        feature_fractions=np.full((2, 4), 0.25),
        confidence_edges=edges,
        confidence_fractions=np.full(4, 0.25),
        class_fractions=np.full(3, 1 / 3),
    )


def samples(metrics: SidecarMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_counts_histograms_accuracy_and_drift_are_exported() -> None:
    metrics = SidecarMetrics("m")
    vm = VersionMetrics("m", "1", "energy", 2.0, DriftAccumulator(reference()), feature_dim=2, buffer_rows=8)
    metrics.add_version(vm)
    rng = np.random.default_rng(0)
    for _ in range(5):  # 5 x 3 rows overflow the 8-row buffer: flushes mid-way must not lose rows
        conf = rng.uniform(0.5, 1.0, 3)
        vm.observe(conf, rng.integers(0, 3, 3), np.array([1.0, 3.0, 1.5]), rng.uniform(0, 1, (3, 2)))
        vm.decisions["accept"] += 1
    metrics.count_upstream_error("503", "2")
    metrics.gate_refusals += 2
    vm.stages["total"].observe(0.0004)
    metrics.stages["total"].observe(0.002)  # refused before a version was chosen
    values = samples(metrics)
    lv = (("model", "m"), ("version", "1"))
    assert values[("guardedmodel_requests_total", (("decision", "accept"), *lv))] == 5
    assert values[("guardedmodel_samples_total", lv)] == 15
    assert values[("guardedmodel_ood_samples_total", lv)] == 5
    assert values[("guardedmodel_confidence_count", lv)] == 15
    assert values[("guardedmodel_gate_refusals_total", (("model", "m"),))] == 2
    assert (
        values[("guardedmodel_upstream_errors_total", (("code", "503"), ("model", "m"), ("version", "2")))]
        == 1
    )
    assert (
        values[("guardedmodel_stage_seconds_count", (("model", "m"), ("stage", "total"), ("version", "1")))]
        == 1
    )
    assert (
        values[("guardedmodel_stage_seconds_sum", (("model", "m"), ("stage", "total"), ("version", "")))]
        == 0.002
    )
    assert math.isnan(values[("guardedmodel_estimated_accuracy", lv)])  # no window closed yet

    metrics.close_windows()
    values = samples(metrics)
    assert 0.5 < values[("guardedmodel_estimated_accuracy", lv)] < 1.0
    assert values[("guardedmodel_drift_window_samples", lv)] == 15
    assert (
        values[("guardedmodel_drift_score", (("model", "m"), ("statistic", "score"), ("version", "1")))] >= 0
    )

    metrics.close_windows()  # an empty window is "no data", not "no drift"
    values = samples(metrics)
    assert math.isnan(values[("guardedmodel_estimated_accuracy", lv)])
    assert math.isnan(
        values[("guardedmodel_drift_score", (("model", "m"), ("statistic", "score"), ("version", "1")))]
    )


def test_ood_buckets_surround_the_threshold_for_either_sign() -> None:
    for threshold in (40.0, -7.5, 0.0, None):
        buckets = ood_buckets(threshold)
        assert list(buckets) == sorted(buckets)
        assert (threshold or 0.0) in buckets
