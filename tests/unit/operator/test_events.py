from __future__ import annotations

from guardedmodel_operator.apply import Action, Write
from guardedmodel_operator.events import status_events, write_events


def write(action: Action) -> Write:
    return Write(action, {"kind": "Service", "metadata": {"name": "m"}})


def test_each_write_is_an_event_and_restores_are_warnings() -> None:
    events = write_events([write(Action.CREATE), write(Action.UPDATE), write(Action.RESTORE)])
    assert [(e.type, e.reason) for e in events] == [
        ("Normal", "Created"),
        ("Normal", "Updated"),
        ("Warning", "Restored"),
    ]
    assert "Service m" in events[2].message


def test_phase_and_promotion_events() -> None:
    new = {
        "phase": "Ready",
        "stableVersion": "2",
        "conditions": [{"type": "Ready", "status": "True", "message": "1/1 replicas ready"}],
    }
    events = status_events({"phase": "Progressing", "stableVersion": "1"}, new)
    assert [(e.type, e.reason) for e in events] == [("Normal", "Promoted"), ("Normal", "Ready")]
    assert "(was 1)" in events[0].message
    assert status_events(new, new) == []
    degraded = {
        **new,
        "phase": "Degraded",
        "conditions": [{"type": "Degraded", "status": "True", "message": "x"}],
    }
    assert status_events(new, degraded)[0].type == "Warning"
