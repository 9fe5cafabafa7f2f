"""Triton killed (SIGKILL) or hung (SIGSTOP) under concurrent HTTP and gRPC traffic, against the real
sidecar process and a real Triton.

What must hold for each fault, measured from the moment of the fault:

- the sidecar's readiness fails within 2 s and stays failed until Triton is back (no flapping: a kubelet
  counts consecutive failures), so a kubelet's readiness probe (period x failureThreshold as the
  operator renders them) takes the pod out of the Service in time;
- its liveness never fails (a kubelet would restart the sidecar for nothing, Triton being the sick one);
- the first refusal comes within 2 s: HTTP 503 with a v2 error body ({"error": ...}), gRPC UNAVAILABLE;
- every call in flight at the fault returns, cleanly (200, 503/UNAVAILABLE, or 504/DEADLINE_EXCEEDED at
  its deadline), and none outlives its deadline: a hung Triton does not hold callers;
- once Triton is back (restarted on the same ports, or SIGCONT) the sidecar serves again, with no step.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import SidecarProcess, triton_and_sidecar
from fault_traffic import Outcome, ProbePoller, Traffic, deployment_probes, first_after, summary
from sidecar_toy import toy_data

from guardedmodel_testground.triton import TritonServer

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

DETECT_WITHIN_S = 2.0  # the requirement: not-ready and a clean 503 within 2 s of the fault
HTTP_DEADLINE_S = 10.0  # the sidecar's limits.requestTimeout in this stack: an HTTP call's deadline
GRPC_DEADLINE_S = 5.0  # the callers' gRPC deadline
# 502: a Triton that crashes can send an answer the guard cannot score before it dies.
CLEAN_HTTP = {"200", "502", "503", "504"}
CLEAN_GRPC = {"OK", "UNAVAILABLE", "DEADLINE_EXCEEDED"}


def start_stack(
    tmp_path_factory: pytest.TempPathFactory, toy_repository: Path, tuning: dict[str, Any] | None = None
) -> Iterator[tuple[TritonServer, SidecarProcess]]:
    limits = {"requestTimeout": f"{HTTP_DEADLINE_S:g}s"}
    work = tmp_path_factory.mktemp("faults")
    with triton_and_sidecar(toy_repository, work, limits=limits, tuning=tuning) as stack:
        yield stack


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, toy_repository: Path
) -> Iterator[tuple[TritonServer, SidecarProcess]]:
    yield from start_stack(tmp_path_factory, toy_repository)


@pytest.fixture
def batching_stack(
    tmp_path_factory: pytest.TempPathFactory, toy_repository: Path
) -> Iterator[tuple[TritonServer, SidecarProcess]]:
    """The same with micro-batching: calls wait in the batcher and share one Triton call."""
    yield from start_stack(tmp_path_factory, toy_repository, {"microBatching": {"enabled": True}})


@dataclass
class Trial:
    detect_ready_s: float  # fault -> the first failing readiness poll
    first_http_503_s: float  # fault -> the first HTTP 503 with a v2 error body received
    first_grpc_unavailable_s: float
    inflight: dict[str, int]  # "protocol:status" -> calls caught by the fault
    recover_s: float  # Triton back (SIGCONT sent, or restarted and ready) -> the sidecar ready again


def deadline_of(outcome: Outcome) -> float:
    return HTTP_DEADLINE_S if outcome.protocol == "http" else GRPC_DEADLINE_S


def wait_for(what, check, timeout_s: float) -> None:  # type: ignore[no-untyped-def]
    """Wait until ``check()``; ``what`` (or ``what()``) says what did not happen."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"{what() if callable(what) else what}: not within {timeout_s} s"
        time.sleep(0.05)


@dataclass
class Kubelet:
    """Restarts Triton when its process has died, as a kubelet restarts a crashed container: Triton's
    Python backend sometimes aborts after SIGCONT (boost::interprocess::lock_exception: the stub's
    message queue timed out while the group was stopped). Counts the restarts."""

    triton: TritonServer
    restarts: int = 0

    def revive(self) -> bool:
        if self.triton.process is not None and not self.triton.process.alive():
            self.restarts += 1
            self.triton.restart()
        return False  # for use inside a wait_for check: never the condition itself


