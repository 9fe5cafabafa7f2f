"""Least privilege, proven on the real API server.

The chart's ServiceAccount may do exactly the expected set (`kubectl auth can-i --list` under its
own token), and that set suffices: the real operator, run with that token, takes a GuardedModel
through create → canary → rollback → delete with no request refused. The refusals are counted in
the API server's audit log (every service account's request is there with its response code), so
a 403 that some retry or warning swallows still fails the test.

The sidecar's identity, which the operator builds, is exercised with its own token: the sidecar's
status watch follows its GuardedModel through the canary and the rollback, and everything else
(another GuardedModel, a list of all of them, secrets, any write) is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import ssl
import sys
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from gm_operator_helpers import REPO, Namespace, OperatorProcess, eventually

from guardedmodel_sidecar.config import Routing
from guardedmodel_sidecar.kube_credentials import ApiServer, from_kubeconfig
from guardedmodel_sidecar.status_watch import GuardedModelWatcher
from guardedmodel_testground.cluster import LocalCluster
from guardedmodel_testground.prometheus import Prometheus, ScrapeJob

# The canary scenario's traffic and scrape helpers live with the rollout tests.
sys.path.insert(0, str(REPO / "tests" / "integration" / "rollout"))
from operator_run import scraped_sidecar
from test_rollout_cluster import NAME, manifest  # the canary with thresholds version 2 breaks

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

CHART = str(REPO / "charts" / "guardedmodel")
OPERATOR_NAMESPACE = "guardedmodel-system"  # where a ServiceMonitor's target says the operator runs

# What the operator may do in a namespace it watches, as `kubectl auth can-i --list` names it
# (resource → verbs), beyond what every authenticated user may do.
NAMESPACED = {
    "guardedmodels.guardedmodel.io": {"get", "list", "watch"},
    "guardedmodels.guardedmodel.io/status": {"patch"},
    "guardedmodels.guardedmodel.io/finalizers": {"update"},
    **{
        child: {"list", "watch", "create", "patch"}
        for child in (
            "configmaps",
            "services",
            "serviceaccounts",
            "deployments.apps",
            "networkpolicies.networking.k8s.io",
            "roles.rbac.authorization.k8s.io",
            "rolebindings.rbac.authorization.k8s.io",
        )
    },
    "events": {"create"},
    "pods": {"list"},  # a failing fetch-model's message, for the ModelFetched condition
}
CLUSTER_WIDE = {
    "namespaces": {"get", "list", "watch"},
    "customresourcedefinitions.apiextensions.k8s.io": {"list", "watch"},
}
PEERING = {"kopfpeerings.kopf.dev": {"list", "watch", "patch"}}
CLUSTER_PEERING = {"clusterkopfpeerings.kopf.dev": {"list", "watch", "patch"}}


def own_namespace(namespace: str) -> dict[str, set[str]]:
    """Under the namespaced Role: a get of its own namespace (its Pod Security labels)."""
    return {f"namespaces[{namespace}]": {"get"}}


# -- identities --------------------------------------------------------------------------------


def token_kubeconfig(cluster: LocalCluster, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig for the cluster that authenticates as `account` with a TokenRequest token."""
    token = cluster.kubectl("-n", namespace, "create", "token", account, "--duration=1h").stdout.strip()
    kubeconfig = yaml.safe_load(cluster.kubeconfig.read_text())
    kubeconfig["users"][0]["user"] = {"token": token}
    path.write_text(yaml.safe_dump(kubeconfig))
    return path


def can_i_list(cluster: LocalCluster, kubeconfig: Path, namespace: str) -> dict[str, set[str]]:
    """`kubectl auth can-i --list` in `namespace` as the kubeconfig's identity: resource → verbs
    (a row with resource names reads `resource[name,...]`)."""
    out = cluster.kubectl(f"--kubeconfig={kubeconfig}", "auth", "can-i", "--list", "-n", namespace).stdout
    rules: dict[str, set[str]] = {}
    for line in out.splitlines()[1:]:
        match = re.match(r"^(\S*)\s+\[(.*?)\]\s+\[(.*?)\]\s+\[(.*?)\]\s*$", line)
        assert match, f"unexpected `can-i --list` row: {line!r}"
        resource, urls, names, verbs = match.groups()
        if urls:
            continue  # non-resource URLs (/healthz, /version, ...) are everyone's
        key = f"{resource}[{names}]" if names else resource
        rules.setdefault(key, set()).update(verbs.split())
    return rules


