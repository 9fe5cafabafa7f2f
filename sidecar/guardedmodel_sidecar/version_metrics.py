"""What the sidecar counts for one model version: decisions, scores, latency, drift windows.

The hot path only bumps Python ints and copies a batch's scores into a preallocated buffer; the
buffers are binned into histograms and drift counts in bulk (when full, at each window's end and at
scrape time), so per-sample metrics cost no per-sample Python work. Everything runs on the event
loop thread, so no locks are needed. ``metrics.SidecarMetrics`` exports these at scrape time.

Drift windows (``guard.drift_decision``): a time window is closed from outside (the app's timer calls
``close_window``); a row-count window (``DriftPolicy.window_rows``) closes itself on the request that
brings it to at least that many rows, so it may overshoot by the rest of that one batch. The count
costs the hot path one integer comparison. Each closed window is tested (drifted / stable /
insufficient), counted, kept as ``last_window`` and handed to ``on_window`` when one is set.
"""

from __future__ import annotations

import bisect
import math
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from guardedmodel_sidecar.config_spec import DriftSpec
from guardedmodel_sidecar.decision import DECISIONS
from guardedmodel_sidecar.guard.drift import DriftAccumulator, DriftCounts
from guardedmodel_sidecar.guard.drift_decision import Decision, DriftPolicy, DriftTestResult, decide_window

CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
STAGES = ("gate", "model", "scorer", "total")
_OOD_STEPS = (-1.0, -0.5, -0.25, -0.1, 0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0)


def ood_buckets(threshold: float | None) -> tuple[float, ...]:
    """Buckets around the threshold, whatever the method's scale or sign (energy scores are negative)."""
    t = 0.0 if threshold is None else threshold
    scale = abs(t) if t else 1.0
    return tuple(sorted({round(t + s * scale, 12) for s in _OOD_STEPS}))


class _Histogram:
    """Bucket counts in numpy; observe many values at once."""

    def __init__(self, buckets: Iterable[float]) -> None:
        self.bounds = np.asarray(list(buckets), dtype=np.float64)
        self.counts = np.zeros(self.bounds.size + 1, dtype=np.int64)
        self.total = 0.0

    def observe_many(self, values: np.ndarray) -> None:
        if values.size == 0:
            return
        finite = values[np.isfinite(values)]
        index = np.searchsorted(self.bounds, finite, side="left")
        self.counts += np.bincount(index, minlength=self.counts.size)
        self.total += float(finite.sum())

    def family_samples(self) -> tuple[list[tuple[str, float]], float]:
        cumulative = np.cumsum(self.counts)
        buckets = [(_fmt(b), float(c)) for b, c in zip(self.bounds, cumulative[:-1], strict=True)]
        buckets.append(("+Inf", float(cumulative[-1])))
        return buckets, self.total


