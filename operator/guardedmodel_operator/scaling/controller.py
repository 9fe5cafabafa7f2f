"""The scaler: observe → decide → write, once per scaled model per interval.

It reads Triton's queue time for the model from Prometheus (the sidecars republish Triton's
counters), asks the pure policy for a replica count and writes it to ``status.scaling``; the core's
reconcile then renders it into the Deployment's replicas. One writer per object: the scaler writes
status, the core writes children, as the rollout controller does for routing.

Why not a HorizontalPodAutoscaler on a custom metric: that needs a metrics adapter in the cluster
(prometheus-adapter or KEDA) to be installed and configured for this series. The operator already
reads Prometheus for canary analysis, so scaling here adds no dependency, and the decision shows up
on the GuardedModel (status.scaling, Events) where the rest of the model's story is.

The recommendations of the scale-down window live in memory: after an operator restart a scale-down
waits one full window again, which errs on the side of capacity.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..clock import utcnow
from ..events import EmitEvent, Event
from ..keys import Key, key_of
from ..kube import PatchStatus
from ..prometheus import MetricsUnavailable, PrometheusSettings, PrometheusSource, model_range
from .policy import (
    SCALED_DOWN,
    SCALED_UP,
    QueueSample,
    Recommendation,
    ScaleSpec,
    ScaleVerdict,
    current_replicas,
    decide,
    scaling_status,
)

# The sidecar's names for Triton's counters (the operator must not import the sidecar package).
QUEUE_SECONDS = "guardedmodel_triton_queue_seconds_total"
TRITON_REQUESTS = "guardedmodel_triton_requests_total"


def queries(settings: PrometheusSettings, namespace: str, name: str, window_s: float) -> dict[str, str]:
    """Queue seconds and requests per second over the window, all pods and versions summed. Pure."""
    sel, w = model_range(settings, namespace, name, window_s)
    return {
        "queue": f"sum(rate({QUEUE_SECONDS}{{{sel}}}[{w}]))",
        "requests": f"sum(rate({TRITON_REQUESTS}{{{sel}}}[{w}]))",
    }


def sample_from_results(results: Mapping[str, list[dict[str, Any]]]) -> QueueSample:
    """No request series is no data; a request rate of 0 is no traffic. Pure."""
    requests, queue = results.get("requests") or [], results.get("queue") or []
    if not requests:
        return QueueSample()
    rate = float(requests[0]["value"][1])
    if not math.isfinite(rate) or rate <= 0:
        return QueueSample(requests_per_s=0.0)
    seconds = float(queue[0]["value"][1]) if queue else math.nan
    if not math.isfinite(seconds):
        return QueueSample(requests_per_s=rate)
    return QueueSample(queue_ms=1000.0 * seconds / rate, requests_per_s=rate)


def scale_events(verdict: ScaleVerdict) -> list[Event]:
    if verdict.reason in (SCALED_UP, SCALED_DOWN) and verdict.changed:
        return [Event("Normal", verdict.reason, verdict.message)]
    return []


@dataclass
class ScaleController:
    source: PrometheusSource | None
    patch_status: PatchStatus
    emit: EmitEvent
    interval_s: float
    down_window_s: float
    now: Callable[[], dt.datetime] = utcnow
    history: dict[Key, list[Recommendation]] = field(default_factory=dict)

    async def sample(self, namespace: str, name: str) -> QueueSample:
        if self.source is None:
            return QueueSample(
                error="the operator has no prometheusUrl, so there is no queue time to scale on "
                "(set GUARDEDMODEL_PROMETHEUS_URL)"
            )
        window = self.source.window_s(self.interval_s)
        promql = queries(self.source.settings, namespace, name, window)
        try:
            answers = await asyncio.gather(*(self.source.query(q) for q in promql.values()))
        except MetricsUnavailable as error:
            return QueueSample(error=str(error))
        return sample_from_results(dict(zip(promql, answers, strict=True)))

    def forget(self, key: Key) -> None:
        self.history.pop(key, None)

    async def step(self, body: Mapping[str, Any]) -> tuple[ScaleVerdict | None, dict[str, Any] | None]:
        """One decision; returns it and the object the API server returned, if written."""
        key = key_of(body)
        spec = ScaleSpec.from_body(body)
        if not spec.enabled:
            self.forget(key)
            return None, None
        status = body.get("status") or {}
        sample = await self.sample(*key)
        now = self.now()
        verdict = decide(
            current_replicas(status, spec), spec, sample, self.history.get(key, []), now, self.down_window_s
        )
        self.history[key] = list(verdict.recommendations)
        patch = scaling_status(status, verdict, sample, now)
        written = None
        if patch is not None:
            written = await self.patch_status(key[0], key[1], {"scaling": patch})
        for event in scale_events(verdict):
            self.emit(body, event)
        return verdict, written
