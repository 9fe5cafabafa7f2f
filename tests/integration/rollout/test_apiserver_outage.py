"""The API server and etcd go away for a while, during traffic and with a canary in flight.

Everything but the control plane is real and keeps running: Triton serving the toy model's two
versions, the guard sidecar in front of it (following its GuardedModel's status through a watch),
Prometheus scraping the sidecar, the operator deciding the rollout. What must hold:

- fail-static: every request during the outage is answered, from the last routing, split between
  the versions exactly as its weights say;
- the sidecar's routing watch and the operator reconnect on their own, without a restart;
- the operator takes no rollout decision while it cannot see the cluster, and the rollout
  continues step by step once it can.

The outage (`stop_control_plane`) stops the API server and etcd and starts them again in place;
a second, quick restart (killed, started at once) follows at the next step.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from operator_run import install_crd, log_tail, start_operator, wait_for_status

from guardedmodel_testground.cluster import LocalCluster
from guardedmodel_testground.procs import free_port
from guardedmodel_testground.prometheus import Prometheus, ScrapeJob
from guardedmodel_testground.triton import TritonServer

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

NAME = "outage"
OUTAGE_S = 30.0  # the requirement's outage, whole: the test fits the CI budget with it
INTERVAL_S = 8  # the canary check interval: long enough to start the outage between two steps

# The sidecar's own test fixtures (toy model, config, process) live beside its tests; loaded by
# path under a name of their own, so they do not shadow this directory's modules.
_SIDECAR_TESTS = Path(__file__).resolve().parents[1] / "sidecar" / "conftest.py"
_spec = importlib.util.spec_from_file_location("sidecar_test_fixtures", _SIDECAR_TESTS)
assert _spec is not None and _spec.loader is not None
sidecar_fixtures = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sidecar_fixtures)
from sidecar_toy import MODEL, toy_data, write_toy_repository  # noqa: E402  (its directory is on the path now)


@dataclass(frozen=True)
class Answer:
    at: float  # time.monotonic() when the answer arrived
    version: str | None  # the version that answered, None for a failure
    error: str = ""


@dataclass
class Load:
    """Requests to the sidecar from `threads` clients until stopped, each answer recorded."""

    url: str
    rows: np.ndarray
    threads: int = 2
    pause_s: float = 0.02
    answers: list[Answer] = field(default_factory=list)
    stop_flag: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        for i in range(self.threads):
            worker = threading.Thread(target=self._run, args=(i,), daemon=True)
            worker.start()
            self.workers.append(worker)
        return self

    def _run(self, seed: int) -> None:
        client = httpclient.InferenceServerClient(self.url, connection_timeout=10, network_timeout=10)
        i = seed
        while not self.stop_flag.is_set():
            x = self.rows[i % len(self.rows) : i % len(self.rows) + 1]
            i += 1
            inp = httpclient.InferInput("INPUT", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            try:
                response = client.infer(MODEL, [inp]).get_response()
                answer = Answer(time.monotonic(), str(response["parameters"]["model_version"]))
            except Exception as exc:
                answer = Answer(time.monotonic(), None, f"{type(exc).__name__}: {exc}")
            with self.lock:
                self.answers.append(answer)
            time.sleep(self.pause_s)
        client.close()

    def between(self, start: float, end: float) -> list[Answer]:
        with self.lock:
            return [a for a in self.answers if start <= a.at <= end]

    def since(self, start: float) -> list[Answer]:
        return self.between(start, float("inf"))

    def stop(self) -> None:
        self.stop_flag.set()
        for worker in self.workers:
            worker.join(timeout=15)


def canary_share_started(answers: list[Answer], weight: int, window: int = 20) -> float | None:
    """When the answers first show the canary ("2") at `weight` %: the arrival time of the first
    answer of a run of `window` answers with that share (the sidecar splits by a credit counter,
    so any `window` answers in a row hold weight*window/100 canary answers, give or take one)."""
    versions = [a.version for a in answers]
    want = weight * window / 100
    for i in range(len(versions) - window + 1):
        run = versions[i : i + window]
        if None not in run and abs(run.count("2") - want) <= 1:
            return answers[i].at
    return None


def manifest(namespace: str, repository: Path, version: str) -> str:
    return json.dumps(
        {
            "apiVersion": "guardedmodel.io/v1alpha1",
            "kind": "GuardedModel",
            "metadata": {"name": NAME, "namespace": namespace},
            "spec": {
                "model": {"name": MODEL, "repository": f"file://{repository}", "version": version},
                "rollout": {
                    "strategy": "canary",
                    "steps": [10, 50, 100],
                    "interval": f"{INTERVAL_S}s",
                    "failureLimit": 1,
                    "minRequests": 20,
                    "thresholds": {"maxErrorRate": 0.05},
                },
            },
        }
    )


@dataclass
class Outage:
    """One stop of the control plane: monotonic times for the traffic, UTC for the status stamps."""

    down_at: float  # the stop began
    up_at: float  # the API server answered ready again
    down_utc: dt.datetime
    restart_utc: dt.datetime  # etcd and the API server were being started again: down until here

    def covers(self, stamp: dt.datetime) -> bool:
        """Was a status stamp (whole seconds, so up to a second before the moment it stands for)
        certainly written while the control plane was down?"""
        return self.down_utc <= stamp and stamp + dt.timedelta(seconds=1) <= self.restart_utc


def outage(cluster: LocalCluster, seconds: float, *, kill: bool = False) -> Outage:
    down_at, down_utc = time.monotonic(), dt.datetime.now(dt.UTC)
    cluster.stop_control_plane(kill=kill)
    try:
        time.sleep(max(0.0, seconds - (time.monotonic() - down_at)))
    finally:
        restart_utc = dt.datetime.now(dt.UTC)
        cluster.start_control_plane()
    return Outage(down_at, time.monotonic(), down_utc, restart_utc)


def stamp(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


@dataclass
class FirstTime:
    """When `probe` first holds, polled in the background while the test goes on."""

    probe: Callable[[], bool]
    at: float | None = None
    thread: threading.Thread | None = None
    stop_flag: threading.Event = field(default_factory=threading.Event)

    def start(self) -> FirstTime:
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def _poll(self) -> None:
        while not self.stop_flag.is_set():
            try:
                if self.probe():
                    self.at = time.monotonic()
                    return
            except OSError:
                pass  # not answering yet
            self.stop_flag.wait(0.2)

    def wait(self, timeout: float) -> float:
        assert self.thread is not None
        self.thread.join(timeout)
        self.stop_flag.set()
        assert self.at is not None, f"still not true after {timeout}s"
        return self.at


def back_after_down(up: Callable[[], bool]) -> Callable[[], bool]:
    """A probe that holds once `up` has been false and is true again."""
    was_down = False

    def probe() -> bool:
        nonlocal was_down
        now_up = up()
        was_down = was_down or not now_up
        return was_down and now_up

    return probe


@dataclass
class Stack:
    cluster: LocalCluster
    namespace: str
    repository: Path
    sidecar: Any
    load: Load
    operator_log: Path
    operator_metrics: str

    def status(self) -> dict[str, Any]:
        found = self.cluster.kubectl_json("get", "guardedmodel", NAME, "-n", self.namespace)
        return dict(found.get("status") or {})

    def wait_status(
        self, what: str, ok: Callable[[dict[str, Any]], bool], timeout: float = 60
    ) -> dict[str, Any]:
        return wait_for_status(
            self.cluster, self.namespace, NAME, what, ok, timeout=timeout, interval=0.3, context=self.logs
        )

    def wait_served(self, weight: int, after: float, timeout: float = 30) -> float:
        """Until the sidecar serves the canary at `weight` %; returns when it started to."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            started = canary_share_started(self.load.since(after), weight)
            if started is not None:
                return started
            time.sleep(0.2)
        recent = Counter(a.version for a in self.load.since(time.monotonic() - 5))
        pytest.fail(f"the sidecar never served the canary at {weight}% (last 5 s: {recent})\n{self.logs()}")

    def operator_reconciles(self) -> float:
        """Successful reconciles the operator's GuardedModel watch triggered."""
        with urllib.request.urlopen(self.operator_metrics, timeout=5) as response:
            text = response.read().decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("guardedmodel_operator_reconciles_total{")
            and 'trigger="guardedmodel"' in line
            and 'result="success"' in line
        )

    def sidecar_follows_routing(self) -> bool:
        return "guardedmodel_routing_watch_connected 1.0" in self.sidecar.metrics()

    def logs(self) -> str:
        return (
            f"operator log tail:\n{log_tail(self.operator_log)}\n"
            f"sidecar log tail:\n{log_tail(self.sidecar.log_path)}"
        )


