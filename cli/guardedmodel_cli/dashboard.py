"""The Grafana dashboard the chart ships, generated from the panel list below.

    python -m guardedmodel_cli.dashboard           # write charts/guardedmodel/files/dashboard.json
    python -m guardedmodel_cli.dashboard --check   # exit 1 if the file differs from this code

Every query reads real series: the sidecar's (`guardedmodel_*`, with the `namespace` and
`guardedmodel_io_name` labels a pod scrape adds, as files/alerts.yaml groups them) or the
operator's (`guardedmodel_operator_*`, labelled with the model's own `namespace` and `name`,
which the ServiceMonitor's honorLabels keeps). The template variables are `datasource`,
`namespace` and `model` (the GuardedModel's name).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guardedmodel_testground.paths import repo_root

UID = "guardedmodel"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Selectors of one model's series: the sidecar's (pod scrape labels) and the operator's (its own).
POD = 'namespace=~"$namespace", guardedmodel_io_name=~"$model"'
OPERATOR = 'namespace=~"$namespace", name=~"$model"'
RATE = "$__rate_interval"
GRID_WIDTH = 24


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    targets: tuple[Target, ...]
    unit: str = "short"
    width: int = 12
    height: int = 8
    min: float | None = None
    max: float | None = None
    stacked: bool = False


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class Annotation:
    name: str
    expr: str
    title: str  # Grafana's titleFormat: {{label}} placeholders
    text: str
    color: str


@dataclass(frozen=True)
class Query:
    """One query of the dashboard as Grafana would send it (for tests and the PNG)."""

    panel: str
    legend: str
    expr: str
    annotation: bool = False


@dataclass(frozen=True)
class Variables:
    """Values for the template variables; `rate_interval` stands in for Grafana's $__rate_interval."""

    namespace: str
    model: str
    rate_interval: str = "1m"
    extra: Mapping[str, str] = field(default_factory=dict)

    def substitute(self, expr: str) -> str:
        values = {"$__rate_interval": self.rate_interval, "$namespace": self.namespace, "$model": self.model}
        values.update(self.extra)
        # Longest first, so $__rate_interval is not cut by a shorter name.
        for name in sorted(values, key=len, reverse=True):
            expr = expr.replace(name, values[name])
        return expr


def _rate(metric: str, by: str, selector: str = POD) -> str:
    return f"sum by ({by}) (rate({metric}{{{selector}}}[{RATE}]))"


def _ratio(numerator: str, denominator: str, by: str, numerator_selector: str = POD) -> str:
    return f"{_rate(numerator, by, numerator_selector)}\n/\n{_rate(denominator, by)}"


def _new_or_increased(metric: str, selector: str) -> str:
    # A counter is born at its first increment and increase() cannot see a series' first value:
    # a series that is new within the interval counts too (as the chart's rollback alert does).
    series = f"{metric}{{{selector}}}"
    return f"(increase({series}[{RATE}]) > 0)\nor\n({series} unless {series} offset {RATE})"


def _changed(metric: str, selector: str) -> str:
    series = f"{metric}{{{selector}}}"
    return f"{series}\nand\n((changes({series}[{RATE}]) > 0) or ({series} unless {series} offset {RATE}))"


