"""The operator's Prometheus client against an HTTP server that fails in every way Prometheus (or a
proxy in front of it) can: each failure is "no data" with a reason a person can act on, in bounded
time, and the policy holds on it (never promotes) until noDataTimeout, then rolls the canary back.

The client, the queries and the policy are the real ones; the server is a real HTTP server on
loopback (`guardedmodel_testground.faulty_http`) answering the fault.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from guardedmodel_operator.clock import format_time
from guardedmodel_operator.config import OperatorConfig
from guardedmodel_operator.events import Event
from guardedmodel_operator.handlers import OperatorState
from guardedmodel_operator.prometheus import PrometheusSettings, PrometheusSource
from guardedmodel_operator.rollout.comparison_source import fetch_comparison
from guardedmodel_operator.rollout.controller import RolloutController
from guardedmodel_operator.rollout.metrics_source import fetch_samples, queries
from guardedmodel_operator.rollout.types import MetricSamples, RolloutSpec, RolloutState
from guardedmodel_operator.rollout.verdict import INCONCLUSIVE, NO_DATA, Kind, decide
from guardedmodel_operator.rollout.wiring import rollout_step
from guardedmodel_testground import faulty_http
from guardedmodel_testground.faulty_http import FaultyHTTP
from guardedmodel_testground.procs import free_port

pytestmark = pytest.mark.reliability

TIMEOUT_S = 1.5  # the client's per-query limit here
T0 = dt.datetime(2025, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
SPEC = RolloutSpec(version="2", generation=2, interval_s=30, no_data_timeout_s=600)
CANARY = RolloutState(stable="1", canary="2", weight=10, phase="Progressing", deployment_ready=True)

# fault → what the reason must name (so that a person knows where to look)
FAULTS = {
    faulty_http.ERROR_500: ["HTTP 500", "internal server error"],
    faulty_http.UNAVAILABLE_503: ["HTTP 503", "TSDB not ready"],
    faulty_http.HANG: ["did not answer", "TimeoutError"],
    faulty_http.NOT_JSON: ["HTTP 200", "<html>"],
    faulty_http.WRONG_SHAPE: ["no readable vector", "data.result is NoneType"],
    faulty_http.NOT_A_NUMBER: ["no readable vector", "not a number"],
}


@pytest.fixture
async def server() -> AsyncIterator[FaultyHTTP]:
    faulty = FaultyHTTP(hang_limit_s=30).start()
    yield faulty
    faulty.stop()


async def read(url: str, versions: tuple[str, ...] = ("1", "2")) -> dict[str, MetricSamples]:
    source = PrometheusSource(PrometheusSettings(url, timeout_s=TIMEOUT_S, min_window_s=0))
    try:
        return await fetch_samples(source, "ml", "clf", versions, 30)
    finally:
        await source.close()


def assert_held_then_inconclusive(samples: MetricSamples) -> None:
    held = decide(SPEC, CANARY, samples, T0)
    assert (held.kind, held.reason) == (Kind.HOLD, NO_DATA), held
    past = CANARY.__class__(**{**CANARY.__dict__, "no_data_since": T0 - dt.timedelta(seconds=600)})
    given_up = decide(SPEC, past, samples, T0)
    assert (given_up.kind, given_up.reason, given_up.target) == (Kind.ROLLBACK, INCONCLUSIVE, "1")


@pytest.mark.parametrize("fault", sorted(FAULTS))
async def test_each_fault_is_no_data_with_its_reason_in_bounded_time(server: FaultyHTTP, fault: str) -> None:
    server.set(fault)
    started = time.monotonic()
    found = await read(server.url)
    elapsed = time.monotonic() - started
    assert elapsed < TIMEOUT_S + 5  # one timeout, not one per query (they run at once), margin for load
    for version in ("1", "2"):
        error = found[version].error
        assert error is not None and server.url in error
        for text in FAULTS[fault]:
            assert text in error, error
    assert_held_then_inconclusive(found["2"])


async def test_unreachable_prometheus_is_no_data() -> None:
    found = await read(f"http://127.0.0.1:{free_port()}")
    assert found["2"].error is not None and "did not answer" in found["2"].error
    assert "check the operator's prometheusUrl" in found["2"].error
    assert_held_then_inconclusive(found["2"])


async def test_an_empty_answer_is_no_data_without_an_error(server: FaultyHTTP) -> None:
    server.set(faulty_http.EMPTY)
    found = await read(server.url)
    assert found["2"] == MetricSamples("2", 30)  # every figure None: nothing to decide on
    assert_held_then_inconclusive(found["2"])


@pytest.mark.parametrize("failing", ["requests", "ood_samples", "errors", "loaded"])
async def test_one_failing_query_fails_the_whole_check(server: FaultyHTTP, failing: str) -> None:
    """The other eleven answer; a check must not decide on the part it got."""
    promql = queries(PrometheusSettings("http://x", min_window_s=0), "ml", "clf", 30)[failing]
    server.set(faulty_http.ERROR_500, only_matching=promql)
    found = await read(server.url)
    assert found["2"].error is not None and "HTTP 500" in found["2"].error
    assert server.faults == 1  # (the rest are cancelled once it failed, so some were never sent)
    assert_held_then_inconclusive(found["2"])


async def test_a_hung_query_is_cancelled_with_the_rest(server: FaultyHTTP) -> None:
    """One query hangs, the rest answer at once: the check ends at the client's timeout, and the
    hung request's connection is let go, not kept until the server answers."""
    promql = queries(PrometheusSettings("http://x", min_window_s=0), "ml", "clf", 30)["p99"]
    server.set(faulty_http.HANG, only_matching=promql)
    started = time.monotonic()
    found = await read(server.url)
    assert time.monotonic() - started < TIMEOUT_S + 5
    assert found["2"].error is not None and "TimeoutError" in found["2"].error