def beyond_baseline(granted: dict[str, set[str]], baseline: dict[str, set[str]]) -> dict[str, set[str]]:
    """What `granted` holds that an identity without any binding of its own does not."""
    extra = {res: verbs - baseline.get(res, set()) for res, verbs in granted.items()}
    return {res: verbs for res, verbs in extra.items() if verbs}


def refusals(cluster: LocalCluster, username: str) -> list[str]:
    return [
        f"{e['verb']} {e['requestURI']}"
        for e in cluster.audit_events(username)
        if e.get("responseStatus", {}).get("code") == 403
    ]


# -- the sidecar's status watch, as the sidecar runs it --------------------------------------


class SidecarWatch:
    """The sidecar's GuardedModelWatcher on its own event loop, recording every routing."""

    def __init__(self, api: ApiServer, namespace: str) -> None:
        self.routings: list[Routing] = []
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.watcher = GuardedModelWatcher(api, namespace, NAME, self._record, self.current, retry_max_s=0.5)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.task: asyncio.Task[None] | None = None

    def current(self) -> Routing:
        with self.lock:
            return self.routings[-1] if self.routings else Routing("none")

    async def _record(self, routing: Routing) -> None:
        with self.lock:
            self.routings.append(routing)

    def _run(self) -> None:
        self.task = self.loop.create_task(self.watcher.run())
        with contextlib.suppress(asyncio.CancelledError):
            self.loop.run_until_complete(self.task)

    def start(self) -> SidecarWatch:
        self.thread.start()
        return self

    def seen(self) -> list[tuple[str, str | None, int]]:
        with self.lock:
            return [(r.stable_version, r.canary_version, r.canary_weight) for r in self.routings]

    def stop(self) -> None:
        if self.task is not None:
            self.loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(timeout=10)
        self.loop.close()


def request(api: ApiServer, method: str, path: str, body: Any = None) -> int:
    """One request with the sidecar's credentials; its HTTP status."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(api.host + path, data=data, method=method, headers=api.headers())
    if body is not None:
        req.add_header("Content-Type", "application/merge-patch+json")
    context = api.ssl_context if isinstance(api.ssl_context, ssl.SSLContext) else None
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


# -- the scenario ------------------------------------------------------------------------------


def sidecar_forbidden(namespace: str) -> list[tuple[str, str, Any]]:
    """What the sidecar's identity must not do: (method, path, merge-patch body)."""
    group = "/apis/guardedmodel.io/v1alpha1"
    own = f"{group}/namespaces/{namespace}/guardedmodels/{NAME}"
    label = {"metadata": {"labels": {"touched": "yes"}}}
    return [
        ("GET", f"{group}/namespaces/{namespace}/guardedmodels/other", None),  # another model
        ("GET", f"{group}/namespaces/{namespace}/guardedmodels", None),  # all models, unfiltered
        ("GET", f"{group}/namespaces/default/guardedmodels/{NAME}", None),  # same name, elsewhere
        ("GET", f"/api/v1/namespaces/{namespace}/secrets", None),
        ("GET", f"/api/v1/namespaces/{namespace}/configmaps/{NAME}-sidecar", None),
        ("PATCH", own, label),
        ("PATCH", f"{own}/status", {"status": {"canaryWeight": 100}}),
        ("DELETE", own, None),
    ]


def children(namespace: Namespace) -> list[str]:
    kinds = "deployments,services,configmaps,serviceaccounts,roles,rolebindings,networkpolicies"
    out = namespace.kubectl("get", kinds, "-l", f"guardedmodel.io/name={NAME}", "-o", "name")
    return list(out.stdout.split())


