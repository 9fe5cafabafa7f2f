"""The chart installed for real: the operator pod on the real node, a GuardedModel pod that runs
Triton and the guard sidecar in a restricted namespace, and guarded inference through it.

One cluster for the module (the tests run in order, each building on the previous one):

1. the product image (the repository's Dockerfile) and the CPU Triton image are built (cached) and
   imported into the real node's containerd; the product image is also named `guardedmodel:dev`,
   the name the chart's ci values use;
2. `helm install` with ci/minimal-values.yaml, the operator pinned to the real node: it becomes
   Ready under the chart's ServiceAccount and reaches the API server through the `kubernetes`
   Service IP (the node's only route to it);
3. the worked example served over http:// from the host's bridge address; a GuardedModel in a
   namespace enforcing the restricted Pod Security standard, CPU-only Triton through
   `spec.triton.resources`: the `fetch-model` init container fetches it, both containers' probes
   pass, and tritonclient gets guarded answers from the pod IP;
4. `helm uninstall` leaves nothing of the release, and stopping the cluster restores the host.

Needs root, the node packages and the image builders (`make test-pods`).
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from guardedmodel_testground import images
from guardedmodel_testground.cluster import LocalCluster
from guardedmodel_testground.model_server import gateway_address, pack_model, serve_folder
from guardedmodel_testground.node_host import HostSnapshot, take_snapshot
from guardedmodel_testground.paths import repo_root
from guardedmodel_testground.real_node import (
    REAL_NODE_LABEL,
    RealNodeSpec,
    node_leftovers,
)

pytestmark = pytest.mark.pods

CHART = repo_root() / "charts" / "guardedmodel"
RELEASE = "gm"
OPERATOR_NAMESPACE = "guardedmodel-system"
MODEL_NAMESPACE = "guarded"
MODEL = "fashion"
#: The name the chart's ci values give the product image (docker.io/library/ once normalised).
CI_IMAGE = "docker.io/library/guardedmodel:dev"
#: Everything the release may create, namespaced and cluster-wide.
NAMESPACED_KINDS = "deployments,replicasets,pods,services,serviceaccounts,roles,rolebindings,networkpolicies"
CLUSTER_KINDS = "clusterroles,clusterrolebindings"
#: What Triton asks for on a CPU node: replaces the default GPU limit as a whole.
CPU_TRITON_RESOURCES = {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}}
SIDECAR_HTTP_PORT = 8080
SIDECAR_METRICS_PORT = 9090

#: Seconds each stage took, printed at the end (`pytest -s`).
TIMINGS: dict[str, float] = {}
#: When the GuardedModel was applied (the Ready test measures from there).
APPLIED_AT: list[float] = []


@dataclass
class Stage:
    cluster: LocalCluster
    before: HostSnapshot
    product: images.BuiltImage
    triton: images.BuiltImage
    workdir: Path


def timed(name: str, started: float) -> float:
    TIMINGS[name] = round(time.monotonic() - started, 1)
    return TIMINGS[name]


def wait_for(what: str, probe: Callable[[], Any], timeout: float, explain: Callable[[], str]) -> Any:
    """Poll `probe` until it returns something true and return that; fail with `explain()`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"{what}: not within {timeout:.0f}s\n{explain()}")


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    started = time.monotonic()
    product = images.ensure_product_image()
    triton = images.ensure_triton_image()
    timed("images built or found in the cache", started)
    workdir = tmp_path_factory.mktemp("chart-on-real-node")
    before = take_snapshot()
    started = time.monotonic()
    cluster = LocalCluster(workdir / "cluster", real_node=RealNodeSpec())
    with cluster:
        timed("cluster with real node up", started)
        try:
            yield Stage(cluster, before, product, triton, workdir)
        finally:
            cordon(cluster)


def cordon(cluster: LocalCluster) -> None:
    """Keep controllers' replacement pods off the real node while it drains (a test that failed
    half way leaves Deployments whose pods would come back to it until the drain times out)."""
    if cluster.real_node is not None:
        cluster.kubectl("cordon", RealNodeSpec().name, check=False)


def pods(cluster: LocalCluster, namespace: str, selector: str) -> list[dict]:
    items: list[dict] = cluster.kubectl_json("get", "pods", "-n", namespace, "-l", selector)["items"]
    return items


