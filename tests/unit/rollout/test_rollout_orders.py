"""A person's orders to a canary (guardedmodel.io/promote, guardedmodel.io/abort): one test per
transition, stale orders, and that every order acts at most once."""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import replace
from typing import Any

import pytest

from guardedmodel_operator.rollout import phase
from guardedmodel_operator.rollout.commands import ABORT, PROMOTE, Order, Orders, parse_order
from guardedmodel_operator.rollout.controller import plan_step
from guardedmodel_operator.rollout.outcome import apply_verdict
from guardedmodel_operator.rollout.types import MetricSamples, RolloutSpec, RolloutState
from guardedmodel_operator.rollout.verdict import (
    ABORTED,
    HALTED,
    PROMOTED_BY_HAND,
    ROLLBACK_ACKNOWLEDGED,
    WAITING_FOR_DEPLOYMENT,
    Kind,
    decide,
)

T0 = dt.datetime(2025, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
GENERATION = 4


def promote(version: str = "2", weight: int | None = 10, generation: int = GENERATION) -> Order:
    return Order(PROMOTE, version, generation, weight=weight, full=weight is None)


def abort(version: str = "2", generation: int = GENERATION) -> Order:
    return Order(ABORT, version, generation)


def spec(*orders: Order, version: str = "2", **kw: Any) -> RolloutSpec:
    by_key = {o.key: o for o in orders}
    base = RolloutSpec(
        version=version,
        generation=GENERATION,
        steps=(10, 50, 100),
        interval_s=30,
        orders=Orders(promote=by_key.get(PROMOTE), abort=by_key.get(ABORT)),
    )
    return replace(base, **kw)


def status(canary: str | None = "2", weight: int = 10, **rollout: Any) -> dict[str, Any]:
    """A status the core has written for this generation, with the canary at `weight`."""
    out: dict[str, Any] = {
        "stableVersion": "1",
        "observedGeneration": GENERATION,
        "conditions": [{"type": "Ready", "status": "True", "reason": "RolloutComplete"}],
        "rollout": {"phase": "Progressing", "since": "2025-01-01T11:59:59Z", "failedChecks": 0, **rollout},
        "history": [
            {"version": "2", "outcome": "CanaryStarted", "at": "2025-01-01T11:59:00Z", "reason": "x"}
        ],
    }
    if canary is not None:
        out["canaryVersion"], out["canaryWeight"] = canary, weight
    else:
        out["canaryWeight"] = 0
    return out


def after(s: RolloutSpec, st: dict[str, Any], samples: MetricSamples | None = None) -> dict[str, Any]:
    verdict = decide(s, RolloutState.from_status(st, s.generation), samples, T0)
    merged = {**st, **apply_verdict(st, verdict, s, T0)}
    return {k: v for k, v in merged.items() if v is not None}


def decided(s: RolloutSpec, st: dict[str, Any]) -> tuple[Kind, str, int | None]:
    v = decide(s, RolloutState.from_status(st, s.generation), None, T0)
    return v.kind, v.reason, v.weight


# ---------------------------------------------------------------- the annotation's text


@pytest.mark.parametrize(
    "order",
    [
        promote(weight=w, version=v, generation=g)
        for w, v, g in itertools.product((0, 10, 50, 100, None), ("1", "12"), (1, 40))
    ]
    + [abort(version=v, generation=g) for v, g in itertools.product(("1", "12"), (1, 40))],
)
def test_every_order_reads_back_as_written(order: Order) -> None:
    assert parse_order(order.key, order.value) == order
    assert Orders.from_annotations({order.key: order.value, "other": "x"}).unreadable == ()


@pytest.mark.parametrize(
    ("key", "raw"),
    [
        (PROMOTE, "2"),
        (PROMOTE, "version=2"),
        (PROMOTE, "version=2,generation=4"),  # neither weight nor full
        (PROMOTE, "version=2,generation=4,weight=10,full=true"),  # both
        (PROMOTE, "version=2,generation=x,weight=10"),
        (PROMOTE, "version=2,generation=4,weight=ten"),
        (PROMOTE, "version=2,generation=4,weight=10,color=red"),
        (PROMOTE, "version=2,version=3,generation=4,weight=10"),
        (ABORT, "version=2,generation=4,weight=10"),  # an abort takes no weight
        (ABORT, ""),
    ],
)
def test_unreadable_orders_are_named_and_never_act(key: str, raw: str) -> None:
    with pytest.raises(ValueError, match=key):
        parse_order(key, raw)
    orders = Orders.from_annotations({key: raw})
    assert (orders.promote, orders.abort) == (None, None)
    assert [k for k, _ in orders.unreadable] == [key]


# ---------------------------------------------------------------- abort


def test_abort_rolls_the_canary_back_now_with_reason_aborted() -> None:
    s = spec(abort())
    verdict = decide(s, RolloutState.from_status(status(), GENERATION), None, T0)
    assert (verdict.kind, verdict.reason, verdict.target) == (Kind.ROLLBACK, ABORTED, "1")
    done = after(s, status())
    assert "canaryVersion" not in done and done["canaryWeight"] == 0 and done["stableVersion"] == "1"
    assert done["rollout"]["phase"] == "RolledBack" and done["rollout"]["blockedReason"] == ABORTED
    assert [(h["version"], h["outcome"]) for h in done["history"]] == [
        ("2", "CanaryStarted"),
        ("2", "Aborted"),
    ]
    assert ABORT in done["history"][-1]["reason"] and "at 10%" in done["history"][-1]["reason"]
    step = plan_step(s, status(), None, T0)
    assert [(e.type, e.reason) for e in step.events] == [("Normal", ABORTED)]


def test_abort_of_a_halted_canary_rolls_it_back() -> None:
    halted = status(weight=50, phase="Degraded", blockedVersion="2", blockedGeneration=GENERATION)
    assert decided(spec(), halted)[1] == HALTED
    assert decided(spec(abort()), halted)[:2] == (Kind.ROLLBACK, ABORTED)


def test_abort_does_not_wait_for_the_deployment() -> None:
    rolling = {**status(), "observedGeneration": GENERATION - 1}
    assert decided(spec(), rolling)[1] == WAITING_FOR_DEPLOYMENT
    assert decided(spec(abort()), rolling)[:2] == (Kind.ROLLBACK, ABORTED)


def test_an_aborted_canary_is_degraded_aborted_until_the_spec_is_set_back() -> None:
    done = after(spec(abort()), status())
    ready = ("True", "RolloutComplete", "")
    _, _, degraded = phase.overlay("Ready", ready, ("False", "AsExpected", ""), done)
    assert degraded[:2] == ("True", ABORTED) and ABORT in degraded[2]
    # not retried while the spec still names it, the order left on the object or not
    assert decided(spec(abort()), done)[0] is Kind.HOLD
    assert decided(spec(), done)[0] is Kind.HOLD
    # `undo`: spec.model.version set back to the stable version acknowledges it
    acknowledged = decide(spec(abort(), version="1"), RolloutState.from_status(done, GENERATION), None, T0)
    assert (acknowledged.kind, acknowledged.reason) == (Kind.RECOVER, ROLLBACK_ACKNOWLEDGED)


# ---------------------------------------------------------------- promote


@pytest.mark.parametrize(("weight", "next_weight"), [(10, 50), (50, 100)])
def test_promote_takes_the_next_step_without_a_check(weight: int, next_weight: int) -> None:
    s = spec(promote(weight=weight))
    assert decided(s, status(weight=weight)) == (Kind.PROMOTE_STEP, PROMOTED_BY_HAND, next_weight)
    done = after(s, status(weight=weight))
    assert done["canaryVersion"] == "2" and done["canaryWeight"] == next_weight
    assert done["rollout"]["phase"] == "Progressing" and done["rollout"]["since"] == "2025-01-01T12:00:00Z"
    assert (done["history"][-1]["outcome"], done["history"][-1]["version"]) == ("PromotedStep", "2")
    assert plan_step(s, status(weight=weight), None, T0).events[0].reason == PROMOTED_BY_HAND


def test_promote_at_the_last_step_makes_the_canary_stable() -> None:
    assert decided(spec(promote(weight=100)), status(weight=100))[:2] == (Kind.PROMOTE_FULL, PROMOTED_BY_HAND)


@pytest.mark.parametrize("weight", [10, 50, 100])
def test_promote_full_skips_every_step_left(weight: int) -> None:
    s = spec(promote(weight=None))
    done = after(s, status(weight=weight))
    assert done["stableVersion"] == "2" and "canaryVersion" not in done and done["lastGoodVersion"] == "1"
    assert done["rollout"]["phase"] == "Ready"
    assert done["history"][-1]["outcome"] == "Promoted" and "full=true" in done["history"][-1]["reason"]


def test_promote_of_a_halted_canary_overrides_the_halt() -> None:
    halted = status(weight=50, phase="Degraded", blockedVersion="2", blockedGeneration=GENERATION)
    done = after(spec(promote(weight=50)), halted)
    assert done["canaryWeight"] == 100 and done["rollout"]["phase"] == "Progressing"
    assert "blockedVersion" not in done["rollout"]


def test_promote_waits_for_the_deployment_of_this_generation() -> None:
    rolling = {**status(), "observedGeneration": GENERATION - 1}
    assert decided(spec(promote()), rolling)[1] == WAITING_FOR_DEPLOYMENT


def test_abort_wins_over_promote() -> None:
    assert decided(spec(promote(weight=None), abort()), status())[:2] == (Kind.ROLLBACK, ABORTED)


# ---------------------------------------------------------------- stale orders never act


STALE = [
    ("another version", status(), [promote(version="3"), abort(version="3")]),
    (
        "an earlier generation",
        status(),
        [promote(generation=GENERATION - 1), abort(generation=GENERATION - 1)],
    ),
    ("another step", status(weight=50), [promote(weight=10)]),
    (
        "no canary (promoted)",
        {**status(canary=None), "stableVersion": "2"},
        [promote(), promote(weight=None), abort()],
    ),
    (
        "no canary (abort after promotion)",
        {**status(canary=None), "stableVersion": "2"},
        [abort(version="2")],
    ),
    ("no canary (steady)", status(canary=None), [promote(version="1"), abort(version="1")]),
]


@pytest.mark.parametrize(("what", "st", "orders"), STALE, ids=[w for w, _, _ in STALE])
def test_an_order_for_another_canary_changes_nothing(
    what: str, st: dict[str, Any], orders: list[Order]
) -> None:
    version = st.get("canaryVersion") or st["stableVersion"]
    for order in orders:
        assert decided(spec(order, version=version), st) == decided(spec(version=version), st), order


@pytest.mark.parametrize(
    ("order", "weight"),
    [(promote(weight=w), w) for w in (10, 50, 100)]
    + [(promote(weight=None), w) for w in (10, 50)]
    + [(abort(), 10)],
)
def test_every_order_acts_once(order: Order, weight: int) -> None:
    """Left on the object after it acted, an order decides nothing more: the next step decides as if
    it were absent, and a second application writes nothing."""
    s = spec(order)
    once = after(s, status(weight=weight))
    assert once != status(weight=weight)
    assert decided(s, once) == decided(spec(), once)
    later = {**once, "rollout": {**once["rollout"], "since": "2025-01-01T12:00:00Z"}}
    assert decided(s, later) == decided(spec(), later)


def test_orders_come_from_the_annotations_of_the_object() -> None:
    body = {
        "metadata": {
            "generation": GENERATION,
            "annotations": {PROMOTE: promote(weight=None).value, ABORT: "nonsense"},
        },
        "spec": {"model": {"name": "m", "repository": "file:///r", "version": "2"}},
    }
    parsed = RolloutSpec.from_body(body)
    assert parsed.orders.promote == promote(weight=None)
    assert parsed.orders.abort is None and parsed.orders.unreadable[0][0] == ABORT


def test_orders_are_counted_as_what_they_are_not_as_checks_or_guard_rollbacks() -> None:
    """An abort is no rollback the guard decided (GuardedModelRolledBack alerts on those) and a
    promotion by hand is no passed check."""
    from guardedmodel_operator.metrics import REGISTRY
    from guardedmodel_operator.rollout import metrics

    def value(metric: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(metric, labels) or 0.0

    before = {
        "aborted": value("guardedmodel_operator_rollouts_total", outcome="aborted"),
        "rollbacks": value(
            "guardedmodel_operator_rollbacks_total", namespace="ml", name="orders", version="2"
        ),
        "passed": value("guardedmodel_operator_rollout_checks_total", result="passed"),
        "stepped": value("guardedmodel_operator_rollouts_total", outcome="stepped"),
    }
    for order in (abort(), promote()):
        s = spec(order)
        metrics.count("ml", "orders", decide(s, RolloutState.from_status(status(), GENERATION), None, T0))
    assert value("guardedmodel_operator_rollouts_total", outcome="aborted") == before["aborted"] + 1
    assert value("guardedmodel_operator_rollouts_total", outcome="stepped") == before["stepped"] + 1
    rollbacks = value("guardedmodel_operator_rollbacks_total", namespace="ml", name="orders", version="2")
    assert rollbacks == before["rollbacks"]
    assert value("guardedmodel_operator_rollout_checks_total", result="passed") == before["passed"]
