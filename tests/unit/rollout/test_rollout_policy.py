"""The rollout policy, table by table: thresholds, failure counting, steps, guard, supersede."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import Any

import pytest

from guardedmodel_operator.rollout.outcome import apply_verdict, status_changes
from guardedmodel_operator.rollout.types import (
    MetricSamples,
    RolloutSpec,
    RolloutState,
    Thresholds,
    parse_duration,
)
from guardedmodel_operator.rollout.verdict import (
    ANALYSING,
    CHECK_FAILED,
    CHECKS_PASSED,
    HALTED,
    NO_DATA,
    WAITING_FOR_DEPLOYMENT,
    WAITING_FOR_FIRST_VERSION,
    Kind,
    decide,
    measure_version,
)

T0 = dt.datetime(2025, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
ALL_THRESHOLDS = Thresholds(
    max_ood_rate=0.25,
    max_review_rate=0.3,
    min_estimated_accuracy=0.8,
    max_drift_score=0.2,
    max_error_rate=0.05,
    max_p99_latency_ms=200.0,
)


def spec(**kw: Any) -> RolloutSpec:
    base = RolloutSpec(version="2", generation=2, interval_s=30, min_requests=20, thresholds=ALL_THRESHOLDS)
    return replace(base, **kw)


def healthy(version: str = "2", **kw: Any) -> MetricSamples:
    figures: dict[str, Any] = {
        "requests": 100.0,
        "ood_rate": 0.02,
        "review_rate": 0.05,
        "reject_rate": 0.01,
        "estimated_accuracy": 0.93,
        "drift_score": 0.05,
        "drift_detected": 0.0,  # the sidecar's test: stable
        "drift_p_value": 0.4,
        "error_rate": 0.0,
        "p99_latency_ms": 20.0,
    }
    figures.update(kw)
    return MetricSamples(version=version, window_s=30.0, **figures)


def drifted(version: str = "2", drift_score: float = 0.5, **kw: Any) -> MetricSamples:
    """The sidecar's test called a window drifted (p <= alpha) and its PSI was ``drift_score``."""
    return healthy(
        version,
        drift_score=drift_score,
        drifted_score=drift_score,
        drift_detected=1.0,
        drift_p_value=1e-8,
        **kw,
    )


def state(**kw: Any) -> RolloutState:
    base = RolloutState(stable="1", deployment_ready=True)
    return replace(base, **kw)


def canary_state(weight: int = 10, **kw: Any) -> RolloutState:
    return state(canary="2", weight=weight, phase="Progressing", since=T0 - dt.timedelta(seconds=31), **kw)


# ---------------------------------------------------------------- each threshold, both sides


@pytest.mark.parametrize(
    ("figure", "bad", "good", "threshold"),
    [
        ("ood_rate", 0.26, 0.25, "maxOodRate"),
        ("review_rate", 0.31, 0.3, "maxReviewRate"),
        ("estimated_accuracy", 0.79, 0.8, "minEstimatedAccuracy"),
        ("error_rate", 0.06, 0.05, "maxErrorRate"),
        ("p99_latency_ms", 201.0, 200.0, "maxP99LatencyMs"),
    ],
)
def test_each_threshold_rolls_the_canary_back_with_the_measured_value(
    figure: str, bad: float, good: float, threshold: str
) -> None:
    broken = decide(spec(), canary_state(), healthy(**{figure: bad}), T0)
    assert broken.kind is Kind.ROLLBACK
    assert broken.target == "1"
    assert threshold in broken.message and f"{bad:g}"[:4] in broken.message
    assert [b.threshold for b in broken.breaches] == [threshold]
    assert broken.breaches[0].measured == bad

    at_limit = decide(spec(), canary_state(), healthy(**{figure: good}), T0)
    assert at_limit.kind is Kind.PROMOTE_STEP  # the limit itself passes


# ---------------------------------------------------------------- drift: the test's decision, then PSI


