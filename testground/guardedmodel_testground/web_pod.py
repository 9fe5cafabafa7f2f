"""A tiny web pod for checking a real node end to end: image imported into containerd, scheduled
on the real node, readiness (HTTP) and liveness (exec) probes, a page the host fetches from the pod
IP, and a line in its log.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from .cluster import LocalCluster
from .oci_archive import ImageSpec, write_image_archive
from .real_node import REAL_NODE_LABEL

WEB_IMAGE = "guardedmodel.local/busybox-web:test"
PAGE = b"served from a real pod\n"


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