def models_tracked(operator: OperatorProcess) -> float:
    return sum(v for k, v in operator.metrics().items() if k.startswith("guardedmodel_operator_models{"))


def wait_status(
    namespace: Namespace, what: str, ok: Callable[[dict[str, Any]], bool], operator: OperatorProcess
) -> dict[str, Any]:
    def status() -> dict[str, Any] | None:
        found = (namespace.get("guardedmodel", NAME) or {}).get("status") or {}
        return found if ok(found) else None

    try:
        return dict(eventually(what, status, timeout=90))
    except AssertionError as error:
        raise AssertionError(f"{error}\noperator log:\n{operator.log()}") from None


def operator_requests(cluster: LocalCluster, username: str) -> Counter[tuple[str, str]]:
    """(verb, resource[/subresource]) → how many requests the audit log holds."""
    done: Counter[tuple[str, str]] = Counter()
    for event in cluster.audit_events(username):
        ref = event.get("objectRef")
        if ref:
            sub = ref.get("subresource")
            done[(event["verb"], ref["resource"] + (f"/{sub}" if sub else ""))] += 1
    return done


def scrape_of_the_operator(
    cluster: LocalCluster, prometheus_factory: Callable[..., Prometheus], operator: OperatorProcess, ns: str
) -> None:
    """A real Prometheus scrapes the operator as the chart's ServiceMonitor has it scraped (the
    target's `namespace` is the operator's): the per-model series keep the model's namespace and
    name. A scrape without honorLabels, beside it, shows what they prevent."""
    monitor = yaml.safe_load(
        cluster.helm(
            "template", "gm", CHART, "--set", "metrics.serviceMonitor.enabled=true",
            "--show-only", "templates/servicemonitor.yaml",
        ).stdout
    )  # fmt: skip
    (endpoint,) = monitor["spec"]["endpoints"]
    target = operator.metrics_url.removeprefix("http://").removesuffix("/metrics")
    labels = {"namespace": OPERATOR_NAMESPACE, "service": "gm-guardedmodel", "endpoint": "metrics"}
    prometheus = prometheus_factory(
        [
            ScrapeJob("chart", [target], labels=labels, honor_labels=endpoint.get("honorLabels", False)),
            ScrapeJob("unhonoured", [target], labels=labels),
        ]
    )
    wanted = {"namespace": ns, "name": NAME}
    for query in (
        'guardedmodel_operator_rollbacks_total{job="chart",version="2"}',
        'guardedmodel_operator_model_phase{job="chart",phase="RolledBack"}',
    ):
        (series,) = prometheus.wait_for(query)
        assert {k: series["metric"].get(k) for k in wanted} == wanted, series
    (plain,) = prometheus.wait_for('guardedmodel_operator_rollbacks_total{job="unhonoured"}')
    assert (plain["metric"]["namespace"], plain["metric"]["exported_namespace"]) == (OPERATOR_NAMESPACE, ns)


@pytest.fixture
def release(namespace: Namespace) -> Iterator[Callable[..., str]]:
    """Install the chart into the test's namespace; uninstalled afterwards."""
    installed: list[str] = []

    def install(*sets: str) -> str:
        name = f"lp-{namespace.name}"[:40]
        args = ["install", name, CHART, "--namespace", namespace.name, "--wait", "--timeout", "120s"]
        for value in ("logFormat=text", *sets):
            args += ["--set", value]
        result = namespace.cluster.helm(*args)
        assert "STATUS: deployed" in result.stdout
        installed.append(name)
        return name

    yield install
    for name in installed:
        namespace.cluster.helm("uninstall", name, "--namespace", namespace.name, check=False)


def chart_account(release: str) -> str:
    return release if "guardedmodel" in release else f"{release}-guardedmodel"


def nobody(cluster: LocalCluster, namespace: str, tmp_path: Path) -> Path:
    """The kubeconfig of a ServiceAccount with no binding of its own: the baseline every
    authenticated identity holds (discovery, self reviews)."""
    cluster.kubectl("-n", namespace, "create", "serviceaccount", "nobody")
    return token_kubeconfig(cluster, namespace, "nobody", tmp_path / "nobody-kubeconfig")