@pytest.mark.parametrize(
    ("samples", "kind"),
    [
        # drifted (p <= alpha) and a shift larger than maxDriftScore: the check fails
        (drifted(drift_score=0.21), Kind.ROLLBACK),
        # drifted, but too small a shift to matter
        (drifted(drift_score=0.2), Kind.PROMOTE_STEP),
        # a large PSI the test calls noise (a small window): passes
        (healthy(drift_score=0.9, drift_detected=0.0, drift_p_value=0.3), Kind.PROMOTE_STEP),
        # the large PSI came from a window the test did not call drifted; the drifted one was small
        (
            healthy(drift_score=0.9, drifted_score=0.1, drift_detected=1.0, drift_p_value=1e-6),
            Kind.PROMOTE_STEP,
        ),
        # called drifted, but that window's PSI is not in Prometheus yet: no data, never a pass
        (healthy(drift_score=0.05, drift_detected=1.0, drift_p_value=1e-6), Kind.HOLD),
    ],
)
def test_drift_fails_a_check_only_when_detected_and_above_the_psi_limit(
    samples: MetricSamples, kind: Kind
) -> None:
    verdict = decide(spec(), canary_state(), samples, T0)
    assert verdict.kind is kind
    if kind is Kind.ROLLBACK:
        assert [b.threshold for b in verdict.breaches] == ["maxDriftScore"]
        assert verdict.breaches[0].measured == 0.21
        assert "drift detected (p 1e-08), driftScore 0.210 > maxDriftScore 0.2" in verdict.message


def test_insufficient_drift_data_is_inconclusive_for_the_stable_version_too() -> None:
    s = spec(version="2")
    guarded = state(stable="2", last_good="1", phase="Ready")
    verdict = decide(s, guarded, healthy(drift_score=0.9, drift_detected=None, drift_p_value=None), T0)
    assert verdict.kind is Kind.HOLD and verdict.reason == NO_DATA and verdict.failed_checks is None
    # other thresholds still act on their own figures
    broken = decide(s, guarded, healthy(ood_rate=0.9, drift_detected=None), T0)
    assert broken.kind is Kind.ROLLBACK and [b.threshold for b in broken.breaches] == ["maxOodRate"]
    # a drifted stable version goes back to the last good one
    rolled = decide(s, guarded, drifted(drift_score=0.6), T0)
    assert rolled.kind is Kind.ROLLBACK and rolled.target == "1"


def test_status_shows_the_drift_decision() -> None:
    from guardedmodel_operator.rollout.outcome import status_metrics

    assert status_metrics(drifted())["driftDecision"] == "drifted"
    assert status_metrics(healthy())["driftDecision"] == "stable"
    assert status_metrics(healthy(drift_detected=None))["driftDecision"] == "insufficientData"
    assert "driftDecision" not in status_metrics(healthy(drift_detected=None, drift_score=None))


def test_unset_thresholds_are_not_checked() -> None:
    only_ood = spec(thresholds=Thresholds(max_ood_rate=0.25))
    verdict = decide(only_ood, canary_state(), healthy(error_rate=0.9, drift_detected=None), T0)
    assert verdict.kind is Kind.PROMOTE_STEP


def test_several_breaches_are_all_named() -> None:
    verdict = decide(spec(), canary_state(), healthy(ood_rate=0.5, estimated_accuracy=0.4), T0)
    assert [b.threshold for b in verdict.breaches] == ["maxOodRate", "minEstimatedAccuracy"]
    assert "oodRate 0.500 > maxOodRate 0.25" in verdict.message
    assert "estimatedAccuracy 0.400 < minEstimatedAccuracy 0.8" in verdict.message


def test_model_wide_figures_say_so() -> None:
    samples = replace(healthy(error_rate=0.2), model_wide=("error_rate", "p99_latency_ms"))
    verdict = decide(spec(), canary_state(), samples, T0)
    assert "errorRate (all versions) 0.200 > maxErrorRate 0.05" in verdict.message


