from __future__ import annotations

from guardedmodel_operator.apply import Action, Write
from guardedmodel_operator.events import status_events, write_events


def write(action: Action, kind: str = "Service", name: str = "m") -> Write:
    return Write(action, {"kind": kind, "metadata": {"name": name}})


def test_each_kind_of_write_is_one_event_and_restores_are_warnings() -> None:
    events = write_events([write(Action.CREATE), write(Action.UPDATE), write(Action.RESTORE)])
    assert [(e.type, e.reason) for e in events] == [
        ("Normal", "Created"),
        ("Normal", "Updated"),
        ("Warning", "Restored"),
    ]
    assert events[2].message == "Service m was deleted or edited by hand; restored to the spec"


def test_the_writes_of_one_reconcile_share_an_event_that_names_every_child() -> None:
    children = [("ServiceAccount", "m-sidecar"), ("Role", "m-sidecar"), ("Deployment", "m")]
    for action, reason in (
        (Action.CREATE, "Created"),
        (Action.UPDATE, "Updated"),
        (Action.RESTORE, "Restored"),
    ):
        writes = [write(action, kind, name) for kind, name in children]
        (event,) = write_events(writes)
        assert event.reason == reason
        assert all(f"{kind} {name}" in event.message for kind, name in children)
    mixed = write_events(
        [
            write(Action.RESTORE, "Role", "r"),
            write(Action.CREATE, "Service", "s"),
            write(Action.RESTORE, "Service", "t"),
        ]
    )
    assert [e.reason for e in mixed] == ["Restored", "Created"]
    assert mixed[0].message.startswith("Role r, Service t were deleted")
    assert write_events([]) == []


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
