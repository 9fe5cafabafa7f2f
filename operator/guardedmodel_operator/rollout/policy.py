"""The rollout policy: (spec, status, metric samples, now) → verdict → new status fields.

Pure, no I/O. The rules, in the order they are tried:

1. No stable version yet: wait (the core promotes the first version once its pods are ready).
2. A canary is in flight:
   - spec.model.version is back at the stable version → abort the canary;
   - spec.model.version names a third version → it supersedes the canary (new canary at steps[0]);
   - the canary was halted (failed with autoRollback off) and the spec has not changed → hold;
   - otherwise analyse the canary (below).
3. No canary, after a rollback, spec.model.version set back to the stable version:
   the rollback is acknowledged (phase Ready again).
   No canary, spec.model.version differs from stable:
   - that version was rolled back or halted and the spec has not changed since → do not retry it;
   - the Deployment for this generation is not rolled out yet → wait;
   - strategy instant → promote it at once; canary → start a canary at steps[0].
4. Otherwise, with continuousGuard, analyse the stable version with the same thresholds.

An analysis runs at most once per interval (since the last routing change or failed check).
Fewer than minRequests requests, or a set threshold whose figure is missing, is "no data":
inconclusive, a hold that neither passes nor fails. A check fails when any set threshold
breaks; after failureLimit consecutive failed checks the canary is rolled back (or halted
and Degraded when autoRollback is off); for the stable version, traffic returns to
lastGoodVersion when it differs, else the model is marked Degraded. A passing check moves
the canary to the next step, and past the last step makes it stable.
"""

from __future__ import annotations

import copy
import datetime as dt
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .types import THRESHOLD_METRICS, MetricSamples, RolloutSpec, RolloutState, format_time

HISTORY_LIMIT = 20
# Rollout-owned status fields: the core's status code keeps them untouched.
OWNED_FIELDS = (
    "stableVersion",
    "canaryVersion",
    "canaryWeight",
    "lastGoodVersion",
    "history",
    "rollout",
    "metrics",
)


class Kind(enum.StrEnum):
    HOLD = "hold"
    START_CANARY = "start_canary"
    PROMOTE_STEP = "promote_step"
    PROMOTE_FULL = "promote_full"
    ROLLBACK = "rollback"
    DEGRADE = "degrade"
    ABORT = "abort"
    RECOVER = "recover"


# Hold reasons. Only ANALYSING is silent: it means "the next check is not due yet".
WAITING_FOR_FIRST_VERSION = "WaitingForFirstVersion"
WAITING_FOR_DEPLOYMENT = "WaitingForDeployment"
ANALYSING = "Analysing"
NO_DATA = "NoData"
CHECK_FAILED = "CheckFailed"
CHECKS_PASSED = "ChecksPassed"
HALTED = "Halted"
IDLE = "Idle"
ROLLBACK_ACKNOWLEDGED = "RollbackAcknowledged"


@dataclass(frozen=True)
class Breach:
    threshold: str  # the spec's name, e.g. maxOodRate
    measured: float
    limit: float
    text: str  # "oodRate 0.412 > maxOodRate 0.25"


@dataclass(frozen=True)
class Verdict:
    kind: Kind
    reason: str  # CamelCase, for conditions and Events
    message: str
    version: str | None = None  # the version the verdict is about
    weight: int | None = None  # the canary's new weight (start, step)
    target: str | None = None  # where traffic goes back to (rollback)
    superseded: str | None = None  # the canary a new one replaces
    failed_checks: int | None = None  # the counter's new value, when a check ran
    samples: MetricSamples | None = None  # what the check saw (refreshes status.metrics)
    breaches: tuple[Breach, ...] = ()
    # When to look again; None = when something changes (or the interval).
    recheck_after_s: float | None = None

    @property
    def checked(self) -> bool:
        return self.failed_checks is not None


@dataclass(frozen=True)
class Analysis:
    """Rules 2 and 4 reached the point where metric samples decide."""

    version: str
    canary: bool
    failed_before: int


