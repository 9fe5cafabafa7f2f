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
    events = []
    for write in writes:
        if write.action is Action.RESTORE:
            message = f"{write.kind} {write.name} was deleted or edited by hand; restored it to the spec"
            events.append(Event("Warning", "Restored", message))
        else:
            verb = _WRITE_REASONS[write.action].lower()
            events.append(Event("Normal", _WRITE_REASONS[write.action], f"{verb} {write.kind} {write.name}"))
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
