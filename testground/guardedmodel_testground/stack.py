"""Starting the whole product on this machine: control plane, operator, Prometheus with Alertmanager,
Triton and the guard sidecar, each as a local process tied to one `ExitStack`.

kwok simulates the pods, so the Triton and sidecar a pod would run are started here as local
processes, with the config the operator rendered into the pod's ConfigMap. The product is started
through its command line (`guardedmodel operator`, `guardedmodel sidecar`), never imported: the test
ground imports no product package.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from guardedmodel_testground.cluster import LocalCluster
from guardedmodel_testground.paths import repo_root
from guardedmodel_testground.procs import ManagedProcess, StartError, free_port, http_ok, wait_until
from guardedmodel_testground.prometheus import Alertmanager, FileDiscoveryJob, Prometheus, ScrapeJob
from guardedmodel_testground.sidecar_config import localize_sidecar_config
from guardedmodel_testground.triton import TritonServer

CRD = "guardedmodels.guardedmodel.io"


def guardedmodel_command(*args: str) -> list[str]:
    """The installed `guardedmodel` entry point next to this interpreter."""
    return [str(Path(sys.executable).with_name("guardedmodel")), *args]


def start_ready_process(
    stack: contextlib.ExitStack,
    name: str,
    argv: list[str],
    env: Mapping[str, str],
    *,
    log_dir: Path,
    ready_url: str,
    timeout: float,
) -> ManagedProcess:
    """Start a local process, stopped when `stack` closes, and wait until `ready_url` answers 2xx."""
    process = ManagedProcess(name, argv, log_dir / f"{name}.log", env=env).start()
    stack.callback(process.stop)
    wait_until(f"{name} at {ready_url}", lambda: http_ok(ready_url), timeout, process=process)
    return process


@dataclass
class Monitoring:
    prometheus: Prometheus
    alertmanager: Alertmanager


def chart_alert_rules(target: Path, *, fire_after: str) -> Path:
    """The alert rules the chart ships (its PrometheusRule), as a plain rule file at `target`.

    The chart's rules wait minutes before firing, as they should in production; a local run has
    seconds, so every rule's `for` becomes `fire_after`.
    """
    source = repo_root() / "charts" / "guardedmodel" / "files" / "alerts.yaml"
    if not source.exists():
        raise StartError(f"the chart's alert rules are missing: {source}")
    document = yaml.safe_load(source.read_text())
    groups = document.get("groups") or document.get("spec", {}).get("groups")
    for group in groups:
        for rule in group.get("rules", []):
            if "for" in rule:
                rule["for"] = fire_after
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump({"groups": groups}))
    return target


def start_monitoring(
    stack: contextlib.ExitStack,
    state_dir: Path,
    jobs: Sequence[ScrapeJob | FileDiscoveryJob],
    rule_files: list[Path],
    *,
    host: str = "127.0.0.1",
) -> Monitoring:
    """Alertmanager, and Prometheus on `host` scraping `jobs`, evaluating `rule_files` and alerting it."""
    alertmanager = stack.enter_context(Alertmanager(state_dir / "alertmanager"))
    prometheus = stack.enter_context(
        Prometheus(
            state_dir / "prometheus",
            jobs,
            rule_files=rule_files,
            alertmanager_url=alertmanager.url,
            host=host,
        )
    )
    return Monitoring(prometheus, alertmanager)


@dataclass
class OperatorPorts:
    """The operator's own listeners: its metrics and the health endpoint readiness is read from."""

    metrics: int
    health: int

    @classmethod
    def free(cls) -> OperatorPorts:
        return cls(metrics=free_port(), health=free_port())


def install_crd(cluster: LocalCluster, namespace: str) -> None:
    """The GuardedModel CRD, established, and `namespace` to put models in."""
    cluster.kubectl("apply", "-f", str(repo_root() / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", f"crd/{CRD}", "--timeout=60s")
    cluster.kubectl("create", "namespace", namespace)


def start_operator(
    stack: contextlib.ExitStack,
    cluster: LocalCluster,
    *,
    namespace: str,
    ports: OperatorPorts,
    log_dir: Path,
    prometheus_url: str | None = None,
    extra_env: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
    name: str = "operator",
) -> ManagedProcess:
    """`guardedmodel operator` watching `namespace` (reading `prometheus_url` when given), ready
    once its health endpoint answers; `name` names its log."""
    health_url = f"http://127.0.0.1:{ports.health}/healthz"
    env = {
        **cluster.env,
        "GUARDEDMODEL_NAMESPACES": namespace,
        "GUARDEDMODEL_METRICS_HOST": "127.0.0.1",
        "GUARDEDMODEL_METRICS_PORT": str(ports.metrics),
        "GUARDEDMODEL_HEALTH_ENDPOINT": health_url,
        **({"GUARDEDMODEL_PROMETHEUS_URL": prometheus_url} if prometheus_url else {}),
        **(extra_env or {}),
    }
    return start_ready_process(
        stack,
        name,
        guardedmodel_command("operator", *extra_args),
        env,
        log_dir=log_dir,
        ready_url=health_url,
        timeout=60,
    )


def rendered_sidecar_config(cluster: LocalCluster, namespace: str) -> dict[str, Any] | None:
    """The sidecar.yaml the operator rendered into a ConfigMap of `namespace`, if any yet."""
    configmaps = cluster.kubectl_json("get", "configmaps", "-n", namespace)["items"]
    rendered = next(
        (cm["data"]["sidecar.yaml"] for cm in configmaps if "sidecar.yaml" in cm.get("data", {})), None
    )
    return None if rendered is None else dict(yaml.safe_load(rendered))


@dataclass
class DataPlane:
    triton: TritonServer
    sidecar: ManagedProcess
    listen: dict[str, Any]


def start_data_plane(
    stack: contextlib.ExitStack,
    rendered: dict[str, Any],
    repository: Path,
    *,
    state_dir: Path,
    listen: dict[str, Any],
    env: Mapping[str, str],
    model_source: str | None = None,
) -> DataPlane:
    """Triton (explicit model control) on `repository` and the sidecar in front of it, on the
    operator's `rendered` config with this machine's addresses and directories; `model_source`: the
    remote repository `repository` was fetched from (the sidecar fetches later versions from it)."""
    triton = stack.enter_context(
        TritonServer(repository, model_control_mode="explicit", log_dir=state_dir / "logs")
    )
    config = localize_sidecar_config(
        rendered,
        # metricsUrl: the sidecar republishes Triton's queue and compute time, as in the pod.
        triton={
            "httpUrl": triton.http_url,
            "grpcUrl": triton.grpc_url,
            "metricsUrl": f"127.0.0.1:{triton.metrics_port}",
        },
        repository=repository,
        listen=listen,
        audit_dir=state_dir / "audit",
        spool_dir=state_dir / "review-spool",
        model_source=model_source,
    )
    config_path = state_dir / "sidecar.yaml"
    config_path.write_text(yaml.safe_dump(config))
    sidecar = start_ready_process(
        stack,
        "sidecar",
        guardedmodel_command("sidecar", "--config", str(config_path)),
        env,
        log_dir=state_dir / "logs",
        ready_url=f"http://127.0.0.1:{listen['http']}/v2/health/ready",
        timeout=120,
    )
    return DataPlane(triton, sidecar, listen)
