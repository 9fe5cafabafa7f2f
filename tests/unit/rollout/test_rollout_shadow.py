"""Shadow and replay before a canary: the policy, driven through the status as the controller does."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from guardedmodel_operator.prometheus import PrometheusSettings
from guardedmodel_operator.rollout.comparison import ComparisonSamples, ComparisonSpec, comparison_breaches
from guardedmodel_operator.rollout.comparison_source import comparison_queries, samples_from_results
from guardedmodel_operator.rollout.controller import plan_step
from guardedmodel_operator.rollout.phase import overlay
from guardedmodel_operator.rollout.types import RolloutSpec, RolloutState
from guardedmodel_operator.rollout.verdict import NO_DATA, Kind, decide

T0 = dt.datetime(2025, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
COMPARE = ComparisonSpec(shadow_fraction=0.2, replay_samples=50, min_rows=100)


def spec(strategy: str = "canary", comparison: ComparisonSpec = COMPARE, version: str = "2") -> RolloutSpec:
    return RolloutSpec(version=version, generation=2, strategy=strategy, interval_s=30, comparison=comparison)


def stable_status() -> dict[str, Any]:
    return {
        "stableVersion": "1",
        "canaryWeight": 0,
        "observedGeneration": 2,
        "conditions": [{"type": "Ready", "status": "True", "reason": "RolloutComplete"}],
    }


def compared(
    rows: tuple[int, int] = (80, 40),
    agree: float = 0.97,
    conf: float = 0.01,
    ood: float = 0.0,
    version: str = "2",
) -> ComparisonSamples:
    total = sum(rows)
    return ComparisonSamples(
        version=version,
        baseline="1",
        rows={"shadow": rows[0], "replay": rows[1]},
        agreements=agree * total,
        candidate_confidence=(0.8 + conf) * total,
        baseline_confidence=0.8 * total,
        candidate_ood=(0.05 + ood) * total,
        baseline_ood=0.05 * total,
    )


def step(
    status: dict[str, Any], s: RolloutSpec, samples: Any, now: dt.datetime
) -> tuple[Any, dict[str, Any]]:
    result = plan_step(s, status, samples, now)
    merged = {**status, **(result.patch or {})}
    return result, {k: v for k, v in merged.items() if v is not None}


def shadowing() -> dict[str, Any]:
    result, status = step(stable_status(), spec(), None, T0)
    assert result.verdict.kind is Kind.START_SHADOW
    return status


def test_a_new_version_goes_to_shadow_first_and_every_pod_is_told_so() -> None:
    status = shadowing()
    assert status["shadow"] == {"version": "2", "fraction": 0.2, "replay": 50}
    assert "canaryVersion" not in status and status["stableVersion"] == "1"
    assert status["comparison"] == {"version": "2", "baseline": "1", "rows": 0, "decision": "pending"}
    assert status["history"][-1]["outcome"] == "ShadowStarted"
    result, _ = step(stable_status(), spec(), None, T0)
    assert [(e.type, e.reason) for e in result.events] == [("Normal", "ShadowStarted")]
    phase, progressing, _ = overlay(
        "Ready", ("False", "RolloutComplete", ""), ("False", "AsExpected", ""), status
    )
    assert phase == "Progressing" and progressing[:2] == ("True", "Shadow")


def test_nothing_is_decided_before_an_interval_nor_before_min_rows() -> None:
    status = shadowing()
    early = decide(spec(), RolloutState.from_status(status, 2), compared(), T0 + dt.timedelta(seconds=10))
    assert early.kind is Kind.HOLD and early.reason != NO_DATA  # the next check is not due yet
    later = T0 + dt.timedelta(seconds=31)
    result, after = step(status, spec(), compared(rows=(30, 20)), later)
    assert result.verdict.reason == NO_DATA and "50 of 100 rows compared" in result.verdict.message
    assert after["comparison"]["rows"] == 50 and after["comparison"]["decision"] == "pending"
    assert after["shadow"]["version"] == "2"


@pytest.mark.parametrize(
    ("samples", "named"),
    [
        (compared(agree=0.7), "agreement 0.700 < minAgreement 0.9"),
        (compared(conf=-0.2), "confidence shift -0.200 beyond maxConfidenceShift 0.1"),
        (compared(conf=0.15), "confidence shift +0.150 beyond maxConfidenceShift 0.1"),
        (compared(ood=0.1), "OOD rate shift +0.100 beyond maxOodRateShift 0.05"),
    ],
)
def test_a_breached_comparison_refuses_the_version_before_anyone_sees_it(
    samples: ComparisonSamples, named: str
) -> None:
    status = shadowing()
    result, after = step(status, spec(), samples, T0 + dt.timedelta(seconds=31))
    assert result.verdict.kind is Kind.REJECT and named in result.verdict.message
    assert "shadow" not in after and "canaryVersion" not in after and after["stableVersion"] == "1"
    assert after["comparison"]["decision"] == "failed"
    assert after["rollout"]["phase"] == "RolledBack" and after["rollout"]["blockedVersion"] == "2"
    assert after["history"][-1]["outcome"] == "Rejected"
    assert [(e.type, e.reason) for e in result.events] == [("Warning", "Rejected")]
    # Not retried for the same generation: the next steps only guard the stable version.
    again, later = step(after, spec(), None, T0 + dt.timedelta(seconds=90))
    assert again.verdict.kind is Kind.HOLD and again.verdict.version == "1"
    assert "shadow" not in later and "canaryVersion" not in later


def test_a_passing_comparison_starts_the_canary_with_its_figures() -> None:
    status = shadowing()
    result, after = step(status, spec(), compared(), T0 + dt.timedelta(seconds=31))
    verdict = result.verdict
    assert verdict.kind is Kind.START_CANARY and verdict.weight == 10
    assert "agreement 0.970" in verdict.message and "shadow 80, replay 40" in verdict.message
    assert "shadow" not in after and (after["canaryVersion"], after["canaryWeight"]) == ("2", 10)
    assert after["comparison"] == {
        "version": "2",
        "baseline": "1",
        "rows": 120,
        "shadowRows": 80,
        "replayRows": 40,
        "agreement": 0.97,
        "confidenceShift": 0.01,
        "oodRateShift": 0.0,
        "decision": "passed",
    }


def test_strategy_instant_promotes_after_a_passing_comparison() -> None:
    _, status = step(stable_status(), spec("instant"), None, T0)
    result, after = step(status, spec("instant"), compared(), T0 + dt.timedelta(seconds=31))
    assert result.verdict.kind is Kind.PROMOTE_FULL
    assert after["stableVersion"] == "2" and after["lastGoodVersion"] == "1" and "shadow" not in after


def test_no_figures_hold_and_never_pass() -> None:
    status = shadowing()
    later = T0 + dt.timedelta(seconds=31)
    for samples in (
        None,
        ComparisonSamples("2", "1", error="Prometheus did not answer"),
        compared(version="3"),
    ):
        result, _ = step(status, spec(), samples, later)
        assert result.verdict.kind is Kind.HOLD and result.verdict.reason == NO_DATA


def test_changing_the_version_during_the_shadow_withdraws_or_replaces_it() -> None:
    status = shadowing()
    back, after = step(status, spec(version="1"), None, T0 + dt.timedelta(seconds=5))
    assert back.verdict.kind is Kind.ABORT and "shadow" not in after and after["stableVersion"] == "1"
    third, after = step(status, spec(version="3"), None, T0 + dt.timedelta(seconds=5))
    assert third.verdict.kind is Kind.ABORT
    restarted, after = step(after, spec(version="3"), None, T0 + dt.timedelta(seconds=6))
    assert restarted.verdict.kind is Kind.START_SHADOW and after["shadow"]["version"] == "3"


def test_without_shadow_or_replay_the_canary_starts_at_once() -> None:
    result, after = step(stable_status(), spec(comparison=ComparisonSpec()), None, T0)
    assert result.verdict.kind is Kind.START_CANARY and "shadow" not in after


def test_unset_thresholds_are_not_checked() -> None:
    loose = ComparisonSpec(
        replay_samples=10, min_agreement=None, max_confidence_shift=None, max_ood_rate_shift=None
    )
    assert comparison_breaches(loose, compared(agree=0.1, conf=0.5, ood=0.5)) == []


def test_spec_from_a_defaulted_body() -> None:
    body = {
        "metadata": {"generation": 3},
        "spec": {
            "model": {"name": "m", "repository": "pvc://m", "version": "2"},
            "rollout": {"shadow": {"fraction": 0.25}, "comparison": {"minAgreement": 0.95}},
        },
    }
    parsed = RolloutSpec.from_body(body).comparison
    assert parsed == ComparisonSpec(0.25, 0, 100, 0.95, 0.1, 0.05) and parsed.enabled
    body["spec"]["rollout"] = {}
    assert not RolloutSpec.from_body(body).comparison.enabled


def test_queries_count_a_series_born_in_the_window_whole_and_group_by_source() -> None:
    settings = PrometheusSettings(url="http://p")
    queries = comparison_queries(settings, "ml", "clf", "2", "1", 95.2)
    rows = queries["rows"]
    selector = 'namespace="ml",guardedmodel_io_name="clf",version="2",baseline="1"'
    assert rows == (
        f"sum by (source) ((guardedmodel_comparison_rows_total{{{selector}}} unless "
        f"guardedmodel_comparison_rows_total{{{selector}}} offset 96s) or "
        f"increase(guardedmodel_comparison_rows_total{{{selector}}}[96s]))"
    )
    assert set(queries) == {
        "rows",
        "agreements",
        "candidate_confidence",
        "baseline_confidence",
        "candidate_ood",
        "baseline_ood",
    }


def test_samples_from_results_sum_sources_and_skip_nan() -> None:
    def result(**by_source: float) -> list[dict[str, Any]]:
        return [{"metric": {"source": k}, "value": [0, str(v)]} for k, v in by_source.items()]

    samples = samples_from_results(
        {
            "rows": result(shadow=60, replay=40),
            "agreements": result(shadow=57, replay=38),
            "candidate_confidence": result(shadow=48, replay=33),
            "baseline_confidence": result(shadow=50, replay=32),
            "candidate_ood": result(shadow=3, replay=float("nan")),
            "baseline_ood": result(shadow=1),
        },
        "2",
        "1",
    )
    assert samples.total_rows == 100 and samples.agreement == pytest.approx(0.95)
    assert samples.confidence_shift == pytest.approx(-0.01)
    assert samples.ood_rate_shift == pytest.approx(0.02)
