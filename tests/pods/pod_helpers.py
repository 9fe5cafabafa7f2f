"""What the real-pod tests share: a module's stage (the worked example, its images, a cluster with a
real node), a guarded model served by a real pod, waiting with an explanation, and reading pods' state."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import yaml

from guardedmodel_cli.demo_traffic import FreshRows
from guardedmodel_testground import real_pods
from guardedmodel_testground.cluster import LocalCluster
from guardedmodel_testground.paths import repo_root
from guardedmodel_testground.real_node import RealNodeSpec

if TYPE_CHECKING:  # the example's module loads at the fixture's start, as the tests that build it do
    from guardedmodel_fit.example import ExampleBuild


@dataclass
class RealNodeGround:
    """What a module's real-pod fixture builds on; `stack` holds what the module starts there and is
    closed before the cluster stops."""

    example: ExampleBuild
    built: real_pods.Images
    workdir: Path
    cluster: LocalCluster
    stack: contextlib.ExitStack

    def fresh_rows(self) -> FreshRows:
        """In-distribution rows the model was not trained on."""
        return FreshRows(np.asarray(self.example.dataset("validation").inputs, dtype=np.float32))


@contextlib.contextmanager
def real_node_ground(
    tmp_path_factory: pytest.TempPathFactory, name: str, versions: Sequence[str] = ("1",)
) -> Iterator[RealNodeGround]:
    """The worked example with `versions` built, the product's images built, and a cluster with a real
    node in a work dir named `name`."""
    from guardedmodel_fit.example import DEFAULT_OUT, build_example

    example = build_example(DEFAULT_OUT, versions=versions, progress=False)
    built = real_pods.ensure_images()
    workdir = tmp_path_factory.mktemp(name)
    with (
        LocalCluster(workdir / "cluster", real_node=RealNodeSpec()) as cluster,
        contextlib.ExitStack() as stack,
    ):
        yield RealNodeGround(example, built, workdir, cluster, stack)


def example_manifest(name: str, namespace: str) -> dict[str, Any]:
    """The worked example's GuardedModel (examples/fashion-mnist.yaml) as `namespace/name`."""
    manifest: dict[str, Any] = yaml.safe_load((repo_root() / "examples" / "fashion-mnist.yaml").read_text())
    manifest["metadata"] = {"name": name, "namespace": namespace}
    return manifest


def serve_on_real_node(
    ground: RealNodeGround,
    manifest: dict[str, Any],
    prometheus_url: str | None,
    *,
    repository: str | None = None,
    before_apply: Callable[[], Any] | None = None,
    extra_values: Sequence[Path] = (),
) -> None:
    """The images imported into the real node, the example's model repository served from the host
    (until the ground's stack closes; or `repository`, a bucket the caller filled), the operator
    installed from the chart's minimal ci values (pointed at `prometheus_url`, when given) and
    `manifest` applied, made to run on the CPU node, in a new namespace of its own (`before_apply`
    runs once it exists)."""
    cluster, workdir, built = ground.cluster, ground.workdir, ground.built
    assert cluster.real_node is not None
    real_pods.import_images(cluster.real_node, built)
    url = (
        repository or ground.stack.enter_context(real_pods.serve_model(ground.example.model_dir, workdir))[0]
    )
    values = [
        real_pods.CHART / "ci" / "minimal-values.yaml",
        real_pods.operator_values(workdir, prometheus_url),
        *extra_values,
    ]
    install = real_pods.helm_release(cluster, "install", "gm", real_pods.OPERATOR_NAMESPACE, values)
    assert "STATUS: deployed" in install.stdout, install.stdout + install.stderr
    cluster.kubectl("create", "namespace", manifest["metadata"]["namespace"])
    if before_apply is not None:
        before_apply()
    placed = real_pods.real_node_manifest(manifest, repository=url, built=built)
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(placed))


def wait_for(
    what: str, probe: Callable[[], Any], timeout: float, explain: Callable[[], str], interval: float = 1
) -> Any:
    """Poll `probe` every `interval` seconds until it returns something true and return that; fail
    with `explain()`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout:.0f}s\n{explain()}")


def pods(cluster: LocalCluster, namespace: str, selector: str) -> list[dict]:
    items: list[dict] = cluster.kubectl_json("get", "pods", "-n", namespace, "-l", selector)["items"]
    return items


def ready(pod: dict) -> bool:
    """Running, Ready and not terminating: a pod being deleted keeps its Ready condition through its
    preStop delay, but its endpoint no longer takes new traffic."""
    conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
    terminating = bool(pod["metadata"].get("deletionTimestamp"))
    return pod["status"].get("phase") == "Running" and conditions.get("Ready") == "True" and not terminating


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
    models = cluster.kubectl("get", "guardedmodels", "-n", namespace, "-o", "yaml", check=False)
    operator = cluster.kubectl(
        "logs", "-n", real_pods.OPERATOR_NAMESPACE, "-l", "app.kubernetes.io/component=operator",
        "--tail=150", "--timestamps", check=False,
    )  # fmt: skip
    operator_pods = cluster.kubectl(
        "get", "pods", "-n", real_pods.OPERATOR_NAMESPACE, "-o", "wide", check=False
    )
    return (
        f"{out.stdout}{out.stderr}\n{events.stdout}\n{models.stdout}\n{operator_pods.stdout}\n"
        f"operator log (last lines):\n{operator.stdout}{operator.stderr}"
    )
