"""The local control plane schedules GPU pods onto kwok nodes and rolls Deployments for real."""

from __future__ import annotations

import json
import time

import pytest

from guardedmodel_testground.cluster import LocalCluster
from guardedmodel_testground.kwok_nodes import GPU_RESOURCE

pytestmark = pytest.mark.integration

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {{name: gpu-app, namespace: default}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: gpu-app}}}}
  strategy: {{type: RollingUpdate, rollingUpdate: {{maxSurge: 1, maxUnavailable: 0}}}}
  template:
    metadata: {{labels: {{app: gpu-app}}}}
    spec:
      containers:
      - name: server
        image: {image}
        resources:
          limits: {{"{gpu}": 1}}
"""


def wait_for(what: str, probe, timeout: float = 60):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}; last observation: {last!r}")


def running_pods(cluster: LocalCluster, image: str) -> list[dict]:
    pods = cluster.kubectl_json("get", "pods", "-l", "app=gpu-app")["items"]
    return [
        pod
        for pod in pods
        if pod["status"].get("phase") == "Running"
        and pod["spec"]["containers"][0]["image"] == image
        and "deletionTimestamp" not in pod["metadata"]
    ]


def test_gpu_deployment_runs_on_kwok_gpu_nodes_and_rolls(k8s_cluster: LocalCluster) -> None:
    nodes = k8s_cluster.kubectl_json("get", "nodes")["items"]
    gpu_nodes = {
        n["metadata"]["name"] for n in nodes if int(n["status"]["allocatable"].get(GPU_RESOURCE, "0")) > 0
    }
    assert len(gpu_nodes) >= 2

    k8s_cluster.kubectl(
        "apply", "-f", "-", input=DEPLOYMENT.format(image="registry.local/server:1", gpu=GPU_RESOURCE)
    )
    pods = wait_for(
        "two Running pods",
        lambda: (
            len(running_pods(k8s_cluster, "registry.local/server:1")) == 2
            and running_pods(k8s_cluster, "registry.local/server:1")
        ),
    )
    assert {pod["spec"]["nodeName"] for pod in pods} <= gpu_nodes
    assert all(pod["spec"]["containers"][0]["resources"]["limits"][GPU_RESOURCE] == "1" for pod in pods)

    k8s_cluster.kubectl("set", "image", "deployment/gpu-app", "server=registry.local/server:2")
    k8s_cluster.kubectl("rollout", "status", "deployment/gpu-app", "--timeout=60s", timeout=90)
    wait_for(
        "the new pods only",
        lambda: (
            len(running_pods(k8s_cluster, "registry.local/server:2")) == 2
            and not running_pods(k8s_cluster, "registry.local/server:1")
        ),
    )
    deployment = k8s_cluster.kubectl_json("get", "deployment", "gpu-app")
    assert deployment["status"]["updatedReplicas"] == 2
    assert deployment["status"]["availableReplicas"] == 2
    revisions = json.loads(
        k8s_cluster.kubectl("get", "replicasets", "-l", "app=gpu-app", "-o", "json").stdout
    )
    assert len(revisions["items"]) == 2  # the old ReplicaSet is kept, scaled to zero, for rollback
    k8s_cluster.kubectl("delete", "deployment", "gpu-app", "--wait=true")


def test_gpu_capacity_is_enforced_by_the_scheduler(k8s_cluster: LocalCluster) -> None:
    """A pod asking for more GPUs than any node has stays Pending with a scheduler event."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "too-many-gpus", "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "x", "resources": {"limits": {GPU_RESOURCE: 64}}}]},
    }
    k8s_cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
    wait_for(
        "a FailedScheduling event",
        lambda: (
            "Insufficient nvidia.com/gpu"
            in k8s_cluster.kubectl(
                "get", "events", "--field-selector", "involvedObject.name=too-many-gpus"
            ).stdout
        ),
    )
    assert k8s_cluster.kubectl_json("get", "pod", "too-many-gpus")["status"]["phase"] == "Pending"
    k8s_cluster.kubectl("delete", "pod", "too-many-gpus", "--wait=true")


@pytest.mark.reliability
@pytest.mark.parametrize("kill", [False, True], ids=["stopped", "killed"])
def test_the_control_plane_restarts_in_place(k8s_cluster: LocalCluster, kill: bool) -> None:
    """API server and etcd go down and come back on the same address with the same data and
    credentials: a client's kubeconfig keeps working, objects and their resourceVersions survive,
    and the controllers that stayed up act on new objects again."""
    name = f"outage-{int(kill)}"
    kubeconfig = k8s_cluster.kubeconfig.read_text()
    k8s_cluster.kubectl("create", "configmap", name, "--from-literal=kept=yes")
    before = k8s_cluster.kubectl_json("get", "configmap", name)
    k8s_cluster.stop_control_plane(kill=kill)
    try:
        down = k8s_cluster.kubectl("get", "configmap", name, check=False, timeout=30)
        assert down.returncode != 0 and "refused" in down.stderr, down
    finally:
        k8s_cluster.start_control_plane()
    assert k8s_cluster.kubeconfig.read_text() == kubeconfig
    after = k8s_cluster.kubectl_json("get", "configmap", name)
    assert after["data"] == {"kept": "yes"}
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    # The controller manager and kwok reconnect on their own: a new Deployment gets a Running pod.
    k8s_cluster.kubectl("create", "deployment", name, "--image=registry.local/after-outage:1")
    wait_for(
        "a Running pod of the Deployment made after the restart",
        lambda: running_pods_of(k8s_cluster, name),
        timeout=90,
    )
    k8s_cluster.kubectl("delete", "deployment", name, "--wait=false")
    k8s_cluster.kubectl("delete", "configmap", name)


def running_pods_of(cluster: LocalCluster, app: str) -> list[dict]:
    pods = cluster.kubectl_json("get", "pods", "-l", f"app={app}")["items"]
    return [pod for pod in pods if pod["status"].get("phase") == "Running"]
