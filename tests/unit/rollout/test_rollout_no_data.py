"""Checks without data (Prometheus unreachable or erroring, empty or partial answers, too little traffic)
are bounded by spec.rollout.noDataTimeout: a canary holds, says so once in its status and an Event,
and is rolled back as Inconclusive at the bound; it is never promoted on missing data; a stable
version is never rolled back for it, its MetricsAvailable condition says MetricsUnavailable instead.

Each case runs the controller's pure step over simulated time, as the scheduler would: the next
step when the step asks for it, the samples for the version it asks about, the patch applied.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guardedmodel_operator.clock import format_duration, format_time, parse_duration
from guardedmodel_operator.rollout.comparison import ComparisonSamples
from guardedmodel_operator.rollout.controller import StepResult, needed, plan_step
from guardedmodel_operator.rollout.outcome import METRICS_AVAILABLE
from guardedmodel_operator.rollout.phase import overlay
from guardedmodel_operator.rollout.types import MetricSamples, RolloutSpec, RolloutState
from guardedmodel_operator.rollout.verdict import (
    INCONCLUSIVE,
    METRICS_UNAVAILABLE,
    NO_DATA,
    NO_DATA_HOLDS,
    Kind,
)
from guardedmodel_operator.status import merge_patch

T0 = dt.datetime(2025, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
INTERVAL_S, TIMEOUT_S = 30.0, 300.0
REFUSED = "Prometheus at http://prometheus:9090 did not answer (ClientConnectorError: connection refused)"

# What a check can see, as `metrics_source.fetch_samples` returns it. Every failure of the
# query itself (unreachable, HTTP 500, 503, a timeout, a body that is not JSON or not a vector,
# a failing query among the twelve) comes back as `error` (tests/unit/rollout/test_prometheus_faults.py).
SAMPLES: dict[str, Callable[[str], MetricSamples]] = {
    "unreachable": lambda v: MetricSamples(v, 60, error=REFUSED),
    "http500": lambda v: MetricSamples(v, 60, error="Prometheus refused 'sum…' (HTTP 500): internal error"),
    "http503": lambda v: MetricSamples(v, 60, error="Prometheus refused 'sum…' (HTTP 503): TSDB not ready"),
    "timeout": lambda v: MetricSamples(v, 60, error="Prometheus did not answer (TimeoutError: )"),
    "malformed": lambda v: MetricSamples(v, 60, error="Prometheus answered with no readable vector"),
    "empty": lambda v: MetricSamples(v, 60),  # every query answered, with no series
    # the request and error queries answered, the OOD ones not: maxOodRate cannot be measured
    "partial": lambda v: MetricSamples(v, 60, requests=500.0, error_rate=0.0),
    "few_requests": lambda v: MetricSamples(v, 60, requests=3.0, ood_rate=0.0, error_rate=0.0),
    "not_loaded": lambda v: MetricSamples(v, 60, requests=0.0, loaded=0.0),
}
NO_DATA_KINDS = sorted(SAMPLES)


def healthy(version: str) -> MetricSamples:
    return MetricSamples(version, 60, requests=500.0, ood_rate=0.01, error_rate=0.0)


def breached(version: str) -> MetricSamples:
    return MetricSamples(version, 60, requests=500.0, ood_rate=0.6, error_rate=0.0)


def model(
    version: str, status: dict[str, Any], rollout: dict[str, Any] | None = None, generation: int = 2
) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "ml", "name": "clf", "generation": generation},
        "spec": {
            "model": {"version": version},
            "rollout": {
                "interval": f"{INTERVAL_S:g}s",
                "noDataTimeout": format_duration(TIMEOUT_S),
                "minRequests": 20,
                **(rollout or {}),
            },
        },
        "status": {
            "observedGeneration": generation,
            "conditions": [{"type": "Ready", "status": "True", "reason": "RolloutComplete"}],
            **status,
        },
    }


def canary_at_10(**rollout: Any) -> dict[str, Any]:
    status = {
        "stableVersion": "1",
        "canaryVersion": "2",
        "canaryWeight": 10,
        "rollout": {"phase": "Progressing", "reason": "CanaryStarted", "since": format_time(T0)},
    }
    return model("2", status, rollout)


def stable_only() -> dict[str, Any]:
    return model("1", {"stableVersion": "1", "rollout": {"phase": "Ready", "since": format_time(T0)}})


@dataclass
class Step:
    at: dt.datetime
    samples: MetricSamples | ComparisonSamples | None
    result: StepResult
    status: dict[str, Any]  # after the step's patch

    @property
    def s(self) -> float:
        return (self.at - T0).total_seconds()


@dataclass
class Run:
    steps: list[Step] = field(default_factory=list)

    def verdicts(self, *kinds: Kind) -> list[Step]:
        return [s for s in self.steps if s.result.verdict.kind in kinds]

    def writes(self, after_s: float = -1, before_s: float = float("inf")) -> int:
        return sum(1 for s in self.steps if s.result.patch is not None and after_s < s.s < before_s)

    def events(self) -> list[tuple[str, str]]:
        return [(e.type, e.reason) for s in self.steps for e in s.result.events]


def simulate(
    body: dict[str, Any],
    samples_at: Callable[[float, str], MetricSamples | ComparisonSamples],
    horizon_s: float,
    stop: Callable[[Step], bool] = lambda step: False,
) -> Run:
    """The rollout controller's loop for one model over simulated time (`RolloutController.step`
    with its clock, Prometheus and API server replaced by a time line)."""
    status = dict(body["status"])
    now, last_check, run = T0, None, Run()
    while (now - T0).total_seconds() <= horizon_s:
        spec = RolloutSpec.from_body(body)
        analysis = needed(spec, status, now, last_check)
        samples = None if analysis is None else samples_at((now - T0).total_seconds(), analysis.version)
        result = plan_step(spec, status, samples, now, last_check)
        if analysis is not None and result.verdict.recheck_after_s is None:
            last_check = now
        if result.patch is not None:
            status = apply_merge_patch(status, result.patch)
        step = Step(now, samples, result, status)
        run.steps.append(step)
        if stop(step) or result.next_in_s is None:
            break
        now += dt.timedelta(seconds=max(result.next_in_s, 0.001))
    return run


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """What the API server does with a status merge patch (RFC 7386): objects merge key by key,
    null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = apply_merge_patch(out.get(key), value)
    return out