@pytest.mark.parametrize("scope", ["cluster", "namespace"])
def test_charts_service_account_may_do_exactly_the_expected_set(
    namespace: Namespace, release: Callable[..., str], tmp_path: Path, scope: str
) -> None:
    cluster, ns = namespace.cluster, namespace.name
    name = release(f"rbac.scope={scope}", "peering.enabled=true")
    kubeconfig = token_kubeconfig(cluster, ns, chart_account(name), tmp_path / "kubeconfig")
    baseline = nobody(cluster, ns, tmp_path)

    def granted(where: str) -> dict[str, set[str]]:
        return beyond_baseline(can_i_list(cluster, kubeconfig, where), can_i_list(cluster, baseline, where))

    # watchNamespaces is empty: under the ClusterRole the peering is the cluster-wide one
    expected = (
        {**NAMESPACED, **CLUSTER_WIDE, **CLUSTER_PEERING}
        if scope == "cluster"
        else {**NAMESPACED, **PEERING, **own_namespace(ns)}
    )
    assert granted(ns) == expected
    # in another namespace: everything under the ClusterRole, nothing under the Role
    other = f"{ns}-x"
    cluster.kubectl("create", "namespace", other)
    try:
        assert granted(other) == (expected if scope == "cluster" else {})
    finally:
        cluster.kubectl("delete", "namespace", other, "--wait=false")