# ---------------------------------------------------------------- no data is inconclusive


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        (None, "no metric samples"),
        (healthy(requests=3.0), "3 of 20 requests needed"),
        (healthy(requests=None), "0 of 20 requests needed"),
        (healthy(version="1"), "no metric samples"),  # samples of another version
        (MetricSamples("2", 30.0, error="Prometheus unreachable"), "Prometheus unreachable"),
        (healthy(drift_detected=None), "maxDriftScore (no drift window with spec.drift.minSamples rows"),
        (healthy(drift_detected=float("nan")), "cannot be measured yet"),
        (healthy(estimated_accuracy=float("nan")), "minEstimatedAccuracy cannot be measured"),
    ],
)
def test_no_data_holds_without_counting_a_failure(samples: MetricSamples | None, expected: str) -> None:
    verdict = decide(spec(), canary_state(failed_checks=0), samples, T0)
    assert verdict.kind is Kind.HOLD and verdict.reason == NO_DATA
    assert expected in verdict.message
    assert verdict.failed_checks is None  # neither passed nor failed


def test_no_data_even_with_bad_figures_does_not_roll_back() -> None:
    verdict = decide(spec(), canary_state(), healthy(requests=5.0, ood_rate=0.9), T0)
    assert verdict.kind is Kind.HOLD and verdict.reason == NO_DATA


# ---------------------------------------------------------------- failureLimit


@pytest.mark.parametrize(
    ("limit", "failed_before", "kind"),
    [
        (0, 0, Kind.ROLLBACK),  # 0 acts on the first failure, like 1
        (1, 0, Kind.ROLLBACK),
        (3, 0, Kind.HOLD),
        (3, 1, Kind.HOLD),
        (3, 2, Kind.ROLLBACK),
    ],
)
def test_failure_limit_counts_consecutive_failed_checks(limit: int, failed_before: int, kind: Kind) -> None:
    verdict = decide(
        spec(failure_limit=limit), canary_state(failed_checks=failed_before), healthy(ood_rate=0.9), T0
    )
    assert verdict.kind is kind
    assert verdict.failed_checks == min(failed_before + 1, max(1, limit))
    if kind is Kind.HOLD:
        assert verdict.reason == CHECK_FAILED
        assert f"failed check {failed_before + 1} of {limit}" in verdict.message


def test_a_passing_check_resets_the_failure_count() -> None:
    status = _status(canary_state(failed_checks=2))
    verdict = decide(spec(failure_limit=3), canary_state(failed_checks=2), healthy(), T0)
    assert verdict.kind is Kind.PROMOTE_STEP and verdict.failed_checks == 0
    assert apply_verdict(status, verdict, spec(), T0)["rollout"]["failedChecks"] == 0


def test_failed_checks_are_one_interval_apart() -> None:
    s = spec(failure_limit=3)
    status = _status(canary_state())
    status = _step(status, s, healthy(ood_rate=0.9), T0)
    assert status["rollout"]["failedChecks"] == 1
    # Asked again within the interval (e.g. woken by a watch event): no second failure.
    again = decide(s, _state(status, s), healthy(ood_rate=0.9), T0 + dt.timedelta(seconds=5))
    assert again.kind is Kind.HOLD and again.reason == ANALYSING
    assert again.recheck_after_s == pytest.approx(25)
    assert measure_version(s, _state(status, s), T0 + dt.timedelta(seconds=5)) is None
    status = _step(status, s, healthy(ood_rate=0.9), T0 + dt.timedelta(seconds=30))
    assert status["rollout"]["failedChecks"] == 2
    status = _step(status, s, healthy(ood_rate=0.9), T0 + dt.timedelta(seconds=60))
    assert status.get("canaryVersion") is None and status["rollout"]["phase"] == "RolledBack"


# ---------------------------------------------------------------- steps, start to promotion


