"""Two worker processes in front of a real Triton: the pod's one metrics port counts every request
once, Triton's own counters are not doubled, both workers serve, and SIGTERM stops all cleanly."""

from __future__ import annotations

import concurrent.futures
import functools
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from conftest import SidecarProcess, launch_sidecar, sidecar_config
from prometheus_client.parser import text_string_to_metric_families
from sidecar_toy import MODEL, toy_data

from guardedmodel_sidecar.audit_file import iter_records
from guardedmodel_testground.triton import TritonServer

pytestmark = pytest.mark.integration

CLIENTS_PER_PROTOCOL, REQUESTS_PER_CLIENT = 6, 5
N = 2 * CLIENTS_PER_PROTOCOL * REQUESTS_PER_CLIENT
PREFIX = "workers-"


def families(sidecar: SidecarProcess) -> dict[str, list[Any]]:
    return {f.name: f.samples for f in text_string_to_metric_families(sidecar.metrics())}


def total(samples: list[Any], **labels: str) -> float:
    return sum(s.value for s in samples if all(s.labels.get(k) == v for k, v in labels.items()))


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            assert result, what
            return result
        time.sleep(0.1)


def client_records(directory: Path) -> list[dict[str, Any]]:
    if not directory.exists():
        return []
    return [r for r in iter_records(directory) if str(r.get("client_id") or r.get("id")).startswith(PREFIX)]


def test_two_workers_count_every_request_once_on_the_pod_metrics_port(
    toy_triton: TritonServer,
    toy_repository: Path,
    tmp_path: Path,
    sidecar_factory: Callable[..., SidecarProcess],
) -> None:
    config = sidecar_config(
        toy_triton,
        toy_repository,
        tmp_path,
        spec={"audit": {"enabled": True, "sampleRate": 0.0}},
        tuning={"workers": 2, "tritonMetricsInterval": "0.2s"},
    )
    sidecar = sidecar_factory(config)
    # Worker 1 joins the shared ports only once Triton serves the routed version.
    wait_for(
        lambda: sidecar.log_path.read_text().count("guard sidecar for") == 2, 60, "worker 1 never listened"
    )
    x = toy_data().sample(1, seed=3)[0].astype(np.float32)

    def send_all(client: Any, infer_input: Any, protocol: str, c: int) -> int:
        """REQUESTS_PER_CLIENT requests of ``x`` through ``client`` (tritonclient's http or grpc)."""
        inp = infer_input("INPUT", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        for i in range(REQUESTS_PER_CLIENT):
            client.infer(MODEL, [inp], request_id=f"{PREFIX}{protocol}-{c}-{i}")
        client.close()
        return REQUESTS_PER_CLIENT

    def http_client(c: int) -> int:
        client = httpclient.InferenceServerClient(sidecar.http_url)  # its own connection
        return send_all(client, httpclient.InferInput, "http", c)

    def grpc_client(c: int) -> int:
        # gRPC shares one TCP connection between channels to the same target unless told otherwise.
        client = grpcclient.InferenceServerClient(
            sidecar.grpc_url, channel_args=[("grpc.use_local_subchannel_pool", 1)]
        )
        return send_all(client, grpcclient.InferInput, "grpc", c)

    with concurrent.futures.ThreadPoolExecutor(2 * CLIENTS_PER_PROTOCOL) as pool:
        jobs = [pool.submit(f, c) for c in range(CLIENTS_PER_PROTOCOL) for f in (http_client, grpc_client)]
        assert sum(job.result() for job in jobs) == N

    # The decision counters, merged over the workers, hold every request exactly once.
    got = families(sidecar)
    assert total(got["guardedmodel_requests"], model=MODEL) == N
    assert total(got["guardedmodel_confidence"], model=MODEL, le="+Inf") == N
    per_worker = {s.labels["worker"]: s.value for s in got["guardedmodel_worker_requests"]}
    assert sorted(per_worker) == ["0", "1"] and sum(per_worker.values()) == N
    assert all(s.value == 1.0 for s in got["guardedmodel_worker_up"])
    # Triton's own counter is republished by both workers, and reported once.
    wait_for(
        lambda: total(families(sidecar)["guardedmodel_triton_requests"], version="1") == N,
        10,
        "guardedmodel_triton_requests_total never equalled the requests Triton served",
    )

    # Both workers served, each into its own audit directory.
    by_worker = [
        wait_for(functools.partial(client_records, d), 10, f"no audit records in {d}")
        for d in (sidecar.audit_dir / "worker-0", sidecar.audit_dir / "worker-1")
    ]
    wait_for(
        lambda: sum(len(client_records(sidecar.audit_dir / f"worker-{i}")) for i in (0, 1)) == N,
        10,
        "audit records over both workers != requests",
    )
    assert all(by_worker)
    assert wait_for(
        lambda: total(families(sidecar)["guardedmodel_audit_records"]) >= N, 10, "audit records not counted"
    )

    assert sidecar.stop() == 0  # SIGTERM: both workers stop cleanly, the parent exits 0
    log = sidecar.log_path.read_text()
    assert "restarting" not in log and "Traceback" not in log, log[-4000:]


def test_sigterm_stops_workers_still_waiting_for_triton(toy_repository: Path, tmp_path: Path) -> None:
    """Worker 1 waits for a Triton that never comes before it joins the ports; SIGTERM ends it now."""
    nowhere = SimpleNamespace(http_url="127.0.0.1:9", grpc_url="127.0.0.1:9", metrics_port=9)
    config = sidecar_config(nowhere, toy_repository, tmp_path, tuning={"workers": 2})  # type: ignore[arg-type]
    sidecar = launch_sidecar(config, tmp_path, "waiting")
    try:

        def both_answer() -> bool:
            try:
                up = families(sidecar)["guardedmodel_worker_up"]
            except OSError:
                return False
            return [s.value for s in up] == [1.0, 1.0]

        wait_for(both_answer, 60, "the workers' metrics never answered")
        started = time.monotonic()
        assert sidecar.stop() == 0
        assert time.monotonic() - started < 10
    finally:
        sidecar.stop()
