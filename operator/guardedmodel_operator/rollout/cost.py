"""status.cost: what 1,000 predictions of each version cost, from Prometheus, at spec.cost's prices.

Per version, over the check window (the canary analysis' window, read at the same checks):

  gpuSecondsPerPrediction  Triton compute seconds / predictions (rows the guard scored); on a GPU
                           GPU-seconds, on a CPU CPU-seconds (the sidecar's triton_metrics module says
                           what Triton's compute counter measures exactly)
  reviewsPerThousand       review items sent to people per 1,000 predictions
  costPerThousand          1,000 x (gpuSecondsPerPrediction / 3600 x gpuHourPrice
                                    + reviewsPerThousand / 1,000 x reviewPrice), at today's prices

A version with no prediction in the window, or no compute series yet, has no figures (a shadow candidate computes but serves
nobody: its compute shows in guardedmodel_cost_total, not here). Like status.metrics, status.cost is
for people and Prometheus keeps the record: it is rewritten only when a figure moved by COST_RATIO
or more, a version came or went, or the prices changed, so a steady model costs no status write.
Pure, except `fetch_cost`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ..prometheus import MetricsUnavailable, PrometheusSource, model_range
from ..status import merge_patch

# The sidecar's metric names (the operator must not import the sidecar package).
COMPUTE_SECONDS = "guardedmodel_triton_compute_seconds_total"
REVIEWS = "guardedmodel_reviews_total"
SAMPLES = "guardedmodel_samples_total"
# A figure is rewritten when one of its two values is this many times the other (values under the
# floor count as the floor): a short window with a missed scrape reads a steady rate a third off.
COST_RATIO = 1.5
FLOORS = {"gpuSecondsPerPrediction": 1e-6, "reviewsPerThousand": 1.0, "costPerThousand": 1e-4}
MAX_VERSIONS = 8  # the CRD's bound: stable, canary, last good and a few more never exceed it
SIGNIFICANT_DIGITS = 4


def prices_of(spec: Mapping[str, Any]) -> dict[str, Any] | None:
    """spec.cost with its defaults, or None without one."""
    cost = spec.get("cost")
    if not isinstance(cost, Mapping):
        return None
    return {
        "currency": str(cost.get("currency") or "USD"),
        "gpuHourPrice": float(cost.get("gpuHourPrice") or 0.0),
        "reviewPrice": float(cost.get("reviewPrice") or 0.0),
    }


def cost_queries(sel: str, window: str) -> dict[str, str]:
    """PromQL per figure, grouped by version. Pure."""
    return {
        # One form for all three: the sidecar exports the three series of a version together, from
        # 0, when it starts guarding it, so increase() stretches them alike to the window's edges.
        # (A young series counted whole beside ones read by increase() put the ratio a third off.)
        "compute": f"sum by (version) (increase({COMPUTE_SECONDS}{{{sel}}}[{window}]))",
        "reviews": f"sum by (version) (increase({REVIEWS}{{{sel}}}[{window}]))",
        "predictions": f"sum by (version) (increase({SAMPLES}{{{sel}}}[{window}]))",
    }


def _by_version(result: list[dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in result:
        value = float(item["value"][1])
        if math.isfinite(value):
            out[str(item["metric"].get("version", ""))] = value
    return out


def _significant(value: float) -> float:
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


def cost_status(
    results: Mapping[str, list[dict[str, Any]]], prices: Mapping[str, Any], window_s: float
) -> dict[str, Any] | None:
    """status.cost from the query results, or None when no version made a prediction. Pure."""
    compute = _by_version(results.get("compute", []))
    reviews = _by_version(results.get("reviews", []))
    predictions = _by_version(results.get("predictions", []))
    versions = []
    # No compute series yet (the sidecar has not read Triton's counters since the version's first
    # prediction) is not zero compute: such a version waits for a later check.
    for version in sorted(v for v, n in predictions.items() if n > 0 and v and v in compute):
        per_prediction = compute[version] / predictions[version]
        per_thousand = 1000.0 * reviews.get(version, 0.0) / predictions[version]
        money = (
            1000.0 * per_prediction / 3600.0 * prices["gpuHourPrice"] + per_thousand * prices["reviewPrice"]
        )
        versions.append(
            {
                "version": version,
                "gpuSecondsPerPrediction": _significant(per_prediction),
                "reviewsPerThousand": _significant(per_thousand),
                "costPerThousand": _significant(money),
            }
        )
    if not versions:
        return None
    return {
        "currency": prices["currency"],
        "window": f"{math.ceil(window_s)}s",
        "versions": versions[:MAX_VERSIONS],
    }


def cost_moved(stored: Mapping[str, Any] | None, fresh: Mapping[str, Any]) -> bool:
    """Does `fresh` say something `stored` does not (COST_RATIO, FLOORS)?"""
    if (
        not stored
        or stored.get("currency") != fresh.get("currency")
        or stored.get("window") != fresh.get("window")
    ):
        return True
    old = {v.get("version"): v for v in stored.get("versions") or []}
    new = {v["version"]: v for v in fresh["versions"]}
    if old.keys() != new.keys():
        return True
    for version, figures in new.items():
        for key, floor in FLOORS.items():
            low, high = sorted(
                (max(float(figures[key]), floor), max(float(old[version].get(key, 0.0)), floor))
            )
            if high >= COST_RATIO * low:
                return True
    return False


def cost_patch(
    status: Mapping[str, Any] | None, prices: Mapping[str, Any] | None, fresh: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """The merge patch for status.cost, or None. Without prices a stored status.cost goes; without
    fresh figures (no prediction in the window, Prometheus unreadable) the stored one stays."""
    stored = (status or {}).get("cost")
    if prices is None:
        return merge_patch(status, {"cost": None}, ["cost"])
    if fresh is None:
        return None
    price_changed = stored is not None and _priced_at(stored, prices, fresh)
    if not cost_moved(stored, fresh) and not price_changed:
        return None
    return merge_patch(status, {"cost": dict(fresh)}, ["cost"])


def _priced_at(stored: Mapping[str, Any], prices: Mapping[str, Any], fresh: Mapping[str, Any]) -> bool:
    """A price edit shows at the next check even when the figures did not move past COST_RATIO:
    the stored cost was computed at another price if the ratio cost/compute differs."""
    if stored.get("currency") != prices["currency"]:
        return True
    old = {v.get("version"): v for v in stored.get("versions") or []}
    for figures in fresh["versions"]:
        before = old.get(figures["version"])
        if before is None:
            continue
        expected = (
            1000.0 * float(before.get("gpuSecondsPerPrediction", 0.0)) / 3600.0 * prices["gpuHourPrice"]
            + float(before.get("reviewsPerThousand", 0.0)) * prices["reviewPrice"]
        )
        stored_cost = float(before.get("costPerThousand", 0.0))
        if not math.isclose(expected, stored_cost, rel_tol=1e-3, abs_tol=FLOORS["costPerThousand"] / 10):
            return True
    return False


async def fetch_cost(
    source: PrometheusSource, namespace: str, name: str, prices: Mapping[str, Any], interval_s: float
) -> dict[str, Any] | None:
    """status.cost as Prometheus has it now; None when it cannot answer (the stored figures stay)."""
    window = source.window_s(interval_s)
    sel, w = model_range(source.settings, namespace, name, window)
    try:
        results = await source.query_all(cost_queries(sel, w))
    except MetricsUnavailable:
        return None
    return cost_status(results, prices, window)
