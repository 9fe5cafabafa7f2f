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

from guardedmodel_testground.chart_release import install_prometheus_operator_crds, release_leftovers
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
        "ConfigMap",
        "Deployment",
        "NetworkPolicy",
        "PodMonitor",
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
        ("scaling.idleIntervalSeconds=0", "idleIntervalSeconds"),
    ]:
        result = cluster.helm("template", "gm", CHART, "--set", value, check=False)
        assert result.returncode != 0 and fragment in result.stderr, result.stderr


def test_several_replicas_turn_on_peering(cluster: LocalCluster) -> None:
    docs = render(cluster, "ops", "replicaCount=2", "watchNamespaces={a,b}")
    kinds = [d["kind"] for d in docs]
    assert kinds.count("KopfPeering") == 2
    # the peering CRDs come from the chart's crds/, which helm installs before the templates
    crds = cluster.helm("template", "gm", CHART, "--include-crds").stdout
    assert "name: kopfpeerings.kopf.dev" in crds and "name: clusterkopfpeerings.kopf.dev" in crds
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    env = {e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["GUARDEDMODEL_PEERING_NAME"] == "guardedmodel"
    assert env["GUARDEDMODEL_NAMESPACES"] == "a,b"


@pytest.mark.parametrize("scope", ["cluster", "namespace"])
def test_operator_works_with_exactly_the_charts_rbac(
    namespace: Namespace, start_operator: Callable[..., OperatorProcess], tmp_path: Path, scope: str
) -> None:
    """Under the ClusterRole, and under only a Role in its own namespace (rbac.scope=namespace:
    kopf's cluster-wide discovery is then forbidden, and it must carry on without it)."""
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
        "--set",
        f"rbac.scope={scope}",
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
    elsewhere = cluster.kubectl(f"--kubeconfig={path}", "get", "guardedmodels", "-A", check=False)
    assert (elsewhere.returncode == 0) == (scope == "cluster"), elsewhere.stderr

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


SCENARIOS = sorted(p.name for p in (REPO / "charts" / "guardedmodel" / "ci").glob("*-values.yaml"))


def test_ci_scenarios_cover_minimal_all_features_and_single_namespace() -> None:
    assert SCENARIOS == ["all-features-values.yaml", "minimal-values.yaml", "single-namespace-values.yaml"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_ci_scenario_lints_and_renders_with_the_local_image(cluster: LocalCluster, scenario: str) -> None:
    values = f"{CHART}/ci/{scenario}"
    lint = cluster.helm("lint", CHART, "--strict", "-f", values)
    assert "0 chart(s) failed" in lint.stdout, lint.stdout
    docs = [
        d
        for d in yaml.safe_load_all(cluster.helm("template", "gm", CHART, "-n", "ops", "-f", values).stdout)
        if d
    ]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert (container["image"], container["imagePullPolicy"]) == ("guardedmodel:dev", "Never")
    kinds = {d["kind"] for d in docs}
    env = {e["name"]: e["value"] for e in container["env"]}
    if scenario == "single-namespace-values.yaml":
        # nothing cluster-wide: a Role in the release namespace, which is the one watched
        assert {"Role", "RoleBinding"} <= kinds and not kinds & {"ClusterRole", "ClusterRoleBinding"}
        assert env["GUARDEDMODEL_NAMESPACES"] == "ops"
    else:
        assert {"ClusterRole", "ClusterRoleBinding"} <= kinds and not kinds & {"Role", "RoleBinding"}
    if scenario == "all-features-values.yaml":
        assert {
            "ServiceMonitor",
            "PodMonitor",
            "PrometheusRule",
            "KopfPeering",
            "NetworkPolicy",
            "ConfigMap",
        } <= kinds


def test_single_namespace_scope_refuses_other_watched_namespaces(cluster: LocalCluster) -> None:
    result = cluster.helm(
        "template", "gm", CHART, "--set", "rbac.scope=namespace", "--set", "watchNamespaces={a}", check=False
    )
    assert result.returncode != 0 and "leave watchNamespaces empty" in result.stderr, result.stderr
    result = cluster.helm("template", "gm", CHART, "--set", "rbac.scope=global", check=False)
    assert result.returncode != 0 and "scope" in result.stderr, result.stderr


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_ci_scenario_installs_and_uninstalls_leaving_nothing_behind(
    namespace: Namespace, scenario: str
) -> None:
    """A real `helm install --wait` into the local API server (kwok runs the operator's pods),
    then `helm uninstall`: every object the release made is gone again."""
    cluster = namespace.cluster
    values = yaml.safe_load((REPO / "charts" / "guardedmodel" / "ci" / scenario).read_text())
    release = f"ci-{scenario.removesuffix('-values.yaml')}"
    namespaces = [namespace.name, *values.get("watchNamespaces", [])]
    for extra in namespaces[1:]:
        cluster.kubectl("create", "namespace", extra, check=False)
    install_prometheus_operator_crds(cluster)
    try:
        install = cluster.helm(
            "install", release, CHART, "-n", namespace.name, "-f", f"{CHART}/ci/{scenario}",
            "--wait", "--timeout", "120s", check=False,
        )  # fmt: skip
        assert "STATUS: deployed" in install.stdout, install.stderr
        replicas = values.get("replicaCount", 1)
        pods = json.loads(
            namespace.kubectl(
                "get", "pods", "-l", f"app.kubernetes.io/instance={release}", "-o", "json"
            ).stdout
        )["items"]
        assert [p["status"]["phase"] for p in pods] == ["Running"] * replicas
        assert release_leftovers(cluster, release, namespaces)
    finally:
        cluster.helm("uninstall", release, "-n", namespace.name, "--wait", check=False)
    # (the CRDs from the chart's crds/ stay, as Helm always leaves them: deleting a CRD deletes
    # every GuardedModel in the cluster)
    eventually(
        "nothing left of the release", lambda: not release_leftovers(cluster, release, namespaces), timeout=60
    )
    for extra in namespaces[1:]:
        cluster.kubectl("delete", "namespace", extra, "--wait=false", check=False)
