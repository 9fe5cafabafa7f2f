"""The rollout controller: observe → decide → write, once per model per interval.

Each GuardedModel gets one task (`scheduler.ModelScheduler`) that runs a rollout
step, then sleeps until the next check is due — or until a watch event for the
model wakes it (a version edit starts a canary at once, not an interval later).
A model with nothing to measure sleeps until the next event: idle costs nothing.

Ownership of the status: this controller writes only the routing fields,
lastGoodVersion, history, metrics and `rollout`; the core writes phase,
conditions and observedGeneration, and folds `rollout.phase` into them
(`rollout.phase.overlay`). Both write under the same per-model lock.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..clock import utcnow
from ..events import EmitEvent, Event
from ..kube import CONFLICT, ApiError, PatchStatus
from ..prometheus import PrometheusSource
from . import metrics
from .comparison import ComparisonSamples
from .comparison_source import fetch_comparison
from .metrics_source import fetch_samples
from .outcome import apply_verdict, status_changes
from .types import MetricSamples, RolloutSpec, RolloutState
from .verdict import (
    ANALYSING,
    CHECK_FAILED,
    CHECKS_PASSED,
    HALTED,
    IDLE,
    NO_DATA,
    WAITING_FOR_DEPLOYMENT,
    WAITING_FOR_FIRST_VERSION,
    Analysis,
    Kind,
    Verdict,
    decide,
    needed_analysis,
)

log = logging.getLogger(__name__)

# Holds that only a watch event can end: the loop sleeps until one arrives.
_EVENT_DRIVEN = (WAITING_FOR_FIRST_VERSION, WAITING_FOR_DEPLOYMENT, HALTED, IDLE)
# Holds that say nothing new: no Event even when the reason changes to them.
_QUIET = (ANALYSING, CHECKS_PASSED)

_EVENTS = {
    Kind.START_SHADOW: ("Normal", "ShadowStarted"),
    Kind.REJECT: ("Warning", "Rejected"),
    Kind.START_CANARY: ("Normal", "CanaryStarted"),
    Kind.PROMOTE_STEP: ("Normal", "Promoted"),
    Kind.PROMOTE_FULL: ("Normal", "Promoted"),
    Kind.ROLLBACK: ("Warning", "RolledBack"),
    Kind.DEGRADE: ("Warning", "Degraded"),
    Kind.ABORT: ("Normal", "CanaryAborted"),
    Kind.RECOVER: ("Normal", "Recovered"),
}


def verdict_events(verdict: Verdict, state: RolloutState) -> list[Event]:
    """The Events a decision deserves. Pure.

    Every routing change gets one; a hold gets a "Held" Event only when its reason
    differs from the one stored, so a model waiting for data does not flood them.
    """
    if verdict.kind is Kind.HOLD:
        if verdict.reason == CHECK_FAILED:
            return [Event("Warning", "CheckFailed", verdict.message)]
        if verdict.reason in _QUIET or verdict.reason == state.reason:
            return []
        return [Event("Normal", "Held", f"{verdict.reason}: {verdict.message}")]
    if verdict.kind is Kind.DEGRADE and state.phase == "Degraded":
        return []  # still degraded: said already
    kind, reason = _EVENTS[verdict.kind]
    return [Event(kind, reason, verdict.message)]


@dataclass(frozen=True)
class StepResult:
    verdict: Verdict
    patch: dict[str, Any] | None
    events: list[Event]
    # Seconds until the next step, or None to sleep until a watch event.
    next_in_s: float | None


def plan_step(
    spec: RolloutSpec,
    status: Mapping[str, Any] | None,
    samples: MetricSamples | ComparisonSamples | None,
    now: dt.datetime,
    last_check: dt.datetime | None = None,
) -> StepResult:
    """One rollout step of one model, given the samples it asked for. Pure."""
    status = status or {}
    state = RolloutState.from_status(status, spec.generation).checked_at(last_check)
    verdict = decide(spec, state, samples, now)
    owned = apply_verdict(status, verdict, spec, now)
    patch = status_changes(status, owned)
    if patch is not None and verdict.kind is not Kind.HOLD:
        next_in: float | None = 0.0  # routing changed: look again at once, the next step may follow
    elif verdict.kind is Kind.HOLD and verdict.reason in _EVENT_DRIVEN:
        next_in = None
    else:
        next_in = verdict.recheck_after_s if verdict.recheck_after_s is not None else spec.interval_s
    return StepResult(verdict, patch, verdict_events(verdict, state), next_in)


def needed(
    spec: RolloutSpec,
    status: Mapping[str, Any] | None,
    now: dt.datetime,
    last_check: dt.datetime | None = None,
) -> Analysis | None:
    return needed_analysis(
        spec, RolloutState.from_status(status, spec.generation).checked_at(last_check), now
    )


@dataclass
class RolloutController:
    """The I/O around `plan_step`: read samples, write the status, post Events, count."""

    source: PrometheusSource | None
    patch_status: PatchStatus
    emit: EmitEvent
    now: Callable[[], dt.datetime] = utcnow
    # When each model was last checked against its metrics: at most one check per interval.
    last_checks: dict[tuple[str, str], dt.datetime] = field(default_factory=dict)

    async def samples_for(self, body: Mapping[str, Any], spec: RolloutSpec, version: str) -> MetricSamples:
        if self.source is None:
            return MetricSamples(
                version,
                spec.interval_s,
                error="the operator has no prometheusUrl, so canary analysis has no metrics "
                "(set GUARDEDMODEL_PROMETHEUS_URL, or use spec.rollout.strategy: instant)",
            )
        meta = body["metadata"]
        found = await fetch_samples(self.source, meta["namespace"], meta["name"], (version,), spec.interval_s)
        return found[version]

    async def comparison_for(
        self, body: Mapping[str, Any], version: str, state: RolloutState, now: dt.datetime
    ) -> ComparisonSamples:
        baseline = state.stable or ""
        if self.source is None:
            return ComparisonSamples(
                version,
                baseline,
                error="the operator has no prometheusUrl, so shadow and replay have no figures "
                "(set GUARDEDMODEL_PROMETHEUS_URL, or remove spec.rollout.shadow and replay)",
            )
        # Everything compared since the shadow phase began, and a little before (scrape delay).
        since_s = (now - state.since).total_seconds() if state.since is not None else 0.0
        meta = body["metadata"]
        return await fetch_comparison(
            self.source, meta["namespace"], meta["name"], version, baseline, since_s + 30.0
        )

    async def step(self, body: Mapping[str, Any]) -> tuple[StepResult, dict[str, Any] | None]:
        """One step; returns the result and the object the API server returned, if written."""
        now = self.now()
        spec = RolloutSpec.from_body(body)  # parsed once per step
        status = body.get("status")
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        last_check = self.last_checks.get(key)
        analysis = needed(spec, status, now, last_check)
        samples: MetricSamples | ComparisonSamples | None = None
        if analysis is not None and analysis.comparison:
            state = RolloutState.from_status(status, spec.generation)
            samples = await self.comparison_for(body, analysis.version, state, now)
        elif analysis is not None:
            samples = await self.samples_for(body, spec, analysis.version)
        result = plan_step(spec, status, samples, now, last_check)
        written = None
        if result.patch is not None:
            try:
                # Only onto the copy decided on: the patch carries the whole history.
                written = await self.patch_status(
                    meta["namespace"], meta["name"], result.patch, meta.get("resourceVersion")
                )
            except ApiError as error:
                if error.status != CONFLICT:
                    raise
                # The model changed since this copy was read (a user's edit, or the write of an
                # operator process that was replaced): the decision is void, nothing was written.
                # The watch event of the newer copy wakes the next step, which decides on it.
                log.info("%s/%s changed while deciding; deciding again on the newer copy", *key)
                return replace(result, patch=None, events=[], next_in_s=None), None
        if analysis is not None and result.verdict.recheck_after_s is None:
            # (a check asking to look again soon, for a figure a scrape away, does not count)
            self.last_checks[key] = now
        metrics.count(meta["namespace"], meta["name"], result.verdict)
        for event in result.events:
            self.emit(body, event)
        if result.verdict.kind is not Kind.HOLD or result.verdict.reason in (CHECK_FAILED, NO_DATA):
            log.info("%s/%s: %s", meta["namespace"], meta["name"], result.verdict.message)
        return result, written