class _LatencyHistogram:
    """Single observations (one per request) with bisect on a tuple: cheaper than numpy for one value."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.bounds = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0

    @property
    def observed(self) -> bool:
        return any(self.counts)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def family_samples(self) -> tuple[list[tuple[str, float]], float]:
        out, running = [], 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            running += count
            out.append((_fmt(bound), float(running)))
        out.append(("+Inf", float(running + self.counts[-1])))
        return out, self.total


def new_stages() -> dict[str, _LatencyHistogram]:
    return {stage: _LatencyHistogram(LATENCY_BUCKETS) for stage in STAGES}


def _fmt(value: float) -> str:
    return repr(float(value))


def drift_policy(spec: DriftSpec, workers: int = 1) -> DriftPolicy:
    """spec.drift for one of ``workers`` worker processes.

    Each worker tests at alpha / workers, so that "any worker drifted" keeps the pod's false-alarm
    rate at alpha. A row-count window is split between the workers (the kernel spreads connections
    over them): each closes its own window at ceil(window / workers) rows, so the pod still decides
    about every ``window`` rows; never below minSamples, or no worker's window could ever be tested.
    """
    workers = max(1, workers)
    rows = spec.window_rows
    if rows is not None:
        rows = max(math.ceil(rows / workers), spec.min_samples)
    return DriftPolicy(alpha=spec.alpha, min_samples=spec.min_samples, workers=workers, window_rows=rows)


@dataclass(frozen=True)
class ClosedWindow:
    """One drift window's outcome: the test's decision and p-value, and PSI as the effect size."""

    test: DriftTestResult
    psi: float  # DriftScores.score: max of mean feature PSI, confidence PSI, class PSI (NaN: no rows)
    rows: int

    @property
    def decision(self) -> Decision:
        return self.test.decision


@dataclass
class VersionMetrics:
    """Everything counted for one model version; the sample buffer amortises per-sample work."""

    model: str
    version: str
    method: str
    ood_threshold: float | None
    drift: DriftAccumulator | None
    feature_dim: int
    buffer_rows: int = 2048
    drift_policy: DriftPolicy = field(default_factory=DriftPolicy)
    # Called with every closed drift window (a benchmark or a test reads decisions one by one).
    on_window: Callable[[ClosedWindow], None] | None = None
    decisions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DECISIONS, 0))
    # per row: a perRow batch with 2 refused rows of 32 counts 30 accept and 2 reject here
    row_decisions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DECISIONS, 0))
    samples: int = 0
    ood_samples: int = 0

    def __post_init__(self) -> None:
        self.stages = new_stages()
        self.confidence = _Histogram(CONFIDENCE_BUCKETS)
        self.ood = _Histogram(ood_buckets(self.ood_threshold))
        cap = self.buffer_rows
        self._conf = np.empty(cap, dtype=np.float64)
        self._ood = np.empty(cap, dtype=np.float64)
        self._pred = np.empty(cap, dtype=np.int64)
        use_features = self.drift is not None and self.drift.reference.feature_edges.shape[0] > 0
        self._features = np.empty((cap, self.feature_dim), dtype=np.float32) if use_features else None
        self._n = 0
        self._has_ood = False
        self.window: DriftCounts | None = self.drift.zeros() if self.drift is not None else None
        self.window_conf_sum = 0.0
        self.window_samples = 0
        self.last_accuracy = math.nan
        self.last_drift: dict[str, float] = {}
        self.last_window_samples = 0
        self.last_window: ClosedWindow | None = None
        self.drift_windows: dict[Decision, int] = dict.fromkeys(Decision, 0)
        self._due = self._rows_due()

    def use_drift_policy(self, policy: DriftPolicy) -> None:
        """Test (and, for row-count windows, close) drift windows by ``policy`` from now on."""
        self.drift_policy = policy
        self._due = self._rows_due()

    def _rows_due(self) -> int:
        """Buffered rows at which the row-count window is full (never, for time windows)."""
        rows = self.drift_policy.window_rows
        if rows is None or self.drift is None:
            return sys.maxsize
        return max(1, rows - self.window_samples)

    def observe(
        self,
        confidence: np.ndarray,
        predicted: np.ndarray,
        ood: np.ndarray | None,
        features: np.ndarray | None,
    ) -> None:
        b = confidence.shape[0]
        if self._n + b > self.buffer_rows:
            self.flush()
            if b > self.buffer_rows:
                self._account(confidence, predicted, ood, features)
                if self._due <= 0:
                    self.close_window()
                return
        n = self._n
        if b == 1:
            # Scalar stores cost a fifth of 1-row slice assignments, and batch 1 is the common request.
            self._conf[n] = confidence.item()
            self._pred[n] = predicted.item()
            if ood is not None:
                self._ood[n] = ood.item()
                self._has_ood = True
            if self._features is not None and features is not None:
                self._features[n] = features.reshape(-1)
        else:
            self._conf[n : n + b] = confidence
            self._pred[n : n + b] = predicted
            if ood is not None:
                self._ood[n : n + b] = ood
                self._has_ood = True
            if self._features is not None and features is not None:
                self._features[n : n + b] = features.reshape(b, -1)
        self._n = n = n + b
        if n >= self._due:  # a row-count window is full: close it on this request
            self.close_window()

    def flush(self) -> None:
        n = self._n
        if not n:
            return
        self._n = 0
        self._account(
            self._conf[:n],
            self._pred[:n],
            self._ood[:n] if self._has_ood else None,
            self._features[:n] if self._features is not None else None,
        )

    def _account(
        self, conf: np.ndarray, pred: np.ndarray, ood: np.ndarray | None, features: np.ndarray | None
    ) -> None:
        self.samples += conf.shape[0]
        self.confidence.observe_many(conf)
        self.window_conf_sum += float(conf.sum())
        self.window_samples += conf.shape[0]
        if ood is not None:
            self.ood.observe_many(ood)
            if self.ood_threshold is not None:
                self.ood_samples += int((ood > self.ood_threshold).sum())
        if self.drift is not None and self.window is not None:
            self.window = self.window + self.drift.count(features, conf, pred)
            if self.drift_policy.window_rows is not None:
                self._due = self.drift_policy.window_rows - self.window_samples

    def close_window(self) -> ClosedWindow | None:
        """End the drift window: publish its estimated accuracy, drift and drift decision, start a
        new one. Returns the closed window's outcome (None without a drift reference)."""
        self.flush()
        self.last_window_samples = self.window_samples
        self.last_accuracy = self.window_conf_sum / self.window_samples if self.window_samples else math.nan
        closed: ClosedWindow | None = None
        if self.drift is not None and self.window is not None:
            if self.window.n:
                scores = self.drift.score(self.window)
                self.last_drift = {
                    "score": scores.score,
                    "feature_psi_mean": scores.feature_psi_mean,
                    "feature_psi_max": scores.feature_psi_max,
                    "confidence_psi": scores.confidence_psi,
                    "confidence_ks": scores.confidence_ks,
                    "class_psi": scores.class_psi,
                    "noise_floor": scores.noise_floor,
                }
            else:
                self.last_drift = dict.fromkeys(self.last_drift or ("score",), math.nan)
            test = decide_window(self.drift.reference, self.window, self.drift_policy)
            closed = ClosedWindow(test, self.last_drift["score"], self.window.n)
            self.last_window = closed
            self.drift_windows[test.decision] += 1
            self.window = self.drift.zeros()
        self.window_conf_sum = 0.0
        self.window_samples = 0
        self._due = self._rows_due()
        if closed is not None and self.on_window is not None:
            self.on_window(closed)
        return closed