def condition(status: dict[str, Any], kind: str = METRICS_AVAILABLE) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), None)


def rolled_back(step: Step) -> bool:
    return step.result.verdict.kind is Kind.ROLLBACK


@pytest.mark.parametrize("kind", NO_DATA_KINDS)
def test_a_canary_without_data_holds_then_is_rolled_back_as_inconclusive(kind: str) -> None:
    run = simulate(canary_at_10(), lambda _s, v: SAMPLES[kind](v), 3600, stop=rolled_back)

    assert not run.verdicts(Kind.PROMOTE_STEP, Kind.PROMOTE_FULL)
    first = run.verdicts(Kind.HOLD)[1]  # [0] is the interval's Analysing hold
    assert first.result.verdict.reason in NO_DATA_HOLDS and first.s == INTERVAL_S
    held = condition(first.status)
    assert held is not None and held["status"] == "False" and held["reason"] == first.result.verdict.reason
    assert held["lastTransitionTime"] == format_time(first.at) == first.status["rollout"]["noDataSince"]
    assert (
        f"rolled back as inconclusive at {format_time(first.at + dt.timedelta(seconds=TIMEOUT_S))}"
        in (held["message"])
    )

    [back] = run.verdicts(Kind.ROLLBACK)
    # At the bound to the second: the step before it looked again exactly then.
    assert back.s - first.s == TIMEOUT_S
    assert back.result.verdict.reason == INCONCLUSIVE and back.result.verdict.target == "1"
    assert back.status.get("canaryVersion") is None and back.status["stableVersion"] == "1"
    rollout = back.status["rollout"]
    assert (rollout["phase"], rollout["reason"], rollout["blockedReason"]) == (
        "RolledBack",
        INCONCLUSIVE,
        INCONCLUSIVE,
    )
    assert "noDataSince" not in rollout
    entry = back.status["history"][-1]
    assert (entry["version"], entry["outcome"]) == ("2", "RolledBack")
    assert "as inconclusive" in entry["reason"] and f"since {format_time(first.at)}" in entry["reason"]

    # Said once when the hold began and once at the rollback: no Event and no write per check.
    assert run.events() == [("Normal", "Held"), ("Warning", INCONCLUSIVE)]
    assert run.writes(after_s=first.s, before_s=back.s) == 0
    assert len(run.verdicts(Kind.HOLD)) > TIMEOUT_S / INTERVAL_S  # it did look every interval


