"""Kubernetes Events for every decision the operator makes, derived purely.

`kubectl describe gm <name>` then tells the story: which children were
created, restored or updated, when the phase changed, and what was promoted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .apply import Action, Write


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


# Posts one Event about the object whose body it is given (kopf.event in the operator).
EmitEvent = Callable[[Mapping[str, Any], Event], None]


_WRITE_REASONS = {Action.CREATE: "Created", Action.UPDATE: "Updated", Action.RESTORE: "Restored"}


def write_events(writes: Iterable[Write]) -> list[Event]:
    """One Event per kind of write in a reconcile, naming every child it wrote: a model's creation
    is one "Created" Event, not one per child (each Event is a write the API server pays for)."""
    by_action: dict[Action, list[str]] = {}
    for write in writes:
        by_action.setdefault(write.action, []).append(f"{write.kind} {write.name}")
    events = []
    for action, children in by_action.items():
        named = ", ".join(children)
        if action is Action.RESTORE:
            were = "was" if len(children) == 1 else "were"
            message = f"{named} {were} deleted or edited by hand; restored to the spec"
            events.append(Event("Warning", "Restored", message))
        else:
            events.append(
                Event("Normal", _WRITE_REASONS[action], f"{_WRITE_REASONS[action].lower()} {named}")
            )
    return events


def status_events(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[Event]:
    old = old or {}
    events = []
    if new.get("stableVersion") != old.get("stableVersion") and new.get("stableVersion"):
        previous = old.get("stableVersion")
        message = f"version {new['stableVersion']} is now stable" + (f" (was {previous})" if previous else "")
        events.append(Event("Normal", "Promoted", message))
    if new.get("phase") != old.get("phase"):
        ready: Mapping[str, Any] = next(
            (c for c in new.get("conditions") or [] if c.get("type") == "Ready"), {}
        )
        degraded: Mapping[str, Any] = next(
            (c for c in new.get("conditions") or [] if c.get("type") == "Degraded"), {}
        )
        detail = degraded.get("message") if degraded.get("status") == "True" else ready.get("message")
        kind = "Warning" if new.get("phase") in ("Degraded", "Failed") else "Normal"
        events.append(
            Event(
                kind,
                str(new.get("phase")),
                f"phase {old.get('phase') or 'None'} → {new.get('phase')}: {detail}",
            )
        )
    return events


def failure_event(error: BaseException) -> Event:
    return Event("Warning", "ReconcileFailed", f"{type(error).__name__}: {error}")
