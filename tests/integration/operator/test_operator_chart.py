"""The Helm chart, rendered by the real helm and checked by the real API server;
then the operator runs with exactly the chart's RBAC (its ServiceAccount's
token) and must still bring a GuardedModel to Ready."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from gm_operator_helpers import REPO, Namespace, OperatorProcess, eventually, minimal_example

from guardedmodel_testground.cluster import LocalCluster

pytestmark = pytest.mark.integration

CHART = str(REPO / "charts" / "guardedmodel")


def render(cluster: LocalCluster, namespace: str, *sets: str) -> list[dict]:
    args = ["template", "gm", CHART, "--namespace", namespace]
    for value in sets:
        args += ["--set", value]
    return [doc for doc in yaml.safe_load_all(cluster.helm(*args).stdout) if doc]


def test_chart_lints_and_renders_one_resource_per_template(cluster: LocalCluster) -> None:
    lint = cluster.helm("lint", CHART, "--strict")
    assert "0 chart(s) failed" in lint.stdout
    kinds = sorted(
        d["kind"]
        for d in render(
            cluster, "ops", "metrics.serviceMonitor.enabled=true", "metrics.prometheusRule.enabled=true"
        )
    )
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "NetworkPolicy",
        "PrometheusRule",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    ]
    for doc in render(cluster, "ops"):
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "guardedmodel-operator"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"


def test_values_schema_refuses_bad_values(cluster: LocalCluster) -> None:
    for value, fragment in [
        ("logFormat=xml", "logFormat"),
        ("replicaCount=0", "replicaCount"),
        ("workerLimit=0", "workerLimit"),
        ("scaling.intervalSeconds=0", "intervalSeconds"),
    ]:
        result = cluster.helm("template", "gm", CHART, "--set", value, check=False)
        assert result.returncode != 0 and fragment in result.stderr, result.stderr


def test_several_replicas_turn_on_peering(cluster: LocalCluster) -> None:
    docs = render(cluster, "ops", "replicaCount=2", "watchNamespaces={a,b}")
    kinds = [d["kind"] for d in docs]
    assert kinds.count("KopfPeering") == 2 and kinds.count("CustomResourceDefinition") == 2
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    env = {e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["GUARDEDMODEL_PEERING_NAME"] == "guardedmodel"
    assert env["GUARDEDMODEL_NAMESPACES"] == "a,b"


def test_operator_works_with_exactly_the_charts_rbac(
    namespace: Namespace, start_operator: Callable[..., OperatorProcess], tmp_path: Path
) -> None:
    cluster = namespace.cluster
    release = f"gm-{namespace.name}"[:40]
    install = cluster.helm(
        "install",
        release,
        CHART,
        "--namespace",
        namespace.name,
        "--set",
        "logFormat=text",
        "--wait",
        "--timeout",
        "120s",
    )
    assert "STATUS: deployed" in install.stdout
    # the chart's operator pod is scheduled and Running (kwok plays the kubelet)
    pods = json.loads(
        namespace.kubectl(
            "get", "pods", "-l", "app.kubernetes.io/name=guardedmodel-operator", "-o", "json"
        ).stdout
    )
    assert [p["status"]["phase"] for p in pods["items"]] == ["Running"]
    account = f"{release}-guardedmodel" if "guardedmodel" not in release else release
    token = namespace.kubectl("create", "token", account, "--duration=1h").stdout.strip()
    kubeconfig = yaml.safe_load(cluster.kubeconfig.read_text())
    kubeconfig["users"][0]["user"] = {"token": token}
    path = tmp_path / "operator-kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig))
    # the same identity kubectl sees: it may not do more than the chart grants
    denied = cluster.kubectl(f"--kubeconfig={path}", "get", "secrets", "-n", namespace.name, check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()

    start_operator(namespace.name, kubeconfig=path)
    namespace.apply(minimal_example())
    gm = eventually(
        "Ready under the chart's RBAC",
        lambda: (
            (g := namespace.get("guardedmodel", "classifier"))
            and g.get("status", {}).get("phase") == "Ready"
            and g
        ),
        timeout=90,
    )
    assert gm["status"]["stableVersion"] == "1"
    cluster.helm("uninstall", release, "--namespace", namespace.name)
