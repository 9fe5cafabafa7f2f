"""The sidecar's `sidecar.yaml` for a sidecar run as a local process.

In a cluster the operator renders this document into the pod's ConfigMap. On
this machine the same document is needed by the demo, the benchmarks and the
integration tests, with loopback addresses and writable directories in place
of the pod's. It is built here as plain data: the test ground imports no
product package, so the sidecar's own config model is not used to build it
(the sidecar still validates it when it starts).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Protocol

from guardedmodel_testground.procs import free_port


class TritonEndpoints(Protocol):
    """What the sidecar needs to know of a Triton (a `TritonServer`, or a stand-in)."""

    @property
    def http_url(self) -> str: ...

    @property
    def grpc_url(self) -> str: ...


def loopback_listen() -> dict[str, Any]:
    """The sidecar's three listeners on free loopback ports."""
    return {"host": "127.0.0.1", "http": free_port(), "grpc": free_port(), "metrics": free_port()}


def localize_sidecar_config(
    config: dict[str, Any],
    *,
    triton: dict[str, Any],
    repository: Path,
    listen: dict[str, Any],
    audit_dir: Path,
    spool_dir: Path,
    model_source: str | None = None,
) -> dict[str, Any]:
    """`config` with what differs between the pod and this machine replaced: the Triton addresses,
    the model repository, the listeners and the writable directories. Here Triton reads the
    repository itself, not a copy fetched at start, so there is no model source to fetch from,
    unless `model_source` names the remote repository `repository` was fetched from (as the pod's
    init container does): then versions published later are fetched from it."""
    return {
        **{key: value for key, value in config.items() if key != "modelSource"},
        **({"modelSource": model_source} if model_source else {}),
        "triton": triton,
        "modelRepository": str(repository),
        "listen": listen,
        "auditDir": str(audit_dir),
        "spoolDir": str(spool_dir),
    }


def sidecar_config(
    spec: dict[str, Any],
    *,
    triton: TritonEndpoints,
    repository: Path,
    workdir: Path,
    routing: dict[str, Any] | None = None,
    triton_metrics_port: int | None = None,
    listen: dict[str, Any] | None = None,
    tuning: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None,
    audit_dir: Path | None = None,
    spool_dir: Path | None = None,
) -> dict[str, Any]:
    """A complete sidecar document for `spec` (the GuardedModel spec the sidecar enforces).

    Routing defaults to version "1" stable; `triton_metrics_port` makes the sidecar republish
    Triton's queue metrics; the audit log and review spool go under `workdir` unless given.
    Optional sections are left out when not given, so the sidecar's defaults apply.
    """
    endpoints: dict[str, Any] = {"httpUrl": triton.http_url, "grpcUrl": triton.grpc_url}
    if triton_metrics_port is not None:
        endpoints["metricsUrl"] = f"127.0.0.1:{triton_metrics_port}"
    document: dict[str, Any] = {
        "spec": spec,
        "routing": routing or {"stableVersion": "1", "canaryVersion": None, "canaryWeight": 0},
    }
    if tuning is not None:
        document["tuning"] = tuning
    if limits is not None:
        document["limits"] = limits
    return localize_sidecar_config(
        document,
        triton=endpoints,
        repository=repository,
        listen=listen or loopback_listen(),
        audit_dir=audit_dir or workdir / "audit",
        spool_dir=spool_dir or workdir / "spool",
    )


def sidecar_command(config_path: Path, *extra_args: str) -> list[str]:
    """The command line of a sidecar on `config_path`, run by this interpreter (as the CLI module,
    so it needs no installed entry point)."""
    return [
        sys.executable,
        "-m",
        "guardedmodel_cli.main",
        "sidecar",
        "--config",
        str(config_path),
        *extra_args,
    ]