def chart_operator_flags(namespace: Namespace, release: str) -> list[str]:
    """The flags that configure the operator as the installed chart's Deployment does."""
    deployment = namespace.cluster.kubectl_json(
        "get", "deployment", "-n", namespace.name, "-l", f"app.kubernetes.io/instance={release}"
    )["items"][0]
    env = {
        e["name"]: e.get("value", "") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["GUARDEDMODEL_NAMESPACES"] == namespace.name  # as the test's operator watches
    return [
        f"--peering-name={env['GUARDEDMODEL_PEERING_NAME']}",
        f"--cluster-scanning={env['GUARDEDMODEL_CLUSTER_SCANNING']}",
    ]


@pytest.mark.parametrize("scope", ["cluster", "namespace"])
def test_operator_and_sidecar_run_a_canary_and_its_rollback_with_no_request_refused(
    namespace: Namespace,
    release: Callable[..., str],
    start_operator: Callable[..., OperatorProcess],
    prometheus_factory: Callable[..., Prometheus],
    tmp_path: Path,
    scope: str,
) -> None:
    cluster, ns = namespace.cluster, namespace.name
    # The operator watches this one namespace (under the ClusterRole kopf then follows
    # namespaces) and peers (so it writes keep-alives).
    if scope == "cluster":
        name = release(f"watchNamespaces={{{ns}}}", "peering.enabled=true")
        expected = {**NAMESPACED, **CLUSTER_WIDE, **PEERING}
    else:
        name = release("rbac.scope=namespace", "peering.enabled=true")
        expected = {**NAMESPACED, **PEERING, **own_namespace(ns)}
    account = chart_account(name)
    kubeconfig = token_kubeconfig(cluster, ns, account, tmp_path / "operator-kubeconfig")
    baseline = can_i_list(cluster, nobody(cluster, ns, tmp_path), ns)
    assert beyond_baseline(can_i_list(cluster, kubeconfig, ns), baseline) == expected

    sidecar_traffic, prometheus = scraped_sidecar(prometheus_factory, ns, NAME, ["1", "2"])
    operator = start_operator(
        ns,
        *chart_operator_flags(namespace, name),
        f"--prometheus-url={prometheus.url}",
        "--rollout-min-window-s=3",
        kubeconfig=kubeconfig,
    )
    stop_traffic = threading.Event()

    def traffic() -> None:  # version 2 answers half its inputs out of distribution
        while not stop_traffic.wait(0.25):
            sidecar_traffic.serve("1", 10)
            sidecar_traffic.serve("2", 10, ood_fraction=0.5)

    threading.Thread(target=traffic, daemon=True).start()
    sidecar_user = f"system:serviceaccount:{ns}:{NAME}-sidecar"
    watch: SidecarWatch | None = None
    try:
        namespace.apply(manifest(ns, "1"))
        status = wait_status(namespace, "version 1 Ready", lambda s: s.get("phase") == "Ready", operator)
        assert status["stableVersion"] == "1"

        # The sidecar's identity as the operator built it: its own GuardedModel, read-only.
        sidecar_kubeconfig = token_kubeconfig(cluster, ns, f"{NAME}-sidecar", tmp_path / "sidecar-kubeconfig")
        assert beyond_baseline(can_i_list(cluster, sidecar_kubeconfig, ns), baseline) == {
            f"guardedmodels.guardedmodel.io[{NAME}]": {"get", "list", "watch"}
        }
        api = from_kubeconfig(sidecar_kubeconfig)
        watch = SidecarWatch(api, ns).start()
        eventually("the sidecar's watch to read its routing", lambda: ("1", None, 0) in watch.seen(), 30)

        namespace.apply(manifest(ns, "2"))
        status = wait_status(
            namespace,
            "the rollback",
            lambda s: s.get("phase") == "RolledBack" and not s.get("canaryVersion"),
            operator,
        )
        assert status["stableVersion"] == "1" and status["history"][-1]["outcome"] == "RolledBack"
        # The sidecar followed the canary and the rollback through its watch, never refused.
        eventually(
            "the sidecar to follow the canary and the rollback",
            lambda: ("1", "2", 10) in watch.seen() and watch.seen()[-1] == ("1", None, 0),
            30,
        )
        assert watch.watcher.errors == 0 and refusals(cluster, sidecar_user) == []
        scrape_of_the_operator(cluster, prometheus_factory, operator, ns)

        forbidden = sidecar_forbidden(ns)
        answers = {f"{method} {path}": request(api, method, path, body) for method, path, body in forbidden}
        assert set(answers.values()) == {403}, answers
        # each refusal is in the audit log, and nothing else of the sidecar's was refused
        refused_paths = sorted(refusal.split(" ", 1)[1] for refusal in refusals(cluster, sidecar_user))
        assert refused_paths == sorted(path for _, path, _ in forbidden)

        namespace.kubectl("delete", "guardedmodel", NAME, "--wait=true", "--timeout=60s")
        eventually("the garbage collector to remove the children", lambda: not children(namespace), 60)
        eventually("the operator to forget the model", lambda: models_tracked(operator) == 0, 30)
    finally:
        stop_traffic.set()
        if watch is not None:
            watch.stop()
        operator.stop()  # its watches end, so their audit entries are written
        sidecar_traffic.stop()

    operator_user = f"system:serviceaccount:{ns}:{account}"
    assert refusals(cluster, operator_user) == []
    done = operator_requests(cluster, operator_user)
    # The run used what the set grants: server-side applies of children (a PATCH, which the API
    # server also authorizes as create when it makes the child), status patches, Events, the
    # peering's keep-alives, the namespace read for a file:// model, the watches.
    for used in [
        ("patch", "deployments"),
        ("patch", "roles"),
        ("patch", "rolebindings"),
        ("patch", "guardedmodels/status"),
        ("create", "events"),
        ("patch", "kopfpeerings"),
        ("get", "namespaces"),
        ("watch", "guardedmodels"),
        # kopf's cluster scanning, under the ClusterRole only
        *([("watch", "namespaces"), ("watch", "customresourcedefinitions")] if scope == "cluster" else []),
    ]:
        assert done[used], (used, done)
    assert not [request for request in done if request[0] in ("update", "delete")], done
    # Each line opens with "[date time,millis]"; a millisecond count of 403 is not a refusal.
    messages = re.sub(r"^\[[^\]]*\]", "", operator.process.log_path.read_text(), flags=re.MULTILINE)
    assert not re.search(r"(?<![.\d])\b403\b|[Ff]orbidden", messages), operator.log()
