"""Fixtures for the real local parts: Kubernetes control plane, Triton, Prometheus.

They never skip: a test that needs a part which cannot start fails with the
part's log tail, so CI cannot pass by silently testing nothing. The one exception
is the real-pod tier (marker `pods`) for a user other than root: a kubelet mounts,
makes cgroups and network namespaces, so there it is skipped with that reason.
As root a missing part of it is a failure like any other.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from guardedmodel_testground.cluster import LocalCluster
from guardedmodel_testground.prometheus import Alertmanager, Prometheus
from guardedmodel_testground.triton import TritonServer

# Property tests: `make test` runs the few cases each test asks for; HYPOTHESIS_PROFILE=fuzz runs
# HYPOTHESIS_FUZZ_EXAMPLES cases per test instead (`make fuzz`).
settings.register_profile(
    "fuzz", max_examples=int(os.environ.get("HYPOTHESIS_FUZZ_EXAMPLES", "10000")), deadline=None
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

NEEDS_ROOT = pytest.mark.skip(
    reason="real pods need root: the kubelet mounts, makes cgroups and network namespaces"
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    for item in items:
        if "pods" in item.keywords:
            item.add_marker(NEEDS_ROOT)


@pytest.fixture(scope="session")
def k8s_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One control plane for the whole run (starting one takes seconds, building it minutes)."""
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"))
    with cluster:
        yield cluster


@pytest.fixture
def triton_server_factory(tmp_path: Path) -> Iterator[Callable[..., TritonServer]]:
    """Start Tritons on free loopback ports; all are stopped after the test."""
    started: list[TritonServer] = []

    def start(model_repository: Path, **kwargs: Any) -> TritonServer:
        kwargs.setdefault("log_dir", tmp_path / "logs")
        server = TritonServer(model_repository, **kwargs).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[..., Prometheus]]:
    yield from _started_in(tmp_path, Prometheus, "prometheus")


@pytest.fixture
def alertmanager_factory(tmp_path: Path) -> Iterator[Callable[..., Alertmanager]]:
    yield from _started_in(tmp_path, Alertmanager, "alertmanager")


def _started_in(tmp_path: Path, server_class: Any, name: str) -> Iterator[Callable[..., Any]]:
    """A factory of servers, each in its own state dir under `tmp_path`, all stopped afterwards."""
    started: list[Any] = []

    def start(*args: Any, **kwargs: Any) -> Any:
        server = server_class(tmp_path / f"{name}-{len(started)}", *args, **kwargs).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
