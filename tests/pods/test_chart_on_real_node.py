"""The chart installed for real: the operator pod on the real node, a GuardedModel pod that runs
Triton and the guard sidecar in a restricted namespace, guarded inference through it, a version
rolled and a canary rolled back, and every ci scenario of the chart installed.

One cluster for the module (the tests run in order, each building on the previous one):

1. the product image (the repository's Dockerfile) and the CPU Triton image are built (cached) and
   imported into the real node's containerd; Prometheus runs on the host, finding the pods
   through the API server by their annotations, reachable from the pods on the bridge;
2. `helm install` with ci/minimal-values.yaml, the operator pinned to the real node and pointed at
   that Prometheus: it becomes Ready under the chart's ServiceAccount and reaches the API server
   through the `kubernetes` Service IP (the node's only route to it);
3. the worked example served over http:// from the host's bridge address; a GuardedModel in a
   namespace enforcing the restricted Pod Security standard, CPU-only Triton through
   `spec.triton.resources`: the `fetch-model` init container fetches it, both containers' probes
   pass, tritonclient gets guarded answers through the Service's endpoint, Prometheus scrapes them;
4. version 2, published after the pod started, goes through routing: the sidecar fetches it into
   the pod's copy and loads it, the canary starts in the same pod (no new pod, no restart); the
   operator reads the canary's metrics from Prometheus and rolls it back, and the same pod answers
   from version 1 again;
5. `helm upgrade` to ci/all-features-values.yaml (two peering replicas, ServiceMonitor,
   PrometheusRule, NetworkPolicy) keeps the model reconciled; `helm uninstall` leaves nothing;
6. ci/single-namespace-values.yaml installed into the model's restricted namespace takes the
   GuardedModel over under a namespaced Role; deleting it and uninstalling leave nothing;
7. stopping the cluster restores the host.

Needs root, the node packages and the image builders (`make test-pods`).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from pod_helpers import crash_looping, describe, pods, ready, wait_for

from guardedmodel_testground import real_pods
from guardedmodel_testground.chart_release import install_prometheus_operator_crds, release_leftovers
from guardedmodel_testground.cluster import LocalCluster
from guardedmodel_testground.node_host import HostSnapshot, take_snapshot
from guardedmodel_testground.paths import repo_root
from guardedmodel_testground.prometheus import Prometheus
from guardedmodel_testground.real_node import RealNodeSpec, node_leftovers

pytestmark = pytest.mark.pods

CHART_CI = real_pods.CHART / "ci"
RELEASE = "gm"
OPERATOR_NAMESPACE = real_pods.OPERATOR_NAMESPACE
MODEL_NAMESPACE = "guarded"
MODEL = "fashion"
SIDECAR_METRICS_PORT = 9090

#: Seconds each stage took, printed at the end (`pytest -s`).
TIMINGS: dict[str, float] = {}
#: When the GuardedModel was applied (the Ready test measures from there).
APPLIED_AT: list[float] = []
#: The model pod (uid) that served version 1; version 2's canary and its rollback leave it in place.
MODEL_POD: list[str] = []


@dataclass
class Stage:
    cluster: LocalCluster
    before: HostSnapshot
    images: real_pods.Images
    prometheus: Prometheus
    workdir: Path
    monitoring: contextlib.ExitStack  # Prometheus and Alertmanager, stopped before the cluster


def timed(name: str, started: float) -> float:
    TIMINGS[name] = round(time.monotonic() - started, 1)
    return TIMINGS[name]


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    started = time.monotonic()
    built = real_pods.ensure_images()
    timed("images built or found in the cache", started)
    workdir = tmp_path_factory.mktemp("chart-on-real-node")
    before = take_snapshot()
    started = time.monotonic()
    with (
        LocalCluster(workdir / "cluster", real_node=RealNodeSpec()) as cluster,
        contextlib.ExitStack() as stack,
    ):
        timed("cluster with real node up", started)
        monitoring = real_pods.start_pod_monitoring(stack, workdir / "monitoring", cluster, [MODEL_NAMESPACE])
        yield Stage(cluster, before, built, monitoring.prometheus, workdir, stack)


def test_the_images_are_imported_into_the_real_node(stage: Stage) -> None:
    node = stage.cluster.real_node
    assert node is not None
    started = time.monotonic()
    held = real_pods.import_images(node, stage.images)
    timed("image import (product and Triton)", started)
    assert {stage.images.product.reference, stage.images.triton.reference, real_pods.CHART_IMAGE} <= set(held)


def deploy_release(stage: Stage, verb: str, release: str, namespace: str, *values: Path) -> None:
    """`helm install|upgrade` of a ci scenario plus the real node's values; on failure, why (the
    release's pods, their events and their previous logs)."""
    result = real_pods.helm_release(
        stage.cluster, verb, release, namespace,
        [values[0], real_pods.operator_values(stage.workdir, stage.prometheus.url), *values[1:]],
    )  # fmt: skip
    selector = f"app.kubernetes.io/instance={release}"
    previous = stage.cluster.kubectl("logs", "-n", namespace, "-l", selector, "--previous", check=False)
    assert "STATUS: deployed" in result.stdout, (
        result.stdout
        + result.stderr
        + describe(stage.cluster, namespace, "pods", "-l", selector)
        + previous.stdout
    )