def ready(pod: dict) -> bool:
    conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
    return pod["status"].get("phase") == "Running" and conditions.get("Ready") == "True"


def crash_looping(pod: dict) -> str:
    """Which container of `pod` has failed twice in a row (empty when none)."""
    statuses = pod["status"].get("initContainerStatuses", []) + pod["status"].get("containerStatuses", [])
    for status in statuses:
        terminated = status.get("lastState", {}).get("terminated") or {}
        if terminated.get("exitCode", 0) != 0 and status.get("restartCount", 0) >= 2:
            return f"container {status['name']} keeps failing (exit code {terminated['exitCode']})"
    return ""


def describe(cluster: LocalCluster, namespace: str, *what: str) -> str:
    out = cluster.kubectl("describe", *what, "-n", namespace, check=False)
    events = cluster.kubectl("get", "events", "-n", namespace, "--sort-by=.lastTimestamp", check=False)
    return f"{out.stdout}{out.stderr}\n{events.stdout}"


def test_the_images_are_imported_into_the_real_node(stage: Stage) -> None:
    node = stage.cluster.real_node
    assert node is not None
    started = time.monotonic()
    assert stage.product.reference in node.import_image(stage.product.archive)
    assert stage.triton.reference in node.import_image(stage.triton.archive)
    node.ctr("images", "tag", "--force", stage.product.reference, CI_IMAGE)
    timed("image import (product and Triton)", started)
    held = node.images()
    assert {stage.product.reference, stage.triton.reference, CI_IMAGE} <= set(held), held


def real_node_values(workdir: Path) -> Path:
    """What the real node adds to a ci scenario.

    The operator pod goes on the real node: the kwok nodes are untainted, so without it the pod could
    land on a simulated node and only pretend to run. No DNS is needed: the operator dials the
    API server at KUBERNETES_SERVICE_HOST, the `kubernetes` Service's address, which the node
    routes to the API server.
    """
    values = {"nodeSelector": {REAL_NODE_LABEL: "real"}}
    path = workdir / "real-node-values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_helm_install_runs_the_operator_pod_on_the_real_node(stage: Stage) -> None:
    cluster = stage.cluster
    started = time.monotonic()
    install = cluster.helm(
        "install", RELEASE, str(CHART), "-n", OPERATOR_NAMESPACE, "--create-namespace",
        "-f", str(CHART / "ci" / "minimal-values.yaml"), "-f", str(real_node_values(stage.workdir)),
        "--wait", "--timeout", "180s", check=False, timeout=240,
    )  # fmt: skip
    selector = f"app.kubernetes.io/instance={RELEASE}"
    assert "STATUS: deployed" in install.stdout, (
        install.stdout
        + install.stderr
        + describe(cluster, OPERATOR_NAMESPACE, "pods", "-l", selector)
        + cluster.kubectl("logs", "-n", OPERATOR_NAMESPACE, "-l", selector, "--previous", check=False).stdout
    )
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
    CA, the chart's ServiceAccount token, authorized to list GuardedModels cluster-wide; and the
    operator's own requests never had to retry."""
    cluster = stage.cluster
    (pod,) = pods(cluster, OPERATOR_NAMESPACE, f"app.kubernetes.io/instance={RELEASE}")
    result = cluster.kubectl(
        "exec", "-n", OPERATOR_NAMESPACE, pod["metadata"]["name"], "--",
        "python3", "-c", LIST_GUARDED_MODELS, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout) == {"status": 200, "kind": "GuardedModelList"}
    logs = operator_logs(cluster)
    assert "Request attempt" not in logs, logs


