"""Drift: false alarms on in-distribution traffic and detection delay after a shift.

The sidecar's own drift code (``VersionMetrics`` with the version's drift reference and the
``spec.drift`` settings) is fed the scores of real requests: calibrated confidence, predicted class
and features, computed by the example model on rows the guard was not calibrated on. Time is
simulated, so 10,000 requests at 1 request/s take seconds instead of hours: request i arrives at
i / rate, and a duration window closes at each multiple of its length, as the sidecar's timer does;
a row-count window closes itself. Every closed window's decision (drifted / stable / insufficient)
is counted.

- False alarms: 10,000 in-distribution requests (five runs), windows called "drifted". The requests
  are drawn from the 4,000 evaluation rows, a fixed sample whose own chance difference from the
  reference adds about window / 4,000 to each window's variance: for large windows this counts
  against the test, which assumes fresh rows.
- Detection delay: in-distribution requests until ``shift_at``, then shifted ones; the delay is the
  number of shifted requests sent before the first window that is called drifted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from guardedmodel_sidecar.config_spec import DriftSpec
from guardedmodel_sidecar.guard.artifact import GuardArtifact
from guardedmodel_sidecar.guard.drift import DriftAccumulator
from guardedmodel_sidecar.version_metrics import ClosedWindow, VersionMetrics, drift_policy


@dataclass(frozen=True)
class Rows:
    """Per-row scores of a set of requests (batch 1 each), as the sidecar computes them."""

    confidence: np.ndarray  # (n,)
    predicted: np.ndarray  # (n,)
    features: np.ndarray  # (n, D)

    def take(self, index: np.ndarray) -> Rows:
        return Rows(self.confidence[index], self.predicted[index], self.features[index])

    def __len__(self) -> int:
        return int(self.confidence.shape[0])


@dataclass
class Replay:
    decisions: list[tuple[int, str]]  # (requests sent when the window closed, decision)

    def count(self, decision: str, after: int = 0) -> int:
        return sum(1 for sent, d in self.decisions if d == decision and sent > after)

    def first(self, decision: str, after: int) -> int | None:
        """Requests sent when the first window after ``after`` requests was called ``decision``."""
        return next((sent for sent, d in self.decisions if d == decision and sent > after), None)


def new_metrics(artifact: GuardArtifact, drift: DriftSpec) -> VersionMetrics:
    return VersionMetrics(
        model=artifact.model_name,
        version=artifact.model_version,
        method="none",
        ood_threshold=None,
        drift=DriftAccumulator(artifact.reference),
        feature_dim=artifact.feature_dim,
        drift_policy=drift_policy(drift),
    )


def replay(
    metrics: VersionMetrics,
    stream: Rows,
    rate: float,
    drift: DriftSpec,
    *,
    stop_after_alarm_past: int | None = None,
) -> Replay:
    """Send ``stream`` one row per request at ``rate`` requests/s of simulated time; stop early at
    the first drifted window closed after ``stop_after_alarm_past`` requests when that is given."""
    decisions: list[tuple[int, str]] = []
    sent = 0

    def closed(window: ClosedWindow) -> None:
        decisions.append((sent, str(window.decision)))

    metrics.on_window = closed
    window_s = drift.window_s
    next_close = window_s if window_s is not None else float("inf")
    for i in range(len(stream)):
        now = i / rate
        while window_s is not None and now >= next_close:  # the timer fires before this request
            metrics.close_window()
            next_close += window_s
        if stop_after_alarm_past is not None and any(
            d == "drifted" and at > stop_after_alarm_past for at, d in decisions[-2:]
        ):
            break
        metrics.observe(
            stream.confidence[i : i + 1],
            stream.predicted[i : i + 1],
            None,
            stream.features[i : i + 1],
        )
        sent = i + 1
    return Replay(decisions)


def false_alarms(
    artifact: GuardArtifact,
    in_distribution: Rows,
    drifts: dict[str, DriftSpec],
    rates: Sequence[float],
    requests: int,
    seed: int,
    repeats: int = 5,
) -> list[dict[str, Any]]:
    """Per window setting and rate: ``repeats`` runs of ``requests`` in-distribution requests each
    (one alarm in one run is within alpha's reach; several runs say how often)."""
    out = []
    for name, drift in drifts.items():
        for rate in rates:
            rng = np.random.default_rng(seed)
            runs = []
            for _ in range(repeats):
                stream = in_distribution.take(rng.integers(0, len(in_distribution), requests))
                runs.append(replay(new_metrics(artifact, drift), stream, rate, drift))
            out.append(
                {
                    "window": name,
                    "rate_per_s": rate,
                    "requests": requests,
                    "runs": repeats,
                    "windows": sum(len(r.decisions) for r in runs) / repeats,
                    "false_alarms": sum(r.count("drifted") for r in runs) / repeats,
                    "false_alarms_per_run": [r.count("drifted") for r in runs],
                    "insufficient": sum(r.count("insufficient") for r in runs) / repeats,
                    "stable": sum(r.count("stable") for r in runs) / repeats,
                }
            )
    return out


def detection_delays(
    artifact: GuardArtifact,
    in_distribution: Rows,
    shifts: dict[str, Callable[[np.random.Generator, int], Rows]],
    drifts: dict[str, DriftSpec],
    rates: Sequence[float],
    *,
    shift_at: int,
    after_shift: int,
    seed: int,
) -> list[dict[str, Any]]:
    out = []
    for shift_name, shifted in shifts.items():
        for name, drift in drifts.items():
            for rate in rates:
                rng = np.random.default_rng(seed)
                before = in_distribution.take(rng.integers(0, len(in_distribution), shift_at))
                after = shifted(rng, after_shift)
                stream = Rows(
                    np.concatenate([before.confidence, after.confidence]),
                    np.concatenate([before.predicted, after.predicted]),
                    np.concatenate([before.features, after.features]),
                )
                result = replay(
                    new_metrics(artifact, drift), stream, rate, drift, stop_after_alarm_past=shift_at
                )
                alarm = result.first("drifted", after=shift_at)
                out.append(
                    {
                        "shift": shift_name,
                        "window": name,
                        "rate_per_s": rate,
                        "false_alarms_before_shift": sum(
                            1 for sent, d in result.decisions if d == "drifted" and sent <= shift_at
                        ),
                        "delay_requests": None if alarm is None else alarm - shift_at,
                        "detected": alarm is not None,
                    }
                )
    return out