def test_helm_install_runs_the_operator_pod_on_the_real_node(stage: Stage) -> None:
    cluster = stage.cluster
    started = time.monotonic()
    deploy_release(stage, "install", RELEASE, OPERATOR_NAMESPACE, CHART_CI / "minimal-values.yaml")
    selector = f"app.kubernetes.io/instance={RELEASE}"
    (pod,) = pods(cluster, OPERATOR_NAMESPACE, selector)
    timed("helm install to operator Ready", started)
    assert ready(pod)
    assert pod["spec"]["nodeName"] == "real-node"
    assert pod["status"]["podIP"].startswith("10.250.0.")
    (container,) = pod["status"]["containerStatuses"]
    assert container["image"].endswith("guardedmodel:dev") and container["restartCount"] == 0
    # The chart's ServiceAccount, whose token the operator's client uses in the pod.
    deployment = cluster.kubectl_json("get", "deployment", "-n", OPERATOR_NAMESPACE, "-l", selector)
    (spec,) = [d["spec"]["template"]["spec"] for d in deployment["items"]]
    assert pod["spec"]["serviceAccountName"] == spec["serviceAccountName"]
    assert cluster.kubectl_json("get", "serviceaccount", spec["serviceAccountName"], "-n", OPERATOR_NAMESPACE)


def operator_logs(cluster: LocalCluster) -> str:
    result = cluster.kubectl(
        "logs", "-n", OPERATOR_NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}", "--tail=100",
        check=False,
    )  # fmt: skip
    return result.stdout + result.stderr


#: Run in the operator pod: what its client does, with its own token and CA, printing the answer.
LIST_GUARDED_MODELS = """
import json, os, ssl, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
context = ssl.create_default_context(cafile=f"{sa}/ca.crt")
server = f"https://{os.environ['KUBERNETES_SERVICE_HOST']}:{os.environ['KUBERNETES_SERVICE_PORT']}"
request = urllib.request.Request(
    server + "/apis/guardedmodel.io/v1alpha1/guardedmodels",
    headers={"Authorization": "Bearer " + open(f"{sa}/token").read().strip()},
)
with urllib.request.urlopen(request, context=context, timeout=10) as response:
    print(json.dumps({"status": response.status, "kind": json.load(response)["kind"]}))
"""


