"""The real node: a Go-built kubelet on Debian's containerd, runc and CNI bridge, beside the kwok nodes.

These run as root (the kubelet mounts, makes network namespaces and cgroups) and leave the host
as they found it; `make test-pods` runs them.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from guardedmodel_testground.cluster import LocalCluster
from guardedmodel_testground.kwok_nodes import GPU_RESOURCE
from guardedmodel_testground.procs import StartError
from guardedmodel_testground.real_node import REAL_NODE_LABEL, RealNode, RealNodeSpec
from guardedmodel_testground.web_pod import PAGE, run_web_pod, web_image, web_pod

pytestmark = pytest.mark.pods


@pytest.fixture(scope="module")
def real_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"), real_node=RealNodeSpec())
    with cluster:
        yield cluster


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


def test_a_second_real_node_on_the_same_host_is_refused_clearly(
    real_cluster: LocalCluster, tmp_path: Path
) -> None:
    assert real_cluster.real_node is not None
    second = RealNode(
        tmp_path / "node",
        server_url=real_cluster.server_url,
        ca_file=real_cluster.real_node.ca_file,
        node_token="unused",
        admin_kubeconfig=real_cluster.kubeconfig,
        kubectl=real_cluster.binaries.kubectl if real_cluster.binaries else Path("kubectl"),
    )
    with pytest.raises(StartError, match="another real node runs on this host"):
        second.start()
    assert real_cluster.real_node.kubelet is not None and real_cluster.real_node.kubelet.alive()


def test_pods_reach_the_api_server_through_the_kubernetes_service(
    real_cluster: LocalCluster, tmp_path: Path
) -> None:
    """What an in-cluster client (the operator pod) does first: dial KUBERNETES_SERVICE_HOST:443.

    busybox's TLS client cannot complete a handshake with the API server's cipher suites, so the
    pod speaks plain HTTP to it: only Go's TLS server answers that with this exact sentence, and
    the only one behind 10.96.0.1:443 is the API server, reached through the node's DNAT rule.
    """
    assert real_cluster.real_node is not None
    real_cluster.real_node.import_image(web_image(tmp_path))
    pod = web_pod("api-client")
    container = pod["spec"]["containers"][0]
    container["command"] = [
        "/bin/sh",
        "-c",
        'printf "GET /version HTTP/1.0\\r\\n\\r\\n" | nc $KUBERNETES_SERVICE_HOST $KUBERNETES_SERVICE_PORT',
    ]
    del container["readinessProbe"], container["livenessProbe"]
    pod["spec"]["restartPolicy"] = "Never"
    real_cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(pod))
    deadline = time.monotonic() + 60
    phase = ""
    while time.monotonic() < deadline and phase not in ("Succeeded", "Failed"):
        phase = real_cluster.kubectl_json("get", "pod", "api-client")["status"].get("phase", "")
        time.sleep(0.5)
    logs = real_cluster.kubectl("logs", "api-client", check=False)
    assert phase == "Succeeded", logs.stdout + logs.stderr
    assert "Client sent an HTTP request to an HTTPS server" in logs.stdout