def test_canary_walks_the_steps_then_becomes_stable() -> None:
    s = spec(version="2", steps=(10, 50, 100))
    status: dict[str, Any] = {"stableVersion": "1", **_ready_conditions(s.generation)}
    now = T0
    status = _step(status, s, None, now)
    assert (status["canaryVersion"], status["canaryWeight"]) == ("2", 10)
    assert status["rollout"]["phase"] == "Progressing"
    weights = []
    for _ in range(3):
        assert _state(status, s).canary == "2"
        now += dt.timedelta(seconds=30)
        assert measure_version(s, _state(status, s), now) == "2"
        status = _step(status, s, healthy(), now)
        weights.append(status.get("canaryWeight"))
    assert weights == [50, 100, 0]
    assert status["stableVersion"] == "2" and status.get("canaryVersion") is None
    assert status["lastGoodVersion"] == "1"
    assert status["rollout"]["phase"] == "Ready"
    assert [(h["version"], h["outcome"]) for h in status["history"]] == [
        ("2", "CanaryStarted"),
        ("2", "Promoted"),
    ]


def test_steps_are_taken_from_the_current_weight() -> None:
    assert decide(spec(steps=(5, 25, 60, 100)), canary_state(weight=25), healthy(), T0).weight == 60
    assert decide(spec(steps=(5, 25, 60, 100)), canary_state(weight=60), healthy(), T0).weight == 100
    assert decide(spec(steps=(100,)), canary_state(weight=100), healthy(), T0).kind is Kind.PROMOTE_FULL


def test_single_step_of_100_sends_all_traffic_then_promotes() -> None:
    start = decide(spec(steps=(100,)), state(), None, T0)
    assert (start.kind, start.weight) == (Kind.START_CANARY, 100)


def test_canary_waits_for_the_deployment_of_its_generation() -> None:
    verdict = decide(spec(), state(deployment_ready=False), None, T0)
    assert verdict.kind is Kind.HOLD and verdict.reason == WAITING_FOR_DEPLOYMENT
    status = {"stableVersion": "1", "observedGeneration": 1, **_ready_conditions(1)}
    assert not RolloutState.from_status(status, generation=2).deployment_ready


def test_nothing_before_the_first_version_is_stable() -> None:
    verdict = decide(spec(), RolloutState(), None, T0)
    assert verdict.kind is Kind.HOLD and verdict.reason == WAITING_FOR_FIRST_VERSION


# ---------------------------------------------------------------- instant strategy


def test_instant_strategy_switches_at_once_without_steps() -> None:
    s = spec(strategy="instant")
    status = _step({"stableVersion": "1", **_ready_conditions(s.generation)}, s, None, T0)
    assert status["stableVersion"] == "2" and status.get("canaryVersion") is None
    assert status["canaryWeight"] == 0 and status["lastGoodVersion"] == "1"
    assert status["history"][-1]["outcome"] == "Promoted"


# ---------------------------------------------------------------- continuous guard


def test_continuous_guard_rolls_the_stable_version_back_to_the_last_good_one() -> None:
    s = spec(version="2")
    status = {"stableVersion": "2", "lastGoodVersion": "1", **_ready_conditions(s.generation)}
    assert measure_version(s, _state(status, s), T0) == "2"
    status = _step(status, s, drifted(version="2", drift_score=0.9), T0)
    assert status["stableVersion"] == "1" and status["lastGoodVersion"] == "1"
    assert status["rollout"]["phase"] == "RolledBack"
    last = status["history"][-1]
    assert (last["version"], last["outcome"]) == ("2", "RolledBack")
    assert "drift detected (p 1e-08), driftScore 0.900 > maxDriftScore 0.2" in last["reason"]
    # spec.model.version still says 2: it is not retried until the spec changes...
    later = T0 + dt.timedelta(seconds=60)
    verdict = decide(s, _state(status, s), healthy(version="1"), later)
    assert verdict.kind is Kind.HOLD and verdict.reason == CHECKS_PASSED and verdict.version == "1"
    # ...and version 1, now stable, is guarded; a breach there has nowhere to go.
    degraded = decide(s, _state(status, s), healthy(version="1", ood_rate=0.9), later)
    assert degraded.kind is Kind.DEGRADE
    # an edit of the spec (new generation) retries version 2 as a canary
    edited = replace(s, generation=3)
    assert decide(edited, _state(status, edited), None, later).reason == WAITING_FOR_DEPLOYMENT
    status["observedGeneration"] = 3  # the core has seen the edit and the pods are ready
    retry = decide(edited, _state(status, edited), None, later)
    assert retry.kind is Kind.START_CANARY and retry.version == "2"