def test_the_bound_is_the_spec_s_and_counts_from_the_first_check_without_data() -> None:
    for timeout in ("45s", "2m", "1h"):
        run = simulate(
            canary_at_10(noDataTimeout=timeout), lambda _s, v: SAMPLES["http503"](v), 7200, rolled_back
        )
        [back] = run.verdicts(Kind.ROLLBACK)
        assert back.s == INTERVAL_S + parse_duration(timeout), timeout


def test_data_returning_before_the_bound_lets_the_canary_go_on() -> None:
    outage_s = TIMEOUT_S - 2 * INTERVAL_S

    def samples(s: float, v: str) -> MetricSamples:
        return SAMPLES["unreachable"](v) if s <= outage_s else healthy(v)

    run = simulate(canary_at_10(), samples, 3600)
    assert not run.verdicts(Kind.ROLLBACK, Kind.DEGRADE)
    [promoted] = run.verdicts(Kind.PROMOTE_FULL)
    assert promoted.status["stableVersion"] == "2"
    [back] = [s for s in run.steps if s.s > outage_s and s.samples is not None][:1]
    assert back.result.verdict.kind is Kind.PROMOTE_STEP and back.result.verdict.weight == 50
    assert "noDataSince" not in back.status["rollout"]
    assert condition(back.status) == {
        "type": METRICS_AVAILABLE,
        "status": "True",
        "reason": "NotHolding",
        "message": "no rollout step is holding for lack of metrics",
        "lastTransitionTime": format_time(back.at),
        "observedGeneration": 2,
    }
    assert run.events()[:3] == [("Normal", "Held"), ("Normal", "MetricsAvailable"), ("Normal", "Promoted")]
    assert back.result.events[0].message == (
        f"a check of version 2 had data again, the first since {format_time(T0 + dt.timedelta(seconds=INTERVAL_S))}"
    )


def test_the_clock_restarts_after_a_check_with_data() -> None:
    """Outages shorter than the bound, with a conclusive (failed) check between them, never add up."""

    def samples(s: float, v: str) -> MetricSamples:
        if s == 8 * INTERVAL_S:
            return breached(v)  # a check with data, failed (1 of 3)
        return SAMPLES["timeout"](v)

    run = simulate(canary_at_10(failureLimit=3), samples, 3600, rolled_back)
    [back] = run.verdicts(Kind.ROLLBACK)
    assert back.result.verdict.reason == INCONCLUSIVE
    assert back.s == 9 * INTERVAL_S + TIMEOUT_S  # counted from the first check without data after it


def test_a_canary_halted_instead_when_auto_rollback_is_off() -> None:
    run = simulate(canary_at_10(autoRollback=False), lambda _s, v: SAMPLES["empty"](v), 3600)
    [halted] = run.verdicts(Kind.DEGRADE)
    assert (
        halted.result.verdict.reason == "CanaryHalted" and "as inconclusive" in halted.result.verdict.message
    )
    assert halted.status["canaryVersion"] == "2"  # it stays where it is
    assert halted.status["rollout"]["blockedVersion"] == "2"
    assert run.steps[-1].result.verdict.reason == "Halted"  # and waits for the spec to change
    assert not run.verdicts(Kind.PROMOTE_STEP, Kind.PROMOTE_FULL, Kind.ROLLBACK)