ROWS: tuple[Row, ...] = (
    Row(
        "Traffic",
        (
            Panel(
                "Requests by decision",
                "Requests per second by guard decision and version (a request counts as the worst of "
                "its rows). Refused: requests the input gate refused (malformed, out of range; those "
                "routed to a version also count as reject there) and requests refused at "
                "limits.maxInflightRequests.",
                (
                    Target(
                        _rate("guardedmodel_requests_total", "version, decision"), "v{{version}} {{decision}}"
                    ),
                    Target(
                        f"sum(rate(guardedmodel_gate_refusals_total{{{POD}}}[{RATE}]))", "refused: input gate"
                    ),
                    Target(
                        f"sum(rate(guardedmodel_overload_refusals_total{{{POD}}}[{RATE}]))",
                        "refused: overload",
                    ),
                ),
                unit="reqps",
                width=24,
                stacked=True,
            ),
        ),
    ),
    Row(
        "Model quality",
        (
            Panel(
                "Calibrated confidence and estimated accuracy",
                "Mean and 10th percentile of the calibrated confidence per sample, and the sidecar's "
                "estimated accuracy (mean calibrated confidence of its last window). The chart's "
                "GuardedModelLowEstimatedAccuracy alert fires below 0.7.",
                (
                    Target(
                        _ratio("guardedmodel_confidence_sum", "guardedmodel_confidence_count", "version"),
                        "v{{version}} mean confidence",
                    ),
                    Target(
                        "histogram_quantile(0.1, "
                        + _rate("guardedmodel_confidence_bucket", "version, le")
                        + ")",
                        "v{{version}} p10 confidence",
                    ),
                    Target(
                        f"max by (version) (guardedmodel_estimated_accuracy{{{POD}}})",
                        "v{{version}} estimated accuracy",
                    ),
                ),
                unit="percentunit",
                min=0,
                max=1,
            ),
            Panel(
                "OOD rate",
                "Share of samples whose OOD score is above the threshold, per version. The "
                "GuardedModelOodRateHigh alert fires above 25 %.",
                (
                    Target(
                        _ratio("guardedmodel_ood_samples_total", "guardedmodel_samples_total", "version"),
                        "v{{version}} OOD",
                    ),
                ),
                unit="percentunit",
                min=0,
                max=1,
            ),
            Panel(
                "Drift score",
                "PSI of the last drift window against the reference (how far; the per-feature and "
                "confidence statistics are the other values of guardedmodel_drift_score's statistic "
                "label), and the p-value of its test (whether: drifted at or below spec.drift.alpha). "
                "GuardedModelDriftHigh fires when the test says drifted and the PSI is above 0.2.",
                (
                    Target(
                        f'max by (version) (guardedmodel_drift_score{{{POD}, statistic="score"}})',
                        "v{{version}} PSI",
                    ),
                    Target(f"min by (version) (guardedmodel_drift_p_value{{{POD}}})", "v{{version}} p-value"),
                ),
                min=0,
            ),
            Panel(
                "Drift windows",
                "Drift windows closed per minute by the test's decision: drifted, stable, or "
                "insufficient (fewer rows than spec.drift.minSamples).",
                (
                    Target(
                        "60 * " + _rate("guardedmodel_drift_windows_total", "version, decision"),
                        "v{{version}} {{decision}}",
                    ),
                ),
                unit="short",
                stacked=True,
            ),
        ),
    ),
    Row(
        "Latency and capacity",
        (
            Panel(
                "Latency per stage",
                "p50 and p99 of the sidecar's stages per request: gate, model (Triton), scorer and "
                "total, per version.",
                tuple(
                    Target(
                        f"histogram_quantile({q}, "
                        + _rate("guardedmodel_stage_seconds_bucket", "version, stage, le")
                        + ")",
                        f"v{{{{version}}}} {{{{stage}}}} p{int(q * 100)}",
                    )
                    for q in (0.5, 0.99)
                ),
                unit="s",
                width=24,
            ),
            Panel(
                "Triton queue time per request",
                "Mean time a request waited in Triton's queue, as Triton reports it: the scaler's "
                "signal (spec.scaling.targetQueueTimeMs).",
                (
                    Target(
                        _ratio(
                            "guardedmodel_triton_queue_seconds_total",
                            "guardedmodel_triton_requests_total",
                            "version",
                        ),
                        "v{{version}} queue",
                    ),
                ),
                unit="s",
            ),
            Panel(
                "Replicas",
                "Pods whose Triton answers ready, the replicas the scaler asks for (only models with "
                "spec.replicas.max above min are scaled), and 1 while the scaler is saturated at "
                "spec.replicas.max.",
                (
                    Target(f"count(guardedmodel_triton_ready{{{POD}}} == 1)", "pods with Triton ready"),
                    Target(f"max(guardedmodel_operator_desired_replicas{{{OPERATOR}}})", "desired (scaler)"),
                    Target(
                        f"max(guardedmodel_operator_scaling_saturated{{{OPERATOR}}})",
                        "saturated at replicas.max",
                    ),
                ),
                min=0,
            ),
        ),
    ),
    Row(
        "Review and cost",
        (
            Panel(
                "Review backlog",
                "Review items waiting in the sidecars' durable spools (they grow while the webhook "
                "does not take them), and review items per second by outcome.",
                (
                    Target(f"sum(guardedmodel_review_spool_items{{{POD}}})", "waiting in the spool"),
                    Target(_rate("guardedmodel_review_items_total", "outcome"), "{{outcome}} /s"),
                ),
                min=0,
            ),
            Panel(
                "Reviews per 1,000 predictions",
                "Review items sent to people per 1,000 rows scored (a prediction is one row): what "
                "spec.cost charges and status.cost reports. One item carries every row of its request "
                "that scored below the threshold; those rows are the second line.",
                (
                    Target(
                        "1000 * "
                        + _ratio("guardedmodel_reviews_total", "guardedmodel_samples_total", "version"),
                        "v{{version}} items",
                    ),
                    Target(
                        "1000 * "
                        + _ratio(
                            "guardedmodel_row_decisions_total",
                            "guardedmodel_samples_total",
                            "version",
                            numerator_selector=POD + ', decision="review"',
                        ),
                        "v{{version}} rows below the threshold",
                    ),
                ),
                min=0,
            ),
            Panel(
                "Cost per 1,000 predictions",
                "Money per 1,000 rows scored, in spec.cost's currency: Triton compute priced at the "
                "GPU-hour and reviews priced per item (only models with spec.cost set).",
                (
                    Target(
                        "1000 * "
                        + _rate("guardedmodel_cost_total", "version, source")
                        + "\n/ ignoring(source) group_left\n"
                        + _rate("guardedmodel_samples_total", "version"),
                        "v{{version}} {{source}}",
                    ),
                ),
                unit="currencyUSD",
                min=0,
                stacked=True,
            ),
            Panel(
                "GPU-seconds per prediction",
                "Triton compute time (input, inference and output, as Triton reports it) per row scored.",
                (
                    Target(
                        _ratio(
                            "guardedmodel_triton_compute_seconds_total",
                            "guardedmodel_samples_total",
                            "version",
                        ),
                        "v{{version}}",
                    ),
                ),
                unit="s",
                min=0,
            ),
            Panel(
                "Configured prices",
                "The prices spec.cost sets: per GPU-hour and per review.",
                (Target(f"max by (source) (guardedmodel_cost_price{{{POD}}})", "{{source}}"),),
                unit="currencyUSD",
                min=0,
            ),
        ),
    ),
)

