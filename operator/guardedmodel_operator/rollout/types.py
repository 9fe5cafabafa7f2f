"""The typed inputs of the rollout policy, parsed from the GuardedModel's spec and status."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from ..clock import parse_duration, parse_time
from ..spec import with_defaults
from ..status import Routing
from .commands import Orders
from .comparison import ComparisonSpec

DEFAULT_MIN_REQUESTS = 20
DEFAULT_NO_DATA_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Thresholds:
    """A check fails when any threshold that is set breaks; unset ones are not checked."""

    max_ood_rate: float | None = None
    max_review_rate: float | None = None
    min_estimated_accuracy: float | None = None
    max_drift_score: float | None = None
    max_error_rate: float | None = None
    max_p99_latency_ms: float | None = None

    @classmethod
    def from_spec(cls, raw: Mapping[str, Any] | None) -> Thresholds:
        raw = raw or {}
        values = {}
        for f in fields(cls):
            value = raw.get(_camel(f.name))
            values[f.name] = None if value is None else float(value)
        return cls(**values)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


# threshold field → (spec key, MetricSamples field, "max" or "min", how to print the value)
THRESHOLD_METRICS: tuple[tuple[str, str, str, str], ...] = (
    ("max_ood_rate", "ood_rate", "max", "{:.3f}"),
    ("max_review_rate", "review_rate", "max", "{:.3f}"),
    ("min_estimated_accuracy", "estimated_accuracy", "min", "{:.3f}"),
    ("max_drift_score", "drift_score", "max", "{:.3f}"),
    ("max_error_rate", "error_rate", "max", "{:.3f}"),
    ("max_p99_latency_ms", "p99_latency_ms", "max", "{:.1f}"),
)


@dataclass(frozen=True)
class RolloutSpec:
    """spec.rollout plus the facts of the object the policy needs: the version the user asks for,
    the generation of that request, and the orders a person gave the canary (annotations)."""

    version: str
    generation: int = 0
    strategy: str = "canary"
    steps: tuple[int, ...] = (10, 50, 100)
    interval_s: float = 30.0
    failure_limit: int = 1
    auto_rollback: bool = True
    continuous_guard: bool = True
    min_requests: int = DEFAULT_MIN_REQUESTS
    # How long a rollout step may hold for lack of data (no conclusive check) before a canary or
    # shadow is given up as inconclusive; the stable version is never rolled back for it.
    no_data_timeout_s: float = DEFAULT_NO_DATA_TIMEOUT_S
    thresholds: Thresholds = Thresholds(max_ood_rate=0.25, max_error_rate=0.05)
    comparison: ComparisonSpec = field(default_factory=ComparisonSpec)
    orders: Orders = field(default_factory=Orders)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> RolloutSpec:
        """From a whole GuardedModel; the CRD's defaults fill what is missing,
        as the API server would."""
        spec = with_defaults(body.get("spec") or {})
        rollout = spec.get("rollout") or {}
        steps = tuple(sorted(int(s) for s in rollout.get("steps") or (10, 50, 100)))
        return cls(
            version=str((spec.get("model") or {}).get("version", "")),
            generation=int((body.get("metadata") or {}).get("generation") or 0),
            strategy=str(rollout.get("strategy", "canary")),
            steps=steps,
            interval_s=parse_duration(rollout.get("interval", "30s")),
            failure_limit=int(rollout.get("failureLimit", 1)),
            auto_rollback=bool(rollout.get("autoRollback", True)),
            continuous_guard=bool(rollout.get("continuousGuard", True)),
            min_requests=int(rollout.get("minRequests", DEFAULT_MIN_REQUESTS)),
            no_data_timeout_s=parse_duration(rollout.get("noDataTimeout", "10m")),
            thresholds=Thresholds.from_spec(rollout.get("thresholds")),
            comparison=ComparisonSpec.from_rollout(rollout),
            orders=Orders.from_annotations((body.get("metadata") or {}).get("annotations")),
        )

    @property
    def failures_to_act(self) -> int:
        # failureLimit 0 and 1 both mean "act on the first failed check".
        return max(1, self.failure_limit)


@dataclass(frozen=True)
class RolloutState:
    """The routing and bookkeeping the rollout controller owns in the status."""

    stable: str | None = None
    canary: str | None = None
    weight: int = 0
    last_good: str | None = None
    shadow: str | None = None  # the candidate under shadow / replay (status.shadow.version)
    phase: str | None = None  # the rollout's own view: Progressing | Ready | Degraded | RolledBack
    reason: str | None = None
    failed_checks: int = 0
    since: dt.datetime | None = None  # last routing change or failed check
    # The first check of the current run of checks without data (None: the last check had data).
    no_data_since: dt.datetime | None = None
    blocked_version: str | None = None  # rolled back or halted; not retried until the spec changes
    blocked_generation: int | None = None
    # The core's view of the Deployment: the pods for this generation are rolled out.
    deployment_ready: bool = False

    @classmethod
    def from_status(cls, status: Mapping[str, Any] | None, generation: int) -> RolloutState:
        status = status or {}
        rollout = status.get("rollout") or {}
        routing = Routing.from_status(status)
        ready: Mapping[str, Any] = next(
            (c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {}
        )
        blocked_generation = rollout.get("blockedGeneration")
        return cls(
            stable=routing.stable_version,
            canary=routing.canary_version,
            weight=routing.canary_weight,
            last_good=_str_or_none(status.get("lastGoodVersion")),
            shadow=_str_or_none((status.get("shadow") or {}).get("version")),
            phase=rollout.get("phase"),
            reason=rollout.get("reason"),
            failed_checks=int(rollout.get("failedChecks") or 0),
            since=parse_time(rollout.get("since")),
            no_data_since=parse_time(rollout.get("noDataSince")),
            blocked_version=_str_or_none(rollout.get("blockedVersion")),
            blocked_generation=None if blocked_generation is None else int(blocked_generation),
            deployment_ready=(
                ready.get("status") == "True"
                and ready.get("reason") == "RolloutComplete"
                and int(status.get("observedGeneration") or -1) == generation
            ),
        )

    def checked_at(self, at: dt.datetime | None) -> RolloutState:
        """The analysis clock counts the last check this operator ran too. A passing check writes
        nothing (a steady state costs no write), so only the controller's memory has its time;
        without it a model woken by any event would be checked again at once."""
        if at is None or (self.since is not None and self.since >= at):
            return self
        return replace(self, since=at)

    def blocks(self, version: str | None, generation: int) -> bool:
        return (
            version is not None and self.blocked_version == version and self.blocked_generation == generation
        )


def _str_or_none(value: Any) -> str | None:
    return None if value in (None, "") else str(value)


@dataclass(frozen=True)
class MetricSamples:
    """What one model version did over the check window; None = no data for that figure."""

    version: str
    window_s: float
    requests: float | None = None
    ood_rate: float | None = None
    review_rate: float | None = None
    reject_rate: float | None = None
    estimated_accuracy: float | None = None
    drift_score: float | None = None  # largest PSI of the drift windows in the check window
    # The sidecar's drift test over the drift windows in the check window: 1 when any was drifted,
    # 0 when all that had enough rows were stable, None when none had (insufficient data).
    drift_detected: float | None = None
    drift_p_value: float | None = None  # smallest window p-value
    drifted_score: float | None = None  # largest PSI among the windows the test called drifted
    error_rate: float | None = None
    p99_latency_ms: float | None = None
    # The sidecars' guardedmodel_version_loaded for this version, least over pods: 0 = a pod routes
    # it but has not loaded it (Triton refused it, or it is still loading); None = not reported.
    loaded: float | None = None
    # Error rate and latency come from model-wide series when the sidecar does
    # not split them by version; the verdict says so.
    model_wide: tuple[str, ...] = ()
    # Why there are no samples at all (metrics source unreachable or not configured).
    error: str | None = None

    @property
    def requests_per_second(self) -> float | None:
        if self.requests is None or self.window_s <= 0:
            return None
        return self.requests / self.window_s

    def value(self, name: str) -> float | None:
        value = getattr(self, name)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        return float(value)

    @property
    def drift_decision(self) -> str | None:
        """drifted | stable, or None: no drift window in the check window had enough rows to test."""
        detected = self.value("drift_detected")
        if detected is None:
            return None
        return DRIFTED if detected >= 0.5 else STABLE


DRIFTED, STABLE, INSUFFICIENT_DATA = "drifted", "stable", "insufficientData"


@dataclass(frozen=True)
class Breach:
    threshold: str  # the spec's name, e.g. maxOodRate
    measured: float
    limit: float
    text: str  # "oodRate 0.412 > maxOodRate 0.25"


def breaches(spec: RolloutSpec, samples: MetricSamples) -> tuple[list[Breach], list[str]]:
    """Thresholds broken, and thresholds set whose figure has no data."""
    broken, missing = [], []
    for field_name, metric, sense, fmt in THRESHOLD_METRICS:
        limit = getattr(spec.thresholds, field_name)
        if limit is None:
            continue
        spec_name = _camel(field_name)
        if field_name == "max_drift_score":
            if samples.drift_decision is None:
                missing.append(f"{spec_name} (no drift window with spec.drift.minSamples rows to test)")
            elif drift_psi_pending(samples):
                # The test's decision arrived, the PSI of that window not yet (it was scraped less than
                # a subquery step ago): a check must not pass on half a figure.
                missing.append(f"{spec_name} (a window was called drifted; its PSI is not in yet)")
            elif (breach := drift_breach(samples, limit)) is not None:
                broken.append(breach)
            continue
        measured = samples.value(metric)
        if measured is None:
            missing.append(spec_name)
            continue
        if (measured > limit) if sense == "max" else (measured < limit):
            scope = " (all versions)" if metric in samples.model_wide else ""
            sign = ">" if sense == "max" else "<"
            text = f"{_camel(metric)}{scope} {fmt.format(measured)} {sign} {spec_name} {limit:g}"
            broken.append(Breach(spec_name, measured, limit, text))
    return broken, missing


def drift_psi_pending(samples: MetricSamples) -> bool:
    """The drift test called a window drifted, and the PSI of that window is not in Prometheus yet:
    it is a scrape away, so the check is worth repeating within seconds, not an interval later."""
    return samples.drift_decision == DRIFTED and samples.value("drifted_score") is None


def drift_breach(samples: MetricSamples, limit: float) -> Breach | None:
    """maxDriftScore breaks only when the sidecar's test called a window drifted (p <= alpha: not
    noise) and that window's PSI is above the limit (a shift large enough to matter)."""
    if samples.drift_decision != DRIFTED:
        return None
    measured = samples.value("drifted_score")
    if measured is None or measured <= limit:
        return None
    p_value = samples.value("drift_p_value")
    evidence = "drift detected" if p_value is None else f"drift detected (p {p_value:.2g})"
    return Breach(
        "maxDriftScore", measured, limit, f"{evidence}, driftScore {measured:.3f} > maxDriftScore {limit:g}"
    )
