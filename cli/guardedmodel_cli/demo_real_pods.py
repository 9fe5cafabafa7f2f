"""The demo's stage on real pods (`guardedmodel demo --real-pods`): the same story, with the operator
and the model running in containers on a real kubelet instead of as local processes.

What is set up (the test ground's `real_pods` does the work; the real-pod tests use the same):
the product image built from the Dockerfile and a CPU Triton image (cached), imported into the
real node's containerd; Prometheus and Alertmanager on the host, Prometheus finding the pods
through the API server; the model repository served over http://; `helm install` of the chart
(ci/minimal-values.yaml); the manifest applied in a namespace enforcing the restricted Pod Security
standard, with Triton's GPU request replaced through `spec.triton.resources`.

Traffic goes to a ready endpoint of the model's Service. The node has no kube-proxy, so the
ClusterIP does not route from the host; the endpoint is what the Service would pick, and it is
looked up again for every burst because a version change rolls the pod to a new address.

Needs root and `make pod-deps node-deps` (`make demo-real-pods` does both).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

from guardedmodel_cli.demo_output import say
from guardedmodel_testground import real_pods
from guardedmodel_testground.cluster import LocalCluster
from guardedmodel_testground.prometheus import Alertmanager, Prometheus
from guardedmodel_testground.real_node import RealNodeSpec, missing_programs
from guardedmodel_testground.stack import Monitoring

RELEASE = "guardedmodel"
MODEL_SERVICE_PORT = "http"


class RealPodsError(RuntimeError):
    """The real-pod stage could not be set up or lost its operator."""


class RealPodsStage:
    def __init__(self, stack: contextlib.ExitStack, state_dir: Path, namespace: str, timeout: float) -> None:
        self.stack = stack
        self.state_dir = state_dir
        self.namespace = namespace
        self.timeout = timeout
        self.repository_url = ""

    @staticmethod
    def check_host() -> None:
        if os.geteuid() != 0:
            raise RealPodsError("--real-pods runs a kubelet and containerd: run it as root")
        missing = missing_programs()
        if missing:
            raise RealPodsError(
                f"--real-pods needs {', '.join(missing)}: run `make pod-deps node-deps` first"
            )

    def start(self, build: Any) -> tuple[LocalCluster, Monitoring]:
        self.check_host()
        say("Building the images from the Dockerfile with buildah (cached): the product and a CPU Triton")
        started = time.monotonic()
        self.images = real_pods.ensure_images()
        print(
            f"{self.images.product.reference}, {self.images.triton.reference} ({time.monotonic() - started:.0f}s)"
        )
        say("Starting the cluster with one real node (kubelet, containerd) beside the kwok GPU nodes")
        self.cluster = self.stack.enter_context(
            LocalCluster(self.state_dir / "cluster", real_node=RealNodeSpec())
        )
        assert self.cluster.real_node is not None
        real_pods.import_images(self.cluster.real_node, self.images)
        print(f"cluster up: {self.cluster.server_url}; images imported into the node's containerd")
        say(
            "Prometheus (finding the pods through the API server) + Alertmanager with the chart's alert rules"
        )
        monitoring = real_pods.start_pod_monitoring(
            self.stack, self.state_dir, self.cluster, [self.namespace]
        )
        self.prometheus: Prometheus = monitoring.prometheus
        self.alertmanager: Alertmanager = monitoring.alertmanager
        print(f"Prometheus {self.prometheus.url}   Alertmanager {self.alertmanager.url}")
        self.repository_url, _ = self.stack.enter_context(
            real_pods.serve_model(build.model_dir, self.state_dir)
        )
        print(f"model repository served at {self.repository_url}")
        self.install_operator()
        self.cluster.kubectl("create", "namespace", self.namespace)
        self.cluster.kubectl(
            "label", "namespace", self.namespace, "pod-security.kubernetes.io/enforce=restricted"
        )
        return self.cluster, monitoring

    def install_operator(self) -> None:
        say("helm install guardedmodel charts/guardedmodel -f ci/minimal-values.yaml (the operator as a pod)")
        values = [
            real_pods.CHART / "ci" / "minimal-values.yaml",
            real_pods.operator_values(self.state_dir, self.prometheus.url),
        ]
        started = time.monotonic()
        result = real_pods.helm_release(
            self.cluster, "install", RELEASE, real_pods.OPERATOR_NAMESPACE, values, timeout=self.timeout
        )
        if "STATUS: deployed" not in result.stdout:
            raise RealPodsError(
                f"helm install failed:\n{result.stdout}{result.stderr}\n{self.operator_logs()}"
            )
        print(f"operator pod Ready ({time.monotonic() - started:.0f}s)")

    def manifest(self, manifest: dict[str, Any]) -> dict[str, Any]:
        return real_pods.real_node_manifest(manifest, repository=self.repository_url, built=self.images)

    def sidecar_address(self) -> str:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            address = real_pods.ready_endpoint(self.cluster, self.namespace, "fashion", MODEL_SERVICE_PORT)
            if address:
                return address
            time.sleep(1)
        raise RealPodsError(f"the model's Service has no ready endpoint after {self.timeout:.0f}s")

    def check_alive(self) -> None:
        """The operator pod has not crashed repeatedly (it restarts on its own otherwise)."""
        selector = f"app.kubernetes.io/instance={RELEASE}"
        pods = self.cluster.kubectl_json("get", "pods", "-n", real_pods.OPERATOR_NAMESPACE, "-l", selector)
        for pod in pods["items"]:
            for status in pod["status"].get("containerStatuses", []):
                if status.get("restartCount", 0) >= 3:
                    raise RealPodsError(f"the operator pod keeps restarting:\n{self.operator_logs()}")

    def operator_logs(self) -> str:
        result = self.cluster.kubectl(
            "logs", "-n", real_pods.OPERATOR_NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}",
            "--tail=60", check=False,
        )  # fmt: skip
        return result.stdout + result.stderr