def test_continuous_guard_without_another_version_marks_degraded_then_recovers() -> None:
    s = spec(version="1")
    status: dict[str, Any] = {"stableVersion": "1", **_ready_conditions(s.generation)}
    status = _step(status, s, healthy(version="1", ood_rate=0.6), T0)
    assert status["stableVersion"] == "1" and status["rollout"]["phase"] == "Degraded"
    assert status["history"][-1]["outcome"] == "Degraded"
    # Still bad at the next check: nothing new to write.
    later = T0 + dt.timedelta(seconds=30)
    same = apply_verdict(
        status, decide(s, _state(status, s), healthy(version="1", ood_rate=0.6), later), s, later
    )
    assert status_changes(status, same) is None
    healed = _step(status, s, healthy(version="1"), T0 + dt.timedelta(seconds=60))
    assert healed["rollout"]["phase"] == "Ready" and healed["history"][-1]["outcome"] == "Recovered"


def test_continuous_guard_off_is_idle() -> None:
    s = spec(version="1", continuous_guard=False)
    assert measure_version(s, state(), T0) is None
    assert decide(s, state(), healthy(version="1", ood_rate=1.0), T0).kind is Kind.HOLD


def test_guard_passing_writes_nothing() -> None:
    s = spec(version="1")
    status = _step({"stableVersion": "1", **_ready_conditions(s.generation)}, s, healthy(version="1"), T0)
    again = apply_verdict(status, decide(s, _state(status, s), healthy(version="1"), T0), s, T0)
    assert status_changes(status, again) is None


# ---------------------------------------------------------------- autoRollback off


def test_canary_failure_without_auto_rollback_is_degraded_and_keeps_routing() -> None:
    s = spec(auto_rollback=False)
    status = _step(_status(canary_state(weight=50)), s, healthy(ood_rate=0.9), T0)
    assert (status["canaryVersion"], status["canaryWeight"]) == ("2", 50)
    assert status["stableVersion"] == "1"
    assert status["rollout"]["phase"] == "Degraded"
    assert status["history"][-1]["outcome"] == "Halted"
    later = T0 + dt.timedelta(minutes=5)
    halted = decide(s, _state(status, s), healthy(), later)
    assert halted.kind is Kind.HOLD and halted.reason == HALTED
    # an edit of the spec resumes the analysis with a fresh count
    status["observedGeneration"] = 3
    resumed = decide(replace(s, generation=3), _state(status, replace(s, generation=3)), healthy(), later)
    assert resumed.kind is Kind.PROMOTE_STEP


def test_guard_failure_without_auto_rollback_is_degraded_not_rolled_back() -> None:
    s = spec(version="2", auto_rollback=False)
    verdict = decide(s, state(stable="2", last_good="1"), healthy(version="2", ood_rate=0.9), T0)
    assert verdict.kind is Kind.DEGRADE and "autoRollback is off" in verdict.message


# ---------------------------------------------------------------- supersede and abort


def test_a_new_version_supersedes_the_canary_in_flight() -> None:
    s = spec(version="3")
    status = _step(_status(canary_state(weight=50)), s, None, T0)
    assert (status["canaryVersion"], status["canaryWeight"]) == ("3", 10)
    assert [(h["version"], h["outcome"]) for h in status["history"][-2:]] == [
        ("2", "Superseded"),
        ("3", "CanaryStarted"),
    ]
    assert status["rollout"]["failedChecks"] == 0


