"""The GuardedModel's status: its fields, who writes which, and how a write is built.

Three writers share the status, each under the model's lock and each for its own fields:
- the core's reconcile (`readiness.next_status`): phase, conditions, observedGeneration, replica counts;
- the rollout controller (`rollout.outcome`): routing (with lastGoodVersion and shadow), comparison,
  history, metrics, `rollout`; and `cost` (`rollout.cost`), at the same checks;
- the scaler (`scaling.policy`): `scaling`;
- the idle watch (`scaling.idle`): the `Idle` condition.
Every writer sends `merge_patch` of its own fields, so none of them overwrites another's. The
conditions list is shared: a merge patch replaces a list whole, so a writer of conditions sends the
whole list, its own conditions replaced and everyone else's kept (`merge_conditions`). For the same
reason the core and the rollout controller (the writers of history) send the resourceVersion of the
copy they decided on: a patch computed from an old copy, e.g. after an operator process was killed
and its last write landed late, is refused instead of dropping the entries written since.
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

# The fields the rollout controller owns; the core keeps them untouched.
ROLLOUT_FIELDS = (
    "stableVersion",
    "canaryVersion",
    "canaryWeight",
    "lastGoodVersion",
    "shadow",
    "comparison",
    "history",
    "rollout",
    "metrics",
)
# status.history keeps the newest entries only, so the object stays small.
HISTORY_LIMIT = 20

Condition = tuple[str, str, str]  # (status, reason, message)
PROGRESSING = "Progressing"


@dataclass(frozen=True)
class Routing:
    """Which versions serve (stableVersion, canaryVersion, canaryWeight of the status) and which the
    pods keep loaded besides: lastGoodVersion, so that a rollback is a flip on every pod, and the
    shadow candidate.

    The one reading of these fields in the operator (the builders' initial sidecar routing,
    the rollout policy's state). The sidecar keeps its own copy across the package boundary.
    """

    stable_version: str | None = None
    canary_version: str | None = None
    canary_weight: int = 0
    last_good_version: str | None = None
    shadow: Mapping[str, Any] | None = None  # status.shadow: {version, fraction, replay}

    @classmethod
    def from_status(cls, status: Mapping[str, Any] | None) -> Routing:
        status = status or {}
        canary = _str_or_none(status.get("canaryVersion"))
        return cls(
            stable_version=_str_or_none(status.get("stableVersion")),
            canary_version=canary,
            # A weight without a canary routes nothing anywhere.
            canary_weight=int(status.get("canaryWeight") or 0) if canary else 0,
            last_good_version=_str_or_none(status.get("lastGoodVersion")),
            shadow=dict(status["shadow"]) if isinstance(status.get("shadow"), Mapping) else None,
        )

    def or_stable(self, version: str) -> Routing:
        """Before the first rollout completes there is no stable version in the status yet;
        the version being rolled out is the only candidate."""
        if self.stable_version is not None:
            return self
        return replace(self, stable_version=version)

    def as_dict(self) -> dict[str, Any]:
        return {
            "stableVersion": self.stable_version,
            "canaryVersion": self.canary_version,
            "canaryWeight": self.canary_weight,
            "lastGoodVersion": self.last_good_version,
            "shadow": None if self.shadow is None else dict(self.shadow),
        }


def _str_or_none(value: Any) -> str | None:
    return None if value in (None, "") else str(value)


def history_entry(version: str | None, outcome: str, at: str, reason: str) -> dict[str, Any]:
    """One status.history entry: what happened to which version, when and why."""
    return {"version": str(version), "outcome": outcome, "at": at, "reason": reason}


def trimmed_history(history: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [dict(entry) for entry in history][-HISTORY_LIMIT:]


def condition(
    kind: str, value: Condition, previous: Mapping[str, Any] | None, generation: int, now: str
) -> dict[str, Any]:
    """A condition after the API conventions: `lastTransitionTime` moves only when its status flips."""
    status, reason, message = value
    changed = previous is None or previous.get("status") != status
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": now if changed else previous.get("lastTransitionTime", now),  # type: ignore[union-attr]
        "observedGeneration": generation,
    }


def conditions_by_type(status: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {c.get("type"): c for c in status.get("conditions") or []}


def merge_conditions(
    current: Iterable[Mapping[str, Any]], owned: Iterable[Mapping[str, Any]], drop: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """The conditions list after one writer's turn: its `owned` conditions replace those of the same
    type where they stand (new ones go at the end), the types in `drop` go, and every other writer's
    conditions stay as they were, so no writer erases another's."""
    mine = {c["type"]: dict(c) for c in owned}
    gone = set(drop) - set(mine)
    merged = [mine.pop(c.get("type"), c) for c in current if c.get("type") not in gone]
    return [dict(c) for c in merged] + list(mine.values())


def invalid_spec_status(
    status: Mapping[str, Any], generation: int, message: str, now: str, reason: str = "InvalidSpec"
) -> dict[str, Any]:
    """The status of a model whose spec the operator cannot act on: Failed, and Degraded says why
    (`reason`: InvalidSpec for a spec it cannot parse, PodSecurity for pods the namespace refuses).

    Ready keeps its last value: the children are left as they are, so a model that serves goes on.
    """
    previous = conditions_by_type(status)
    ready = previous.get("Ready") or condition("Ready", ("False", reason, ""), None, generation, now)
    degraded = condition("Degraded", ("True", reason, message), previous.get("Degraded"), generation, now)
    return {
        **status,
        "phase": "Failed",
        "observedGeneration": generation,
        # Progressing goes: nothing progresses on a spec the operator cannot act on.
        "conditions": merge_conditions(status.get("conditions") or [], [ready, degraded], drop=[PROGRESSING]),
    }


def merge_patch(
    current: Mapping[str, Any] | None, desired: Mapping[str, Any], fields: Iterable[str] | None = None
) -> dict[str, Any] | None:
    """A JSON merge patch turning `current` into `desired`, or None when nothing differs.

    `fields` limits the patch to one writer's fields; without it `desired` is the whole status
    and keys it lacks are deleted. A field to delete gets an explicit null (how a merge patch
    deletes), inside an object too; a null for a field that is already absent is left out.
    """
    current = current or {}
    keys = list(fields) if fields is not None else [*desired, *(k for k in current if k not in desired)]
    patch = {
        key: _nested_patch(current.get(key), desired.get(key))
        for key in keys
        if current.get(key) != desired.get(key) and not (desired.get(key) is None and key not in current)
    }
    return patch or None


def _nested_patch(current: Any, desired: Any) -> Any:
    """The value a merge patch sends for one field. The API server merges an object into the
    stored one key by key, so a key that must go (status.rollout.noDataSince, blockedVersion) needs
    its explicit null; a list or a plain value replaces the stored one whole."""
    if not isinstance(current, Mapping) or not isinstance(desired, Mapping):
        return desired
    gone = {key: None for key in current if key not in desired}
    return {**{key: _nested_patch(current.get(key), value) for key, value in desired.items()}, **gone}
