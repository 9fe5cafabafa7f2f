"""Helpers shared by the operator integration tests (named uniquely: test folders are not packages)."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from guardedmodel_testground.cluster import LocalCluster
from guardedmodel_testground.procs import ManagedProcess, log_tail

REPO = Path(__file__).resolve().parents[3]
CRD = REPO / "crds" / "guardedmodel.io_guardedmodels.yaml"
EXAMPLES = REPO / "examples"


def eventually(what: str, probe: Callable[[], Any], timeout: float = 60.0, interval: float = 0.3) -> Any:
    """Poll until `probe` returns something truthy and return it; fail naming `what`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


@dataclass
class Namespace:
    cluster: LocalCluster
    name: str

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> Any:
        return self.cluster.kubectl("-n", self.name, *args, input=input, check=check)

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        result = self.kubectl("get", kind, name, "-o", "json", check=False)
        return json.loads(result.stdout) if result.returncode == 0 else None

    def apply(self, manifest: dict[str, Any] | str) -> None:
        text = manifest if isinstance(manifest, str) else yaml.safe_dump(manifest)
        self.kubectl("apply", "-f", "-", input=text)


@dataclass
class OperatorProcess:
    process: ManagedProcess
    metrics_url: str
    health_url: str

    def metrics(self) -> dict[str, float]:
        """Samples of the operator's own metrics, `name{labels}` → value."""
        text = urllib.request.urlopen(self.metrics_url, timeout=5).read().decode()
        samples = {}
        for line in text.splitlines():
            if line.startswith("guardedmodel_operator_") and " " in line:
                key, value = line.rsplit(" ", 1)
                samples[key] = float(value)
        return samples

    def writes(self) -> float:
        return sum(v for k, v in self.metrics().items() if k.startswith("guardedmodel_operator_writes_total"))

    def log(self) -> str:
        return log_tail(self.process.log_path, 60)

    def stop(self) -> None:
        self.process.stop()


def minimal_example() -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / "guardedmodel-minimal.yaml").read_text())


def condition(gm: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in gm.get("status", {}).get("conditions", []) if c["type"] == kind), {})
