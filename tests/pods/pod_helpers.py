"""What the real-pod tests share: waiting with an explanation, and reading pods' state."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from guardedmodel_testground.cluster import LocalCluster


def wait_for(what: str, probe: Callable[[], Any], timeout: float, explain: Callable[[], str]) -> Any:
    """Poll `probe` until it returns something true and return that; fail with `explain()`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(1)
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
    return f"{out.stdout}{out.stderr}\n{events.stdout}"