def plan(spec: RolloutSpec, state: RolloutState, now: dt.datetime) -> Verdict | Analysis:
    """Everything decide does that needs no metric samples."""
    if state.stable is None:
        return _hold(WAITING_FOR_FIRST_VERSION, f"waiting for version {spec.version} to roll out first")
    target = spec.version
    if state.canary is not None:
        canary = state.canary
        if target == state.stable:
            return Verdict(
                Kind.ABORT,
                "CanaryAborted",
                f"spec.model.version is back at {state.stable}: canary {canary} withdrawn",
                version=canary,
            )
        if target != canary:
            if not state.deployment_ready:
                return _waiting_for_deployment(target)
            return _start(spec, superseded=canary)
        if state.blocks(canary, spec.generation):
            return _hold(
                HALTED,
                f"canary {canary} failed its checks and autoRollback is off: it stays at "
                f"{state.weight}% until spec.model.version changes or the spec is edited",
            )
        if not state.deployment_ready:
            return _waiting_for_deployment(canary)
        resumed = state.blocked_version == canary  # halted before, the spec changed since
        return _due(spec, state, now) or Analysis(canary, True, 0 if resumed else state.failed_checks)
    if target == state.stable and state.phase == "RolledBack":
        return Verdict(
            Kind.RECOVER,
            ROLLBACK_ACKNOWLEDGED,
            f"spec.model.version is back at {target}, the version serving: the rollback is acknowledged",
            version=target,
        )
    if target != state.stable and not state.blocks(target, spec.generation):
        if not state.deployment_ready:
            return _waiting_for_deployment(target)
        if spec.strategy == "instant":
            return Verdict(
                Kind.PROMOTE_FULL,
                "Promoted",
                f"version {target} promoted at once (strategy instant), replacing {state.stable}",
                version=target,
            )
        return _start(spec, superseded=None)
    if not spec.continuous_guard:
        return _hold(IDLE, f"version {state.stable} is stable; continuousGuard is off")
    return _due(spec, state, now) or Analysis(state.stable, False, state.failed_checks)


def measure_version(spec: RolloutSpec, state: RolloutState, now: dt.datetime) -> str | None:
    """The version whose metric samples a decision needs now, or None (no query needed)."""
    step = plan(spec, state, now)
    return step.version if isinstance(step, Analysis) else None


def decide(
    spec: RolloutSpec, state: RolloutState, samples: MetricSamples | None, now: dt.datetime
) -> Verdict:
    step = plan(spec, state, now)
    if isinstance(step, Verdict):
        return step
    return _analyse(spec, state, step, samples)


def _hold(reason: str, message: str, **kw: Any) -> Verdict:
    return Verdict(Kind.HOLD, reason, message, **kw)


def _waiting_for_deployment(version: str) -> Verdict:
    return _hold(
        WAITING_FOR_DEPLOYMENT,
        f"waiting for the Deployment to roll out this generation before routing to version {version}",
        version=version,
    )


def _start(spec: RolloutSpec, superseded: str | None) -> Verdict:
    weight = spec.steps[0]
    message = f"canary {spec.version} started at {weight}% (steps {list(spec.steps)})"
    if superseded:
        message += f"; it supersedes canary {superseded}"
    return Verdict(
        Kind.START_CANARY,
        "CanaryStarted",
        message,
        version=spec.version,
        weight=weight,
        superseded=superseded,
    )


def _due(spec: RolloutSpec, state: RolloutState, now: dt.datetime) -> Verdict | None:
    """A hold while the interval since the last routing change or failed check runs."""
    if state.since is None:
        return None
    remaining = spec.interval_s - (now - state.since).total_seconds()
    if remaining <= 0:
        return None
    return _hold(ANALYSING, f"next check in {remaining:.0f}s", recheck_after_s=remaining)


def breaches(spec: RolloutSpec, samples: MetricSamples) -> tuple[list[Breach], list[str]]:
    """Thresholds broken, and thresholds set whose figure has no data."""
    broken, missing = [], []
    for field_name, metric, sense, fmt in THRESHOLD_METRICS:
        limit = getattr(spec.thresholds, field_name)
        if limit is None:
            continue
        spec_name = _spec_name(field_name)
        measured = samples.value(metric)
        if measured is None:
            missing.append(spec_name)
            continue
        if (measured > limit) if sense == "max" else (measured < limit):
            scope = " (all versions)" if metric in samples.model_wide else ""
            sign = ">" if sense == "max" else "<"
            text = f"{_metric_name(metric)}{scope} {fmt.format(measured)} {sign} {spec_name} {limit:g}"
            broken.append(Breach(spec_name, measured, limit, text))
    return broken, missing


