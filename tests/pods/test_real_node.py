"""The real node: a Go-built kubelet on Debian's containerd, runc and CNI bridge, beside the kwok nodes.

These run as root (the kubelet mounts, makes network namespaces and cgroups) and leave the host
as they found it; `make test-pods` runs them.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from guardedmodel_testground.cluster import LocalCluster
from guardedmodel_testground.kwok_nodes import GPU_RESOURCE
from guardedmodel_testground.node_host import take_snapshot
from guardedmodel_testground.oci_archive import ImageSpec, write_image_archive
from guardedmodel_testground.real_node import REAL_NODE_LABEL, RealNodeSpec, containerd_socket, node_leftovers

pytestmark = pytest.mark.pods

WEB_IMAGE = "guardedmodel.local/busybox-web:test"
PAGE = b"served from a real pod\n"


@pytest.fixture(scope="module")
def real_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"), real_node=RealNodeSpec())
    with cluster:
        yield cluster


def web_image(archive_dir: Path) -> Path:
    return write_image_archive(
        ImageSpec(name=WEB_IMAGE, cmd=("/bin/sh",), files={"/www/index.html": PAGE}), archive_dir / "web.tar"
    )


def web_pod(name: str) -> dict:
    """A tiny HTTP server with an HTTP readiness probe and an exec liveness probe, on the real node only."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeSelector": {REAL_NODE_LABEL: "real"},
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "web",
                    "image": WEB_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": [
                        "/bin/sh",
                        "-c",
                        "echo web server starting on $(hostname); exec httpd -f -v -p 8080 -h /www",
                    ],
                    "ports": [{"containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/index.html", "port": 8080}, "periodSeconds": 1},
                    "livenessProbe": {"exec": {"command": ["cat", "/www/index.html"]}, "periodSeconds": 2},
                }
            ],
        },
    }


def wait_ready(cluster: LocalCluster, name: str, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    pod: dict = {}
    while time.monotonic() < deadline:
        pod = cluster.kubectl_json("get", "pod", name)
        conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
        if pod["status"].get("phase") == "Running" and conditions.get("Ready") == "True":
            return pod
        time.sleep(0.5)
    events = cluster.kubectl(
        "get", "events", "--field-selector", f"involvedObject.name={name}", check=False
    ).stdout
    raise AssertionError(f"pod {name} not Ready in {timeout}s: {json.dumps(pod.get('status'))}\n{events}")


def run_web_pod(cluster: LocalCluster, name: str, archive_dir: Path) -> tuple[dict, float]:
    assert cluster.real_node is not None
    assert WEB_IMAGE in cluster.real_node.import_image(web_image(archive_dir))
    started = time.monotonic()
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(web_pod(name)))
    return wait_ready(cluster, name), time.monotonic() - started


def test_real_node_is_ready_beside_the_kwok_gpu_nodes(real_cluster: LocalCluster) -> None:
    nodes = {n["metadata"]["name"]: n for n in real_cluster.kubectl_json("get", "nodes")["items"]}
    ready = {
        name
        for name, node in nodes.items()
        if any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"])
    }
    assert ready == {"real-node", *(node.name for node in real_cluster.nodes)}
    real = nodes["real-node"]
    assert real["metadata"]["labels"][REAL_NODE_LABEL] == "real"
    assert real["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    assert real["status"]["nodeInfo"]["kubeletVersion"].startswith("v1.")
    assert GPU_RESOURCE not in real["status"]["capacity"]
    assert all(nodes[n.name]["status"]["capacity"][GPU_RESOURCE] == str(n.gpus) for n in real_cluster.nodes)


def test_a_pod_from_a_local_image_runs_is_ready_serves_the_host_and_logs(
    real_cluster: LocalCluster, tmp_path: Path
) -> None:
    pod, seconds = run_web_pod(real_cluster, "web", tmp_path)
    print(f"pod Ready in {seconds:.1f}s")
    assert pod["spec"]["nodeName"] == "real-node"
    pod_ip = pod["status"]["podIP"]
    assert pod_ip.startswith("10.250.0.")
    with urllib.request.urlopen(f"http://{pod_ip}:8080/index.html", timeout=5) as response:
        assert response.read() == PAGE
    result = real_cluster.kubectl("logs", "web", "-c", "web", check=False)
    assert result.returncode == 0, result.stderr
    logs = result.stdout
    assert "web server starting on web" in logs
    # The probes keep passing: no restarts.
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0


def test_stopping_the_cluster_leaves_the_host_as_it_was(tmp_path: Path) -> None:
    before = take_snapshot()
    cluster = LocalCluster(tmp_path / "cluster", real_node=RealNodeSpec())
    with cluster:
        run_web_pod(cluster, "web", tmp_path)
        assert cluster.real_node is not None
        node = cluster.real_node
        node_dir, pids = node.node_dir, node.pids
    print(
        f"real node stopped in {node.timings['stop_s']:.1f}s (pods drained in {node.timings['drain_s']:.1f}s)"
    )
    assert node_leftovers(node_dir, RealNodeSpec(), before) == []
    assert not Path("/sys/class/net/gmcni0").exists()
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
    assert _processes_mentioning(str(containerd_socket(node_dir))) == []
    assert take_snapshot().sysctls == before.sysctls


def _processes_mentioning(needle: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if needle in cmdline:
                found.append(f"{proc.name}: {cmdline}")
    return found
