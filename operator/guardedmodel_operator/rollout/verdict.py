"""The rollout policy's decision: (spec, status, metric samples, now) → verdict.

Pure, no I/O; `outcome` turns a verdict into status fields. The rules, in the order they are tried:

1. No stable version yet: wait (the core promotes the first version once its pods are ready).
2. A canary is in flight:
   - spec.model.version is back at the stable version → abort the canary;
   - spec.model.version names a third version → it supersedes the canary (new canary at steps[0]);
   - a person's order names this canary (`commands`): abort → roll it back now (reason Aborted);
     promote → the next step, or every step left with full, without waiting for a check;
   - the canary was halted (failed with autoRollback off) and the spec has not changed → hold;
   - otherwise analyse the canary (below).
3. A candidate is under shadow / replay and spec.model.version no longer names it → withdraw it.
   No canary, after a rollback, spec.model.version set back to the stable version:
   the rollback is acknowledged (phase Ready again).
   No canary, spec.model.version differs from stable:
   - that version was rolled back, halted or refused and the spec has not changed since → do not retry it;
   - the Deployment for this generation is not rolled out yet → wait;
   - with spec.rollout.shadow or replay: first shadow and replay it (status.shadow), and once
     comparison.minRows rows were compared, refuse it when a comparison threshold breaks, else go on;
   - strategy instant → promote it at once; canary → start a canary at steps[0].
4. Otherwise, with continuousGuard, analyse the stable version with the same thresholds.

An analysis runs at most once per interval (since the last routing change or failed check).
Fewer than minRequests requests, a set threshold whose figure is missing, or Prometheus not
answering (unreachable, an error, a malformed answer) is "no data": inconclusive, a hold that
neither passes nor fails, and never a promotion. The hold is bounded by noDataTimeout (`_bounded`):
then a canary is rolled back (halted with autoRollback off) and a shadow refused, as Inconclusive;
the stable version keeps serving and its hold says MetricsUnavailable (a stable version with too
few requests is idle, not unmonitored: no bound). maxDriftScore reads the sidecar's drift test
(types.drift_breach): it breaks only when a drift window in the check window was called drifted
(p <= spec.drift.alpha) and that window's PSI is above the limit; when no window had
spec.drift.minSamples rows the figure is missing (insufficient data), like minRequests. A check fails when any set threshold
breaks; after failureLimit consecutive failed checks the canary is rolled back (or halted
and Degraded when autoRollback is off); for the stable version, traffic returns to
lastGoodVersion when it differs, else the model is marked Degraded. A passing check moves
the canary to the next step, and past the last step makes it stable.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, replace
from typing import Any

from ..clock import format_duration, format_time
from . import phase
from .comparison import ComparisonSamples, comparison_breaches
from .types import Breach, MetricSamples, RolloutSpec, RolloutState, breaches, drift_psi_pending


class Kind(enum.StrEnum):
    HOLD = "hold"
    START_SHADOW = "start_shadow"
    REJECT = "reject"  # refused after shadow / replay, before any user saw it
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
VERSION_NOT_LOADED = "VersionNotLoaded"
# The stable version's checks have had no data for longer than noDataTimeout (it keeps serving).
METRICS_UNAVAILABLE = "MetricsUnavailable"
# Holds for lack of data: they run the noDataTimeout clock (status.rollout.noDataSince).
NO_DATA_HOLDS = (NO_DATA, VERSION_NOT_LOADED, METRICS_UNAVAILABLE)
# A canary or shadow that held for lack of data for noDataTimeout, given up (rolled back or refused).
INCONCLUSIVE = phase.INCONCLUSIVE
# A canary a person rolled back (guardedmodel.io/abort), and one a person promoted (guardedmodel.io/promote).
ABORTED = phase.ABORTED
PROMOTED_BY_HAND = "PromotedByHand"
# A check that found drift whose PSI is a scrape away looks again this soon (seconds).
PENDING_RECHECK_S = 2.0


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
    comparison: ComparisonSamples | None = None  # what shadow / replay measured (status.comparison)
    breaches: tuple[Breach, ...] = ()
    # When to look again; None = when something changes (or the interval).
    recheck_after_s: float | None = None
    # The check lacked the data it needed: True runs the noDataTimeout clock (status.rollout.noDataSince);
    # False: Prometheus answered, there is nothing to wait for (a stable version too idle to check).
    data_missing: bool | None = None

    @property
    def checked(self) -> bool:
        return self.failed_checks is not None

    @property
    def ends_no_data(self) -> bool:
        """The noDataTimeout clock stops: a check had what it needed, or routing moved on."""
        return self.data_missing is False or self.checked or self.kind is not Kind.HOLD


@dataclass(frozen=True)
class Analysis:
    """Rules 2 and 4 reached the point where metric samples decide."""

    version: str
    canary: bool
    failed_before: int
    # Shadow / replay of a candidate against the stable version, instead of its serving metrics.
    comparison: bool = False


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
        ordered = _ordered(spec, state, canary)
        if ordered is not None:
            return ordered
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
    if state.shadow is not None and state.shadow != target:
        return Verdict(
            Kind.ABORT,
            "ShadowAborted",
            f"spec.model.version is {target}: the shadow of version {state.shadow} is withdrawn",
            version=state.shadow,
        )
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
        if spec.comparison.enabled:
            if state.shadow != target:
                return _start_shadow(spec, state)
            return _due(spec, state, now) or Analysis(target, False, 0, comparison=True)
        if spec.strategy == "instant":
            return _promote_at_once(target, state)
        return _start(spec, superseded=None)
    if not spec.continuous_guard:
        return _hold(IDLE, f"version {state.stable} is stable; continuousGuard is off")
    return _due(spec, state, now) or Analysis(state.stable, False, state.failed_checks)


def _ordered(spec: RolloutSpec, state: RolloutState, canary: str) -> Verdict | None:
    """What a person's order for this canary does (`commands`), or None: no order names it.

    An abort goes first and acts at once, halted canary or not: a rollback like a failed check,
    reason Aborted. A promotion overrides the checks, and a halt, but still waits for the
    Deployment of this generation, as any routing change does."""
    orders = spec.orders
    abort, promote = orders.abort, orders.promote
    if abort is not None and abort.acts_on(canary, state.weight, spec.generation):
        return Verdict(
            Kind.ROLLBACK,
            ABORTED,
            f"canary {canary} aborted at {state.weight}% by {abort.words}: rolled back to {state.stable}",
            version=canary,
            target=state.stable,
        )
    if promote is None or not promote.acts_on(canary, state.weight, spec.generation):
        return None
    if not state.deployment_ready:
        return _waiting_for_deployment(canary)
    upcoming = [s for s in spec.steps if s > state.weight]
    if promote.full or not upcoming:
        return Verdict(
            Kind.PROMOTE_FULL,
            PROMOTED_BY_HAND,
            f"canary {canary} promoted at {state.weight}% by {promote.words}: version {canary} is "
            f"stable, replacing {state.stable}",
            version=canary,
        )
    return Verdict(
        Kind.PROMOTE_STEP,
        PROMOTED_BY_HAND,
        f"canary {canary} promoted from {state.weight}% to {upcoming[0]}% by {promote.words}, "
        "without waiting for its check",
        version=canary,
        weight=upcoming[0],
    )


def needed_analysis(spec: RolloutSpec, state: RolloutState, now: dt.datetime) -> Analysis | None:
    """What a decision needs measured now, or None (no query needed)."""
    step = plan(spec, state, now)
    return step if isinstance(step, Analysis) else None


def measure_version(spec: RolloutSpec, state: RolloutState, now: dt.datetime) -> str | None:
    """The version whose figures a decision needs now, or None (no query needed)."""
    analysis = needed_analysis(spec, state, now)
    return None if analysis is None else analysis.version


def decide(
    spec: RolloutSpec,
    state: RolloutState,
    samples: MetricSamples | ComparisonSamples | None,
    now: dt.datetime,
) -> Verdict:
    step = plan(spec, state, now)
    if isinstance(step, Verdict):
        return step
    if step.comparison:
        verdict = _analyse_comparison(
            spec, state, step, samples if isinstance(samples, ComparisonSamples) else None
        )
    else:
        verdict = _analyse(spec, state, step, samples if isinstance(samples, MetricSamples) else None)
    return _bounded(spec, state, step, verdict, now)


def _bounded(
    spec: RolloutSpec, state: RolloutState, analysis: Analysis, verdict: Verdict, now: dt.datetime
) -> Verdict:
    """A hold for lack of data lasts at most spec.rollout.noDataTimeout, counted from the first check
    of the run that had no data (status.rollout.noDataSince). Then a canary is rolled back (halted
    with autoRollback off) and a shadow refused, as Inconclusive: missing data never promotes, and
    never holds forever. The stable version keeps serving: its hold turns MetricsUnavailable."""
    if verdict.kind is not Kind.HOLD or verdict.reason not in (NO_DATA, VERSION_NOT_LOADED):
        return verdict
    if not (analysis.canary or analysis.comparison) and _idle(spec, verdict):
        # Prometheus answered: too few requests to check a stable version is an idle model (its Idle
        # condition says so), not an unmonitored one.
        return replace(verdict, data_missing=False)
    since = state.no_data_since or now
    deadline = since + dt.timedelta(seconds=spec.no_data_timeout_s)
    bound = f"noDataTimeout {format_duration(spec.no_data_timeout_s)}"
    version = str(verdict.version)
    if now < deadline:
        if analysis.comparison:
            then = f"refused as inconclusive at {format_time(deadline)}"
        elif analysis.canary:
            then = f"{'rolled back' if spec.auto_rollback else 'halted'} as inconclusive at {format_time(deadline)}"
        else:
            then = f"said to be unmonitored at {format_time(deadline)}, never rolled back for it"
        note = f"without data since {format_time(since)}; {then} ({bound}) unless a check gets its figures"
        remaining = (deadline - now).total_seconds()
        recheck = verdict.recheck_after_s
        if remaining < spec.interval_s:  # the bound falls before the next check: look again at it
            recheck = remaining if recheck is None else min(recheck, remaining)
        return replace(
            verdict, message=f"{verdict.message} ({note})", recheck_after_s=recheck, data_missing=True
        )
    held = f"no check had its figures since {format_time(since)} ({bound}); the last said: {verdict.message}"
    if analysis.comparison:
        return Verdict(
            Kind.REJECT,
            INCONCLUSIVE,
            f"version {version} refused before serving anyone, as inconclusive: {held}",
            version=version,
            comparison=verdict.comparison,
        )
    if analysis.canary and spec.auto_rollback:
        return Verdict(
            Kind.ROLLBACK,
            INCONCLUSIVE,
            f"canary {version} rolled back to {state.stable} as inconclusive: {held}",
            version=version,
            target=state.stable,
            samples=verdict.samples,
        )
    if analysis.canary:
        return Verdict(
            Kind.DEGRADE,
            "CanaryHalted",
            f"canary {version} halted at {state.weight}% as inconclusive, and autoRollback is off, so it "
            f"stays: {held}",
            version=version,
            samples=verdict.samples,
        )
    return _hold(
        METRICS_UNAVAILABLE,
        f"continuousGuard cannot check stable version {version}: {held}. It keeps serving; a stable "
        "version is not rolled back for lack of data",
        version=version,
        samples=verdict.samples,
        data_missing=True,
    )


def _idle(spec: RolloutSpec, verdict: Verdict) -> bool:
    """Prometheus answered, with fewer requests than a check needs."""
    samples = verdict.samples
    if verdict.reason != NO_DATA or samples is None or samples.error:
        return False
    return (samples.value("requests") or 0.0) < spec.min_requests


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


def _promote_at_once(
    version: str, state: RolloutState, after: str = "", comparison: ComparisonSamples | None = None
) -> Verdict:
    """strategy instant: all traffic to ``version`` in one step (``after``: what it passed first)."""
    message = f"version {version} promoted at once (strategy instant), replacing {state.stable}"
    return Verdict(
        Kind.PROMOTE_FULL,
        "Promoted",
        f"{message}, {after}" if after else message,
        version=version,
        comparison=comparison,
    )


def _start_shadow(spec: RolloutSpec, state: RolloutState) -> Verdict:
    c = spec.comparison
    how = []
    if c.shadow_fraction > 0:
        how.append(f"{c.shadow_fraction:.0%} of live traffic mirrored")
    if c.replay_samples > 0:
        how.append(f"{c.replay_samples} audit samples replayed per pod")
    message = (
        f"version {spec.version} in shadow before any user sees it ({', '.join(how)}), "
        f"compared with version {state.stable}"
    )
    return Verdict(Kind.START_SHADOW, "ShadowStarted", message, version=spec.version)


def _analyse_comparison(
    spec: RolloutSpec, state: RolloutState, analysis: Analysis, samples: ComparisonSamples | None
) -> Verdict:
    version, wanted = analysis.version, spec.comparison.min_rows
    if samples is None or samples.version != version or samples.error:
        why = samples.error if samples is not None and samples.error else "no comparison figures"
        return _hold(NO_DATA, f"no data for the shadow of version {version}: {why}", version=version)
    if samples.total_rows < wanted:
        return _hold(
            NO_DATA,
            f"shadow of version {version}: {int(samples.total_rows)} of {wanted} rows compared "
            f"(comparison.minRows); {samples.summary()}",
            version=version,
            comparison=samples,
        )
    broken = comparison_breaches(spec.comparison, samples)
    if broken:
        return Verdict(
            Kind.REJECT,
            "ComparisonFailed",
            f"version {version} refused before serving anyone: {'; '.join(broken)} ({samples.summary()})",
            version=version,
            comparison=samples,
        )
    passed = f"after shadow and replay ({samples.summary()})"
    if spec.strategy == "instant":
        return _promote_at_once(version, state, passed, samples)
    started = _start(spec, superseded=None)
    return replace(started, message=f"{started.message} {passed}", comparison=samples)


def _due(spec: RolloutSpec, state: RolloutState, now: dt.datetime) -> Verdict | None:
    """A hold while the interval since the last routing change or failed check runs."""
    if state.since is None:
        return None
    remaining = spec.interval_s - (now - state.since).total_seconds()
    if remaining <= 0:
        return None
    return _hold(ANALYSING, f"next check in {remaining:.0f}s", recheck_after_s=remaining)


def _analyse(
    spec: RolloutSpec, state: RolloutState, analysis: Analysis, samples: MetricSamples | None
) -> Verdict:
    version = analysis.version
    subject = f"canary {version}" if analysis.canary else f"stable version {version}"
    if samples is None or samples.version != version or samples.error:
        why = samples.error if samples is not None and samples.error else "no metric samples"
        return _hold(NO_DATA, f"no data for {subject}: {why}", version=version)
    requests = samples.value("requests")
    if (requests is None or requests < spec.min_requests) and samples.value("loaded") == 0.0:
        return _hold(
            VERSION_NOT_LOADED,
            f"{subject} gets no traffic: a pod routes it but has not loaded it "
            f"(guardedmodel_version_loaded 0); Triton refused it or is still loading it. Is version "
            f"{version} in the model repository? The sidecar's log names Triton's reason",
            version=version,
            samples=samples,
        )
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
            recheck_after_s=min(spec.interval_s, PENDING_RECHECK_S) if drift_psi_pending(samples) else None,
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