def test_a_shadow_without_figures_is_refused_as_inconclusive() -> None:
    body = model(
        "2",
        {
            "stableVersion": "1",
            "shadow": {"version": "2", "fraction": 0.5},
            "rollout": {"phase": "Progressing", "since": format_time(T0)},
        },
        {"shadow": {"fraction": 0.5}},
    )
    run = simulate(body, lambda _s, v: ComparisonSamples(v, "1", error=REFUSED), 3600, rolled_back)
    [refused] = run.verdicts(Kind.REJECT)
    assert refused.result.verdict.reason == INCONCLUSIVE and refused.s == INTERVAL_S + TIMEOUT_S
    assert refused.status.get("shadow") is None and refused.status["history"][-1]["outcome"] == "Rejected"
    assert ("Warning", INCONCLUSIVE) in run.events()
    assert not run.verdicts(Kind.START_CANARY, Kind.PROMOTE_FULL)


UNMONITORED = [k for k in NO_DATA_KINDS if k not in ("empty", "few_requests")]


@pytest.mark.parametrize("kind", UNMONITORED)
def test_a_stable_version_is_never_rolled_back_for_lack_of_data(kind: str) -> None:
    body = stable_only()
    body["status"]["lastGoodVersion"] = "0"  # a rollback target exists: it must still not be used
    run = simulate(body, lambda _s, v: SAMPLES[kind](v), 4 * TIMEOUT_S)

    assert not run.verdicts(Kind.ROLLBACK, Kind.DEGRADE, Kind.RECOVER)
    first = run.verdicts(Kind.HOLD)[1]
    assert first.result.verdict.reason in (NO_DATA, "VersionNotLoaded") and first.s == INTERVAL_S
    unmonitored = [s for s in run.steps if s.result.verdict.reason == METRICS_UNAVAILABLE]
    assert unmonitored[0].s == first.s + TIMEOUT_S
    held = condition(run.steps[-1].status)
    assert held is not None and (held["status"], held["reason"]) == ("False", METRICS_UNAVAILABLE)
    assert held["lastTransitionTime"] == format_time(first.at)  # since when, kept through the reasons
    assert "keeps serving" in held["message"] and run.steps[-1].status["stableVersion"] == "1"
    assert run.events() == [("Normal", "Held"), ("Warning", METRICS_UNAVAILABLE)]
    assert run.writes(after_s=first.s) == 1  # the bound; nothing per check


@pytest.mark.parametrize("kind", ["empty", "few_requests"])
def test_a_stable_version_too_idle_to_check_is_not_unmonitored(kind: str) -> None:
    """Prometheus answered, with too few requests: the model is idle (its Idle condition says so),
    nothing is missing. One Held Event, no MetricsAvailable condition, no bound, ever."""
    run = simulate(stable_only(), lambda _s, v: SAMPLES[kind](v), 6 * TIMEOUT_S)
    assert {s.result.verdict.reason for s in run.verdicts(Kind.HOLD)[1:]} == {NO_DATA}
    assert run.events() == [("Normal", "Held")]
    assert condition(run.steps[-1].status) is None and "noDataSince" not in run.steps[-1].status["rollout"]


def test_an_idle_answer_ends_a_stable_version_s_outage() -> None:
    run = simulate(
        stable_only(),
        lambda s, v: SAMPLES["unreachable"](v) if s < TIMEOUT_S else SAMPLES["empty"](v),
        2 * TIMEOUT_S,
    )
    last = run.steps[-1].status
    assert condition(last)["status"] == "True" and "noDataSince" not in last["rollout"]  # type: ignore[index]
    assert run.events() == [("Normal", "Held"), ("Normal", "MetricsAvailable")]


def test_a_stable_version_whose_data_returns_says_so() -> None:
    run = simulate(
        stable_only(), lambda s, v: SAMPLES["http500"](v) if s < 2 * TIMEOUT_S else healthy(v), 3 * TIMEOUT_S
    )
    back = next(s for s in run.steps if s.result.verdict.checked)
    assert back.result.events[0].reason == "MetricsAvailable" and back.result.events[0].type == "Normal"
    assert condition(back.status)["status"] == "True"  # type: ignore[index]
    assert "noDataSince" not in back.status["rollout"]
    assert run.events() == [
        ("Normal", "Held"),
        ("Warning", METRICS_UNAVAILABLE),
        ("Normal", "MetricsAvailable"),
    ]


