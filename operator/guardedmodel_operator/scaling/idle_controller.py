"""The idle watch: observe → decide → write, once per model per interval.

It asks Prometheus how many requests the model's sidecars counted over the last idleAfter, asks
the pure `idle.decide` whether that makes the model idle, and writes the Idle condition only when
it changes, with an Event on each flip. It runs for every model whose idleAfter is not 0s, scaled or
not: a model pinned at replicas.min = replicas.max holds its GPUs as much as any.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..clock import format_time, utcnow
from ..events import EmitEvent, Event
from ..keys import key_of
from ..kube import PatchStatus
from ..prometheus import (
    MetricsUnavailable,
    PrometheusSettings,
    PrometheusSource,
    increase_counting_new,
    model_range,
)
from ..status import Condition
from .idle import IdleSpec, TrafficSample, created_at, decide, idle_condition, idle_conditions, is_idle

# The sidecar's name (the operator must not import the sidecar package, nor scaling the rollout's).
REQUESTS = "guardedmodel_requests_total"


def requests_query(settings: PrometheusSettings, namespace: str, name: str, window_s: float) -> str:
    """Requests over the window, all pods and versions summed. Pure.

    increase() cannot see a series' first value, so a series born inside the window (a new pod, a
    new version) counts whole; the sidecar creates its request series at 0 when it loads a version.
    """
    sel, w = model_range(settings, namespace, name, window_s)
    return f"sum({increase_counting_new(REQUESTS, sel, w)})"


def sample_from_result(result: list[dict[str, Any]]) -> TrafficSample:
    """An empty answer: Prometheus has no request series for the model. Pure."""
    if not result:
        return TrafficSample()
    value = float(result[0]["value"][1])
    if math.isnan(value):
        return TrafficSample(error="Prometheus answered NaN requests")
    return TrafficSample(requests=value)


def idle_events(previous: Mapping[str, Any] | None, value: Condition) -> list[Event]:
    """Normal "Idle" when a model becomes idle, "Active" when an idle one serves again."""
    if is_idle(value) and not is_idle(previous):
        return [Event("Normal", "Idle", value[2])]
    if is_idle(previous) and not is_idle(value):
        return [Event("Normal", "Active", value[2])]
    return []


@dataclass(frozen=True)
class IdleOutcome:
    enabled: bool
    idle: bool | None  # None: not known yet (no data since the model was first watched)
    message: str = ""
    conditions: list[dict[str, Any]] | None = None  # the whole list to write; None: no write
    events: tuple[Event, ...] = ()
    held_for_lack_of_data: bool = False

    @property
    def changed(self) -> bool:
        return self.conditions is not None


def plan(
    spec: IdleSpec, body: Mapping[str, Any], sample: TrafficSample | None, now: dt.datetime
) -> IdleOutcome:
    """What one step writes and posts, from the spec, the stored status and the sample. Pure."""
    status = body.get("status") or {}
    previous = idle_condition(status)
    generation = int(body["metadata"].get("generation") or 0)
    if not spec.enabled or sample is None:
        return IdleOutcome(
            False,
            None,
            "idle detection is off (idleAfter 0s)",
            idle_conditions(status, None, generation, format_time(now)),
        )
    value = decide(spec, sample, created_at(body), now)
    if value is None:
        held = None if previous is None else is_idle(previous)
        message = f"no data, the Idle condition keeps its last value: {sample.error}"
        return IdleOutcome(True, held, message, held_for_lack_of_data=True)
    conditions = idle_conditions(status, value, generation, format_time(now))
    events = tuple(idle_events(previous, value)) if conditions is not None else ()
    return IdleOutcome(True, is_idle(value), value[2], conditions, events)


@dataclass
class IdleController:
    source: PrometheusSource | None
    patch_status: PatchStatus
    emit: EmitEvent
    now: Callable[[], dt.datetime] = utcnow

    async def sample(self, namespace: str, name: str, idle_after_s: float) -> TrafficSample:
        if self.source is None:
            return TrafficSample(
                error="the operator has no prometheusUrl, so there are no request counts to go on "
                "(set GUARDEDMODEL_PROMETHEUS_URL)"
            )
        window = self.source.window_s(idle_after_s)
        try:
            result = await self.source.query(requests_query(self.source.settings, namespace, name, window))
        except MetricsUnavailable as error:
            return TrafficSample(error=str(error))
        return sample_from_result(result)

    async def step(self, body: Mapping[str, Any]) -> tuple[IdleOutcome, dict[str, Any] | None]:
        """One decision; returns it and the object the API server returned, if written."""
        namespace, name = key_of(body)
        spec = IdleSpec.from_body(body)
        sample = await self.sample(namespace, name, spec.idle_after_s) if spec.enabled else None
        outcome = plan(spec, body, sample, self.now())
        written = None
        if outcome.conditions is not None:
            written = await self.patch_status(namespace, name, {"conditions": outcome.conditions})
        for event in outcome.events:
            self.emit(body, event)
        return outcome, written
