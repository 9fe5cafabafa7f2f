"""The chart's Grafana dashboard ConfigMap, rendered by the real helm: the dashboard file as shipped,
under the label Grafana's dashboard sidecar looks for, and the values that move or turn it off."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from guardedmodel_cli import dashboard
from guardedmodel_testground.k8s_binaries import ensure_k8s_binaries

pytestmark = pytest.mark.integration

CHART = Path(__file__).resolve().parents[3] / "charts" / "guardedmodel"
TEMPLATE = "templates/dashboard-configmap.yaml"


def helm_template(*sets: str) -> subprocess.CompletedProcess[str]:
    args = [str(ensure_k8s_binaries().helm), "template", "gm", str(CHART), "--namespace", "ops"]
    for value in sets:
        args += ["--set", value]
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def configmaps(*sets: str) -> list[dict[str, Any]]:
    result = helm_template(*sets)
    assert result.returncode == 0, result.stderr
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return [
        doc for doc in docs if doc["kind"] == "ConfigMap" and doc["metadata"]["name"].endswith("-dashboard")
    ]


def test_the_configmap_carries_the_shipped_dashboard_under_grafanas_label() -> None:
    (configmap,) = configmaps()
    assert configmap["metadata"]["name"] == "gm-guardedmodel-dashboard"
    assert configmap["metadata"]["namespace"] == "ops"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert "annotations" not in configmap["metadata"]
    (text,) = configmap["data"].values()
    assert json.loads(text) == dashboard.dashboard()


def test_label_namespace_and_annotations_follow_the_values() -> None:
    (configmap,) = configmaps(
        "dashboard.labelKey=grafana.example.com/dashboard",
        "dashboard.labelValue=yes",
        "dashboard.namespace=monitoring",
        "dashboard.annotations.grafana_folder=Models",
    )
    meta = configmap["metadata"]
    assert meta["namespace"] == "monitoring"
    assert meta["labels"]["grafana.example.com/dashboard"] == "yes"
    assert "grafana_dashboard" not in meta["labels"]
    assert meta["annotations"] == {"grafana_folder": "Models"}


def test_disabled_renders_no_dashboard() -> None:
    assert configmaps("dashboard.enabled=false") == []


@pytest.mark.parametrize(
    "value",
    [
        "dashboard.labelValue=two words",
        "dashboard.labelKey=-bad",
        "dashboard.namespace=Upper",
        "dashboard.colour=red",
    ],
)
def test_the_schema_refuses_values_kubernetes_would(value: str) -> None:
    result = helm_template(value)
    assert result.returncode != 0 and "dashboard" in result.stderr, result.stderr


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    """Each query, variables filled in, as a recording rule under promtool: the panels whose series
    do not exist yet are checked too (the live test can only run those that have data)."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found; install Debian's prometheus package (make setup does this)"
    variables = dashboard.Variables(namespace="ml", model="classifier", rate_interval="1m")
    found = list(dashboard.queries(dashboard.dashboard()))
    rules = [
        {"record": f"dashboard:query_{i}", "expr": variables.substitute(q.expr)} for i, q in enumerate(found)
    ]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    check = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"{len(found)} rules found" in check.stdout
