"""Metric samples per model version for canary analysis, read through the operator's Prometheus client.

The sidecars export per-version series (see the sidecar's metrics module for the
names); `prometheus.selector` picks one GuardedModel's.

One check = twelve instant queries over the check window, each grouped by version,
so both versions of a canary come back together. Figures with no series, or too
few scrapes in the window, come back as None (no data), never as 0 — except the
error counter, which the sidecar only creates on the first error: no error series
next to live request series means no errors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ..prometheus import (
    MetricsUnavailable,
    PrometheusSettings,
    PrometheusSource,
    increase_counting_new,
    model_range,
)
from .types import MetricSamples

# The sidecar's metric names (the operator must not import the sidecar package).
REQUESTS = "guardedmodel_requests_total"
SAMPLES = "guardedmodel_samples_total"
OOD_SAMPLES = "guardedmodel_ood_samples_total"
CONFIDENCE = "guardedmodel_confidence"
DRIFT = "guardedmodel_drift_score"
DRIFT_DETECTED = "guardedmodel_drift_detected"
DRIFT_P_VALUE = "guardedmodel_drift_p_value"
UPSTREAM_ERRORS = "guardedmodel_upstream_errors_total"
STAGE_SECONDS = "guardedmodel_stage_seconds"
VERSION_LOADED = "guardedmodel_version_loaded"


def queries(settings: PrometheusSettings, namespace: str, name: str, window_s: float) -> dict[str, str]:
    """PromQL per figure, grouped by version. Pure, so it is unit-tested as text."""
    sel, w = model_range(settings, namespace, name, window_s)
    return {
        "requests": f"sum by (version, decision) (increase({REQUESTS}{{{sel}}}[{w}]))",
        "samples": f"sum by (version) (increase({SAMPLES}{{{sel}}}[{w}]))",
        "ood_samples": f"sum by (version) (increase({OOD_SAMPLES}{{{sel}}}[{w}]))",
        "confidence_sum": f"sum by (version) (increase({CONFIDENCE}_sum{{{sel}}}[{w}]))",
        "confidence_count": f"sum by (version) (increase({CONFIDENCE}_count{{{sel}}}[{w}]))",
        # The sidecar publishes drift once per drift window; NaN until a window had samples.
        # max_over_time skips NaN unless every value is NaN.
        "drift": f'max by (version) (max_over_time({DRIFT}{{{sel},statistic="score"}}[{w}]))',
        # The drift test's decision per window: 1 drifted, 0 stable, NaN too few rows (skipped).
        "drift_detected": f"max by (version) (max_over_time({DRIFT_DETECTED}{{{sel}}}[{w}]))",
        "drift_p_value": f"min by (version) (min_over_time({DRIFT_P_VALUE}{{{sel}}}[{w}]))",
        # PSI of the windows the test called drifted: both series of a window are published
        # together, so at each step of the subquery they belong to the same window.
        "drifted_score": (
            f'max by (version) (max_over_time(({DRIFT}{{{sel},statistic="score"}} and ignoring(statistic) '
            f"{DRIFT_DETECTED}{{{sel}}} == 1)[{w}:{_subquery_step(window_s)}]))"
        ),
        # The sidecar creates an error series on the first error, and increase() cannot
        # see a series' first value: a series born inside the window counts whole.
        # Series without a version label group under version="" (model-wide).
        "errors": f"sum by (version) ({increase_counting_new(UPSTREAM_ERRORS, sel, w)})",
        "p99": (
            "histogram_quantile(0.99, sum by (version, le) "
            f'(rate({STAGE_SECONDS}_bucket{{{sel},stage="total"}}[{w}])))'
        ),
        # 0 when any pod has the version routed but not loaded in Triton and guarded (now, not over
        # the window): a canary that gets no traffic because no pod could load it says so.
        "loaded": f"min by (version) ({VERSION_LOADED}{{{sel}}})",
    }


def _subquery_step(window_s: float) -> str:
    """Fine enough to see every drift window (each lasts at least a scrape), at most 600 steps."""
    return f"{max(1, math.ceil(window_s / 600))}s"


def _by_version(result: list[dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in result:
        value = float(item["value"][1])
        if math.isfinite(value):
            out[item["metric"].get("version", "")] = value
    return out


def samples_from_results(
    results: Mapping[str, list[dict[str, Any]]], version: str, window_s: float
) -> MetricSamples:
    """One version's figures from the query results. Pure."""
    requests: dict[str, dict[str, float]] = {}
    for item in results.get("requests", []):
        value = float(item["value"][1])
        if math.isfinite(value):
            labels = item["metric"]
            requests.setdefault(labels.get("version", ""), {})[labels.get("decision", "")] = value
    mine = requests.get(version)
    total = sum(mine.values()) if mine else None
    samples = _by_version(results.get("samples", [])).get(version)
    ood = _by_version(results.get("ood_samples", [])).get(version)
    conf_sum = _by_version(results.get("confidence_sum", [])).get(version)
    conf_count = _by_version(results.get("confidence_count", [])).get(version)
    drift = _by_version(results.get("drift", [])).get(version)
    drift_detected = _by_version(results.get("drift_detected", [])).get(version)
    drift_p_value = _by_version(results.get("drift_p_value", [])).get(version)
    drifted_score = _by_version(results.get("drifted_score", [])).get(version)
    loaded = _by_version(results.get("loaded", [])).get(version)
    model_wide: list[str] = []

    errors_by_version = _by_version(results.get("errors", []))
    error_rate: float | None = None
    if total is not None:
        if version in errors_by_version:
            errors = errors_by_version[version]
            error_rate = _ratio(errors, total + errors)
        elif "" in errors_by_version:
            errors = errors_by_version[""]
            every = sum(sum(d.values()) for d in requests.values())
            error_rate = _ratio(errors, every + errors)
            model_wide.append("error_rate")
        else:
            error_rate = 0.0  # the sidecar creates the error series on the first error

    p99_by_version = _by_version(results.get("p99", []))
    p99 = p99_by_version.get(version)
    if p99 is None and "" in p99_by_version and total is not None:
        p99 = p99_by_version[""]
        model_wide.append("p99_latency_ms")

    return MetricSamples(
        version=version,
        window_s=window_s,
        requests=total,
        ood_rate=_ratio(ood, samples),
        review_rate=_ratio(mine.get("review", 0.0), total) if mine and total else None,
        reject_rate=_ratio(mine.get("reject", 0.0), total) if mine and total else None,
        estimated_accuracy=_ratio(conf_sum, conf_count),
        drift_score=drift,
        drift_detected=drift_detected,
        drift_p_value=drift_p_value,
        drifted_score=drifted_score,
        error_rate=error_rate,
        p99_latency_ms=None if p99 is None else p99 * 1000.0,
        loaded=loaded,
        model_wide=tuple(model_wide),
    )


def _ratio(part: float | None, whole: float | None) -> float | None:
    if part is None or whole is None or whole <= 0:
        return None
    return part / whole


async def fetch_samples(
    source: PrometheusSource, namespace: str, name: str, versions: tuple[str, ...], interval_s: float
) -> dict[str, MetricSamples]:
    """Samples of each version over the check window; on failure every version
    gets a MetricSamples whose `error` says why (the policy holds on it)."""
    window = source.window_s(interval_s)
    promql = queries(source.settings, namespace, name, window)
    try:
        results = await source.query_all(promql)
    except MetricsUnavailable as error:
        return {v: MetricSamples(v, window, error=str(error)) for v in versions}
    return {v: samples_from_results(results, v, window) for v in versions}