OUTCOMES = [*NO_DATA_KINDS, "healthy", "breached"]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.sampled_from(OUTCOMES), min_size=1, max_size=60),
    st.sampled_from([30.0, 45.0, 120.0, 600.0]),
    st.integers(min_value=1, max_value=3),
)
def test_never_promoted_on_missing_data_and_never_held_past_the_bound(
    outcomes: list[str], timeout_s: float, failure_limit: int
) -> None:
    """Whatever each check sees, in any order: a step forward only on a check whose figures are all
    in and healthy, and no canary holds for lack of data at or past noDataTimeout."""
    body = canary_at_10(noDataTimeout=format_duration(timeout_s), failureLimit=failure_limit)
    checks: list[str] = []

    def samples(_s: float, v: str) -> MetricSamples:
        outcome = outcomes[min(len(checks), len(outcomes) - 1)]
        checks.append(outcome)
        return (
            healthy(v)
            if outcome == "healthy"
            else breached(v)
            if outcome == "breached"
            else SAMPLES[outcome](v)
        )

    run = simulate(body, samples, 24 * 3600, stop=lambda s: s.result.verdict.kind is not Kind.HOLD)
    for step in run.steps:
        verdict = step.result.verdict
        if verdict.kind in (Kind.PROMOTE_STEP, Kind.PROMOTE_FULL):
            assert step.samples == healthy("2")
        state = RolloutState.from_status(step.status, 2)
        if verdict.kind is Kind.HOLD and verdict.reason in NO_DATA_HOLDS:
            assert state.no_data_since is not None
            assert (step.at - state.no_data_since).total_seconds() < timeout_s
        if verdict.reason == INCONCLUSIVE:
            start = RolloutState.from_status(run.steps[run.steps.index(step) - 1].status, 2).no_data_since
            assert start is not None and (step.at - start).total_seconds() == timeout_s


def test_after_an_inconclusive_rollback_the_degraded_condition_says_so() -> None:
    run = simulate(canary_at_10(), lambda _s, v: SAMPLES["unreachable"](v), 3 * TIMEOUT_S)
    status = run.steps[-1].status  # the stable version's own hold for lack of data came since
    assert status["rollout"]["reason"] in NO_DATA_HOLDS
    phase, _, degraded = overlay(
        "Ready", ("False", "RolloutComplete", ""), ("False", "RolloutComplete", ""), status
    )
    assert phase == "RolledBack" and degraded[:2] == ("True", INCONCLUSIVE)
    assert "canary 2 rolled back to 1 as inconclusive" in degraded[2]


def test_no_data_timeout_from_the_spec() -> None:
    assert RolloutSpec.from_body({"spec": {"model": {"version": "1"}}}).no_data_timeout_s == 600.0
    given_spec = {"spec": {"model": {"version": "1"}, "rollout": {"noDataTimeout": "1h30m"}}}
    assert RolloutSpec.from_body(given_spec).no_data_timeout_s == 5400.0


@pytest.mark.parametrize("seconds", [0.25, 1.0, 45.0, 90.0, 600.0, 3600.0, 5400.0, 3661.0, 2.5])
def test_format_duration_reads_back(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("abcd"), inner, max_size=4),
    max_leaves=12,
)
STATUS = st.dictionaries(st.sampled_from(["rollout", "metrics", "phase", "conditions"]), JSON, max_size=4)


@settings(max_examples=300, deadline=None)
@given(STATUS, STATUS)
def test_a_status_patch_stored_by_the_api_server_gives_the_status_wanted(
    current: dict[str, Any], desired: dict[str, Any]
) -> None:
    """merge_patch's patch, merged as the API server merges it, turns the stored status into the
    wanted one, keys deleted inside an object (status.rollout.noDataSince) included."""
    desired = {k: v for k, v in desired.items() if v is not None}
    patch = merge_patch(current, desired)
    stored = current if patch is None else apply_merge_patch(current, patch)
    assert _without_nulls(stored) == _without_nulls(desired)


def _without_nulls(value: Any) -> Any:
    """A merge patch cannot store a null inside an object (null means delete): compare without them."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    return value