ANNOTATIONS: tuple[Annotation, ...] = (
    Annotation(
        "Rollout steps",
        _changed("guardedmodel_operator_canary_weight", OPERATOR),
        "canary weight changed",
        "{{namespace}}/{{name}}",
        "blue",
    ),
    Annotation(
        "Rollbacks",
        _new_or_increased("guardedmodel_operator_rollbacks_total", OPERATOR),
        "rolled back version {{version}}",
        "{{namespace}}/{{name}}",
        "red",
    ),
)


def _variables() -> list[dict[str, Any]]:
    def label_values(name: str, query: str) -> dict[str, Any]:
        return {
            "name": name,
            "label": name.capitalize(),
            "type": "query",
            "datasource": DATASOURCE,
            "definition": query,
            "query": {"query": query, "refId": f"{name}-values"},
            "refresh": 2,  # on time range change: new models appear
            "includeAll": True,
            "allValue": ".*",
            "multi": True,
            "sort": 1,
            "current": {},
        }

    return [
        {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "hide": 0,
        },
        label_values("namespace", "label_values(guardedmodel_requests_total, namespace)"),
        label_values(
            "model",
            'label_values(guardedmodel_requests_total{namespace=~"$namespace"}, guardedmodel_io_name)',
        ),
    ]


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "unit": panel.unit,
        "custom": {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 10,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "normal" if panel.stacked else "none", "group": "A"},
        },
    }
    if panel.min is not None:
        defaults["min"] = panel.min
    if panel.max is not None:
        defaults["max"] = panel.max
    return {
        "id": panel_id,
        "type": "timeseries",
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": [
            {
                "refId": chr(ord("A") + index),
                "datasource": DATASOURCE,
                "expr": target.expr,
                "legendFormat": target.legend,
                "range": True,
            }
            for index, target in enumerate(panel.targets)
        ],
    }


