"""A rollout verdict → the rollout-owned status fields (`status.ROLLOUT_FIELDS`).

Pure, no I/O. The controller writes what changed with `status.merge_patch`; a steady state
(the same hold again, a repeated Degraded) changes nothing, so it costs no status write.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Mapping
from typing import Any

from ..clock import format_time
from ..status import (
    ROLLOUT_FIELDS,
    condition,
    conditions_by_type,
    history_entry,
    merge_conditions,
    merge_patch,
    trimmed_history,
)
from .types import INSUFFICIENT_DATA, MetricSamples, RolloutSpec
from .verdict import ABORTED, ANALYSING, CHECK_FAILED, PROMOTED_BY_HAND, ROLLBACK_ACKNOWLEDGED, Kind, Verdict

# The rollout controller's own condition (the core keeps the conditions of other writers).
METRICS_AVAILABLE = "MetricsAvailable"
# status.metrics is for people (`kubectl get` shows two of its figures); the record is Prometheus's.
# A figure is rewritten when it moved past what ordinary noise moves it between two checks, or when
# the status is written anyway. So a steady model costs no status write per check, and an operator
# restart, after which every model is checked at once, writes nothing for models that did not move.
METRIC_NOISE = {"oodRate": 0.05, "reviewRate": 0.05, "estimatedAccuracy": 0.05, "driftScore": 0.05}
# requestsPerSecond: rewritten when one of the two rates is this many times the other (rates under
# one request per second count as one). A short check window with a missed scrape reads a steady rate
# a third low, so anything finer is noise.
RATE_RATIO = 1.5


def apply_verdict(
    status: Mapping[str, Any] | None, verdict: Verdict, spec: RolloutSpec, now: dt.datetime
) -> dict[str, Any]:
    """The rollout-owned status fields (ROLLOUT_FIELDS) after the verdict.

    Returns every owned field, changed or not; a field that must disappear is None.
    Applying the same verdict to its own result changes nothing but `since`-free
    holds, so calling decide → apply_verdict twice in a row writes once.
    """
    status = status or {}
    out: dict[str, Any] = {key: copy.deepcopy(status.get(key)) for key in ROLLOUT_FIELDS}
    rollout: dict[str, Any] = dict(out["rollout"] or {})
    history: list[dict[str, Any]] = list(out["history"] or [])
    at = format_time(now)
    stable = status.get("stableVersion")

    def record(version: str | None, outcome: str, reason: str) -> None:
        history.append(history_entry(version, outcome, at, reason))

    def routing_changed() -> None:
        rollout["since"] = at
        rollout["failedChecks"] = 0

    kind = verdict.kind
    was_degraded = rollout.get("phase") == "Degraded"
    if kind in (Kind.START_CANARY, Kind.PROMOTE_FULL, Kind.REJECT, Kind.ABORT):
        out["shadow"] = None  # the shadow phase, if any, ends with these
    if kind is Kind.START_SHADOW:
        record(verdict.version, "ShadowStarted", verdict.message)
        out["shadow"] = spec.comparison.status_shadow(str(verdict.version))
        out["comparison"] = {"version": verdict.version, "baseline": stable, "rows": 0, "decision": "pending"}
        rollout["phase"] = "Progressing"
        _unblock(rollout)
        routing_changed()
    elif kind is Kind.REJECT:
        record(verdict.version, "Rejected", verdict.message)
        rollout["phase"] = "RolledBack"
        _block(rollout, verdict, spec)
        routing_changed()
    elif kind is Kind.START_CANARY:
        if verdict.superseded:
            record(verdict.superseded, "Superseded", f"replaced by version {verdict.version}")
        record(verdict.version, "CanaryStarted", verdict.message)
        out["canaryVersion"], out["canaryWeight"] = verdict.version, verdict.weight
        rollout["phase"] = "Progressing"
        _unblock(rollout)
        routing_changed()
    elif kind is Kind.PROMOTE_STEP:
        if verdict.reason == PROMOTED_BY_HAND:  # a step the checks did not take: the history says who
            record(verdict.version, "PromotedStep", verdict.message)
        out["canaryWeight"] = verdict.weight
        rollout["phase"] = "Progressing"
        _unblock(rollout)  # a halted canary promoted by hand is analysed again from its new step
        routing_changed()
    elif kind is Kind.PROMOTE_FULL:
        record(verdict.version, "Promoted", verdict.message)
        if stable and stable != verdict.version:
            out["lastGoodVersion"] = stable
        out["stableVersion"], out["canaryVersion"], out["canaryWeight"] = verdict.version, None, 0
        rollout["phase"] = "Ready"
        _unblock(rollout)
        routing_changed()
    elif kind is Kind.ROLLBACK:
        record(verdict.version, "Aborted" if verdict.reason == ABORTED else "RolledBack", verdict.message)
        if verdict.version == out["canaryVersion"]:
            out["canaryVersion"], out["canaryWeight"] = None, 0
        else:  # the stable version itself: traffic returns to the last good one
            out["stableVersion"] = verdict.target
            out["lastGoodVersion"] = verdict.target
        rollout["phase"] = "RolledBack"
        _block(rollout, verdict, spec)
        routing_changed()
    elif kind is Kind.ABORT:
        record(verdict.version, "Aborted", verdict.message)
        out["canaryVersion"], out["canaryWeight"] = None, 0
        rollout["phase"] = "Ready"
        _unblock(rollout)
        routing_changed()
    elif kind is Kind.DEGRADE:
        if not was_degraded:
            record(
                verdict.version, "Halted" if verdict.reason == "CanaryHalted" else "Degraded", verdict.message
            )
            rollout["since"] = at
        rollout["phase"] = "Degraded"
        rollout["failedChecks"] = verdict.failed_checks
        if verdict.reason == "CanaryHalted":
            _block(rollout, verdict, spec)
    elif kind is Kind.RECOVER and verdict.reason == ROLLBACK_ACKNOWLEDGED:
        _unblock(rollout)
        rollout["phase"] = "Ready"
    elif kind is Kind.RECOVER:
        record(verdict.version, "Recovered", verdict.message)
        rollout["phase"] = "RolledBack" if rollout.get("blockedVersion") else "Ready"
        rollout["failedChecks"] = 0
    elif (
        kind is Kind.HOLD
        and verdict.failed_checks is not None
        and verdict.failed_checks != rollout.get("failedChecks", 0)
    ):
        rollout["failedChecks"] = verdict.failed_checks
        if verdict.failed_checks:
            rollout["since"] = at  # the next check is one interval after this failure

    # The noDataTimeout clock: it starts at the first check of a run without data and stops at any
    # check that had data or any change of routing.
    if kind is Kind.HOLD and verdict.data_missing:
        rollout.setdefault("noDataSince", at)
    elif verdict.ends_no_data:
        rollout.pop("noDataSince", None)

    # A routing change or a failed check rewrites the message; a repeated hold or a
    # repeated Degraded keeps the first message, so a steady state writes nothing.
    steady = kind is Kind.HOLD or (kind is Kind.DEGRADE and was_degraded)
    if verdict.reason != ANALYSING and (
        not steady or rollout.get("reason") != verdict.reason or verdict.reason == CHECK_FAILED
    ):
        rollout["reason"], rollout["message"] = verdict.reason, verdict.message
    if verdict.comparison is not None:
        decision = {Kind.REJECT: "failed", Kind.START_CANARY: "passed", Kind.PROMOTE_FULL: "passed"}
        out["comparison"] = verdict.comparison.as_status(decision.get(kind, "pending"))
    if history:
        out["history"] = trimmed_history(history)
    out["rollout"] = {k: v for k, v in rollout.items() if v is not None} or None
    if verdict.samples is not None and verdict.samples.version == (
        out["canaryVersion"] or out["stableVersion"]
    ):
        fresh = status_metrics(verdict.samples)
        written_anyway = any(out[key] != status.get(key) for key in ROLLOUT_FIELDS if key != "metrics")
        if written_anyway or metrics_moved(out["metrics"], fresh):
            out["metrics"] = fresh
    return out


def _block(rollout: dict[str, Any], verdict: Verdict, spec: RolloutSpec) -> None:
    """The version is not retried until the spec changes; blockedReason says why (RolledBack,
    ComparisonFailed, CanaryHalted, or Inconclusive: given up for lack of data)."""
    rollout["blockedVersion"], rollout["blockedGeneration"] = verdict.version, spec.generation
    rollout["blockedReason"] = verdict.reason


def _unblock(rollout: dict[str, Any]) -> None:
    for key in ("blockedVersion", "blockedGeneration", "blockedReason"):
        rollout.pop(key, None)


def status_metrics(samples: MetricSamples) -> dict[str, Any]:
    """status.metrics, rounded so that ordinary noise does not cause a status write per check."""
    figures = {
        "version": samples.version,
        "oodRate": _round(samples.value("ood_rate"), 2),
        "reviewRate": _round(samples.value("review_rate"), 2),
        "estimatedAccuracy": _round(samples.value("estimated_accuracy"), 2),
        "driftScore": _round(samples.value("drift_score"), 2),
        "driftDecision": drift_decision(samples),
        "requestsPerSecond": _round(samples.requests_per_second, 1),
    }
    return {k: v for k, v in figures.items() if v is not None}


def metrics_moved(stored: Mapping[str, Any] | None, fresh: Mapping[str, Any]) -> bool:
    """Does `fresh` say something `stored` does not: another version or decision, a figure that
    appeared or went, or one that moved past the noise between two checks (METRIC_NOISE)?"""
    if not stored or set(stored) != set(fresh):
        return True
    for key, value in fresh.items():
        old = stored[key]
        if key in METRIC_NOISE:
            moved = abs(float(value) - float(old)) >= METRIC_NOISE[key]
        elif key == "requestsPerSecond":
            low, high = sorted((max(float(value), 1.0), max(float(old), 1.0)))
            moved = high >= RATE_RATIO * low
        else:
            moved = value != old
        if moved:
            return True
    return False


def drift_decision(samples: MetricSamples) -> str | None:
    """drifted | stable | insufficientData (drift windows closed, none with minSamples rows);
    None when the version publishes no drift at all (no guard artifact)."""
    if samples.drift_decision is not None:
        return samples.drift_decision
    return INSUFFICIENT_DATA if samples.value("drift_score") is not None else None


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def metrics_available(
    status: Mapping[str, Any] | None,
    verdict: Verdict,
    rollout: Mapping[str, Any] | None,
    generation: int,
    now: dt.datetime,
) -> list[dict[str, Any]] | None:
    """The conditions list with MetricsAvailable after the verdict, or None when it stays as it is.

    False while a check holds for lack of data (`Verdict.data_missing`): its reason (NoData,
    VersionNotLoaded, MetricsUnavailable) and message, and lastTransitionTime the first check without
    data (status.rollout.noDataSince). True again once a check had data or routing moved on. A model
    that never held for lack of data has no such condition. `rollout` is status.rollout after the verdict.
    """
    status = status or {}
    previous = conditions_by_type(status).get(METRICS_AVAILABLE)
    rollout = rollout or {}
    if verdict.kind is Kind.HOLD and verdict.data_missing:
        value = ("False", verdict.reason, str(rollout.get("message") or verdict.message))
        at = str(rollout.get("noDataSince") or format_time(now))
    elif previous is not None and verdict.ends_no_data:
        value, at = ("True", "NotHolding", "no rollout step is holding for lack of metrics"), format_time(now)
    else:
        return None
    if (
        previous is not None
        and (previous.get("status"), previous.get("reason"), previous.get("message")) == value
    ):
        return None
    owned = condition(METRICS_AVAILABLE, value, previous, generation, at)
    return merge_conditions(status.get("conditions") or [], [owned])


def status_changes(status: Mapping[str, Any] | None, owned: Mapping[str, Any]) -> dict[str, Any] | None:
    """A merge patch for the rollout-owned fields that differ from `status`, or None."""
    return merge_patch(status, owned, owned.keys())


def first_promotion(status: Mapping[str, Any] | None, version: str | None, now: str) -> dict[str, Any]:
    """The rollout-owned fields the core's reconcile writes with its status, until a version is stable.

    The rollout controller waits (WAITING_FOR_FIRST_VERSION) until a stable version exists, and the
    core sees first when the pods of the first version are ready: it promotes `version` then (None:
    not yet). canaryWeight starts at 0 so that the status always says how traffic is split.
    """
    status = status or {}
    owned: dict[str, Any] = {"canaryWeight": status.get("canaryWeight", 0)}
    if version is not None:
        entry = history_entry(version, "Promoted", now, "Deployment rolled out and ready")
        owned["history"] = trimmed_history([*(status.get("history") or []), entry])
        owned["stableVersion"] = version
    return owned