def run_trial(kubelet: Kubelet, traffic: Traffic, poller: ProbePoller, fault: str) -> Trial:
    """One fault and its recovery under the running traffic; asserts what must hold, returns figures."""
    triton = kubelet.triton
    warm_from = time.monotonic()
    wait_for(
        "traffic served before the fault",
        lambda: kubelet.revive() or sum(o.ok and o.ended >= warm_from for o in traffic.snapshot()) >= 20,
        60,
    )
    fault_at = time.monotonic()
    if fault == "hang":
        triton.pause()
    else:
        triton.kill()

    def refused(protocol: str) -> Outcome | None:
        return first_after(
            fault_at,
            traffic.snapshot(),
            lambda o: o.ended,
            lambda o: o.protocol == protocol and o.unavailable,
        )

    wait_for(
        "readiness failing",
        lambda: first_after(fault_at, poller.snapshot("readinessProbe"), lambda p: p[0], lambda p: not p[1]),
        10,
    )
    wait_for("HTTP 503 and gRPC UNAVAILABLE", lambda: refused("http") and refused("grpc"), 10)
    time.sleep(2.0)  # Triton stays down a while: readiness must stay failed, liveness passing

    if fault == "hang":
        back_at = time.monotonic()
        triton.resume()
    else:
        triton.restart()  # same ports, explicit mode: it comes back empty and the sidecar reloads
        back_at = time.monotonic()
    ready_poll = poller.snapshot("readinessProbe")
    wait_for(
        "the sidecar ready again",
        lambda: (
            kubelet.revive()
            or first_after(back_at, poller.snapshot("readinessProbe"), lambda p: p[0], lambda p: p[1])
        ),
        60,
    )
    ready_again = first_after(back_at, poller.snapshot("readinessProbe"), lambda p: p[0], lambda p: p[1])
    wait_for(
        lambda: (
            f"HTTP and gRPC served again (lately: {[(o.protocol, o.status, o.error[:80]) for o in traffic.snapshot()[-6:]]})"
        ),
        lambda: (
            kubelet.revive()
            or all(
                first_after(
                    ready_again[0],
                    traffic.snapshot(),
                    lambda o: o.started,
                    lambda o, p=p: o.protocol == p and o.ok,
                )
                for p in ("http", "grpc")
            )
        ),
        30,
    )

    detected = first_after(fault_at, ready_poll, lambda p: p[0], lambda p: not p[1])
    during = [passed for at, passed in ready_poll if detected[0] <= at < back_at]
    assert not any(during), "readiness came back while Triton was still down (a kubelet would not count it)"
    http_503, grpc_unavailable = refused("http"), refused("grpc")
    # Caught by the fault: sent before the sidecar knew (its readiness failed), answered after the fault.
    inflight_calls = [o for o in traffic.snapshot() if o.started < detected[0] and o.ended > fault_at]
    inflight: dict[str, int] = {}
    for o in inflight_calls:
        inflight[f"{o.protocol}:{o.status}"] = inflight.get(f"{o.protocol}:{o.status}", 0) + 1
        clean = CLEAN_HTTP if o.protocol == "http" else CLEAN_GRPC
        assert o.status in clean, f"a call caught by the fault ended unclean: {o}"
        assert o.ok or o.error, f"a refusal without a v2 error message: {o}"
    return Trial(
        detect_ready_s=detected[0] - fault_at,
        first_http_503_s=http_503.ended - fault_at,
        first_grpc_unavailable_s=grpc_unavailable.ended - fault_at,
        inflight=inflight,
        recover_s=ready_again[0] - back_at,
    )


def check_and_report(
    fault: str, trials: list[Trial], traffic: Traffic, poller: ProbePoller, crashes: int
) -> None:
    readiness = poller.probes["readinessProbe"]
    for trial in trials:
        assert trial.detect_ready_s <= DETECT_WITHIN_S, trial
        assert trial.first_http_503_s <= DETECT_WITHIN_S, trial
        assert trial.first_grpc_unavailable_s <= DETECT_WITHIN_S, trial
        # A kubelet probing every period sees failureThreshold failures in a row within
        # period x failureThreshold of the fault when readiness fails within one period and stays failed.
        assert trial.detect_ready_s <= readiness.period_s
    failed_live = [at for at, passed in poller.snapshot("livenessProbe") if not passed]
    assert not failed_live, f"liveness failed {len(failed_live)} times while Triton was down"
    outcomes = traffic.snapshot()
    late = [o for o in outcomes if o.ended - o.started > deadline_of(o) + 1.0]
    assert not late, f"calls outlived their deadline: {late[:5]}"
    unclean = [o for o in outcomes if o.status not in (CLEAN_HTTP if o.protocol == "http" else CLEAN_GRPC)]
    assert not unclean, f"calls ended unclean: {unclean[:5]}"
    inflight: dict[str, int] = {}
    for trial in trials:
        for key, count in trial.inflight.items():
            inflight[key] = inflight.get(key, 0) + count
    print(
        f"\n{fault} x{len(trials)}: readiness fails {summary([t.detect_ready_s for t in trials])}; "
        f"first HTTP 503 {summary([t.first_http_503_s for t in trials])}; "
        f"first gRPC UNAVAILABLE {summary([t.first_grpc_unavailable_s for t in trials])}; "
        f"recovery {summary([t.recover_s for t in trials])}; calls caught by the fault {inflight} "
        f"({sum('abandoned' in o.error for o in outcomes)} abandoned in flight); "
        f"kubelet: readiness out within {readiness.period_s * readiness.failure_threshold:g} s "
        f"(period {readiness.period_s:g} x {readiness.failure_threshold}), liveness "
        f"{len(poller.snapshot('livenessProbe'))} polls all passed; {len(outcomes)} calls; Triton died "
        f"after SIGCONT and was restarted {crashes} times"
    )


def run_faults(stack: tuple[TritonServer, SidecarProcess], fault: str, trials: int) -> None:
    triton, sidecar = stack
    x = toy_data().sample(2, seed=31)[0]
    poller = ProbePoller(sidecar.http_url, deployment_probes()).start()
    traffic = Traffic(
        sidecar.http_url, sidecar.grpc_url, x, grpc_deadline_s=GRPC_DEADLINE_S, prefix=fault
    ).start()
    kubelet = Kubelet(triton)
    try:
        results = [run_trial(kubelet, traffic, poller, fault) for _ in range(trials)]
    finally:
        triton.resume()  # never leave a stopped Triton behind a failed assertion
        traffic.stop(timeout_s=HTTP_DEADLINE_S + 5)
        poller.stop()
    check_and_report(fault, results, traffic, poller, kubelet.restarts)


def test_triton_hung_sidecar_refuses_fast_and_recovers(stack) -> None:
    run_faults(stack, "hang", trials=2)


def test_triton_killed_sidecar_refuses_fast_and_recovers(stack) -> None:
    run_faults(stack, "kill", trials=1)


def test_triton_hung_behind_the_micro_batcher(batching_stack) -> None:
    run_faults(batching_stack, "hang", trials=1)


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["hang", "kill"])
def test_triton_faults_repeated(stack, fault: str) -> None:
    run_faults(stack, fault, trials=5)