def _layout(rows: tuple[Row, ...]) -> list[dict[str, Any]]:
    """Rows one under the other; a row's panels left to right, wrapping at the grid's width."""
    panels: list[dict[str, Any]] = []
    next_id, y = 1, 0
    for row in rows:
        panels.append(
            {
                "id": next_id,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": y},
                "panels": [],
            }
        )
        next_id, y = next_id + 1, y + 1
        x, line_height = 0, 0
        for panel in row.panels:
            if x + panel.width > GRID_WIDTH:
                x, y, line_height = 0, y + line_height, 0
            panels.append(_panel_json(panel, next_id, x, y))
            next_id += 1
            x += panel.width
            line_height = max(line_height, panel.height)
        y += line_height
    return panels


def _annotations_json() -> list[dict[str, Any]]:
    builtin = {
        "builtIn": 1,
        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
        "enable": True,
        "hide": True,
        "iconColor": "rgba(0, 211, 255, 1)",
        "name": "Annotations & Alerts",
        "type": "dashboard",
    }
    return [
        builtin,
        *(
            {
                "name": annotation.name,
                "datasource": DATASOURCE,
                "enable": True,
                "iconColor": annotation.color,
                "expr": annotation.expr,
                "step": "30s",
                "titleFormat": annotation.title,
                "textFormat": annotation.text,
                "tagKeys": "namespace,name,version",
                "useValueForTime": False,
            }
            for annotation in ANNOTATIONS
        ),
    ]


def dashboard() -> dict[str, Any]:
    return {
        "uid": UID,
        "title": "GuardedModel",
        "description": "Guarded models: decisions, confidence, OOD and drift, rollouts, latency, "
        "Triton queue and replicas, review backlog and cost.",
        "tags": ["guardedmodel"],
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "timezone": "browser",
        "templating": {"list": _variables()},
        "annotations": {"list": _annotations_json()},
        "panels": _layout(ROWS),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def queries(document: Mapping[str, Any]) -> Iterator[Query]:
    """Every panel target and annotation query of a dashboard document, with its panel's title."""
    for panel in document["panels"]:
        for target in panel.get("targets", []):
            yield Query(panel["title"], target["legendFormat"], target["expr"])
    for annotation in document["annotations"]["list"]:
        if "expr" in annotation:
            yield Query(annotation["name"], annotation["titleFormat"], annotation["expr"], annotation=True)


def shipped_path() -> Path:
    return repo_root() / "charts" / "guardedmodel" / "files" / "dashboard.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report whether the file is current")
    parser.add_argument("--path", type=Path, help="the file to write or check (default: the chart's copy)")
    args = parser.parse_args(argv)
    path = args.path or shipped_path()
    wanted = render()
    if args.check:
        if not path.exists() or path.read_text() != wanted:
            print(
                f"{path} differs from guardedmodel_cli.dashboard; run: python -m guardedmodel_cli.dashboard"
            )
            return 1
        return 0
    path.write_text(wanted)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
