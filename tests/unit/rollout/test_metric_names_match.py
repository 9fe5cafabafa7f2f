"""Every metric the operator's PromQL reads is one something exports.

The operator may not import the sidecar, so it spells the sidecar's metric names out
(rollout analysis, the scaler's queue time, the chart's alert rules). A renamed sidecar
metric would leave those queries silently empty: canaries holding for "no data", a scaler
that never scales, alerts that never fire. This test holds both sides against each other.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from guardedmodel_operator.metrics import REGISTRY as OPERATOR_REGISTRY
from guardedmodel_operator.prometheus import PrometheusSettings, model_range
from guardedmodel_operator.rollout import metrics as rollout_metrics
from guardedmodel_operator.rollout.comparison_source import comparison_queries
from guardedmodel_operator.rollout.cost import cost_queries
from guardedmodel_operator.rollout.metrics_source import queries as rollout_queries
from guardedmodel_operator.scaling import metrics as scaling_metrics
from guardedmodel_operator.scaling.controller import queries as scaling_queries
from guardedmodel_operator.scaling.idle_controller import requests_query as idle_query
from guardedmodel_sidecar.audit_export import ExportStats
from guardedmodel_sidecar.comparison import ComparisonCounts
from guardedmodel_sidecar.cost import Prices
from guardedmodel_sidecar.guard.artifact import DriftReference
from guardedmodel_sidecar.guard.drift import DriftAccumulator
from guardedmodel_sidecar.metrics import SidecarMetrics
from guardedmodel_sidecar.version_metrics import VersionMetrics

REPO = Path(__file__).resolve().parents[3]
ALERTS = REPO / "charts" / "guardedmodel" / "files" / "alerts.yaml"
COST_RULES = REPO / "charts" / "guardedmodel" / "files" / "cost-rules.yaml"
# Importing these registers the controllers' metrics on the operator's registry.
OPERATOR_METRIC_MODULES = (rollout_metrics, scaling_metrics)
# Triton's own metrics (nv_inference_*, nv_gpu_*) are exported by Triton, not by this project.
TRITON_PREFIX = "nv_"

# Series names each metric type exposes, after the OpenMetrics/Prometheus conventions.
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "gauge": ("",),
    "stateset": ("",),
    "unknown": ("",),
}

# What PromQL itself spells with identifiers: aggregations, functions, operators, keywords.
_PROMQL_WORDS = frozenset(
    [
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "offset",
        "and",
        "or",
        "unless",
        "atan2",
        "abs",
        "absent",
        "absent_over_time",
        "ceil",
        "changes",
        "clamp",
        "clamp_max",
        "clamp_min",
        "day_of_month",
        "day_of_week",
        "day_of_year",
        "days_in_month",
        "delta",
        "deriv",
        "exp",
        "floor",
        "histogram_avg",
        "histogram_count",
        "histogram_fraction",
        "histogram_quantile",
        "histogram_stddev",
        "histogram_stdvar",
        "histogram_sum",
        "holt_winters",
        "hour",
        "idelta",
        "increase",
        "irate",
        "label_join",
        "label_replace",
        "ln",
        "log2",
        "log10",
        "minute",
        "month",
        "predict_linear",
        "rate",
        "resets",
        "round",
        "scalar",
        "sgn",
        "sort",
        "sort_desc",
        "sort_by_label",
        "sort_by_label_desc",
        "sqrt",
        "time",
        "timestamp",
        "vector",
        "year",
        "avg_over_time",
        "min_over_time",
        "max_over_time",
        "sum_over_time",
        "count_over_time",
        "quantile_over_time",
        "stddev_over_time",
        "stdvar_over_time",
        "last_over_time",
        "present_over_time",
        "mad_over_time",
        "inf",
        "nan",
    ]
)


def _series_names(text: str) -> set[str]:
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def _reference() -> DriftReference:
    edges = np.linspace(0, 1, 5)
    return DriftReference(
        feature_edges=np.tile(edges, (2, 1)),
        feature_fractions=np.full((2, 4), 0.25),
        confidence_edges=edges,
        confidence_fractions=np.full(4, 0.25),
        class_fractions=np.full(3, 1 / 3),
    )


def sidecar_series() -> set[str]:
    """What a sidecar serving one version exports, after a request and an upstream error, following
    its GuardedModel's routing."""
    metrics = SidecarMetrics("m")
    version = VersionMetrics(
        "m", "1", "energy", 2.0, DriftAccumulator(_reference()), feature_dim=2, buffer_rows=8
    )
    metrics.add_version(version)
    version.decisions["accept"] += 1
    metrics.count_upstream_error("503", "1")
    metrics.count_comparison("2", "1", "shadow", ComparisonCounts(rows=1, agreements=1))
    metrics.version_roles = lambda: [("1", "stable", True), ("2", "shadow", True)]
    metrics.routing_watch = lambda: (True, 0)
    metrics.audit_export = lambda: ({"records": ExportStats(), "samples": ExportStats()}, 1.0)
    metrics.triton_compute = {"1": (0.5, 10.0)}
    metrics.cost.set_prices(Prices(gpu_hour=2.5, review=0.1))
    metrics.cost.observe_compute({"1": 0.5})
    metrics.cost.count_review("1")
    metrics.close_windows()
    return _series_names(generate_latest(metrics.registry).decode())


