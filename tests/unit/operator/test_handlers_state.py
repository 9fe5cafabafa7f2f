"""The operator's in-memory bookkeeping between watch events (no kopf run needed)."""

from __future__ import annotations

from typing import Any

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
    s.forget(("ns", "m"))
    assert s.locks == {} and s.phases == {} and s.recent == {}