def test_going_back_to_the_stable_version_aborts_the_canary() -> None:
    s = spec(version="1")
    status = _step(_status(canary_state(weight=50)), s, None, T0)
    assert status.get("canaryVersion") is None and status["canaryWeight"] == 0
    assert status["stableVersion"] == "1" and status["history"][-1]["outcome"] == "Aborted"


# ---------------------------------------------------------------- idempotency and purity


@pytest.mark.parametrize(
    "samples",
    [None, healthy(), healthy(ood_rate=0.9), healthy(requests=1.0)],
)
def test_same_inputs_give_the_same_output(samples: MetricSamples | None) -> None:
    s, st = spec(failure_limit=2), canary_state(failed_checks=0)
    status = _status(st)
    first = decide(s, st, samples, T0)
    assert decide(s, st, samples, T0) == first
    assert apply_verdict(status, first, s, T0) == apply_verdict(status, first, s, T0)
    assert status == _status(st)  # the input was not mutated


def test_holding_twice_writes_once() -> None:
    s = spec()
    status = _status(canary_state())
    once = _step(status, s, healthy(requests=2.0), T0)
    assert status_changes(
        status, apply_verdict(status, decide(s, _state(status, s), healthy(requests=2.0), T0), s, T0)
    )
    twice = apply_verdict(once, decide(s, _state(once, s), healthy(requests=3.0), T0), s, T0)
    assert status_changes(once, twice) is None  # same reason, no new write


def test_setting_the_spec_back_to_the_serving_version_acknowledges_a_rollback() -> None:
    s = spec()
    status = _step(_status(canary_state()), s, healthy(ood_rate=0.9), T0)
    assert status["rollout"]["phase"] == "RolledBack"
    back = replace(s, version="1", generation=3)
    status["observedGeneration"] = 3
    status = _step(status, back, None, T0 + dt.timedelta(minutes=1))
    assert status["rollout"]["phase"] == "Ready" and "blockedVersion" not in status["rollout"]
    assert status["stableVersion"] == "1" and status["history"][-1]["outcome"] == "RolledBack"
    # and from then on the stable version is simply guarded
    later = decide(back, _state(status, back), healthy(version="1"), T0 + dt.timedelta(minutes=2))
    assert later.reason == CHECKS_PASSED


def test_rollback_after_canary_is_not_retried_for_the_same_generation() -> None:
    s = spec()
    status = _step(_status(canary_state()), s, healthy(ood_rate=0.9), T0)
    assert status["rollout"]["blockedVersion"] == "2"
    later = T0 + dt.timedelta(minutes=1)
    assert decide(s, _state(status, s), None, later).version == "1"  # guards the stable one
    assert measure_version(s, _state(status, s), later) == "1"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h30m", 5400), ("500ms", 0.5), ("1.5m", 90)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_bad_duration_is_refused() -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("30 seconds")


def test_spec_from_a_defaulted_body() -> None:
    body = {
        "metadata": {"generation": 4},
        "spec": {
            "model": {"version": "3"},
            "rollout": {
                "steps": [100, 20],
                "interval": "1m",
                "minRequests": 50,
                "thresholds": {"maxOodRate": 0.1, "maxP99LatencyMs": 250},
            },
        },
    }
    parsed = RolloutSpec.from_body(body)
    assert (parsed.version, parsed.generation, parsed.steps, parsed.interval_s) == ("3", 4, (20, 100), 60)
    assert parsed.min_requests == 50
    # the CRD default for maxErrorRate fills in, as the API server would
    assert parsed.thresholds == Thresholds(max_ood_rate=0.1, max_error_rate=0.05, max_p99_latency_ms=250.0)


