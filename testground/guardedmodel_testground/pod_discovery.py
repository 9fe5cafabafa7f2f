"""Prometheus targets for the pods of some namespaces, found through the API server.

A cluster's Prometheus finds pods with `kubernetes_sd_configs`; Debian's Prometheus is built
without the Kubernetes discovery, so this does its part from the outside: it lists the pods every
`interval` seconds and writes the scrape targets to a file_sd JSON file, which Prometheus rereads
on change. The rules are the usual annotation-based ones:

- a pod is scraped when it is Running, has an IP and is annotated `prometheus.io/scrape: "true"`;
- at `<pod IP>:<prometheus.io/port>` and `prometheus.io/path` (default /metrics);
- labelled with its labels, sanitised as Prometheus does (`guardedmodel.io/name` ->
  `guardedmodel_io_name`, the label the operator's queries and the chart's alerts select on),
  plus `namespace` and `pod`.

A pod that rolls is followed to its new address at the next listing.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .cluster import LocalCluster

_INVALID = re.compile(r"[^a-zA-Z0-9_]")


def label_name(key: str) -> str:
    return _INVALID.sub("_", key)


def pod_targets(pods: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """file_sd target groups for the pods that ask to be scraped (pure: tested without a cluster)."""
    groups = []
    for pod in pods:
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        annotations = meta.get("annotations") or {}
        if annotations.get("prometheus.io/scrape") != "true" or status.get("phase") != "Running":
            continue
        port, ip = annotations.get("prometheus.io/port"), status.get("podIP")
        if not ip or not port or meta.get("deletionTimestamp"):
            continue
        labels = {label_name(k): str(v) for k, v in (meta.get("labels") or {}).items()}
        labels.update(
            namespace=meta.get("namespace", ""),
            pod=meta.get("name", ""),
            __metrics_path__=annotations.get("prometheus.io/path") or "/metrics",
        )
        groups.append({"targets": [f"{ip}:{port}"], "labels": labels})
    return sorted(groups, key=lambda g: g["labels"]["pod"])


class PodDiscovery:
    """Keeps `path` current with the scrape targets of `namespaces`' pods, in a daemon thread."""

    def __init__(
        self, cluster: LocalCluster, namespaces: Sequence[str], path: Path, interval: float = 1.0
    ) -> None:
        self.cluster = cluster
        self.namespaces = list(namespaces)
        self.path = path
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._written = ""

    def refresh(self) -> list[dict[str, Any]]:
        pods: list[dict[str, Any]] = []
        for namespace in self.namespaces:
            result = self.cluster.kubectl("get", "pods", "-n", namespace, "-o", "json", check=False)
            if result.returncode != 0:
                return []  # the API server is away: keep the last targets
            pods += json.loads(result.stdout)["items"]
        groups = pod_targets(pods)
        text = json.dumps(groups, indent=1)
        if text != self._written:
            # Written whole and renamed: Prometheus never reads half a file.
            partial = self.path.with_suffix(".partial")
            partial.write_text(text)
            os.replace(partial, self.path)
            self._written = text
        return groups

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.refresh()

    def __enter__(self) -> PodDiscovery:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("[]")
        self.refresh()
        self._thread = threading.Thread(target=self._run, name="pod-discovery", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