def guarded_model(stage: Stage, repository: str) -> dict:
    """The worked example's manifest, made to run on the real CPU node from local images."""
    manifest: dict = yaml.safe_load((repo_root() / "examples" / "fashion-mnist.yaml").read_text())
    manifest["metadata"] = {"name": MODEL, "namespace": MODEL_NAMESPACE}
    spec = manifest["spec"]
    spec["model"]["repository"] = repository
    spec["triton"] = {
        "image": stage.triton.reference,
        "resources": CPU_TRITON_RESOURCES,
        "nodeSelector": {REAL_NODE_LABEL: "real"},
        "tolerations": [],
        "shmSize": "64Mi",
    }
    spec["sidecar"] = {
        "image": stage.product.reference,
        "resources": {"requests": {"cpu": "200m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
    }
    return manifest


@pytest.fixture(scope="module")
def model_url(stage: Stage) -> Iterator[str]:
    from guardedmodel_fit.example import DEFAULT_OUT, build_example

    build = build_example(DEFAULT_OUT, versions=("1", "2"), progress=False)
    pack_model(build.model_dir, stage.workdir / "public")
    host = gateway_address(RealNodeSpec().pod_cidr)
    with serve_folder(stage.workdir / "public", host) as (url, requests):
        yield url
        assert f"/{build.model_dir.name}.tar.gz" in requests


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
    assert containers["triton"]["image"] == stage.triton.reference
    assert containers["sidecar"]["image"] == fetch["image"] == stage.product.reference
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


def test_tritonclient_gets_guarded_answers_from_the_pod(stage: Stage) -> None:
    import tritonclient.http as httpclient

    from guardedmodel_fit.example import DEFAULT_OUT, build_example

    cluster = stage.cluster
    (pod,) = [p for p in model_pods(cluster) if ready(p)]
    build = build_example(DEFAULT_OUT, versions=("1", "2"), progress=False)
    good = np.asarray(build.dataset("validation").inputs, dtype=np.float32)[:16]
    digits = np.asarray(build.dataset("digits").inputs, dtype=np.float32)[:16]
    client = httpclient.InferenceServerClient(f"{pod['status']['podIP']}:{SIDECAR_HTTP_PORT}")
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
    # What a Prometheus on the host scrapes from the pod IP: the answers just given, by decision.
    with urllib.request.urlopen(
        f"http://{pod['status']['podIP']}:{SIDECAR_METRICS_PORT}/metrics"
    ) as response:
        metrics = response.read().decode()
    counted = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("guardedmodel_requests_total{")
    )
    # Three requests of 1, 16 and 16 rows: counted per request or per row, depending on the batch policy.
    assert 3 <= counted <= 33, metrics
    assert len(first) == 1 and first[0] in {"accept", "review", "reject"}
    assert len(in_distribution) == len(far) == 16
    # alpha 0.05: most in-distribution rows pass, most handwritten digits are refused.
    assert in_distribution.count("reject") <= 4, in_distribution
    assert far.count("reject") >= 12, far


def release_leftovers(cluster: LocalCluster, namespaces: list[str]) -> list[str]:
    selector = f"app.kubernetes.io/instance={RELEASE}"
    found = []
    for namespace in namespaces:
        found += cluster.kubectl(
            "get", NAMESPACED_KINDS, "-n", namespace, "-l", selector, "-o", "name"
        ).stdout.split()
    found += cluster.kubectl("get", CLUSTER_KINDS, "-l", selector, "-o", "name").stdout.split()
    return found


def test_helm_uninstall_leaves_nothing_of_the_release(stage: Stage) -> None:
    cluster = stage.cluster
    cluster.kubectl("delete", "gm", MODEL, "-n", MODEL_NAMESPACE, "--wait=true", "--timeout=60s")
    uninstall = cluster.helm("uninstall", RELEASE, "-n", OPERATOR_NAMESPACE, "--wait", check=False)
    assert uninstall.returncode == 0, uninstall.stderr
    wait_for(
        "nothing left of the release",
        lambda: not release_leftovers(cluster, [OPERATOR_NAMESPACE, MODEL_NAMESPACE]),
        60,
        lambda: "\n".join(release_leftovers(cluster, [OPERATOR_NAMESPACE, MODEL_NAMESPACE])),
    )
    assert cluster.helm("list", "-A", "-q").stdout.strip() == ""


def test_stopping_the_cluster_restores_the_host(stage: Stage) -> None:
    node = stage.cluster.real_node
    assert node is not None
    node_dir = node.node_dir
    started = time.monotonic()
    cordon(stage.cluster)
    stage.cluster.down()
    timed("cluster stop with host restore", started)
    assert node_leftovers(node_dir, RealNodeSpec(), stage.before) == []
    print("\n" + "\n".join(f"{seconds:7.1f} s  {name}" for name, seconds in TIMINGS.items()))
