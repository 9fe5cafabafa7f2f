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

from ..clock import format_time, utcnow
from ..events import EmitEvent, Event
from ..kube import CONFLICT, ApiError, PatchStatus
from ..prometheus import PrometheusSource
from . import metrics
from .comparison import ComparisonSamples
from .comparison_source import fetch_comparison
from .cost import cost_patch, fetch_cost, prices_of
from .metrics_source import fetch_samples
from .outcome import apply_verdict, metrics_available, status_changes
from .types import MetricSamples, RolloutSpec, RolloutState
from .verdict import (
    ABORTED,
    ANALYSING,
    CHECK_FAILED,
    CHECKS_PASSED,
    HALTED,
    IDLE,
    INCONCLUSIVE,
    METRICS_UNAVAILABLE,
    NO_DATA_HOLDS,
    PROMOTED_BY_HAND,
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
    differs from the one stored, so a model waiting for data does not flood them. A stable version
    unchecked past noDataTimeout gets a Warning (MetricsUnavailable), a canary or shadow given up
    for lack of data another (Inconclusive), and the first check with data after a hold for lack of
    data a Normal MetricsAvailable before what that check decided.
    """
    events = _decision_events(verdict, state)
    if (verdict.checked or verdict.data_missing is False) and state.no_data_since is not None:
        back = f"a check of version {verdict.version} had data again, the first since {format_time(state.no_data_since)}"
        events.insert(0, Event("Normal", "MetricsAvailable", back))
    return events


def _decision_events(verdict: Verdict, state: RolloutState) -> list[Event]:
    if verdict.kind is Kind.HOLD:
        if verdict.reason == CHECK_FAILED:
            return [Event("Warning", "CheckFailed", verdict.message)]
        if verdict.reason in _QUIET or verdict.reason == state.reason:
            return []
        if verdict.reason == METRICS_UNAVAILABLE:
            return [Event("Warning", METRICS_UNAVAILABLE, verdict.message)]
        return [Event("Normal", "Held", f"{verdict.reason}: {verdict.message}")]
    if verdict.kind is Kind.DEGRADE and state.phase == "Degraded":
        return []  # still degraded: said already
    if verdict.reason == INCONCLUSIVE:
        return [Event("Warning", INCONCLUSIVE, verdict.message)]
    if verdict.reason in (ABORTED, PROMOTED_BY_HAND):  # a person's order, carried out
        return [Event("Normal", verdict.reason, verdict.message)]
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
    conditions = metrics_available(status, verdict, owned["rollout"], spec.generation, now)
    if conditions is not None:
        patch = {**(patch or {}), "conditions": conditions}
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


@dataclass(frozen=True)
class Measured:
    """Samples read for one analysis, before the step that uses them."""

    analysis: Analysis
    samples: MetricSamples | ComparisonSamples
    # status.cost read with them, and the spec.cost prices it was computed at
    cost: Mapping[str, Any] | None = None
    prices: Mapping[str, Any] | None = None

    def answers(self, analysis: Analysis) -> bool:
        """They measured what `analysis` needs: the same version, in the same role."""
        mine = self.analysis
        return (mine.version, mine.canary, mine.comparison) == (
            analysis.version,
            analysis.canary,
            analysis.comparison,
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

    async def measure(self, body: Mapping[str, Any]) -> Measured | None:
        """The samples the next step of this model will need, read now, or None when it needs none.

        The wiring calls this before it takes the model's lock, so that a slow or hung Prometheus
        (each query bounded by the operator's Prometheus timeout) delays no other work on the model."""
        now = self.now()
        spec = RolloutSpec.from_body(body)
        meta = body["metadata"]
        analysis = needed(
            spec, body.get("status"), now, self.last_checks.get((meta["namespace"], meta["name"]))
        )
        if analysis is None:
            return None
        samples = await self._read(body, spec, analysis, now)
        prices = prices_of(body.get("spec") or {})
        return Measured(analysis, samples, await self._cost(body, spec, prices), prices)

    async def _read(
        self, body: Mapping[str, Any], spec: RolloutSpec, analysis: Analysis, now: dt.datetime
    ) -> MetricSamples | ComparisonSamples:
        if analysis.comparison:
            state = RolloutState.from_status(body.get("status"), spec.generation)
            return await self.comparison_for(body, analysis.version, state, now)
        return await self.samples_for(body, spec, analysis.version)

    async def step(
        self, body: Mapping[str, Any], measured: Measured | None = None
    ) -> tuple[StepResult, dict[str, Any] | None]:
        """One step; returns the result and the object the API server returned, if written.
        `measured`: samples read before (`measure`), used when they answer what this step needs."""
        now = self.now()
        spec = RolloutSpec.from_body(body)  # parsed once per step
        status = body.get("status")
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        last_check = self.last_checks.get(key)
        analysis = needed(spec, status, now, last_check)
        samples: MetricSamples | ComparisonSamples | None = None
        if analysis is not None and measured is not None and measured.answers(analysis):
            samples = measured.samples
        elif analysis is not None:  # the model changed since (or nothing was read before)
            samples = await self._read(body, spec, analysis, now)
            measured = None
        result = plan_step(spec, status, samples, now, last_check)
        if analysis is not None:
            result = await self._with_cost(body, spec, result, measured)
        if analysis is not None and result.verdict.recheck_after_s is None:
            # (a check asking to look again soon, for a figure a scrape away, does not count)
            self.last_checks[key] = now
        written = None
        if result.patch is not None:
            try:
                # Only onto the copy it was decided on: a decision taken on a stale copy (its watch
                # was down, or behind) is refused by the API server rather than written.
                written = await self.patch_status(
                    meta["namespace"],
                    meta["name"],
                    result.patch,
                    resource_version=meta.get("resourceVersion"),
                )
            except ApiError as error:
                if error.status != CONFLICT:
                    raise
                return self._stale(key, spec, result), None
        metrics.count(meta["namespace"], meta["name"], result.verdict)
        for event in result.events:
            self.emit(body, event)
        if result.verdict.kind is not Kind.HOLD or result.verdict.reason in (CHECK_FAILED, *NO_DATA_HOLDS):
            log.info("%s/%s: %s", meta["namespace"], meta["name"], result.verdict.message)
        return result, written

    async def _cost(
        self, body: Mapping[str, Any], spec: RolloutSpec, prices: Mapping[str, Any] | None
    ) -> Mapping[str, Any] | None:
        """status.cost as Prometheus has it now, at `prices`; None without prices or figures."""
        if prices is None or self.source is None:
            return None
        meta = body["metadata"]
        return await fetch_cost(self.source, meta["namespace"], meta["name"], prices, spec.interval_s)

    async def _with_cost(
        self, body: Mapping[str, Any], spec: RolloutSpec, result: StepResult, measured: Measured | None
    ) -> StepResult:
        """status.cost read at the same checks as the metrics (with them, before the lock, when the
        prices did not change since), added to the step's write when it moved."""
        prices = prices_of(body.get("spec") or {})
        if measured is not None and measured.prices == prices:
            fresh = measured.cost
        else:
            fresh = await self._cost(body, spec, prices)
        patch = cost_patch(body.get("status"), prices, fresh)
        if patch is None:
            return result
        return replace(result, patch={**(result.patch or {}), **patch})

    def _stale(self, key: tuple[str, str], spec: RolloutSpec, result: StepResult) -> StepResult:
        """The model changed since the copy this step decided on: drop the decision (no write, no
        Event) and the check it counted, and decide again on the newer copy when the watch brings it
        (at the latest an interval from now)."""
        self.last_checks.pop(key, None)
        metrics.STALE_DECISIONS.inc()
        log.warning(
            "%s/%s changed since the copy this step decided on (%s): not written; deciding again on "
            "the newer copy",
            *key,
            result.verdict.message,
        )
        return replace(result, patch=None, events=[], next_in_s=spec.interval_s)