def test_the_operator_pod_reaches_the_api_server_through_the_kubernetes_service(stage: Stage) -> None:
    """From inside the operator pod, as its client does: KUBERNETES_SERVICE_HOST (the Service IP,
    the node's only route to the API server; no DNS), TLS verified against the service account's
    CA, the chart's ServiceAccount token, authorized to list GuardedModels cluster-wide; and none
    of the operator's own requests failed to connect or was refused (a 429 while the API server's
    watch cache for the new CRD initialises is the server asking to retry, and is retried)."""
    cluster = stage.cluster
    (pod,) = pods(cluster, OPERATOR_NAMESPACE, f"app.kubernetes.io/instance={RELEASE}")
    result = cluster.kubectl(
        "exec", "-n", OPERATOR_NAMESPACE, pod["metadata"]["name"], "--",
        "python3", "-c", LIST_GUARDED_MODELS, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout) == {"status": 200, "kind": "GuardedModelList"}
    failed = [
        line
        for line in operator_logs(cluster).splitlines()
        if "Request attempt" in line and "status=429" not in line
    ]
    assert failed == [], "\n".join(failed)


def guarded_model(stage: Stage, repository: str) -> dict:
    """The worked example's manifest, made to run on the real CPU node from local images."""
    manifest: dict = yaml.safe_load((repo_root() / "examples" / "fashion-mnist.yaml").read_text())
    manifest["metadata"] = {"name": MODEL, "namespace": MODEL_NAMESPACE}
    return real_pods.real_node_manifest(manifest, repository=repository, built=stage.images)


@pytest.fixture(scope="module")
def example() -> Any:
    from guardedmodel_fit.example import DEFAULT_OUT, build_example

    return build_example(DEFAULT_OUT, versions=("1", "2"), progress=False)


@pytest.fixture(scope="module")
def model_url(stage: Stage, example: Any) -> Iterator[str]:
    # Version 2 is published later (the version-change test): a pod must not need restarting for it.
    with real_pods.serve_model(example.model_dir, stage.workdir, versions=("1",)) as (url, requests):
        yield url
        assert f"/{example.model_dir.name}.tar.gz" in requests


def model_pods(cluster: LocalCluster) -> list[dict]:
    return pods(cluster, MODEL_NAMESPACE, f"app.kubernetes.io/instance={MODEL}")


def explain_model(cluster: LocalCluster) -> str:
    gm = cluster.kubectl("get", "gm", MODEL, "-n", MODEL_NAMESPACE, "-o", "yaml", check=False).stdout
    logs = ""
    for pod in model_pods(cluster):
        for container in ("fetch-model", "triton", "sidecar"):
            out = cluster.kubectl(
                "logs", "-n", MODEL_NAMESPACE, pod["metadata"]["name"], "-c", container, "--tail=40",
                check=False,
            )  # fmt: skip
            logs += f"--- {container}\n{out.stdout}{out.stderr}"
    return f"{gm}\n{describe(cluster, MODEL_NAMESPACE, 'pods')}\n{logs}\n{operator_logs(cluster)}"


def test_the_guarded_model_pod_is_admitted_in_a_restricted_namespace_and_scheduled_on_the_real_node(
    stage: Stage, model_url: str
) -> None:
    """The operator (in its pod) renders the GuardedModel; the API server's restricted Pod Security
    admission lets the pod in; the scheduler puts it on the CPU node with the GPU request dropped."""
    cluster = stage.cluster
    cluster.kubectl("create", "namespace", MODEL_NAMESPACE)
    cluster.kubectl(
        "label", "namespace", MODEL_NAMESPACE,
        "pod-security.kubernetes.io/enforce=restricted", "pod-security.kubernetes.io/warn=restricted",
    )  # fmt: skip
    APPLIED_AT.append(time.monotonic())
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(guarded_model(stage, model_url)))
    (pod,) = wait_for(
        "the model pod admitted and scheduled",
        lambda: [p for p in model_pods(cluster) if p["spec"].get("nodeName")],
        60,
        lambda: explain_model(cluster),
    )
    assert pod["spec"]["nodeName"] == "real-node"
    spec = pod["spec"]
    assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["seccompProfile"] == {
        "type": "RuntimeDefault"
    }
    (fetch,) = spec["initContainers"]
    assert fetch["name"] == "fetch-model" and f"--repository={model_url}" in fetch["args"]
    containers = {c["name"]: c for c in spec["containers"]}
    assert containers["triton"]["image"] == stage.images.triton.reference
    assert containers["sidecar"]["image"] == fetch["image"] == stage.images.product.reference
    # CPU only: the default GPU limit was replaced as a whole.
    assert "nvidia.com/gpu" not in json.dumps(containers["triton"]["resources"])


