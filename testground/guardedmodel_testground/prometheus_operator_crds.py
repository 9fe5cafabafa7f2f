"""Fetch (once) and locate prometheus-operator's own CRDs, with their full OpenAPI schemas.

The chart's ServiceMonitor, PodMonitor and PrometheusRule are checked against exactly what a
cluster running prometheus-operator serves: the CRD files that release publishes. They come from
the Go module proxy (the release's module zip carries `example/prometheus-operator-crd/`), are
copied into the cache keyed by the pinned version, and reused by every later run.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TextIO

from .paths import cache_dir, go_command

MODULE = "github.com/prometheus-operator/prometheus-operator"
#: The prometheus-operator release whose CRDs the chart is checked against.
VERSION = "v0.94.0"
#: The kinds the chart creates, by the CRD file each lives in.
CRD_FILES = {
    "ServiceMonitor": "monitoring.coreos.com_servicemonitors.yaml",
    "PodMonitor": "monitoring.coreos.com_podmonitors.yaml",
    "PrometheusRule": "monitoring.coreos.com_prometheusrules.yaml",
}
_SOURCE_DIR = "example/prometheus-operator-crd"


def _complete(crd_dir: Path) -> bool:
    return (crd_dir / ".complete").exists() and all((crd_dir / name).is_file() for name in CRD_FILES.values())


def _module_dir(version: str) -> Path:
    """The unpacked module from the proxy (Go's own module cache keeps the download)."""
    result = subprocess.run(
        [go_command(), "mod", "download", "-json", f"{MODULE}@{version}"],
        capture_output=True,
        text=True,
        env=dict(os.environ, GOFLAGS="-mod=mod"),
        timeout=600,
    )
    try:
        info = json.loads(result.stdout)
    except json.JSONDecodeError:
        info = {}
    if result.returncode != 0 or info.get("Error") or not info.get("Dir"):
        reason = info.get("Error") or result.stderr.strip() or result.stdout.strip()
        raise RuntimeError(f"cannot download {MODULE}@{version} from the Go module proxy (GOPROXY): {reason}")
    return Path(info["Dir"])


def ensure_prometheus_operator_crds(version: str = VERSION, *, log: TextIO = sys.stderr) -> Path:
    """The directory holding the CRD files of CRD_FILES, fetching them first if this machine has none."""
    crd_dir = cache_dir() / "prometheus-operator-crds" / version
    if _complete(crd_dir):
        return crd_dir
    crd_dir.mkdir(parents=True, exist_ok=True)
    # A lock so two test runs don't fetch into the same directory at once.
    with open(crd_dir.parent / f".{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _complete(crd_dir):
            print(f"fetching prometheus-operator {version} CRDs (cached after the first time) ...", file=log)
            source = _module_dir(version) / _SOURCE_DIR
            for name in CRD_FILES.values():
                if not (source / name).is_file():
                    raise RuntimeError(f"{MODULE}@{version} has no {_SOURCE_DIR}/{name}")
                shutil.copyfile(source / name, crd_dir / name)
            (crd_dir / ".complete").write_text(version)
    return crd_dir


def crd_paths(version: str = VERSION) -> list[Path]:
    crd_dir = ensure_prometheus_operator_crds(version)
    return [crd_dir / name for name in CRD_FILES.values()]


if __name__ == "__main__":
    print(ensure_prometheus_operator_crds())
