"""Fixtures for operator tests: the CRD on the real API server, a namespace per
test, and the operator running as a real subprocess watching that namespace."""

from __future__ import annotations

import itertools
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from gm_operator_helpers import CRD, Namespace, OperatorProcess

from guardedmodel_testground.cluster import LocalCluster
from guardedmodel_testground.procs import ManagedProcess, free_port, wait_until

_counter = itertools.count()


@pytest.fixture(scope="session")
def cluster(k8s_cluster: LocalCluster) -> LocalCluster:
    k8s_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    k8s_cluster.kubectl(
        "wait", "--for=condition=Established", "crd/guardedmodels.guardedmodel.io", "--timeout=60s"
    )
    return k8s_cluster


@pytest.fixture
def namespace(cluster: LocalCluster) -> Iterator[Namespace]:
    name = f"gm-op-{int(time.time()) % 100000}-{next(_counter)}"
    cluster.kubectl("create", "namespace", name)
    # The examples read their model from pvc://models: a statically bound
    # volume lets the scheduler place the pods (kwok runs no real mount).
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"{name}-models"},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadOnlyMany"],
            "storageClassName": "manual",
            "hostPath": {"path": "/srv/models"},
            "claimRef": {"namespace": name, "name": "models"},
        },
    }
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "models", "namespace": name},
        "spec": {
            "accessModes": ["ReadOnlyMany"],
            "storageClassName": "manual",
            "volumeName": f"{name}-models",
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([pv, pvc]))
    yield Namespace(cluster, name)
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
    cluster.kubectl("delete", "pv", f"{name}-models", "--wait=false", check=False)


@pytest.fixture
def start_operator(cluster: LocalCluster, tmp_path: Path) -> Iterator[Callable[..., OperatorProcess]]:
    started: list[OperatorProcess] = []

    def start(namespace: str, *extra: str, kubeconfig: Path | None = None) -> OperatorProcess:
        metrics_port, health_port = free_port(), free_port()
        health_url = f"http://127.0.0.1:{health_port}/healthz"
        argv = [
            sys.executable,
            "-m",
            "guardedmodel_cli.main",
            "operator",
            f"--namespace={namespace}",
            "--metrics-host=127.0.0.1",
            f"--metrics-port={metrics_port}",
            f"--health-endpoint={health_url}",
            "--triton-image=triton:test",
            "--sidecar-image=sidecar:test",
            *extra,
        ]
        process = ManagedProcess(
            f"operator-{len(started)}",
            argv,
            tmp_path / f"operator-{len(started)}.log",
            env={**cluster.env, **({"KUBECONFIG": str(kubeconfig)} if kubeconfig else {})},
        ).start()
        operator = OperatorProcess(process, f"http://127.0.0.1:{metrics_port}/metrics", health_url)
        started.append(operator)

        def healthy() -> bool:
            try:
                return urllib.request.urlopen(health_url, timeout=2).status == 200
            except OSError:
                return False

        wait_until("the operator's health endpoint", healthy, 60, process=process)
        return operator

    yield start
    for operator in started:
        operator.stop()