@pytest.fixture
def stack(
    k8s_cluster: LocalCluster,
    prometheus_factory: Callable[..., Prometheus],
    triton_server_factory: Callable[..., TritonServer],
    tmp_path: Path,
) -> Iterator[Stack]:
    install_crd(k8s_cluster)
    namespace = f"outage-{uuid.uuid4().hex[:6]}"
    k8s_cluster.kubectl("create", "namespace", namespace)
    repository = write_toy_repository(tmp_path / "models")
    triton = triton_server_factory(repository, model_control_mode="explicit")
    config = sidecar_fixtures.sidecar_config(triton, repository, tmp_path)
    config["guardedModel"] = {"namespace": namespace, "name": NAME}
    sidecar = sidecar_fixtures.launch_sidecar(
        config, tmp_path, "sidecar", extra_args=("--kubeconfig", str(k8s_cluster.kubeconfig))
    )
    load: Load | None = None
    stop_operator: Callable[[], None] | None = None
    try:
        sidecar.wait_ready()
        metrics_target = f"127.0.0.1:{config['listen']['metrics']}"
        labels = {"namespace": namespace, "guardedmodel_io_name": NAME}
        prometheus = prometheus_factory([ScrapeJob(namespace, [metrics_target], labels=labels)])
        prometheus.wait_for(f'guardedmodel_triton_ready{{namespace="{namespace}"}}')
        k8s_cluster.kubectl("apply", "-f", "-", input=manifest(namespace, repository, "1"))
        operator_log, metrics_port = tmp_path / "operator.log", free_port()
        stop_operator = start_operator(
            k8s_cluster,
            namespace,
            prometheus.url,
            operator_log,
            {"GUARDEDMODEL_ROLLOUT_MIN_WINDOW_S": "3"},
            args=("--metrics-host", "127.0.0.1", "--metrics-port", str(metrics_port)),
        )
        load = Load(sidecar.http_url, toy_data().sample(16, seed=50)[0]).start()
        yield Stack(
            k8s_cluster,
            namespace,
            repository,
            sidecar,
            load,
            operator_log,
            f"http://127.0.0.1:{metrics_port}/metrics",
        )
    finally:
        if load is not None:
            load.stop()
        if stop_operator is not None:
            stop_operator()
        sidecar.stop()
        k8s_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_a_control_plane_outage_mid_canary_keeps_serving_and_decides_nothing(stack: Stack) -> None:
    s, outage_s = stack, OUTAGE_S
    s.wait_status(
        "version 1 stable", lambda st: st.get("stableVersion") == "1" and st.get("phase") == "Ready"
    )
    s.cluster.kubectl("apply", "-f", "-", input=manifest(s.namespace, s.repository, "2"))
    s.wait_status("the canary at 10 %", lambda st: st.get("canaryWeight") == 10)
    s.wait_served(10, after=time.monotonic() - 5)
    canary = s.status()
    assert canary["canaryWeight"] == 10, "the first check came before the outage could start"

    # The first outage, with the canary at 10 % and its first check due in the middle of it.
    sidecar_back = FirstTime(back_after_down(s.sidecar_follows_routing)).start()
    first = outage(s.cluster, outage_s)
    # The operator reconnects on its own: its watch sees an edit of the GuardedModel again.
    reconciles_before = s.operator_reconciles()
    s.cluster.kubectl("annotate", "guardedmodel", NAME, "-n", s.namespace, f"outage-probe={time.time()}")
    operator_back = FirstTime(lambda: s.operator_reconciles() > reconciles_before).start()
    during = s.load.between(first.down_at, first.up_at)
    failures = [a for a in during if a.version is None]
    assert not failures, f"{len(failures)} of {len(during)} requests failed during the outage: {failures[:3]}"
    assert len(during) >= 10 * outage_s, f"only {len(during)} requests in {outage_s}s: traffic stalled"
    canary_answers = Counter(a.version for a in during)["2"]
    assert abs(canary_answers - len(during) * 0.10) <= 2, (canary_answers, len(during))

    # No decision while the operator could not see the cluster, and the routing it left stands.
    after = s.status()
    assert after["history"][: len(canary["history"])] == canary["history"]
    for entry in after["history"][len(canary["history"]) :]:
        assert not first.covers(stamp(entry["at"])), entry
    assert not first.covers(stamp(after["rollout"]["since"])), after["rollout"]

    # The rollout continues: the next step is written and the sidecar follows it.
    served_at = s.wait_served(50, after=first.up_at, timeout=60)
    routing_back_s = served_at - first.up_at
    operator_back_s = operator_back.wait(60) - first.up_at
    sidecar_back_s = sidecar_back.wait(60) - first.up_at

    # A quick restart (a crash and an immediate start) at 50 %: the same again.
    quick = outage(s.cluster, 0.0, kill=True)
    done = s.wait_status(
        "version 2 promoted",
        lambda st: (
            st.get("stableVersion") == "2" and not st.get("canaryVersion") and st.get("phase") == "Ready"
        ),
        timeout=90,
    )
    assert not quick.covers(stamp(done["rollout"]["since"]))
    s.wait_served(100, after=quick.up_at)
    every = s.load.since(first.down_at)
    failed = [a for a in every if a.version is None]
    assert not failed, f"{len(failed)} of {len(every)} requests failed: {failed[:3]}"
    assert [(h["version"], h["outcome"]) for h in done["history"][-2:]] == [
        ("2", "CanaryStarted"),
        ("2", "Promoted"),
    ]
    print(
        f"outage {outage_s:.0f}s (API unanswered {first.up_at - first.down_at:.1f}s): "
        f"{len(during)} requests during it, 0 failed, {canary_answers} to the canary at 10 %; "
        f"sidecar watch back {sidecar_back_s:.1f}s, operator watch back {operator_back_s:.1f}s and "
        f"next routing served {routing_back_s:.1f}s after the API returned; quick restart {quick.up_at - quick.down_at:.1f}s; "
        f"{len(every)} requests from the first outage on, 0 failed"
    )
