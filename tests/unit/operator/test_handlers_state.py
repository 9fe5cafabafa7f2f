"""The operator's in-memory bookkeeping between watch events (no kopf run needed)."""

from __future__ import annotations

from typing import Any

from guardedmodel_operator import metrics
from guardedmodel_operator.config import OperatorConfig
from guardedmodel_operator.handlers import OperatorState


def obj(rv: str, kind: str = "Service", **extra: Any) -> dict[str, Any]:
    return {"kind": kind, "metadata": {"name": "m", "namespace": "ns", "resourceVersion": rv, **extra}}


def state() -> OperatorState:
    return OperatorState(OperatorConfig())


def test_our_write_is_preferred_until_the_watch_catches_up() -> None:
    s = state()
    s.remember(obj("10", managedFields=[{"manager": "x"}]))
    stale = obj("9")
    assert s.freshest("Service", "ns", "m", stale)["metadata"]["resourceVersion"] == "10"
    assert "managedFields" not in s.freshest("Service", "ns", "m", None)["metadata"]
    assert s.freshest("Service", "ns", "m", obj("11"))["metadata"]["resourceVersion"] == "11"


def test_the_echo_of_our_write_is_recognised_and_forgotten() -> None:
    s = state()
    s.remember(obj("10"))
    assert s.seen("Service", obj("9")) is False  # an older event: keep our copy
    assert ("Service", "ns", "m") in s.recent
    assert s.seen("Service", obj("10")) is True  # our own write coming back
    assert s.recent == {}
    s.remember(obj("10"))
    assert s.seen("Service", obj("12")) is False  # someone else changed it after us
    assert s.recent == {}


def test_a_deletion_is_never_an_echo() -> None:
    s = state()
    s.remember(obj("10"))
    assert s.seen("Service", obj("10"), deleted=True) is False
    assert s.freshest("Service", "ns", "m", None) is None


def test_forgetting_a_model_drops_its_bookkeeping() -> None:
    s = state()
    s.locks[("ns", "m")] = None  # type: ignore[assignment]
    s.phases[("ns", "m")] = "Ready"
    s.remember(obj("3", kind="GuardedModel"))
    s.settled[("ns", "m")] = "3"
    s.forget(("ns", "m"))
    assert s.locks == {} and s.phases == {} and s.recent == {} and s.settled == {}


def phase_series() -> dict[tuple[str, str], list[str]]:
    """(namespace, name) → the phases of its guardedmodel_operator_model_phase series (value 1)."""
    found: dict[tuple[str, str], list[str]] = {}
    for family in metrics.REGISTRY.collect():
        if family.name == "guardedmodel_operator_model_phase":
            for sample in family.samples:
                assert sample.value == 1
                key = (sample.labels["namespace"], sample.labels["name"])
                found.setdefault(key, []).append(sample.labels["phase"])
    return found


def test_each_model_has_one_phase_series_that_follows_it_and_goes_with_it() -> None:
    s = state()
    s.set_phase(("ml", "clf"), "Progressing")
    s.set_phase(("ml", "other"), "Ready")
    s.set_phase(("ml", "clf"), "Degraded")
    s.set_phase(("ml", "clf"), "Degraded")
    assert phase_series().get(("ml", "clf")) == ["Degraded"]
    assert phase_series().get(("ml", "other")) == ["Ready"]
    s.forget(("ml", "clf"))
    s.forget(("ml", "clf"))  # a second DELETED event changes nothing
    assert ("ml", "clf") not in phase_series()
    assert phase_series().get(("ml", "other")) == ["Ready"]
    s.forget(("ml", "other"))
