"""Run the real operator process against the local cluster, reading one Prometheus; and what the
tests that do so share: the CRD, a model's manifest, a sidecar's metrics scraped under its labels."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from sidecar_traffic import SidecarTraffic

from guardedmodel_testground.cluster import LocalCluster
from guardedmodel_testground.prometheus import Prometheus, ScrapeJob

CRD = Path(__file__).resolve().parents[3] / "crds" / "guardedmodel.io_guardedmodels.yaml"


def install_crd(cluster: LocalCluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    cluster.kubectl(
        "wait", "--for=condition=Established", "crd/guardedmodels.guardedmodel.io", "--timeout=30s"
    )


def model_manifest(namespace: str, name: str, spec: Mapping[str, Any]) -> str:
    """A GuardedModel of the model `classifier` version 1 (kwok runs its pods), with `spec` on top."""
    model = {"name": "classifier", "repository": "file:///srv/models", "version": "1"}
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


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start_operator(
    cluster: LocalCluster,
    namespace: str,
    prometheus_url: str,
    log_path: Path,
    env: Mapping[str, str],
    args: Sequence[str] = (),
) -> Callable[[], None]:
    """`guardedmodel operator` watching `namespace`; returns the function that stops it.
    `args` come last, so they override the flags set here (e.g. --metrics-port)."""
    log = log_path.open("w")
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

    def stop() -> None:
        if operator.poll() is None:
            os.killpg(operator.pid, signal.SIGTERM)
            try:
                operator.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(operator.pid, signal.SIGKILL)
                operator.wait(timeout=5)
        log.close()

    return stop