async def test_the_comparison_holds_on_a_fault_too(server: FaultyHTTP) -> None:
    server.set(faulty_http.UNAVAILABLE_503)
    source = PrometheusSource(PrometheusSettings(server.url, timeout_s=TIMEOUT_S, min_window_s=0))
    try:
        found = await fetch_comparison(source, "ml", "clf", "2", "1", 60)
    finally:
        await source.close()
    assert found.error is not None and "HTTP 503" in found.error and found.total_rows == 0


def canary_body(no_data_since: dt.datetime | None) -> dict[str, Any]:
    rollout: dict[str, Any] = {"phase": "Progressing", "since": format_time(T0 - dt.timedelta(minutes=1))}
    if no_data_since is not None:
        rollout.update(reason=NO_DATA, message="no data", noDataSince=format_time(no_data_since))
    return {
        "metadata": {"namespace": "ml", "name": "clf", "generation": 2},
        "spec": {"model": {"version": "2"}, "rollout": {"interval": "30s", "noDataTimeout": "5m"}},
        "status": {
            "observedGeneration": 2,
            "conditions": [{"type": "Ready", "status": "True", "reason": "RolloutComplete"}],
            "stableVersion": "1",
            "canaryVersion": "2",
            "canaryWeight": 10,
            "rollout": rollout,
        },
    }


