"""The sidecars' shadow / replay comparison counters, read through the operator's Prometheus client.

The counters run per pod, per candidate (`version`), per stable version compared with (`baseline`)
and per `source` (shadow, replay). The window reaches back to the start of the shadow phase, so the
figures cover everything compared since. A replay can finish between two scrapes: its series is then
first seen with every row already counted, so a series born inside the window counts whole
(`prometheus.increase_counting_new`).
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
    quote,
)
from .comparison import ComparisonSamples

# The sidecar's metric names (the operator must not import the sidecar package).
COUNTERS = {
    "rows": "guardedmodel_comparison_rows_total",
    "agreements": "guardedmodel_comparison_agreements_total",
    "candidate_confidence": "guardedmodel_comparison_candidate_confidence_total",
    "baseline_confidence": "guardedmodel_comparison_baseline_confidence_total",
    "candidate_ood": "guardedmodel_comparison_candidate_ood_total",
    "baseline_ood": "guardedmodel_comparison_baseline_ood_total",
}


def comparison_queries(
    settings: PrometheusSettings, namespace: str, name: str, version: str, baseline: str, window_s: float
) -> dict[str, str]:
    """PromQL per counter, grouped by source. Pure, so it is unit-tested as text."""
    sel, w = model_range(settings, namespace, name, window_s)
    sel += f',version="{quote(version)}",baseline="{quote(baseline)}"'
    return {
        figure: f"sum by (source) ({increase_counting_new(metric, sel, w)})"
        for figure, metric in COUNTERS.items()
    }


def samples_from_results(
    results: Mapping[str, list[dict[str, Any]]], version: str, baseline: str
) -> ComparisonSamples:
    """The comparison figures from the query results. Pure."""

    def by_source(figure: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for item in results.get(figure, []):
            value = float(item["value"][1])
            if math.isfinite(value):
                source = item["metric"].get("source", "")
                out[source] = out.get(source, 0.0) + value
        return out

    def total(figure: str) -> float:
        return sum(by_source(figure).values())

    return ComparisonSamples(
        version=version,
        baseline=baseline,
        rows=by_source("rows"),
        agreements=total("agreements"),
        candidate_confidence=total("candidate_confidence"),
        baseline_confidence=total("baseline_confidence"),
        candidate_ood=total("candidate_ood"),
        baseline_ood=total("baseline_ood"),
    )


async def fetch_comparison(
    source: PrometheusSource, namespace: str, name: str, version: str, baseline: str, window_s: float
) -> ComparisonSamples:
    """The comparison since the shadow phase began (`window_s` ago); on failure, `error` says why."""
    window = source.window_s(window_s)
    promql = comparison_queries(source.settings, namespace, name, version, baseline, window)
    try:
        results = await source.query_all(promql)
    except MetricsUnavailable as error:
        return ComparisonSamples(version, baseline, error=str(error))
    return samples_from_results(results, version, baseline)
