"""Run the real operator process against the local cluster, reading one Prometheus; and what the
tests that do so share: the CRD, a model's manifest, a sidecar's metrics scraped under its labels."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest
from sidecar_traffic import SidecarTraffic

from guardedmodel_testground.cluster import LocalCluster
from guardedmodel_testground.prometheus import Prometheus, ScrapeJob

CRD = Path(__file__).resolve().parents[3] / "crds" / "guardedmodel.io_guardedmodels.yaml"


# A canary whose steps come 3 s apart (Prometheus scrapes every second: a 3 s window holds enough).
CANARY_ROLLOUT = {
    "strategy": "canary",
    "steps": [10, 50, 100],
    "interval": "3s",
    "failureLimit": 1,
    "minRequests": 20,
    "thresholds": {"maxOodRate": 0.25, "maxErrorRate": 0.05},
}


def install_crd(cluster: LocalCluster, timeout_s: float = 60) -> None:
    """The CRD, applied and Established. Just after the control plane started, `kubectl wait` can
    fail at once (before the server's discovery lists every resource), so it is asked again."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    deadline = time.monotonic() + timeout_s
    while True:
        wait = cluster.kubectl(
            "wait",
            "--for=condition=Established",
            "customresourcedefinition.apiextensions.k8s.io/guardedmodels.guardedmodel.io",
            "--timeout=10s",
            check=False,
        )
        if wait.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the GuardedModel CRD is not Established: {wait.stderr.strip()}")
        time.sleep(0.5)


def model_manifest(namespace: str, name: str, spec: Mapping[str, Any], version: str = "1") -> str:
    """A GuardedModel of the model `classifier` at `version` (kwok runs its pods), with `spec` on top."""
    model = {"name": "classifier", "repository": "file:///srv/models", "version": version}
    return json.dumps(
        {
            "apiVersion": "guardedmodel.io/v1alpha1",
            "kind": "GuardedModel",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"model": model, **spec},
        }
    )


def scraped_sidecar(
    prometheus_factory: Callable[..., Prometheus], namespace: str, name: str, versions: Sequence[str]
) -> tuple[SidecarTraffic, Prometheus]:
    """The sidecar's metric objects on a loopback port, scraped under the labels a pod of the model
    `name` gets; returns once Prometheus has the first scrape."""
    sidecar = SidecarTraffic("classifier", versions).start()
    labels = {"namespace": namespace, "guardedmodel_io_name": name}
    prometheus = prometheus_factory([ScrapeJob(namespace, [sidecar.target], labels=labels)])
    prometheus.wait_for(f'guardedmodel_requests_total{{namespace="{namespace}"}}')
    return sidecar, prometheus


def wait_for_status(
    cluster: LocalCluster,
    namespace: str,
    name: str,
    what: str,
    ok: Callable[[dict[str, Any]], bool],
    *,
    timeout: float = 60,
    interval: float = 0.5,
    context: Callable[[], str] = lambda: "",
) -> dict[str, Any]:
    """Poll the GuardedModel's status until `ok` holds; a timeout fails with the last status and `context()`."""
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = dict(cluster.kubectl_json("get", "guardedmodel", name, "-n", namespace).get("status") or {})
        if ok(status):
            return status
        time.sleep(interval)
    pytest.fail(f"timed out waiting for {what}; status: {json.dumps(status, indent=1)}\n{context()}")


class KubectlWatch:
    """`kubectl get ARGS --watch -o json` in the background: each object it prints goes to
    `on_object`, in order, on the watch's own thread."""

    def __init__(self, cluster: LocalCluster, args: Sequence[str], on_object: Callable[[Any], None]) -> None:
        assert cluster.binaries is not None
        self.on_object = on_object
        self.process = subprocess.Popen(
            [
                str(cluster.binaries.kubectl),
                f"--kubeconfig={cluster.kubeconfig}",
                "get",
                *args,
                "--watch",
                "-o",
                "json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        decoder, buffer = json.JSONDecoder(), ""
        for line in self.process.stdout:
            buffer += line
            while buffer.strip():
                try:
                    obj, end = decoder.raw_decode(buffer.lstrip())
                except ValueError:
                    break
                buffer = buffer.lstrip()[end:]
                self.on_object(obj)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class OperatorProcess:
    """One `guardedmodel operator` process, in a process group of its own."""

    popen: subprocess.Popen[bytes]
    log: IO[str]

    def kill(self) -> None:
        """SIGKILL, as the kernel's OOM killer or a node failure ends it: no cleanup runs."""
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)
        self.log.close()

    def stop(self) -> None:
        """SIGTERM, and SIGKILL if it has not ended 15 s later."""
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=15)
        self.kill()


def spawn_operator(
    cluster: LocalCluster,
    namespace: str,
    prometheus_url: str,
    log_path: Path,
    env: Mapping[str, str],
    args: Sequence[str] = (),
    append: bool = False,
) -> OperatorProcess:
    """`guardedmodel operator` watching `namespace`. `args` come last, so they override the flags
    set here (e.g. --metrics-port); `append` keeps the log of earlier processes (restarts)."""
    log = log_path.open("a" if append else "w")
    operator = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "guardedmodel"),
            "operator",
            "--namespace",
            namespace,
            "--metrics-port",
            "0",
            "--health-endpoint",
            "",
            *args,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**cluster.env, "GUARDEDMODEL_PROMETHEUS_URL": prometheus_url, **env},
        start_new_session=True,
    )
    return OperatorProcess(operator, log)


def start_operator(
    cluster: LocalCluster,
    namespace: str,
    prometheus_url: str,
    log_path: Path,
    env: Mapping[str, str],
    args: Sequence[str] = (),
) -> Callable[[], None]:
    """`guardedmodel operator` watching `namespace` (see `spawn_operator`); returns the function
    that stops it."""
    return spawn_operator(cluster, namespace, prometheus_url, log_path, env, args).stop