def _spec_name(field_name: str) -> str:
    head, *rest = field_name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _metric_name(metric: str) -> str:
    return _spec_name(metric)


def _analyse(
    spec: RolloutSpec, state: RolloutState, analysis: Analysis, samples: MetricSamples | None
) -> Verdict:
    version = analysis.version
    subject = f"canary {version}" if analysis.canary else f"stable version {version}"
    if samples is None or samples.version != version or samples.error:
        why = samples.error if samples is not None and samples.error else "no metric samples"
        return _hold(NO_DATA, f"no data for {subject}: {why}", version=version)
    requests = samples.value("requests")
    if requests is None or requests < spec.min_requests:
        seen = 0 if requests is None else int(requests)
        return _hold(
            NO_DATA,
            f"no data: {seen} of {spec.min_requests} requests needed for {subject} "
            f"in the last {samples.window_s:g}s",
            version=version,
            samples=samples,
        )
    broken, missing = breaches(spec, samples)
    if broken:
        # Capped: a model that stays unhealthy must not cause a status write per check.
        failed = min(analysis.failed_before + 1, spec.failures_to_act)
        summary = "; ".join(b.text for b in broken)
        if failed < spec.failures_to_act:
            return _hold(
                CHECK_FAILED,
                f"{subject} failed check {failed} of {spec.failures_to_act}: {summary}",
                version=version,
                failed_checks=failed,
                samples=samples,
                breaches=tuple(broken),
            )
        common: dict[str, Any] = {
            "version": version,
            "failed_checks": failed,
            "samples": samples,
            "breaches": tuple(broken),
        }
        if analysis.canary:
            if spec.auto_rollback:
                return Verdict(
                    Kind.ROLLBACK,
                    "RolledBack",
                    f"canary {version} rolled back to {state.stable}: {summary}",
                    target=state.stable,
                    **common,
                )
            return Verdict(
                Kind.DEGRADE,
                "CanaryHalted",
                f"canary {version} failed at {state.weight}% and autoRollback is off, so it stays: {summary}",
                **common,
            )
        if spec.auto_rollback and state.last_good and state.last_good != version:
            return Verdict(
                Kind.ROLLBACK,
                "RolledBack",
                f"stable version {version} rolled back to last good version {state.last_good}: {summary}",
                target=state.last_good,
                **common,
            )
        why = (
            "autoRollback is off" if not spec.auto_rollback else "there is no other good version to return to"
        )
        return Verdict(
            Kind.DEGRADE, "Degraded", f"stable version {version} is unhealthy ({why}): {summary}", **common
        )
    if missing:
        return _hold(
            NO_DATA,
            f"no data for {subject}: {', '.join(missing)} cannot be measured yet "
            f"({int(requests)} requests in the last {samples.window_s:g}s)",
            version=version,
            samples=samples,
        )
    if analysis.canary:
        upcoming = [s for s in spec.steps if s > state.weight]
        if upcoming and upcoming[0] < 100:
            return Verdict(
                Kind.PROMOTE_STEP,
                "PromotedStep",
                f"canary {version} passed its checks at {state.weight}%: now {upcoming[0]}%",
                version=version,
                weight=upcoming[0],
                failed_checks=0,
                samples=samples,
            )
        if upcoming:  # the next step is 100 %: all traffic to the canary, one more check
            return Verdict(
                Kind.PROMOTE_STEP,
                "PromotedStep",
                f"canary {version} passed its checks at {state.weight}%: now 100%",
                version=version,
                weight=100,
                failed_checks=0,
                samples=samples,
            )
        return Verdict(
            Kind.PROMOTE_FULL,
            "Promoted",
            f"canary {version} passed every step: version {version} is stable, replacing {state.stable}",
            version=version,
            failed_checks=0,
            samples=samples,
        )
    if state.phase == "Degraded" or analysis.failed_before:
        return Verdict(
            Kind.RECOVER,
            "Recovered",
            f"stable version {version} passes its checks again",
            version=version,
            failed_checks=0,
            samples=samples,
        )
    return _hold(
        CHECKS_PASSED,
        f"stable version {version} passes its checks",
        version=version,
        failed_checks=0,
        samples=samples,
    )