# ---------------------------------------------------------------- helpers


def _ready_conditions(generation: int) -> dict[str, Any]:
    return {
        "observedGeneration": generation,
        "conditions": [{"type": "Ready", "status": "True", "reason": "RolloutComplete"}],
    }


def _status(st: RolloutState) -> dict[str, Any]:
    status: dict[str, Any] = {"stableVersion": st.stable, **_ready_conditions(2)}
    if st.canary:
        status["canaryVersion"], status["canaryWeight"] = st.canary, st.weight
    rollout: dict[str, Any] = {"failedChecks": st.failed_checks}
    if st.phase:
        rollout["phase"] = st.phase
    if st.since:
        rollout["since"] = st.since.strftime("%Y-%m-%dT%H:%M:%SZ")
    status["rollout"] = rollout
    if st.last_good:
        status["lastGoodVersion"] = st.last_good
    return status


def _state(status: dict[str, Any], s: RolloutSpec) -> RolloutState:
    return RolloutState.from_status(status, s.generation)


def _step(
    status: dict[str, Any], s: RolloutSpec, samples: MetricSamples | None, now: dt.datetime
) -> dict[str, Any]:
    verdict = decide(s, _state(status, s), samples, now)
    owned = apply_verdict(status, verdict, s, now)
    merged = {**status, **owned}
    return {k: v for k, v in merged.items() if v is not None}


def test_a_passing_check_of_the_stable_version_waits_an_interval_before_the_next() -> None:
    """A pass writes nothing, so the status's clock stays at the last routing change; the time of the
    last check (the controller's memory) keeps any wake-up from checking again within the interval."""
    from guardedmodel_operator.rollout.controller import needed, plan_step

    s = spec(version="1")
    status = _status(state(since=T0 - dt.timedelta(minutes=5)))
    checked = T0
    first = plan_step(s, status, healthy("1"), checked)
    assert first.verdict.reason == CHECKS_PASSED
    soon = checked + dt.timedelta(seconds=0.2)
    assert needed(s, status, soon) is not None  # without the memory: checked again at once
    assert needed(s, status, soon, last_check=checked) is None
    held = plan_step(s, status, None, soon, last_check=checked)
    assert held.verdict.reason == ANALYSING and held.patch is None
    assert held.next_in_s == pytest.approx(29.8)
    later = checked + dt.timedelta(seconds=30)
    assert needed(s, status, later, last_check=checked) is not None


def test_drift_whose_psi_is_a_scrape_away_is_looked_at_again_within_seconds() -> None:
    pending = healthy(drift_score=0.05, drift_detected=1.0, drift_p_value=1e-6)
    verdict = decide(spec(), canary_state(), pending, T0)
    assert verdict.kind is Kind.HOLD and verdict.reason == NO_DATA
    assert verdict.recheck_after_s == 2.0 and "its PSI is not in yet" in verdict.message
    # no PSI pending: an ordinary inconclusive check waits for the interval
    assert decide(spec(), canary_state(), healthy(drift_detected=None), T0).recheck_after_s is None


def test_a_canary_no_pod_could_load_says_so_instead_of_waiting_for_requests() -> None:
    unloaded = MetricSamples(version="2", window_s=30.0, requests=None, loaded=0.0)
    verdict = decide(spec(), canary_state(), unloaded, T0)
    assert verdict.kind is Kind.HOLD and verdict.reason == "VersionNotLoaded"
    assert "Is version 2 in the model repository?" in verdict.message
    # loaded everywhere but no requests yet: the ordinary no-data hold
    idle = MetricSamples(version="2", window_s=30.0, requests=None, loaded=1.0)
    assert decide(spec(), canary_state(), idle, T0).reason == NO_DATA
    # traffic flows: the gauge does not matter (a pod that lost it is Triton's restart, not the canary's)
    assert decide(spec(), canary_state(), healthy(loaded=0.0), T0).kind is Kind.PROMOTE_STEP
