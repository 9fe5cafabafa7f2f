"""The operator's alerts, as the chart ships them (rendered by the real helm), under `promtool test rules`.

The input series are the operator's own: their names and labels are read from the operator's
metrics registry after it recorded what the case needs, then given the target labels a
ServiceMonitor scrape adds. With the endpoint's honorLabels the model's `namespace` survives that
scrape; the alerts must then name the model.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from guardedmodel_operator import metrics
from guardedmodel_testground.k8s_binaries import ensure_k8s_binaries

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "guardedmodel"
OPERATOR_NAMESPACE = "guardedmodel-system"
# What a ServiceMonitor scrape of the operator's Service adds to every series (prometheus-operator's
# target labels); `namespace` only where the series has none of its own (honorLabels).
# The chart's default metrics.prometheusRule.runbookBaseUrl.
RUNBOOKS = yaml.safe_load((CHART / "values.yaml").read_text())["metrics"]["prometheusRule"]["runbookBaseUrl"]
TARGET = {
    "job": "gm-guardedmodel",
    "instance": "10.244.0.7:9100",
    "endpoint": "metrics",
    "service": "gm-guardedmodel",
    "pod": "gm-guardedmodel-5d9c7-x2x7q",
    "container": "operator",
}


def rendered(template: str) -> dict[str, Any]:
    helm = ensure_k8s_binaries().helm
    out = subprocess.run(
        [str(helm), "template", "gm", str(CHART), "--namespace", OPERATOR_NAMESPACE,
         "--set", "metrics.prometheusRule.enabled=true", "--set", "metrics.serviceMonitor.enabled=true",
         "--show-only", f"templates/{template}"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    return dict(yaml.safe_load(out))


def exported(name: str, record: Callable[[], None]) -> list[dict[str, str]]:
    """The label sets of `name` in the operator's exposition after `record` ran."""
    record()
    found = []
    for line in generate_latest(metrics.REGISTRY).decode().splitlines():
        if line.startswith(name + "{"):
            body = line[len(name) + 1 : line.rindex("}")]
            pairs = (item.split("=", 1) for item in body.split('",') if item)
            found.append({key: value.strip('"') for key, value in pairs})
    return found


def scraped(name: str, labels: dict[str, str], honor_labels: bool) -> str:
    """The series as Prometheus stores it after the ServiceMonitor's scrape."""
    merged = {**TARGET, **labels}
    if "namespace" in labels and not honor_labels:
        merged["exported_namespace"] = labels["namespace"]
    if "namespace" not in labels or not honor_labels:
        merged["namespace"] = OPERATOR_NAMESPACE
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(merged.items())) + "}"


