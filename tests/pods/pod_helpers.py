"""What the real-pod tests share: a guarded model served by a real pod, waiting with an explanation,
and reading pods' state."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from guardedmodel_testground import real_pods
from guardedmodel_testground.cluster import LocalCluster
from guardedmodel_testground.paths import repo_root


def example_manifest(name: str, namespace: str) -> dict[str, Any]:
    """The worked example's GuardedModel (examples/fashion-mnist.yaml) as `namespace/name`."""
    manifest: dict[str, Any] = yaml.safe_load((repo_root() / "examples" / "fashion-mnist.yaml").read_text())
    manifest["metadata"] = {"name": name, "namespace": namespace}
    return manifest


def serve_on_real_node(
    cluster: LocalCluster,
    stack: contextlib.ExitStack,
    workdir: Path,
    built: real_pods.Images,
    model_dir: Path,
    manifest: dict[str, Any],
    prometheus_url: str | None,
    *,
    repository: str | None = None,
    before_apply: Callable[[], Any] | None = None,
    extra_values: Sequence[Path] = (),
) -> None:
    """The images imported into the real node, the model repository served from the host (until
    `stack` closes; or `repository`, a bucket the caller filled), the operator installed from the
    chart's minimal ci values (pointed at `prometheus_url`, when given) and `manifest` applied, made
    to run on the CPU node, in a new namespace of its own (`before_apply` runs once it exists)."""
    assert cluster.real_node is not None
    real_pods.import_images(cluster.real_node, built)
    url = repository or stack.enter_context(real_pods.serve_model(model_dir, workdir))[0]
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