def operator_series() -> set[str]:
    return _series_names(generate_latest(OPERATOR_REGISTRY).decode())


def metric_names(promql: str) -> set[str]:
    """The metric names a PromQL expression reads: every identifier that is not PromQL's own,
    once label matchers, groupings, ranges and strings are taken out."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", promql)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
    text = re.sub(r"\boffset\s+\w+", "", text)
    words = re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", text)
    return {w for w in words if w.lower() not in _PROMQL_WORDS}


def operator_promql() -> dict[str, str]:
    """Every PromQL the operator and its chart send, by where it comes from."""
    settings = PrometheusSettings(url="http://prometheus")
    found = {f"rollout {k}": q for k, q in rollout_queries(settings, "ml", "clf", 60.0).items()}
    found.update({f"scaling {k}": q for k, q in scaling_queries(settings, "ml", "clf", 60.0).items()})
    found.update(
        {f"comparison {k}": q for k, q in comparison_queries(settings, "ml", "clf", "2", "1", 60.0).items()}
    )
    found["idle requests"] = idle_query(settings, "ml", "clf", 60.0)
    found.update({f"cost {k}": q for k, q in cost_queries(*model_range(settings, "ml", "clf", 60.0)).items()})
    for rules in (ALERTS, COST_RULES):
        for group in yaml.safe_load(rules.read_text())["groups"]:
            for rule in group["rules"]:
                found[f"alert {rule.get('alert') or rule.get('record')}"] = str(rule["expr"])
    return found


def unknown(names: Iterable[str], known: set[str]) -> list[str]:
    return sorted(n for n in names if n not in known and not n.startswith(TRITON_PREFIX))


def test_the_name_parser_finds_metrics_and_skips_promql() -> None:
    promql = (
        'histogram_quantile(0.99, sum by (version, le) (rate(a_seconds_bucket{x="y",stage="total"}[60s])))'
        " / ignoring(code) (b_total unless b_total offset 60s) or increase(c_total[5m]) > 0.2"
    )
    assert metric_names(promql) == {"a_seconds_bucket", "b_total", "c_total"}


def test_both_sides_export_what_they_should() -> None:
    sidecar = sidecar_series()
    assert {
        "guardedmodel_requests_total",
        "guardedmodel_confidence_sum",
        "guardedmodel_stage_seconds_bucket",
        "guardedmodel_drift_detected",  # the drift decision the rollout check and the alert read
        "guardedmodel_drift_p_value",
    } <= sidecar
    assert "guardedmodel_operator_rollbacks_total" in operator_series()


def test_every_metric_the_operator_queries_is_exported() -> None:
    known = sidecar_series() | operator_series()
    queried = operator_promql()
    assert any(k.startswith("alert ") for k in queried) and any(k.startswith("scaling ") for k in queried)
    missing = {where: unknown(metric_names(q), known) for where, q in queried.items()}
    assert {where: names for where, names in missing.items() if names} == {}
    assert all(metric_names(q) for q in queried.values()), "every query reads at least one metric"