def promtool_test(tmp_path: Path, cases: list[dict[str, Any]]) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found; install Debian's prometheus package (make setup does this)"
    rules = tmp_path / "operator-rules.yaml"
    groups = rendered("prometheusrule.yaml")["spec"]["groups"]
    rules.write_text(yaml.safe_dump({"groups": [g for g in groups if g["name"] == "guardedmodel-operator"]}))
    check = subprocess.run(
        [promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0 and "3 rules found" in check.stdout, check.stdout + check.stderr
    test = tmp_path / "operator-alerts-test.yaml"
    test.write_text(yaml.safe_dump({"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": cases}))
    result = subprocess.run(
        [promtool, "test", "rules", str(test)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_operator_servicemonitor_honours_the_operators_labels() -> None:
    (endpoint,) = rendered("servicemonitor.yaml")["spec"]["endpoints"]
    assert endpoint["honorLabels"] is True


def test_not_healthy_names_each_unhealthy_model(tmp_path: Path) -> None:
    phase = "guardedmodel_operator_model_phase"
    honor = rendered("servicemonitor.yaml")["spec"]["endpoints"][0]["honorLabels"]

    def series(namespace: str, name: str, state: str) -> str:
        (labels,) = [
            labels
            for labels in exported(phase, lambda: metrics.publish_model_phase(namespace, name, None, state))
            if (labels["namespace"], labels["name"]) == (namespace, name)
        ]
        metrics.publish_model_phase(namespace, name, state, None)
        return scraped(phase, labels, honor)

    def alert(namespace: str, name: str, state: str) -> dict[str, Any]:
        return {
            "exp_labels": {"severity": "critical", "namespace": namespace, "name": name, "phase": state},
            "exp_annotations": {
                "summary": f"GuardedModel {namespace}/{name} is {state}",
                "description": (
                    f"It has been {state} for 10 minutes. `kubectl describe gm -n {namespace} {name}` "
                    "shows its Degraded condition and the events that say why."
                ),
                "runbook_url": f"{RUNBOOKS}/GuardedModelNotHealthy.md",
            },
        }

    promtool_test(
        tmp_path,
        [
            {
                "interval": "1m",
                "input_series": [
                    # ml/clf turns Degraded at minute 5 and stays; ml/ok stays Ready; team/batch is
                    # Failed for 5 minutes only (shorter than `for`), then Ready; ops/gone is
                    # Failed from minute 0 (two models in two namespaces: both are named).
                    {"series": series("ml", "clf", "Ready"), "values": "1x4 _x26"},
                    {"series": series("ml", "clf", "Degraded"), "values": "_x4 1x26"},
                    {"series": series("ml", "ok", "Ready"), "values": "1x30"},
                    {"series": series("team", "batch", "Failed"), "values": "1x4 _x26"},
                    {"series": series("team", "batch", "Ready"), "values": "_x4 1x26"},
                    {"series": series("ops", "gone", "Failed"), "values": "1x30"},
                ],
                "alert_rule_test": [
                    {"eval_time": "8m", "alertname": "GuardedModelNotHealthy", "exp_alerts": []},
                    {
                        "eval_time": "11m",
                        "alertname": "GuardedModelNotHealthy",
                        "exp_alerts": [alert("ops", "gone", "Failed")],
                    },
                    {
                        "eval_time": "20m",
                        "alertname": "GuardedModelNotHealthy",
                        "exp_alerts": [alert("ml", "clf", "Degraded"), alert("ops", "gone", "Failed")],
                    },
                ],
            }
        ],
    )


def test_reconcile_errors_and_slow_reconciles_fire_only_when_sustained(tmp_path: Path) -> None:
    honor = rendered("servicemonitor.yaml")["spec"]["endpoints"][0]["honorLabels"]
    errors = "guardedmodel_operator_reconcile_errors_total"
    (error_labels,) = exported(errors, lambda: metrics.RECONCILE_ERRORS.labels(error="ApiError").inc())
    buckets = "guardedmodel_operator_reconcile_duration_seconds_bucket"
    bucket_labels = exported(buckets, lambda: metrics.RECONCILE_SECONDS.observe(0.01))
    # Reconciles: all fast for 10 minutes, then 1 in 10 takes 7 s for 30 minutes, then fast again.
    # Per minute 100 reconciles; a cumulative bucket grows by the reconciles at or under its bound.
    fast = {labels["le"]: 100 for labels in bucket_labels if float(labels["le"]) >= 0.01}
    slow = {le: (90 if float(le) < 7 else 100) for le in fast}

    def bucket_values(le: str) -> str:
        if le not in fast:
            return "0x60"
        total, values = 0, []
        for minute in range(61):
            values.append(str(total))
            total += slow[le] if 10 <= minute < 40 else fast[le]
        return " ".join(values)

    rules = {
        r["alert"]: r
        for g in rendered("prometheusrule.yaml")["spec"]["groups"]
        for r in g["rules"]
        if "alert" in r
    }

    def fired(alert: str) -> list[dict[str, Any]]:
        # no labels but the severity: both sum over the operator's series (no model to name)
        return [{"exp_labels": {"severity": "warning"}, "exp_annotations": rules[alert]["annotations"]}]

    bucket_series = [
        {"series": scraped(buckets, labels, honor), "values": bucket_values(labels["le"])}
        for labels in bucket_labels
    ]
    promtool_test(
        tmp_path,
        [
            {
                "interval": "1m",
                "input_series": [
                    # errors at minutes 0-4 only (a restart's hiccup: shorter than `for`), then from
                    # minute 22 on
                    {"series": scraped(errors, error_labels, honor), "values": "0+1x4 4x15 4+2x40"},
                    *bucket_series,
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "14m",
                        "alertname": "GuardedModelOperatorReconcileErrors",
                        "exp_alerts": [],
                    },
                    {
                        "eval_time": "34m",
                        "alertname": "GuardedModelOperatorReconcileErrors",
                        "exp_alerts": [],
                    },
                    {
                        "eval_time": "38m",
                        "alertname": "GuardedModelOperatorReconcileErrors",
                        "exp_alerts": fired("GuardedModelOperatorReconcileErrors"),
                    },
                    {"eval_time": "20m", "alertname": "GuardedModelOperatorSlowReconciles", "exp_alerts": []},
                    {
                        "eval_time": "30m",
                        "alertname": "GuardedModelOperatorSlowReconciles",
                        "exp_alerts": fired("GuardedModelOperatorSlowReconciles"),
                    },
                    {"eval_time": "58m", "alertname": "GuardedModelOperatorSlowReconciles", "exp_alerts": []},
                ],
            }
        ],
    )