def test_the_guarded_model_becomes_ready_with_both_containers_ready(stage: Stage) -> None:
    cluster = stage.cluster

    def model_ready() -> bool:
        for pod in model_pods(cluster):
            failing = crash_looping(pod)
            if failing:  # no use waiting out the timeout: say why now
                raise AssertionError(f"{failing}\n{explain_model(cluster)}")
        status = cluster.kubectl_json("get", "gm", MODEL, "-n", MODEL_NAMESPACE).get("status", {})
        return bool(status.get("phase") == "Ready")

    wait_for("GuardedModel Ready", model_ready, 300, lambda: explain_model(cluster))
    timed("GuardedModel applied to Ready", APPLIED_AT[0])
    (pod,) = wait_for(
        "one Ready model pod",
        lambda: [p for p in model_pods(cluster) if ready(p)],
        60,
        lambda: explain_model(cluster),
    )
    statuses = {c["name"]: c for c in pod["status"]["containerStatuses"]}
    assert set(statuses) == {"triton", "sidecar"}
    assert all(c["ready"] and c["restartCount"] == 0 for c in statuses.values()), statuses
    (init,) = pod["status"]["initContainerStatuses"]
    assert init["name"] == "fetch-model" and init["state"]["terminated"]["exitCode"] == 0


def sidecar_address(cluster: LocalCluster) -> str:
    """Where the Service would send a client: a ready endpoint of the model's http port."""
    return wait_for(
        "a ready endpoint of the model's Service",
        lambda: real_pods.ready_endpoint(cluster, MODEL_NAMESPACE, MODEL, "http"),
        60,
        lambda: explain_model(cluster),
    )


def test_tritonclient_gets_guarded_answers_through_the_service_and_prometheus_scrapes_the_pod(
    stage: Stage, example: Any
) -> None:
    import tritonclient.http as httpclient

    cluster = stage.cluster
    (pod,) = [p for p in model_pods(cluster) if ready(p)]
    address = sidecar_address(cluster)
    assert address == f"{pod['status']['podIP']}:8080"
    good = np.asarray(example.dataset("validation").inputs, dtype=np.float32)[:16]
    digits = np.asarray(example.dataset("digits").inputs, dtype=np.float32)[:16]
    client = httpclient.InferenceServerClient(address)
    try:

        def infer(rows: np.ndarray) -> list[str]:
            tensor = httpclient.InferInput("INPUT", list(rows.shape), "FP32")
            tensor.set_data_from_numpy(np.ascontiguousarray(rows), binary_data=True)
            result = client.infer("fashion-mnist", [tensor])
            return [d.decode() for d in result.as_numpy("GUARD_DECISION")]

        started = time.monotonic()
        first = infer(good[:1])
        timed("first inference through the pod", started)
        in_distribution, far = infer(good), infer(digits)
    finally:
        client.close()
    assert len(first) == 1 and first[0] in {"accept", "review", "reject"}
    assert len(in_distribution) == len(far) == 16
    # alpha 0.05: most in-distribution rows pass, most handwritten digits are refused.
    assert in_distribution.count("reject") <= 4, in_distribution
    assert far.count("reject") >= 12, far
    # Prometheus found the pod through the API server and scraped the answers just given, under the
    # labels the operator's queries and the chart's alerts select on.
    query = (
        f'sum(guardedmodel_requests_total{{namespace="{MODEL_NAMESPACE}",guardedmodel_io_name="{MODEL}"}})'
    )

    def counted() -> float:
        samples = stage.prometheus.query(query)
        return float(samples[0]["value"][1]) if samples else 0.0

    # Three requests of 1, 16 and 16 rows: counted per request or per row, depending on the batch policy.
    total = wait_for("Prometheus to scrape the pod", lambda: counted() >= 3, 30, stage.prometheus.targets)
    assert total and 3 <= counted() <= 33, counted()
    (target,) = [t for t in stage.prometheus.targets() if t["health"] == "up"]
    assert target["labels"]["pod"] == pod["metadata"]["name"], target
    assert target["scrapeUrl"] == f"http://{pod['status']['podIP']}:{SIDECAR_METRICS_PORT}/metrics"