async def test_the_controller_step_over_a_hung_prometheus(server: FaultyHTTP) -> None:
    """The whole step (query, decision, status write, Event) ends in about one query timeout: the
    first writes the hold and its condition, one at the bound writes the rollback."""
    server.set(faulty_http.HANG)
    patches: list[dict[str, Any]] = []
    events: list[Event] = []

    async def patch_status(
        namespace: str, name: str, patch: Mapping[str, Any], *, resource_version: str | None = None
    ) -> dict[str, Any]:
        patches.append(dict(patch))
        return {}

    now = T0
    source = PrometheusSource(PrometheusSettings(server.url, timeout_s=TIMEOUT_S, min_window_s=0))
    controller = RolloutController(source, patch_status, lambda _b, e: events.append(e), now=lambda: now)
    try:
        started = time.monotonic()
        result, _ = await controller.step(canary_body(None))
        assert time.monotonic() - started < TIMEOUT_S + 5
        assert (result.verdict.kind, result.verdict.reason) == (Kind.HOLD, NO_DATA)
        [patch] = patches
        assert (
            patch["rollout"]["noDataSince"] == format_time(T0)
            and "TimeoutError" in patch["rollout"]["message"]
        )
        [held] = [c for c in patch["conditions"] if c["type"] == "MetricsAvailable"]
        assert (held["status"], held["reason"], held["lastTransitionTime"]) == (
            "False",
            NO_DATA,
            format_time(T0),
        )
        assert [(e.type, e.reason) for e in events] == [("Normal", "Held")]

        now = T0 + dt.timedelta(minutes=5)
        result, _ = await controller.step(canary_body(T0))
        assert (result.verdict.kind, result.verdict.reason) == (Kind.ROLLBACK, INCONCLUSIVE)
        assert patches[-1]["canaryVersion"] is None and patches[-1]["rollout"]["reason"] == INCONCLUSIVE
        assert (events[-1].type, events[-1].reason) == ("Warning", INCONCLUSIVE)
    finally:
        await source.close()
    await asyncio.sleep(0)


async def test_a_hung_prometheus_does_not_hold_the_model_lock(server: FaultyHTTP) -> None:
    """The queries of a step run before it takes the model's lock: while they hang, the core's
    reconcile of the model (the same lock) goes ahead; the step then decides on what they gave."""
    server.set(faulty_http.HANG)
    memo = OperatorState(config=OperatorConfig())
    key = ("ml", "clf")
    memo.rollout_bodies[key] = canary_body(None)
    patches: list[dict[str, Any]] = []

    async def patch_status(
        namespace: str, name: str, patch: Mapping[str, Any], *, resource_version: str | None = None
    ) -> dict[str, Any]:
        patches.append(dict(patch))  # what the API server answers: the object as stored
        return {**canary_body(None), "kind": "GuardedModel", "status": dict(patch)}

    source = PrometheusSource(PrometheusSettings(server.url, timeout_s=TIMEOUT_S, min_window_s=0))
    controller = RolloutController(source, patch_status, lambda _b, _e: None, now=lambda: T0)
    try:
        stepping = asyncio.create_task(rollout_step(memo, controller, key))
        while server.requests == 0:
            await asyncio.sleep(0.01)
        lock = memo.locks.setdefault(key, asyncio.Lock())
        async with asyncio.timeout(TIMEOUT_S / 3):  # well before the queries give up
            async with lock:
                assert not stepping.done()  # the reconcile got the lock while the queries hang
        assert await stepping == 30.0  # held for lack of data: the next check in one interval
    finally:
        await source.close()
    [patch] = patches
    assert patch["rollout"]["reason"] == NO_DATA and "TimeoutError" in patch["rollout"]["message"]


async def test_samples_read_before_the_lock_are_used_only_for_what_they_measured(server: FaultyHTTP) -> None:
    server.set(faulty_http.UNAVAILABLE_503)
    source = PrometheusSource(PrometheusSettings(server.url, timeout_s=TIMEOUT_S, min_window_s=0))
    controller = RolloutController(source, _no_write, lambda _b, _e: None, now=lambda: T0)
    try:
        measured = await controller.measure(canary_body(None))
        assert measured is not None and measured.analysis.version == "2"
        read = server.requests
        result, _ = await controller.step(canary_body(None), measured)
        assert server.requests == read  # no query under the lock
        assert result.verdict.reason == NO_DATA and "HTTP 503" in result.verdict.message

        # The model moved on meanwhile (the canary was aborted): those samples answer nothing now.
        stable = canary_body(None)
        stable["spec"]["model"]["version"] = "1"
        stable["status"].update(canaryVersion=None, canaryWeight=0, rollout={"phase": "Ready"})
        controller.last_checks.clear()
        result, _ = await controller.step(stable, measured)
        assert server.requests > read and result.verdict.version == "1"
    finally:
        await source.close()


async def _no_write(
    namespace: str, name: str, patch: Mapping[str, Any], *, resource_version: str | None = None
) -> dict[str, Any]:
    return {}
