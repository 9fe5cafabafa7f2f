"""Prometheus and Alertmanager from Debian's packages, on loopback.

The caller gives scrape targets and rule files; the config is generated into
the state directory. Scrape and evaluation intervals default to one second so
tests see samples without waiting a minute.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .procs import LocalServer, ManagedProcess, StartError, free_port, http_ok, wait_until

PROMETHEUS_BINARIES = ("prometheus",)
ALERTMANAGER_BINARIES = ("prometheus-alertmanager", "alertmanager")


def find_binary(candidates: Sequence[str], package: str) -> str:
    for name in candidates:
        path = shutil.which(name)
        if path:
            return path
    raise StartError(f"{candidates[0]} not found; install Debian's {package} package (make setup does this)")


@dataclass
class ScrapeJob:
    name: str
    targets: Sequence[str]  # "127.0.0.1:PORT"
    metrics_path: str = "/metrics"
    labels: dict[str, str] = field(default_factory=dict)
    # True: a label the target exports wins over the same target label (a ServiceMonitor's
    # honorLabels); False: the target's wins and the exported one becomes exported_<name>.
    honor_labels: bool = False

    def scrape_config(self) -> dict[str, Any]:
        return {
            "job_name": self.name,
            "metrics_path": self.metrics_path,
            "honor_labels": self.honor_labels,
            "static_configs": [{"targets": list(self.targets), "labels": self.labels}],
        }


@dataclass
class FileDiscoveryJob:
    """Targets from a file_sd JSON file that something else keeps current (`pod_discovery`):
    Prometheus rereads it whenever it changes."""

    name: str
    path: Path

    def scrape_config(self) -> dict[str, Any]:
        return {
            "job_name": self.name,
            "file_sd_configs": [{"files": [str(self.path)], "refresh_interval": "5s"}],
        }


class Alertmanager(LocalServer):
    def __init__(self, state_dir: Path, *, receiver_url: str | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.receiver_url = receiver_url
        self.port = 0
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> Alertmanager:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        receiver: dict[str, Any] = {"name": "default"}
        if self.receiver_url:
            receiver["webhook_configs"] = [{"url": self.receiver_url, "send_resolved": True}]
        config = {
            "route": {
                "receiver": "default",
                "group_wait": "1s",
                "group_interval": "1s",
                "repeat_interval": "1h",
            },
            "receivers": [receiver],
        }
        config_path = self.state_dir / "alertmanager.yml"
        config_path.write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.process = ManagedProcess(
            "alertmanager",
            [
                find_binary(ALERTMANAGER_BINARIES, "prometheus-alertmanager"),
                f"--config.file={config_path}",
                f"--storage.path={self.state_dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",
            ],
            self.state_dir / "alertmanager.log",
        ).start()
        wait_until("alertmanager", lambda: http_ok(f"{self.url}/-/ready"), timeout, process=self.process)
        return self

    def alerts(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.url}/api/v2/alerts", timeout=5) as response:
            return list(json.load(response))


class Prometheus(LocalServer):
    def __init__(
        self,
        state_dir: Path,
        jobs: Sequence[ScrapeJob | FileDiscoveryJob] = (),
        *,
        rule_files: Sequence[Path] = (),
        alertmanager_url: str | None = None,
        interval: str = "1s",
        host: str = "127.0.0.1",
    ) -> None:
        self.state_dir = Path(state_dir)
        self.host = host  # the real node's pods reach it on the bridge's gateway address
        self.jobs = list(jobs)
        self.rule_files = list(rule_files)
        self.alertmanager_url = alertmanager_url
        self.interval = interval
        self.port = 0
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "global": {"scrape_interval": self.interval, "evaluation_interval": self.interval},
            "scrape_configs": [job.scrape_config() for job in self.jobs],
            "rule_files": [str(path) for path in self.rule_files],
        }
        if self.alertmanager_url:
            target = urllib.parse.urlparse(self.alertmanager_url).netloc
            config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [target]}]}]}
        return config

    def start(self, timeout: float = 30) -> Prometheus:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        config_path = self.state_dir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(self.config()))
        # Started again after stop(), it keeps its address and its data: an outage, not a new server.
        self.port = self.port or free_port()
        self.process = ManagedProcess(
            "prometheus",
            [
                find_binary(PROMETHEUS_BINARIES, "prometheus"),
                f"--config.file={config_path}",
                f"--storage.tsdb.path={self.state_dir / 'data'}",
                f"--web.listen-address={self.host}:{self.port}",
                "--web.enable-lifecycle",
                "--log.level=warn",
            ],
            self.state_dir / "prometheus.log",
        ).start()
        wait_until("prometheus", lambda: http_ok(f"{self.url}/-/ready"), timeout, process=self.process)
        return self

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query; returns the result vector (raises on a PromQL error)."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.load(response)
        if body.get("status") != "success":
            raise RuntimeError(f"PromQL {promql!r} failed: {body}")
        return list(body["data"]["result"])

    def wait_for(self, promql: str, timeout: float = 30) -> list[dict[str, Any]]:
        """Poll an instant query until it returns at least one sample."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.query(promql)
            if result:
                return result
            time.sleep(0.5)
        raise StartError(f"no samples for {promql!r} after {timeout:.0f}s; targets: {self.targets()}")

    def targets(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.url}/api/v1/targets", timeout=5) as response:
            return list(json.load(response)["data"]["activeTargets"])
