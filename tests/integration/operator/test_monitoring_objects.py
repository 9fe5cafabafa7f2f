"""The chart's monitoring objects against prometheus-operator's own CRD schemas.

The ServiceMonitor, PodMonitor and PrometheusRule, rendered by the real helm for each way the
chart can be set up, must be accepted by an API server serving prometheus-operator's released
CRDs (`kubectl apply --dry-run=server`: the full OpenAPI validation, nothing stored); a broken
object must be refused, so that the check can fail. The PodMonitor must also select exactly the
pods the operator builds and label their series as the operator's queries expect.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from gm_operator_helpers import REPO, Namespace

from guardedmodel_operator.builders import build_children, build_context
from guardedmodel_operator.builders.common import SIDECAR_PORTS
from guardedmodel_operator.config import OperatorConfig
from guardedmodel_operator.prometheus import PrometheusSettings
from guardedmodel_operator.spec import parse_spec
from guardedmodel_testground.chart_release import install_prometheus_operator_crds
from guardedmodel_testground.cluster import LocalCluster
from guardedmodel_testground.pod_discovery import label_name

pytestmark = pytest.mark.integration

CHART = str(REPO / "charts" / "guardedmodel")
MONITORING = "monitoring.coreos.com/v1"
ON = ("metrics.serviceMonitor.enabled=true", "metrics.prometheusRule.enabled=true")

#: Value sets -> the monitoring kinds they render and the PodMonitor's namespaceSelector.
SETUPS: dict[str, tuple[tuple[str, ...], list[str], dict[str, Any] | None]] = {
    "cluster scope, all namespaces": (ON, ["PodMonitor", "PrometheusRule", "ServiceMonitor"], {"any": True}),
    "cluster scope, watched namespaces": (
        (*ON, "watchNamespaces={team-a,team-b}"),
        ["PodMonitor", "PrometheusRule", "ServiceMonitor"],
        {"matchNames": ["team-a", "team-b"]},
    ),
    "namespace scope": (
        (*ON, "rbac.scope=namespace"),
        ["PodMonitor", "PrometheusRule", "ServiceMonitor"],
        {"matchNames": ["@release"]},
    ),
    "podMonitor off": (
        (*ON, "metrics.podMonitor.enabled=false"),
        ["PrometheusRule", "ServiceMonitor"],
        None,
    ),
    "monitoring off": ((), [], None),
    "rules only": (("metrics.prometheusRule.enabled=true",), ["PrometheusRule"], None),
}


@pytest.fixture(scope="module")
def monitoring_cluster(cluster: LocalCluster) -> LocalCluster:
    install_prometheus_operator_crds(cluster)
    return cluster


def render(cluster: LocalCluster, namespace: str, *sets: str) -> list[dict[str, Any]]:
    args = ["template", "gm", CHART, "--namespace", namespace]
    for value in sets:
        args += ["--set", value]
    return [d for d in yaml.safe_load_all(cluster.helm(*args).stdout) if d]


def monitoring_objects(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted((d for d in docs if d["apiVersion"] == MONITORING), key=lambda d: d["kind"])


def dry_run(namespace: Namespace, objects: list[dict[str, Any]]) -> Any:
    return namespace.cluster.kubectl(
        "apply", "--dry-run=server", "-n", namespace.name, "-o", "json", "-f", "-",
        input=yaml.safe_dump_all(objects), check=False,
    )  # fmt: skip


@pytest.mark.parametrize("setup", sorted(SETUPS))
def test_every_monitoring_object_is_accepted_by_prometheus_operators_crds(
    monitoring_cluster: LocalCluster, namespace: Namespace, setup: str
) -> None:
    sets, kinds, selector = SETUPS[setup]
    objects = monitoring_objects(render(monitoring_cluster, namespace.name, *sets))
    assert [o["kind"] for o in objects] == kinds
    if not objects:
        return
    result = dry_run(namespace, objects)
    assert result.returncode == 0, result.stderr
    accepted = json.loads(result.stdout)
    items = accepted.get("items", [accepted])
    assert sorted(i["kind"] for i in items) == kinds
    # The server kept every field: a field the schema does not know would be pruned silently.
    for sent, stored in zip(objects, sorted(items, key=lambda i: i["kind"]), strict=True):
        assert stored["spec"] == sent["spec"], f"{sent['kind']}: the API server pruned or changed its spec"
    if selector is not None:
        (podmonitor,) = (o for o in objects if o["kind"] == "PodMonitor")
        expected = json.loads(json.dumps(selector).replace("@release", namespace.name))
        assert podmonitor["spec"]["namespaceSelector"] == expected


def test_all_features_ci_scenario_is_accepted(monitoring_cluster: LocalCluster, namespace: Namespace) -> None:
    values = f"{CHART}/ci/all-features-values.yaml"
    out = monitoring_cluster.helm("template", "gm", CHART, "-n", namespace.name, "-f", values).stdout
    objects = monitoring_objects([d for d in yaml.safe_load_all(out) if d])
    assert [o["kind"] for o in objects] == ["PodMonitor", "PrometheusRule", "ServiceMonitor"]
    result = dry_run(namespace, objects)
    assert result.returncode == 0, result.stderr
    podmonitor, rule, _ = objects
    scenario = yaml.safe_load(Path(values).read_text())
    assert podmonitor["metadata"]["labels"]["release"] == "prometheus"
    assert podmonitor["spec"]["namespaceSelector"] == {"matchNames": scenario["watchNamespaces"]}
    assert (
        podmonitor["spec"]["podMetricsEndpoints"][0]["interval"]
        == scenario["metrics"]["podMonitor"]["interval"]
    )
    base = scenario["metrics"]["prometheusRule"]["runbookBaseUrl"]
    urls = [
        r["annotations"]["runbook_url"] for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r
    ]
    assert urls and all(url == f"{base}/{url.rsplit('/', 1)[1]}" for url in urls)


def _break(
    objects: list[dict[str, Any]], kind: str, path: list[str | int], value: Any
) -> list[dict[str, Any]]:
    broken = copy.deepcopy(next(o for o in objects if o["kind"] == kind))
    node: Any = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return [broken]


@pytest.mark.parametrize(
    ("kind", "path", "value", "field"),
    [
        (
            "PodMonitor",
            ["spec", "podMetricsEndpoints", 0, "interval"],
            "30 seconds",
            "spec.podMetricsEndpoints[0].interval",
        ),
        (
            "PodMonitor",
            ["spec", "podMetricsEndpoints", 0, "honorLabels"],
            "yes",
            "spec.podMetricsEndpoints[0].honorLabels",
        ),
        ("PodMonitor", ["spec", "namespaceSelector", "any"], "all", "spec.namespaceSelector.any"),
        ("ServiceMonitor", ["spec", "endpoints", 0, "scheme"], "ftp", "spec.endpoints[0].scheme"),
        (
            "PrometheusRule",
            ["spec", "groups", 0, "rules", 0, "for"],
            "ten minutes",
            "spec.groups[0].rules[0].for",
        ),
    ],
)
def test_a_broken_monitoring_object_is_refused(
    monitoring_cluster: LocalCluster,
    namespace: Namespace,
    kind: str,
    path: list[str | int],
    value: Any,
    field: str,
) -> None:
    objects = monitoring_objects(render(monitoring_cluster, namespace.name, *ON))
    result = dry_run(namespace, _break(objects, kind, path, value))
    assert result.returncode != 0, f"a {kind} with {field}={value!r} was accepted"
    assert f'{kind} "' in result.stderr and "is invalid" in result.stderr, result.stderr
    assert field in result.stderr, result.stderr


@pytest.mark.parametrize("example", ["guardedmodel-minimal.yaml", "guardedmodel-full.yaml"])
def test_podmonitor_selects_the_model_pods_and_labels_them_as_the_operator_queries(
    monitoring_cluster: LocalCluster, example: str
) -> None:
    """Against the children the operator's own builders make for the examples: the PodMonitor
    selects the model pods (and never the operator's), scrapes the port the pods' prometheus.io
    annotations name, which the model's NetworkPolicy admits, and labels the series as the
    operator's queries and the chart's alerts select them."""
    docs = render(monitoring_cluster, "ops", *ON)
    (podmonitor,) = (d for d in docs if d["kind"] == "PodMonitor")
    spec = podmonitor["spec"]
    body = yaml.safe_load((REPO / "examples" / example).read_text())
    body["metadata"] |= {"namespace": "ml", "uid": "0000-1111", "generation": 1}
    config = OperatorConfig(triton_image="triton:test", sidecar_image="sidecar:test")
    children = {c["kind"]: c for c in build_children(build_context(body, parse_spec(body["spec"]), config))}
    template = children["Deployment"]["spec"]["template"]
    wanted = spec["selector"]["matchLabels"]
    assert wanted.items() <= template["metadata"]["labels"].items()
    operator = next(d for d in docs if d["kind"] == "Deployment")
    assert not wanted.items() <= operator["spec"]["template"]["metadata"]["labels"].items()
    (endpoint,) = spec["podMetricsEndpoints"]
    ports = {
        p["name"]: p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", [])
    }
    annotations = template["metadata"]["annotations"]
    assert ports[endpoint["port"]] == int(annotations["prometheus.io/port"])
    assert endpoint["path"] == annotations["prometheus.io/path"]
    (rule,) = children["NetworkPolicy"]["spec"]["ingress"]
    assert "from" not in rule and {"protocol": "TCP", "port": ports[endpoint["port"]]} in rule["ports"]
    # The target labels the operator's queries and the chart's alerts select a model by: the pod
    # label named in podTargetLabels, sanitised as Prometheus does, carries the GuardedModel's name.
    defaults = yaml.safe_load((REPO / "charts" / "guardedmodel" / "values.yaml").read_text())["rollout"]
    settings = PrometheusSettings(url="")
    (target_label,) = spec["podTargetLabels"]
    assert template["metadata"]["labels"][target_label] == body["metadata"]["name"]
    assert label_name(target_label) == defaults["nameLabel"] == settings.name_label
    assert defaults["namespaceLabel"] == settings.namespace_label == "namespace"
    # The target's labels are never overridden by the sidecar's own (model, version): none collide.
    assert endpoint["honorLabels"] is False


def notes(cluster: LocalCluster, *sets: str) -> str:
    args = ["install", "gm", CHART, "--namespace", "ops", "--dry-run"]
    for value in sets:
        args += ["--set", value]
    out = cluster.helm(*args).stdout
    assert "\nNOTES:\n" in out, out[-2000:]
    return out.split("\nNOTES:\n", 1)[1]


def test_notes_say_what_to_do_next_and_where_the_metrics_are(monitoring_cluster: LocalCluster) -> None:
    on = notes(monitoring_cluster, *ON, "rollout.prometheusUrl=http://prometheus-operated.monitoring:9090")
    crd = yaml.safe_load((REPO / "crds" / "guardedmodel.io_guardedmodels.yaml").read_text())
    (short,) = crd["spec"]["names"]["shortNames"]
    columns = [
        c["name"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"] if c["name"] != "Age"
    ]
    metrics_port = next(port for name, port, _ in SIDECAR_PORTS if name == "metrics")
    for text in [
        "kubectl apply -n default -f examples/guardedmodel-minimal.yaml",
        f"kubectl get {short} -A",
        ", ".join(columns),
        "kubectl guardedmodel status classifier -n default",
        "Service gm-guardedmodel, port 9100 (metrics), path /metrics",
        f"container port {metrics_port} (metrics)",
        "ServiceMonitor gm-guardedmodel scrapes the operator",
        "PodMonitor gm-guardedmodel-models scrapes the model pods in every namespace",
        "`namespace` and `guardedmodel_io_name`",
        "PrometheusRule gm-guardedmodel",
        "https://github.com/guardedmodel/guardedmodel/blob/main/docs/runbooks",
        "Prometheus at http://prometheus-operated.monitoring:9090",
        "ConfigMap `gm-guardedmodel-dashboard`",
        "grafana_dashboard=1",
    ]:
        assert text in on, f"{text!r} not in NOTES:\n{on}"
    for example in ("guardedmodel-minimal.yaml", "guardedmodel-full.yaml"):
        assert (REPO / "examples" / example).is_file()

    off = notes(monitoring_cluster, "rbac.scope=namespace")
    for text in [
        "serves GuardedModels in the namespace(s) ops",
        "kubectl apply -n ops -f examples/guardedmodel-minimal.yaml",
        "ServiceMonitor: off",
        "PodMonitor: off",
        "`namespace`\n     and `guardedmodel_io_name`",
        "Alerts: off",
        "rollout.prometheusUrl is empty",
    ]:
        assert text in off, f"{text!r} not in NOTES:\n{off}"
    assert "PodMonitor gm-guardedmodel-models" not in off and "PrometheusRule gm" not in off

    watched = notes(monitoring_cluster, *ON, "watchNamespaces={team-a,team-b}")
    assert "the namespace(s) team-a, team-b" in watched
    assert "kubectl apply -n team-a -f" in watched
    assert "scrapes the model pods in team-a, team-b" in watched

    elsewhere = notes(monitoring_cluster, "dashboard.namespace=grafana", "dashboard.labelKey=dashboards")
    assert "in namespace\n   grafana (label dashboards=1)" in elsewhere
    assert "Dashboard: off" in notes(monitoring_cluster, "dashboard.enabled=false")


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("metrics.podMonitor.interval=soon", "interval"),
        ("metrics.podMonitor.enabled=maybe", "enabled"),
        ("metrics.podMonitor.port=9090", "port"),
        ("metrics.prometheusRule.runbookBaseUrl=docs/runbooks", "runbookBaseUrl"),
    ],
)
def test_values_schema_refuses_bad_monitoring_values(
    cluster: LocalCluster, value: str, fragment: str
) -> None:
    result = cluster.helm("template", "gm", CHART, "--set", value, check=False)
    assert result.returncode != 0 and fragment in result.stderr, result.stderr