def gm_status(cluster: LocalCluster) -> dict:
    return dict(cluster.kubectl_json("get", "gm", MODEL, "-n", MODEL_NAMESPACE).get("status") or {})


def patch_model(cluster: LocalCluster, spec: dict) -> None:
    cluster.kubectl(
        "patch", "gm", MODEL, "-n", MODEL_NAMESPACE, "--type=merge", "-p", json.dumps({"spec": spec})
    )


def test_a_version_published_later_starts_its_canary_in_the_same_pod(stage: Stage, example: Any) -> None:
    """Version 2 is published after the pod started, then named in the spec. Versions move through
    routing: the pod template does not change, the sidecar fetches version 2 into the pod's copy of
    the repository and loads it in Triton, and the canary starts in the same pod, never restarted."""
    cluster = stage.cluster
    (pod,) = [p for p in model_pods(cluster) if ready(p)]
    template = cluster.kubectl_json("get", "deployment", MODEL, "-n", MODEL_NAMESPACE)["spec"]["template"]
    MODEL_POD.append(pod["metadata"]["uid"])
    real_pods.publish(example.model_dir, stage.workdir)
    started = time.monotonic()
    patch_model(cluster, {"model": {"version": "2"}})
    from guardedmodel_cli.demo_traffic import FreshRows, send

    address = sidecar_address(cluster)
    rows = FreshRows(np.asarray(example.dataset("validation").inputs, dtype=np.float32))
    answered: dict[str, int] = {}

    def canary_serving() -> dict:
        # The example shadows and replays a new version first (examples/fashion-mnist.yaml): live
        # traffic is mirrored to it while version 1 answers, then its canary serves its share.
        for version, count in send(address, rows.next(40)).versions.items():
            answered[version] = answered.get(version, 0) + count
        status = gm_status(cluster)
        return status if status.get("canaryVersion") == "2" and answered.get("2") else {}

    status = wait_for(
        "answers from the canary of version 2", canary_serving, 240, lambda: explain_model(cluster)
    )
    assert status["stableVersion"] == "1"
    comparison = status["comparison"]
    assert comparison["decision"] == "passed" and comparison["shadowRows"] > 0, comparison
    outcomes = [(h["version"], h["outcome"]) for h in status["history"]]
    assert outcomes.index(("2", "ShadowStarted")) < outcomes.index(("2", "CanaryStarted")), outcomes
    timed("version change to the canary answering", started)
    after = cluster.kubectl_json("get", "deployment", MODEL, "-n", MODEL_NAMESPACE)["spec"]["template"]
    assert after == template
    (same,) = [p for p in model_pods(cluster) if ready(p)]
    assert same["metadata"]["uid"] == MODEL_POD[0]
    assert all(c["restartCount"] == 0 for c in same["status"]["containerStatuses"])


