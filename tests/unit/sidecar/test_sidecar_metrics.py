"""Metrics: batched observations come out as parseable Prometheus text with the right numbers."""

from __future__ import annotations

import functools
import math

import numpy as np
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from guardedmodel_sidecar.guard.artifact import DriftReference
from guardedmodel_sidecar.guard.drift import DriftAccumulator
from guardedmodel_sidecar.metrics import SidecarMetrics
from guardedmodel_sidecar.version_metrics import VersionMetrics, ood_buckets


def reference() -> DriftReference:
    edges = np.linspace(0, 1, 5)
    return DriftReference(
        feature_edges=np.tile(edges, (2, 1)),
        feature_fractions=np.full((2, 4), 0.25),
        confidence_edges=edges,
        confidence_fractions=np.full(4, 0.25),
        class_fractions=np.full(3, 1 / 3),
    )


def sample_map(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus exposition by (name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def samples(metrics: SidecarMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return sample_map(generate_latest(metrics.registry).decode())


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


# ------------------------------------------------------------------ several workers, one exposition


def _version(model: str = "m", version: str = "1") -> VersionMetrics:
    return VersionMetrics(
        model, version, "energy", 2.0, DriftAccumulator(reference()), feature_dim=2, buffer_rows=8
    )


def _traffic(seed: int, into: list[SidecarMetrics]) -> None:
    """The same known requests, counted by every registry in ``into``."""
    rng = np.random.default_rng(seed)
    for i in range(12 + seed):
        rows = 1 + i % 3
        conf, pred = rng.uniform(0.3, 1.0, rows), rng.integers(0, 3, rows)
        ood, feats = rng.uniform(0.0, 4.0, rows), rng.uniform(0, 1, (rows, 2))
        latency = float(rng.uniform(0.0001, 0.05))
        for metrics in into:
            for version in ("1", "2"):
                metrics.add_version(_version(version=version))
            vm = metrics.versions["1" if i % 4 else "2"]
            vm.observe(conf, pred, ood, feats)
            vm.decisions["accept" if i % 5 else "review"] += 1
            vm.stages["total"].observe(latency)
            if i % 6 == 0:
                metrics.count_upstream_error("503", vm.version)
                metrics.gate_refusals += 1
                metrics.stages["gate"].observe(latency / 10)


def test_merged_workers_export_what_one_process_would_have() -> None:
    from guardedmodel_sidecar.cost import Prices
    from guardedmodel_sidecar.metrics_aggregate import merge, parse, render

    workers = [SidecarMetrics("m"), SidecarMetrics("m")]
    single = SidecarMetrics("m")
    _traffic(0, [workers[0], single])
    _traffic(1, [workers[1], single])
    for index, metrics in enumerate([*workers, single]):
        records, spooled = (7, 2) if metrics is single else ((3, 0), (4, 2))[index]
        metrics.audit_records = functools.partial(int, records)
        metrics.spool_depth = functools.partial(int, spooled)
        sent = {"sent": 5, "spooled": 6} if metrics is single else {"sent": 2 + index, "spooled": 3}
        metrics.review_counts = functools.partial(dict, sent)
        # Triton's own counters: every worker republishes the same numbers.
        metrics.triton_queue = {"1": (1.5, 40.0)}
        metrics.triton_compute = {"1": (7.2, 30.0)}
        metrics.cost.set_prices(Prices("EUR", gpu_hour=2.5, review=0.25))
        metrics.cost.observe_compute({"1": 7.2})
        for _ in range(5 if metrics is single else (2, 3)[index]):  # review items are each worker's own
            metrics.cost.count_review("1")
        metrics.triton_ready = True
        metrics.close_windows()

    merged = merge([parse(generate_latest(w.registry).decode()) for w in workers])
    text = render(f for f in _as_metrics(merged)).decode()
    got = sample_map(text)
    want = samples(single)
    assert set(got) == set(want)
    drift = "guardedmodel_drift_score"
    # Drift decisions are per worker window, not per pooled window: checked by their rules below.
    per_window = {drift, "guardedmodel_drift_p_value", "guardedmodel_drift_detected"}
    per_window.add("guardedmodel_drift_windows_total")
    for key, value in want.items():
        if key[0] in per_window:
            continue
        assert math.isclose(got[key], value, rel_tol=1e-9, abs_tol=1e-12) or (
            math.isnan(got[key]) and math.isnan(value)
        ), key
    # Drift: each worker's score weighted by its window's samples (the documented rule).
    per_worker = [samples(w) for w in workers]
    for (name, labels), value in got.items():
        if name != drift:
            continue
        lv = tuple(kv for kv in labels if kv[0] != "statistic")
        weights = [w[("guardedmodel_drift_window_samples", lv)] for w in per_worker]
        scores = [w[(name, labels)] for w in per_worker]
        expected = sum(w * s for w, s in zip(weights, scores, strict=True)) / sum(weights)
        assert math.isclose(value, expected, rel_tol=1e-9)
    # Each worker closed its own windows: the pod counts them all.
    for key, value in got.items():
        if key[0] == "guardedmodel_drift_windows_total":
            assert value == sum(w[key] for w in per_worker)


def _as_metrics(exposition: dict) -> list:
    from guardedmodel_sidecar.metrics_aggregate import to_metric

    return [to_metric(f) for f in exposition.values()]


def test_every_gauge_has_a_documented_merge_rule() -> None:
    """A new gauge must say how workers combine (sum, max, weighted mean) in GAUGE_RULES."""
    from guardedmodel_sidecar.metrics_aggregate import GAUGE_RULES, parse

    metrics = SidecarMetrics("m")
    _traffic(0, [metrics])
    metrics.close_windows()
    gauges = {f.name for f in parse(generate_latest(metrics.registry).decode()).values() if f.type == "gauge"}
    assert gauges and gauges <= set(GAUGE_RULES), gauges - set(GAUGE_RULES)


# ------------------------------------------------------------------ drift windows and decisions


def _rows(rng: np.random.Generator, n: int, *, drifted: bool = False) -> tuple[np.ndarray, ...]:
    """n rows of (confidence, predicted, ood, features); drifted rows sit in the lowest bins."""
    high = 0.2 if drifted else 1.0
    return (
        rng.uniform(0.0, high, n),
        rng.integers(0, 1 if drifted else 3, n),
        np.zeros(n),
        rng.uniform(0.0, high, (n, 2)),
    )


def test_a_row_count_window_closes_itself_at_the_count() -> None:
    from guardedmodel_sidecar.config_spec import DriftSpec
    from guardedmodel_sidecar.version_metrics import ClosedWindow, drift_policy

    closed: list[ClosedWindow] = []
    vm = _version()
    vm.on_window = closed.append
    vm.use_drift_policy(drift_policy(DriftSpec(window_s=None, window_rows=50, min_samples=40)))
    rng = np.random.default_rng(0)
    for _ in range(49):  # batch 1, the common request: the 50th row closes the window
        vm.observe(*(a[:1] for a in _rows(rng, 1)))
    assert not closed
    vm.observe(*(a[:1] for a in _rows(rng, 1)))
    assert [w.rows for w in closed] == [50] and closed[0].decision == "stable"
    # batches of 7: the window closes on the batch that reaches 50 rows (56, overshooting by 6)
    for _ in range(7):
        vm.observe(*_rows(rng, 7, drifted=True))
    assert [w.rows for w in closed] == [50]
    vm.observe(*_rows(rng, 7, drifted=True))
    assert [w.rows for w in closed] == [50, 56] and closed[1].decision == "drifted"
    assert closed[1].test.p_value <= 0.001 and closed[1].psi > 0.2
    # a batch larger than the buffer (8 rows) takes the direct path and still closes the window
    vm.observe(*_rows(rng, 60))
    assert [w.rows for w in closed] == [50, 56, 60]
    assert vm.drift_windows == {"drifted": 1, "stable": 2, "insufficient": 0}
    # what a scrape shows: the last window's decision and p-value, and the count of each
    values = samples(_registry(vm))
    lv = (("model", "m"), ("version", "1"))
    assert values[("guardedmodel_drift_detected", lv)] == 0.0
    assert values[("guardedmodel_drift_p_value", lv)] == closed[-1].test.p_value
    assert values[("guardedmodel_drift_windows_total", (("decision", "drifted"), *lv))] == 1
    assert values[("guardedmodel_drift_window_samples", lv)] == 60


def _registry(vm: VersionMetrics) -> SidecarMetrics:
    metrics = SidecarMetrics("m", vm.drift_policy)
    metrics.add_version(vm)
    return metrics


def test_a_time_window_waits_for_its_timer_and_small_windows_are_insufficient() -> None:
    from guardedmodel_sidecar.guard.drift_decision import DriftPolicy

    metrics = SidecarMetrics("m", DriftPolicy(alpha=0.001, min_samples=100))
    vm = _version()
    metrics.add_version(vm)
    assert vm.drift_policy.min_samples == 100  # the registry's policy applies to every version
    rng = np.random.default_rng(1)
    for _ in range(30):
        vm.observe(*_rows(rng, 3, drifted=True))
    assert vm.last_window is None  # a time window never closes by itself
    values = samples(metrics)
    lv = (("model", "m"), ("version", "1"))
    assert ("guardedmodel_drift_detected", lv) not in values  # no window closed yet: no series
    metrics.close_windows()
    values = samples(metrics)
    # 90 rows < minSamples 100: insufficient data (NaN), not drift, though PSI is large
    assert math.isnan(values[("guardedmodel_drift_detected", lv)])
    assert math.isnan(values[("guardedmodel_drift_p_value", lv)])
    assert (
        values[("guardedmodel_drift_score", (("model", "m"), ("statistic", "score"), ("version", "1")))] > 1
    )
    assert values[("guardedmodel_drift_windows_total", (("decision", "insufficient"), *lv))] == 1


def test_count_windows_are_split_between_workers_but_never_below_min_samples() -> None:
    from guardedmodel_sidecar.config_spec import DriftSpec
    from guardedmodel_sidecar.version_metrics import drift_policy

    spec = DriftSpec(window_s=None, window_rows=1000, alpha=0.002, min_samples=100)
    assert drift_policy(spec).window_rows == 1000
    four = drift_policy(spec, workers=4)
    assert (four.window_rows, four.test_alpha, four.min_samples) == (250, 0.0005, 100)
    assert drift_policy(spec, workers=32).window_rows == 100
    assert drift_policy(DriftSpec(window_s=30.0), workers=4).window_rows is None
