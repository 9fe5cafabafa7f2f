"""The scaling policy: (replicas, spec, queue-time sample, recent recommendations, now) → replicas.

Pure, no I/O. The signal is the mean time a request waits in Triton's queue before it runs: the
first thing to grow when the model's GPUs cannot keep up, and independent of how long one
inference takes (unlike end-to-end latency). The rules, after the Horizontal Pod Autoscaler's:

- recommendation = ceil(replicas * observed / target), clamped to [min, max]; within 10 % of the
  target nothing changes (no flapping around the target);
- a scale-up applies at once but at most doubles the replicas per step (the new pods need time to
  load the model before the queue can drain);
- a scale-down applies the highest recommendation of the last ``down_window_s`` (a burst that ended
  a minute ago still counts), so the replica count falls only after the load has stayed low;
- no traffic at all recommends ``min``; no data (Prometheus silent, the sidecars not reporting yet)
  recommends nothing: the replica count holds, it never falls for lack of data.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..clock import format_time
from ..spec import with_defaults

TOLERANCE = 0.1
MAX_RECOMMENDATIONS = 64

SCALED_UP = "ScaledUp"
SCALED_DOWN = "ScaledDown"
STEADY = "Steady"
NO_DATA = "NoData"


@dataclass(frozen=True)
class ScaleSpec:
    min_replicas: int
    max_replicas: int
    target_queue_ms: float

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ScaleSpec:
        spec = with_defaults(body.get("spec") or {})
        return cls(
            int(spec["replicas"]["min"]),
            int(spec["replicas"]["max"]),
            float(spec["scaling"]["targetQueueTimeMs"]),
        )

    @property
    def enabled(self) -> bool:
        return self.max_replicas > self.min_replicas

    def clamp(self, replicas: int) -> int:
        return max(self.min_replicas, min(self.max_replicas, replicas))


@dataclass(frozen=True)
class QueueSample:
    """Triton queue time over the window, all pods and versions of the model together."""

    queue_ms: float | None = None  # mean wait per request; None = no data
    requests_per_s: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class Recommendation:
    at: dt.datetime
    replicas: int


@dataclass(frozen=True)
class ScaleVerdict:
    replicas: int  # what the Deployment should run
    previous: int
    reason: str
    message: str
    recommendations: tuple[Recommendation, ...]
    # At spec.replicas.max while the queue time is still above target: more replicas would
    # help but are not allowed (an SRE alert: raise max or add GPUs).
    saturated: bool = False

    @property
    def changed(self) -> bool:
        return self.replicas != self.previous


def recommend(replicas: int, spec: ScaleSpec, sample: QueueSample) -> int | None:
    """What the queue time asks for on its own, or None when there is nothing to go on."""
    if sample.error is not None or sample.requests_per_s is None:
        return None
    if sample.requests_per_s <= 0:
        return spec.min_replicas
    if sample.queue_ms is None:
        return None
    ratio = sample.queue_ms / spec.target_queue_ms
    if abs(ratio - 1.0) <= TOLERANCE:
        return spec.clamp(replicas)
    wanted = math.ceil(replicas * ratio)
    if wanted > replicas:
        wanted = min(wanted, max(2 * replicas, replicas + 1))
    return spec.clamp(wanted)


def decide(
    replicas: int,
    spec: ScaleSpec,
    sample: QueueSample,
    history: Sequence[Recommendation],
    now: dt.datetime,
    down_window_s: float,
) -> ScaleVerdict:
    current = spec.clamp(replicas)
    since = now - dt.timedelta(seconds=down_window_s)
    kept = [r for r in history if r.at > since][-(MAX_RECOMMENDATIONS - 1) :]
    wanted = recommend(current, spec, sample)
    observed = _observed(sample, spec)
    if wanted is None:
        why = sample.error or "no queue-time series for this model yet"
        return ScaleVerdict(current, replicas, NO_DATA, f"holding {current} replicas: {why}", tuple(kept))
    kept.append(Recommendation(now, wanted))
    over = sample.queue_ms is not None and sample.queue_ms > spec.target_queue_ms * (1.0 + TOLERANCE)
    saturated = over and wanted >= spec.max_replicas
    if saturated and wanted <= current:
        return ScaleVerdict(
            current,
            replicas,
            STEADY,
            f"{observed}: at the maximum of {spec.max_replicas} replicas",
            tuple(kept),
            saturated=True,
        )
    if wanted > current:
        return ScaleVerdict(
            wanted,
            replicas,
            SCALED_UP,
            f"{observed}: {current} → {wanted} replicas",
            tuple(kept),
            saturated=saturated and wanted == spec.max_replicas and _needs_more(current, spec, sample),
        )
    settled = max(r.replicas for r in kept)
    if settled < current:
        return ScaleVerdict(
            settled,
            replicas,
            SCALED_DOWN,
            f"{observed} for {down_window_s:g}s: {current} → {settled} replicas",
            tuple(kept),
        )
    return ScaleVerdict(current, replicas, STEADY, f"{observed}: {current} replicas", tuple(kept))


def _needs_more(current: int, spec: ScaleSpec, sample: QueueSample) -> bool:
    """Would the queue time ask for more than max even from here (not just the step limit)?"""
    assert sample.queue_ms is not None
    return math.ceil(current * sample.queue_ms / spec.target_queue_ms) > spec.max_replicas


def _observed(sample: QueueSample, spec: ScaleSpec) -> str:
    if sample.requests_per_s is not None and sample.requests_per_s <= 0:
        return "no traffic"
    if sample.queue_ms is None:
        return "no queue time"
    return f"Triton queue time {sample.queue_ms:.1f} ms (target {spec.target_queue_ms:g} ms)"


# ------------------------------------------------------------------------------- status


def current_replicas(status: Mapping[str, Any], spec: ScaleSpec) -> int:
    """The replica count the scaler last set, else what the Deployment runs, else min."""
    scaling = status.get("scaling") or {}
    for value in (scaling.get("desiredReplicas"), status.get("replicas")):
        if isinstance(value, int) and value > 0:
            return spec.clamp(value)
    return spec.min_replicas


def scaling_status(
    status: Mapping[str, Any], verdict: ScaleVerdict, sample: QueueSample, now: dt.datetime
) -> dict[str, Any] | None:
    """The `scaling` status field for this verdict, or None when neither the replica count nor
    the reason changed: a model at steady load costs no status write per interval."""
    old = status.get("scaling") or {}
    if old.get("desiredReplicas") == verdict.replicas and old.get("reason") == verdict.reason:
        return None
    new: dict[str, Any] = {
        "desiredReplicas": verdict.replicas,
        "reason": verdict.reason,
        "message": verdict.message,
        "queueTimeMs": None if sample.queue_ms is None else round(sample.queue_ms, 3),
    }
    last = format_time(now) if verdict.changed else old.get("lastScaleTime")
    if last:
        new["lastScaleTime"] = last
    return new