def test_the_canary_is_rolled_back_by_a_routing_flip_without_a_restart(stage: Stage, example: Any) -> None:
    """In-distribution traffic through the Service: the canary (a weaker model) gets its share, the
    operator reads both versions' metrics from Prometheus and rolls version 2 back. Routing flips in
    the running sidecar, which keeps both versions loaded: the same pod, no restart, answers from
    version 1 only."""
    from guardedmodel_cli.demo_traffic import FreshRows, send

    cluster = stage.cluster
    rows = FreshRows(np.asarray(example.dataset("validation").inputs, dtype=np.float32))
    started = time.monotonic()
    versions: dict[str, int] = {}

    def rolled_back() -> dict:
        outcome = send(sidecar_address(cluster), rows.next(40))
        for version, count in outcome.versions.items():
            versions[version] = versions.get(version, 0) + count
        status = gm_status(cluster)
        history = status.get("history") or []
        return (
            status
            if any(h.get("version") == "2" and h.get("outcome") == "RolledBack" for h in history)
            else {}
        )

    status = wait_for(
        "the canary rolled back", rolled_back, 300, lambda: f"{versions}\n{explain_model(cluster)}"
    )
    timed("canary to rollback (with traffic)", started)
    assert status["stableVersion"] == "1" and not status.get("canaryVersion"), status
    # The phase follows the pod too: a readiness probe missed on a loaded node reads Progressing
    # until the next one passes, so the phase is waited for, not read once.
    status = wait_for(
        "phase RolledBack",
        lambda: (s := gm_status(cluster)).get("phase") == "RolledBack" and s,
        60,
        lambda: explain_model(cluster),
    )
    assert versions.get("2", 0) > 0, versions  # the canary did serve its share
    # Refused for what version 2 is, a weaker model, not for drift (the traffic is a fair sample).
    (reason,) = [
        h["reason"] for h in status["history"] if h["version"] == "2" and h["outcome"] == "RolledBack"
    ]
    assert "estimatedAccuracy" in reason or "reviewRate" in reason, reason
    (pod,) = [p for p in model_pods(cluster) if ready(p)]
    assert pod["metadata"]["uid"] == MODEL_POD[0]
    assert all(c["restartCount"] == 0 for c in pod["status"]["containerStatuses"])
    after = send(sidecar_address(cluster), rows.next(20))
    # Every answer from version 1 (a row the gate rejects as OOD is refused, with no version).
    assert set(after.versions) == {"1"} and after.versions["1"] >= 15, (after.versions, after.refusals)


def operator_pods(cluster: LocalCluster, namespace: str, release: str) -> list[dict]:
    return pods(cluster, namespace, f"app.kubernetes.io/instance={release}")


def reconciled_after_a_change(cluster: LocalCluster, review_below: float) -> None:
    """Change the spec and wait for the operator to observe it: whoever manages the model now works."""
    patch_model(cluster, {"confidence": {"reviewBelow": review_below}})
    generation = cluster.kubectl_json("get", "gm", MODEL, "-n", MODEL_NAMESPACE)["metadata"]["generation"]
    wait_for(
        "the operator to observe the change",
        lambda: gm_status(cluster).get("observedGeneration") == generation,
        90,
        lambda: explain_model(cluster),
    )


def test_helm_upgrade_to_all_features_keeps_the_model_reconciled(stage: Stage) -> None:
    """Two operator replicas with kopf peering, the ServiceMonitor, PrometheusRule and NetworkPolicy;
    the model's namespace added to the watched ones; the model pod is not touched."""
    cluster = stage.cluster
    install_prometheus_operator_crds(cluster)
    overlay = stage.workdir / "all-features-here.yaml"
    watched = yaml.safe_load((CHART_CI / "all-features-values.yaml").read_text())["watchNamespaces"]
    for namespace in watched:
        cluster.kubectl("create", "namespace", namespace, check=False)
    overlay.write_text(yaml.safe_dump({"watchNamespaces": [MODEL_NAMESPACE, *watched]}))
    (model_pod,) = [p["metadata"]["name"] for p in model_pods(cluster) if ready(p)]
    started = time.monotonic()
    deploy_release(
        stage, "upgrade", RELEASE, OPERATOR_NAMESPACE, CHART_CI / "all-features-values.yaml", overlay
    )
    selector = f"app.kubernetes.io/instance={RELEASE}"
    timed("helm upgrade to all features", started)
    running = wait_for(
        "two Ready operator pods of the upgraded release",
        lambda: (
            len(r := [p for p in operator_pods(cluster, OPERATOR_NAMESPACE, RELEASE) if ready(p)]) == 2 and r
        ),
        120,
        lambda: describe(cluster, OPERATOR_NAMESPACE, "pods"),
    )
    assert {p["spec"]["nodeName"] for p in running} == {"real-node"}
    kinds = cluster.kubectl(
        "get",
        "servicemonitors,prometheusrules,networkpolicies",
        "-n",
        OPERATOR_NAMESPACE,
        "-l",
        selector,
        "-o",
        "name",
    ).stdout.split()
    assert len(kinds) == 3, kinds
    assert "2" in cluster.helm("history", RELEASE, "-n", OPERATOR_NAMESPACE).stdout
    reconciled_after_a_change(cluster, 0.55)
    assert [p["metadata"]["name"] for p in model_pods(cluster) if ready(p)] == [model_pod]