# --------------------------------------------------------------------------- applying a verdict


def apply_verdict(
    status: Mapping[str, Any] | None, verdict: Verdict, spec: RolloutSpec, now: dt.datetime
) -> dict[str, Any]:
    """The rollout-owned status fields (OWNED_FIELDS) after the verdict.

    Returns every owned field, changed or not; a field that must disappear is None.
    Applying the same verdict to its own result changes nothing but `since`-free
    holds, so calling decide → apply_verdict twice in a row writes once.
    """
    status = status or {}
    out: dict[str, Any] = {key: copy.deepcopy(status.get(key)) for key in OWNED_FIELDS}
    rollout: dict[str, Any] = dict(out["rollout"] or {})
    history: list[dict[str, Any]] = list(out["history"] or [])
    at = format_time(now)
    stable = status.get("stableVersion")

    def record(version: str | None, outcome: str, reason: str) -> None:
        history.append({"version": str(version), "outcome": outcome, "at": at, "reason": reason})

    def routing_changed() -> None:
        rollout["since"] = at
        rollout["failedChecks"] = 0

    kind = verdict.kind
    was_degraded = rollout.get("phase") == "Degraded"
    if kind is Kind.START_CANARY:
        if verdict.superseded:
            record(verdict.superseded, "Superseded", f"replaced by version {verdict.version}")
        record(verdict.version, "CanaryStarted", verdict.message)
        out["canaryVersion"], out["canaryWeight"] = verdict.version, verdict.weight
        rollout["phase"] = "Progressing"
        _unblock(rollout)
        routing_changed()
    elif kind is Kind.PROMOTE_STEP:
        out["canaryWeight"] = verdict.weight
        rollout["phase"] = "Progressing"
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
        record(verdict.version, "RolledBack", verdict.message)
        if verdict.version == out["canaryVersion"]:
            out["canaryVersion"], out["canaryWeight"] = None, 0
        else:  # the stable version itself: traffic returns to the last good one
            out["stableVersion"] = verdict.target
            out["lastGoodVersion"] = verdict.target
        rollout["phase"] = "RolledBack"
        rollout["blockedVersion"], rollout["blockedGeneration"] = verdict.version, spec.generation
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
            rollout["blockedVersion"], rollout["blockedGeneration"] = verdict.version, spec.generation
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

    # A routing change or a failed check rewrites the message; a repeated hold or a
    # repeated Degraded keeps the first message, so a steady state writes nothing.
    steady = kind is Kind.HOLD or (kind is Kind.DEGRADE and was_degraded)
    if verdict.reason != ANALYSING and (
        not steady or rollout.get("reason") != verdict.reason or verdict.reason == CHECK_FAILED
    ):
        rollout["reason"], rollout["message"] = verdict.reason, verdict.message
    if verdict.samples is not None and verdict.samples.version == (
        out["canaryVersion"] or out["stableVersion"]
    ):
        out["metrics"] = status_metrics(verdict.samples)
    if history:
        out["history"] = history[-HISTORY_LIMIT:]
    out["rollout"] = {k: v for k, v in rollout.items() if v is not None} or None
    return out


def _unblock(rollout: dict[str, Any]) -> None:
    rollout.pop("blockedVersion", None)
    rollout.pop("blockedGeneration", None)


def status_metrics(samples: MetricSamples) -> dict[str, Any]:
    """status.metrics, rounded so that ordinary noise does not cause a status write per check."""
    figures = {
        "version": samples.version,
        "oodRate": _round(samples.value("ood_rate"), 2),
        "reviewRate": _round(samples.value("review_rate"), 2),
        "estimatedAccuracy": _round(samples.value("estimated_accuracy"), 2),
        "driftScore": _round(samples.value("drift_score"), 2),
        "requestsPerSecond": _round(samples.requests_per_second, 1),
    }
    return {k: v for k, v in figures.items() if v is not None}


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def status_changes(status: Mapping[str, Any] | None, owned: Mapping[str, Any]) -> dict[str, Any] | None:
    """A merge patch for the owned fields that differ from `status`, or None."""
    status = status or {}
    patch = {k: v for k, v in owned.items() if status.get(k) != v and not (v is None and k not in status)}
    return patch or None
