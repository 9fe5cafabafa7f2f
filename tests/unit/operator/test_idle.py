"""The idle watch's pure parts: the decision, the Idle condition it writes, Events, PromQL."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from guardedmodel_operator.prometheus import PrometheusSettings
from guardedmodel_operator.scaling.idle import (
    IDLE,
    NEW,
    NO_TRAFFIC,
    SERVING,
    IdleSpec,
    TrafficSample,
    decide,
    idle_conditions,
)
from guardedmodel_operator.scaling.idle_controller import (
    IdleOutcome,
    idle_events,
    plan,
    requests_query,
    sample_from_result,
)

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
HOUR = IdleSpec("1h", 3600.0, min_replicas=1, scaled=True)
OLD = NOW - dt.timedelta(hours=5)
YOUNG = NOW - dt.timedelta(minutes=10)
NO_DATA = TrafficSample(error="Prometheus at http://p:9090 did not answer")


def body(
    spec: dict[str, Any] | None = None,
    conditions: list[dict[str, Any]] | None = None,
    created: dt.datetime = OLD,
) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": "ml",
            "name": "clf",
            "generation": 3,
            "creationTimestamp": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
        "spec": {"model": {"name": "clf", "repository": "pvc://m", "version": "1"}, **(spec or {})},
        "status": {"conditions": conditions or []},
    }


@pytest.mark.parametrize(
    ("sample", "created", "expected"),
    [
        (TrafficSample(requests=12.0), OLD, ("False", SERVING)),
        (TrafficSample(requests=0.5), OLD, ("False", SERVING)),  # increase() extrapolates: any > 0 is traffic
        (TrafficSample(requests=12.0), YOUNG, ("False", SERVING)),
        (TrafficSample(requests=0.0), OLD, ("True", NO_TRAFFIC)),
        (TrafficSample(), OLD, ("True", NO_TRAFFIC)),  # no series at all, model old enough: idle
        (TrafficSample(requests=0.0), None, ("True", NO_TRAFFIC)),  # creation time unknown: trust the counts
        (TrafficSample(requests=0.0), YOUNG, ("False", NEW)),  # not idle for a whole idleAfter yet
        (TrafficSample(), YOUNG, ("False", NEW)),
        (TrafficSample(requests=0.0), NOW - dt.timedelta(hours=1), ("True", NO_TRAFFIC)),  # exactly idleAfter
        (NO_DATA, OLD, None),  # no data is not idle: hold
        (NO_DATA, YOUNG, None),
    ],
)
def test_decision(
    sample: TrafficSample, created: dt.datetime | None, expected: tuple[str, str] | None
) -> None:
    value = decide(HOUR, sample, created, NOW)
    assert (value if value is None else value[:2]) == expected


def test_messages_say_how_long_and_what_the_scaler_does() -> None:
    assert decide(HOUR, TrafficSample(requests=0.0), OLD, NOW) == (
        "True",
        NO_TRAFFIC,
        "no requests for 1h; scaled to replicas.min (1)",
    )
    pinned = IdleSpec("30m", 1800.0, min_replicas=2, scaled=False)
    value = decide(pinned, TrafficSample(), OLD, NOW)
    assert value is not None
    assert value[2] == (
        "no requests for 30m (Prometheus has no request series for it); "
        "still runs 2 replica(s), as replicas.min = replicas.max"
    )


def test_messages_do_not_change_while_the_state_does_not() -> None:
    """A steady state costs no status write: the message does not carry counts or ages."""
    for state in (
        [TrafficSample(requests=n) for n in (1.0, 40.0, 9000.0)],
        [TrafficSample(requests=0.0)],
    ):
        assert len({decide(HOUR, s, OLD, NOW) for s in state}) == 1
    young = {
        decide(HOUR, TrafficSample(requests=0.0), NOW - dt.timedelta(minutes=m), NOW) for m in (1, 30, 59)
    }
    assert len(young) == 1


@pytest.mark.parametrize(
    ("spec", "seconds", "min_replicas", "scaled"),
    [
        ({}, 3600.0, 1, False),  # the CRD's default
        ({"scaling": {"idleAfter": "90m"}}, 5400.0, 1, False),
        ({"scaling": {"idleAfter": "1h30m"}, "replicas": {"min": 2, "max": 5}}, 5400.0, 2, True),
        ({"scaling": {"idleAfter": "0s"}}, 0.0, 1, False),
        ({"scaling": {"idleAfter": "0h"}}, 0.0, 1, False),
    ],
)
def test_spec(spec: dict[str, Any], seconds: float, min_replicas: int, scaled: bool) -> None:
    parsed = IdleSpec.from_body(body(spec))
    assert (parsed.idle_after_s, parsed.min_replicas, parsed.scaled) == (seconds, min_replicas, scaled)
    assert parsed.enabled == (seconds > 0)


def test_a_stored_value_the_crd_now_refuses_names_the_field_and_the_fix() -> None:
    with pytest.raises(
        ValueError, match=r"spec\.scaling\.idleAfter: 'an hour' is not a duration.*0s to turn"
    ):
        IdleSpec.from_body(body({"scaling": {"idleAfter": "an hour"}}))


READY = {"type": "Ready", "status": "True", "reason": "RolloutComplete", "message": "1/1"}


def test_the_condition_is_written_only_when_it_changes() -> None:
    idle = ("True", NO_TRAFFIC, "no requests for 1h; scaled to replicas.min (1)")
    first = idle_conditions({"conditions": [READY]}, idle, 3, "T1")
    assert first is not None
    assert first[0] == READY  # the core's conditions are kept as they are
    assert first[1] == {
        "type": IDLE,
        "status": "True",
        "reason": NO_TRAFFIC,
        "message": idle[2],
        "lastTransitionTime": "T1",
        "observedGeneration": 3,
    }
    assert idle_conditions({"conditions": first}, idle, 4, "T2") is None  # steady: no write
    # same status, new message (replicas.min changed): written, but the transition time stays
    other = idle_conditions(
        {"conditions": first}, (*idle[:2], "no requests for 1h; scaled to replicas.min (2)"), 4, "T2"
    )
    assert other is not None and other[1]["lastTransitionTime"] == "T1"
    serving = idle_conditions(
        {"conditions": first}, ("False", SERVING, "served requests in the last 1h"), 4, "T3"
    )
    assert serving is not None and serving[1]["lastTransitionTime"] == "T3" and serving[0] == READY


def test_switching_the_watch_off_removes_only_the_idle_condition() -> None:
    stored = [READY, {"type": IDLE, "status": "True", "reason": NO_TRAFFIC, "message": "m"}]
    assert idle_conditions({"conditions": stored}, None, 3, "T1") == [READY]
    assert idle_conditions({"conditions": [READY]}, None, 3, "T1") is None


@pytest.mark.parametrize(
    ("previous", "value", "reasons"),
    [
        (None, "True", ["Idle"]),
        ("False", "True", ["Idle"]),
        ("True", "False", ["Active"]),
        (None, "False", []),  # a model seen serving (or new) for the first time never was idle
        ("False", "False", []),
        ("True", "True", []),
    ],
)
def test_events_on_each_transition(previous: str | None, value: str, reasons: list[str]) -> None:
    stored = None if previous is None else {"type": IDLE, "status": previous}
    events = idle_events(stored, (value, "R", "the message"))
    assert [(e.type, e.reason, e.message) for e in events] == [("Normal", r, "the message") for r in reasons]


def test_plan_writes_and_posts_on_a_flip_and_holds_without_data() -> None:
    old = body()
    became_idle = plan(HOUR, old, TrafficSample(requests=0.0), NOW)
    assert became_idle.idle is True and became_idle.changed
    assert [e.reason for e in became_idle.events] == ["Idle"]
    stored = body(conditions=became_idle.conditions)
    assert plan(HOUR, stored, TrafficSample(requests=0.0), NOW) == IdleOutcome(
        True, True, became_idle.message
    )  # steady state: nothing written, nothing posted
    held = plan(HOUR, stored, NO_DATA, NOW)
    assert (held.idle, held.changed, held.events) == (True, False, ())  # the last state holds
    assert held.held_for_lack_of_data and "did not answer" in held.message
    assert plan(HOUR, body(), NO_DATA, NOW).idle is None  # nothing known yet
    active = plan(HOUR, stored, TrafficSample(requests=3.0), NOW)
    assert active.idle is False and [e.reason for e in active.events] == ["Active"]


def test_plan_for_a_watch_switched_off_removes_the_condition_once() -> None:
    off = IdleSpec("0s", 0.0, 1, False)
    idle = plan(HOUR, body(), TrafficSample(requests=0.0), NOW)
    removed = plan(off, body(conditions=idle.conditions), None, NOW)
    assert not removed.enabled and removed.conditions == [] and removed.events == ()
    assert plan(off, body(), None, NOW).changed is False


def test_query_counts_all_pods_and_versions_and_series_born_in_the_window() -> None:
    settings = PrometheusSettings(url="http://p:9090")
    query = requests_query(settings, "ml", 'a"b', 3600.4)
    sel = 'namespace="ml",guardedmodel_io_name="a\\"b"'
    assert query == (
        f"sum((guardedmodel_requests_total{{{sel}}} unless guardedmodel_requests_total{{{sel}}} offset 3601s)"
        f" or increase(guardedmodel_requests_total{{{sel}}}[3601s]))"
    )


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        ([], TrafficSample()),
        ([{"metric": {}, "value": [0, "0"]}], TrafficSample(requests=0.0)),
        ([{"metric": {}, "value": [0, "17.5"]}], TrafficSample(requests=17.5)),
        ([{"metric": {}, "value": [0, "NaN"]}], TrafficSample(error="Prometheus answered NaN requests")),
    ],
)
def test_prometheus_answers_become_a_sample(result: list[dict[str, Any]], expected: TrafficSample) -> None:
    assert sample_from_result(result) == expected