def namespaces_of_the_release() -> list[str]:
    watched = yaml.safe_load((CHART_CI / "all-features-values.yaml").read_text())["watchNamespaces"]
    return [OPERATOR_NAMESPACE, MODEL_NAMESPACE, *watched]


def test_helm_uninstall_leaves_nothing_of_the_release(stage: Stage) -> None:
    cluster = stage.cluster
    uninstall = cluster.helm("uninstall", RELEASE, "-n", OPERATOR_NAMESPACE, "--wait", check=False)
    assert uninstall.returncode == 0, uninstall.stderr
    wait_for(
        "nothing left of the release",
        lambda: not release_leftovers(cluster, RELEASE, namespaces_of_the_release()),
        60,
        lambda: "\n".join(release_leftovers(cluster, RELEASE, namespaces_of_the_release())),
    )
    assert cluster.helm("list", "-A", "-q").stdout.strip() == ""


SOLO = "solo"


def test_a_single_namespace_release_in_the_restricted_namespace_takes_the_model_over(stage: Stage) -> None:
    """ci/single-namespace-values.yaml installed where the model lives: its operator pod is admitted
    by the restricted standard, and under a namespaced Role alone it reconciles the model."""
    cluster = stage.cluster
    started = time.monotonic()
    deploy_release(stage, "install", SOLO, MODEL_NAMESPACE, CHART_CI / "single-namespace-values.yaml")
    timed("single-namespace release to operator Ready", started)
    (pod,) = operator_pods(cluster, MODEL_NAMESPACE, SOLO)
    assert ready(pod) and pod["spec"]["nodeName"] == "real-node"
    kinds = cluster.kubectl("get", "clusterroles,clusterrolebindings", "-l", f"app.kubernetes.io/instance={SOLO}",
                            "-o", "name").stdout.split()  # fmt: skip
    assert kinds == []
    reconciled_after_a_change(cluster, 0.6)


def test_deleting_the_model_and_uninstalling_leave_nothing(stage: Stage) -> None:
    cluster = stage.cluster
    cluster.kubectl("delete", "gm", MODEL, "-n", MODEL_NAMESPACE, "--wait=true", "--timeout=90s")
    wait_for("the model's pods gone", lambda: not model_pods(cluster), 90, lambda: explain_model(cluster))
    uninstall = cluster.helm("uninstall", SOLO, "-n", MODEL_NAMESPACE, "--wait", check=False)
    assert uninstall.returncode == 0, uninstall.stderr
    wait_for(
        "nothing left of the release",
        lambda: not release_leftovers(cluster, SOLO, [MODEL_NAMESPACE]),
        60,
        lambda: "\n".join(release_leftovers(cluster, SOLO, [MODEL_NAMESPACE])),
    )
    leftovers = cluster.kubectl("get", "all,configmaps,serviceaccounts,roles,rolebindings,networkpolicies",
                                "-n", MODEL_NAMESPACE, "-o", "name").stdout.split()  # fmt: skip
    assert [o for o in leftovers if "kube-root-ca" not in o and not o.endswith("/default")] == []


def test_stopping_the_cluster_restores_the_host(stage: Stage) -> None:
    node = stage.cluster.real_node
    assert node is not None
    node_dir = node.node_dir
    started = time.monotonic()
    stage.monitoring.close()
    stage.cluster.down()
    timed("cluster stop with host restore", started)
    assert node_leftovers(node_dir, RealNodeSpec(), stage.before) == []
    print("\n" + "\n".join(f"{seconds:7.1f} s  {name}" for name, seconds in TIMINGS.items()))
