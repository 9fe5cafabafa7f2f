"""Idle ("zombie") models: no request for spec.scaling.idleAfter → the Idle condition.

A model nobody calls still holds its GPUs. The scaler already runs such a model at
spec.replicas.min (no traffic recommends min, see `policy`); this makes it visible: the Idle
condition on the GuardedModel, a gauge on the operator, an alert for the SREs.

Pure, no I/O. The rules:

- requests in the last idleAfter (all versions, all pods) → not idle (Serving);
- none, and the model is older than idleAfter → idle (NoTraffic). A model whose request series
  Prometheus does not have at all counts as having no requests: its pods never served or never
  reported, and the GPUs are held all the same;
- none, but the model is younger than idleAfter → not idle yet (New);
- no data (Prometheus unreachable or refusing the query) decides nothing: the condition keeps its
  last value, as the scaler keeps its replica count;
- idleAfter 0s turns the watch off and removes the condition.

Each message stays the same for as long as its state does, so a model in a steady state costs no
status write per check.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..clock import parse_duration, parse_time
from ..spec import with_defaults
from ..status import Condition, condition, conditions_by_type, merge_conditions

IDLE = "Idle"  # the condition type
NO_TRAFFIC = "NoTraffic"
SERVING = "Serving"
NEW = "New"


@dataclass(frozen=True)
class IdleSpec:
    idle_after: str  # as the spec spells it, for messages
    idle_after_s: float
    min_replicas: int
    scaled: bool  # replicas.max above min: the scaler runs an idle model at min

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> IdleSpec:
        """Raises ValueError, naming the field, for a value the CRD would refuse today (an object
        stored before the rule existed)."""
        spec = with_defaults(body.get("spec") or {})
        text = str(spec["scaling"]["idleAfter"])
        try:
            seconds = parse_duration(text)
        except ValueError as error:
            raise ValueError(f"spec.scaling.idleAfter: {error}, or 0s to turn idle detection off") from error
        replicas = spec["replicas"]
        return cls(text, seconds, int(replicas["min"]), int(replicas["max"]) > int(replicas["min"]))

    @property
    def enabled(self) -> bool:
        return self.idle_after_s > 0


@dataclass(frozen=True)
class TrafficSample:
    """Requests over the last idleAfter, all pods and versions of the model together."""

    requests: float | None = None  # None: Prometheus has no request series for the model
    error: str | None = None  # Prometheus did not answer: no data


def decide(
    spec: IdleSpec, sample: TrafficSample, created: dt.datetime | None, now: dt.datetime
) -> Condition | None:
    """The Idle condition's (status, reason, message), or None to keep the last one (no data)."""
    if sample.error is not None:
        return None
    after = spec.idle_after
    if sample.requests is not None and sample.requests > 0:
        return ("False", SERVING, f"served requests in the last {after}")
    if created is not None and now - created < dt.timedelta(seconds=spec.idle_after_s):
        return ("False", NEW, f"created less than {after} ago; idle once it serves no request for {after}")
    unseen = "" if sample.requests is not None else " (Prometheus has no request series for it)"
    return ("True", NO_TRAFFIC, f"no requests for {after}{unseen}; {_replicas_note(spec)}")


def _replicas_note(spec: IdleSpec) -> str:
    if spec.scaled:
        return f"scaled to replicas.min ({spec.min_replicas})"
    return f"still runs {spec.min_replicas} replica(s), as replicas.min = replicas.max"


def created_at(body: Mapping[str, Any]) -> dt.datetime | None:
    return parse_time((body.get("metadata") or {}).get("creationTimestamp"))


# ------------------------------------------------------------------------------- status


def idle_condition(status: Mapping[str, Any]) -> Mapping[str, Any] | None:
    return conditions_by_type(status).get(IDLE)


def idle_conditions(
    status: Mapping[str, Any], value: Condition | None, generation: int, now: str
) -> list[dict[str, Any]] | None:
    """The whole conditions list with Idle set to `value` (None: Idle removed), or None when that
    changes nothing. Only a flip of its status moves lastTransitionTime."""
    current = status.get("conditions") or []
    previous = idle_condition(status)
    if value is None:
        return None if previous is None else merge_conditions(current, [], drop=[IDLE])
    if (
        previous is not None
        and (previous.get("status"), previous.get("reason"), previous.get("message")) == value
    ):
        return None
    return merge_conditions(current, [condition(IDLE, value, previous, generation, now)])


def is_idle(value: Mapping[str, Any] | Condition | None) -> bool:
    """Whether a stored condition (a mapping) or a decided one (a tuple) says idle."""
    if value is None:
        return False
    status = value.get("status") if isinstance(value, Mapping) else value[0]
    return status == "True"
