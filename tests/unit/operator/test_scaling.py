"""The scaler's pure parts: policy, PromQL, reading Prometheus answers, the status it writes."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from guardedmodel_operator.prometheus import PrometheusSettings
from guardedmodel_operator.scaling.controller import queries, sample_from_results, scale_events
from guardedmodel_operator.scaling.policy import (
    NO_DATA,
    SCALED_DOWN,
    SCALED_UP,
    STEADY,
    QueueSample,
    Recommendation,
    ScaleSpec,
    current_replicas,
    decide,
    recommend,
    scaling_status,
)

SPEC = ScaleSpec(min_replicas=1, max_replicas=8, target_queue_ms=50.0)
NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
WINDOW = 300.0


def busy(queue_ms: float) -> QueueSample:
    return QueueSample(queue_ms=queue_ms, requests_per_s=100.0)


@pytest.mark.parametrize(
    ("replicas", "sample", "expected"),
    [
        (2, busy(50.0), 2),  # on target
        (2, busy(54.0), 2),  # within 10 %: no change
        (2, busy(100.0), 4),  # twice the target: twice the replicas
        (2, busy(500.0), 4),  # ten times: at most double per step
        (1, busy(500.0), 2),
        (6, busy(500.0), 8),  # never above max
        (4, busy(10.0), 1),  # a fifth of the target: a fifth of the replicas, at least min
        (4, QueueSample(requests_per_s=0.0), 1),  # no traffic: min
        (4, QueueSample(), None),  # no data
        (4, QueueSample(queue_ms=500.0, requests_per_s=10.0, error="Prometheus down"), None),
    ],
)
def test_recommendation_follows_queue_time(replicas: int, sample: QueueSample, expected: int | None) -> None:
    assert recommend(replicas, SPEC, sample) == expected


def test_scale_up_is_immediate() -> None:
    verdict = decide(2, SPEC, busy(120.0), [], NOW, WINDOW)
    assert (verdict.replicas, verdict.reason, verdict.changed) == (4, SCALED_UP, True)
    assert "120.0 ms (target 50 ms): 2 → 4 replicas" in verdict.message
    assert [e.reason for e in scale_events(verdict)] == [SCALED_UP]


def test_scale_down_waits_for_the_window() -> None:
    recent = [Recommendation(NOW - dt.timedelta(seconds=60), 4)]
    held = decide(4, SPEC, busy(10.0), recent, NOW, WINDOW)
    assert (held.replicas, held.reason) == (4, STEADY)  # a minute ago 4 were needed
    later = NOW + dt.timedelta(seconds=WINDOW)
    history = list(held.recommendations)
    down = decide(4, SPEC, busy(10.0), history, later, WINDOW)
    assert (down.replicas, down.reason) == (1, SCALED_DOWN)
    assert "for 300s: 4 → 1 replicas" in down.message


def test_scale_down_takes_the_highest_recommendation_of_the_window() -> None:
    history = [
        Recommendation(NOW - dt.timedelta(seconds=200), 3),
        Recommendation(NOW - dt.timedelta(seconds=100), 2),
    ]
    verdict = decide(5, SPEC, busy(10.0), history, NOW, WINDOW)
    assert (verdict.replicas, verdict.reason) == (3, SCALED_DOWN)


def test_no_data_holds_and_says_why() -> None:
    verdict = decide(3, SPEC, QueueSample(error="Prometheus at http://p did not answer"), [], NOW, WINDOW)
    assert (verdict.replicas, verdict.reason, verdict.changed) == (3, NO_DATA, False)
    assert "Prometheus at http://p did not answer" in verdict.message
    assert verdict.recommendations == ()
    assert scale_events(verdict) == []


def test_a_narrowed_range_applies_at_once() -> None:
    verdict = decide(10, SPEC, busy(50.0), [], NOW, WINDOW)
    assert verdict.replicas == 8


def test_current_replicas_prefers_the_scalers_count() -> None:
    assert current_replicas({"scaling": {"desiredReplicas": 3}, "replicas": 5}, SPEC) == 3
    assert current_replicas({"replicas": 5}, SPEC) == 5
    assert current_replicas({}, SPEC) == 1
    assert current_replicas({"replicas": 20}, SPEC) == 8


def test_status_is_written_only_when_the_count_or_reason_changes() -> None:
    up = decide(2, SPEC, busy(120.0), [], NOW, WINDOW)
    patch = scaling_status({}, up, busy(120.0), NOW)
    assert patch == {
        "desiredReplicas": 4,
        "reason": SCALED_UP,
        "message": up.message,
        "queueTimeMs": 120.0,
        "lastScaleTime": "2026-11-23T12:00:00Z",
    }
    steady = decide(4, SPEC, busy(52.0), up.recommendations, NOW + dt.timedelta(seconds=30), WINDOW)
    assert (
        scaling_status({"scaling": {"desiredReplicas": 4, "reason": STEADY}}, steady, busy(52.0), NOW) is None
    )
    first_steady = scaling_status({"scaling": patch}, steady, busy(52.0), NOW + dt.timedelta(seconds=30))
    assert first_steady is not None and first_steady["lastScaleTime"] == "2026-11-23T12:00:00Z"


def test_queries_select_one_model_and_sum_its_pods() -> None:
    promql = queries(PrometheusSettings(url="http://p"), "ml", "fashion", 60.0)
    assert promql == {
        "queue": 'sum(rate(guardedmodel_triton_queue_seconds_total{namespace="ml",guardedmodel_io_name="fashion"}[60s]))',
        "requests": 'sum(rate(guardedmodel_triton_requests_total{namespace="ml",guardedmodel_io_name="fashion"}[60s]))',
    }


def _answer(value: str) -> list[dict[str, Any]]:
    return [{"metric": {}, "value": [1700000000.0, value]}]


def test_prometheus_answers_become_a_sample() -> None:
    assert sample_from_results({"queue": _answer("0.5"), "requests": _answer("10")}) == QueueSample(
        50.0, 10.0
    )
    assert sample_from_results({"queue": _answer("0"), "requests": _answer("0")}) == QueueSample(
        requests_per_s=0.0
    )
    assert sample_from_results({"queue": [], "requests": []}) == QueueSample()
    assert sample_from_results({"queue": [], "requests": _answer("4")}) == QueueSample(requests_per_s=4.0)


def test_at_max_with_a_long_queue_is_saturated() -> None:
    at_max = decide(8, SPEC, busy(200.0), [], NOW, WINDOW)
    assert (at_max.replicas, at_max.reason, at_max.saturated) == (8, STEADY, True)
    assert "at the maximum of 8 replicas" in at_max.message
    reaching = decide(4, SPEC, busy(200.0), [], NOW, WINDOW)  # 4 x 4 = 16 wanted, 8 allowed
    assert (reaching.replicas, reaching.saturated) == (8, True)
    enough = decide(6, SPEC, busy(60.0), [], NOW, WINDOW)  # 8 is enough for this queue
    assert (enough.replicas, enough.saturated) == (8, False)
    assert not decide(8, SPEC, busy(50.0), [], NOW, WINDOW).saturated
