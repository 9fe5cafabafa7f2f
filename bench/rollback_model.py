"""The pure side of `rollback_time.py`: what a run's trace says, and what a Flagger-style analysis
would give for the same knobs.

A Flagger-style analysis (https://fluxcd.io/flagger/usage/deployment-strategies/,
https://fluxcd.io/flagger/usage/metrics/) runs its metric checks on a fixed schedule, one every
`analysis.interval`; each check queries a metric over its own window (`metrics[].interval`) and
fails when the value leaves `thresholdRange`; after `analysis.threshold` failed checks the canary
is rolled back (a passing check resets the count). Its time from onset to rollback is therefore

    T = lag + wait for the next tick + (threshold - 1) * interval,

where `lag` is how long the onset takes to move the windowed metric past its threshold (a fraction
`crossing` of the window must hold the new behaviour, plus the scrape that brings it to
Prometheus), and the wait is uniform in [0, interval) when the onset's phase within the interval is
uniform. `flagger_quantiles` is that closed form; `simulate_flagger` plays the same schedule
tick by tick, as a check of the algebra and for knobs the closed form leaves out (a random scrape
phase).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Knobs:
    """What a scenario of the live bench sets (the spec's rollout and drift, the traffic, the
    operator's and Prometheus' timing)."""

    interval_s: int
    steps: tuple[int, ...]
    failure_limit: int
    drift_window_rows: int
    drift_min_samples: int
    rate: float  # requests per second, one row each
    min_window_s: float  # the operator's GUARDEDMODEL_ROLLOUT_MIN_WINDOW_S
    scrape_s: float  # Prometheus' scrape interval

    @property
    def check_window_s(self) -> float:
        return max(float(self.interval_s), self.min_window_s)


@dataclass
class Run:
    """One live run: what it was, whether it reached the end, and the times it observed."""

    case: str
    interval_s: int
    index: int
    name: str
    onset_phase: float | None = None  # share of the interval between the routing change and the onset
    ok: bool = False
    failure: str | None = None
    times: dict[str, float | None] = field(default_factory=dict)  # seconds after the onset
    onset_to_good_s: float | None = None
    onset_to_status_s: float | None = None
    weight_at_rollback: int | None = None
    answers_after_onset: dict[str, int] = field(default_factory=dict)
    rollback_reason: str | None = None
    checks: list[tuple[float, str]] = field(default_factory=list)  # operator checks (s after onset, result)
    # version 2's drift windows as Prometheus scraped them: s after onset, the test's decision, the PSI
    drift_windows: list[dict[str, float | None]] = field(default_factory=list)


QUANTILES = {"min": 0.0, "median": 0.5, "p90": 0.9, "max": 1.0}


@dataclass(frozen=True)
class FlaggerKnobs:
    interval_s: float  # analysis.interval: one check per tick
    threshold: int  # analysis.threshold: failed checks before rollback (here spec.rollout.failureLimit)
    window_s: float  # metrics[].interval: the range each check queries
    crossing: float = 0.5  # share of the window that must hold the new behaviour to fail a check
    scrape_s: float = 1.0  # Prometheus scrape interval: the newest sample is up to this old

    def __post_init__(self) -> None:
        if self.interval_s <= 0 or self.window_s <= 0 or self.scrape_s < 0:
            raise ValueError(f"interval and window must be positive and scrape non-negative: {self}")
        if self.threshold < 1 or not 0.0 <= self.crossing <= 1.0:
            raise ValueError(f"threshold must be >= 1 and crossing within [0, 1]: {self}")


def flagger_quantiles(knobs: FlaggerKnobs) -> dict[str, float]:
    """Closed form: T is uniform on [c, c + interval) with c = crossing * window + scrape / 2 +
    (threshold - 1) * interval (the scrape's lag taken at its mean), so its q-quantile is
    c + q * interval."""
    c = knobs.crossing * knobs.window_s + knobs.scrape_s / 2 + (knobs.threshold - 1) * knobs.interval_s
    return {name: c + q * knobs.interval_s for name, q in QUANTILES.items()}


def simulate_flagger(knobs: FlaggerKnobs, runs: int = 20_000, seed: int = 0) -> np.ndarray:
    """Onset to rollback for `runs` onsets at a uniform phase within the interval, each played on
    the fixed schedule: ticks at 0, I, 2I, ...; at a tick the metric sees what was scraped by then
    (scrapes at a random phase every scrape_s) over the last window_s; the check fails when at least
    `crossing` of that window lies after the onset; rollback at the threshold-th consecutive
    failure."""
    rng = np.random.default_rng(seed)
    onsets = rng.uniform(0.0, knobs.interval_s, runs)
    scrape_phase = rng.uniform(0.0, knobs.scrape_s, runs) if knobs.scrape_s > 0 else np.zeros(runs)
    out = np.empty(runs)
    for i, (onset, phase) in enumerate(zip(onsets, scrape_phase, strict=True)):
        failed, tick = 0, 0
        while True:
            tick += 1
            now = tick * knobs.interval_s
            seen = _last_scrape(now, phase, knobs.scrape_s)
            start = seen - knobs.window_s
            drifted_share = max(0.0, seen - max(onset, start)) / knobs.window_s
            if seen > onset and drifted_share >= knobs.crossing:
                failed += 1
                if failed == knobs.threshold:
                    out[i] = now - onset
                    break
            else:
                failed = 0
    return out


def _last_scrape(now: float, phase: float, scrape_s: float) -> float:
    if scrape_s <= 0:
        return now
    return phase + math.floor((now - phase) / scrape_s) * scrape_s


def summary(values: Sequence[float]) -> dict[str, float | int | None]:
    """min / median / p90 / max / mean of a sample (None for an empty one), and its size."""
    if len(values) == 0:
        return {"n": 0, **dict.fromkeys([*QUANTILES, "mean"])}
    array = np.asarray(values, dtype=float)
    figures: dict[str, float | int | None] = {
        name: float(np.quantile(array, q)) for name, q in QUANTILES.items()
    }
    return {"n": len(array), **figures, "mean": float(array.mean())}


@dataclass(frozen=True)
class Answer:
    """One request of the bench's traffic: when it was sent, which version answered (None: no
    answer, the error is kept in the trace), and whether its input was drifted."""

    sent: float  # time.time()
    version: str | None
    drifted: bool


def traffic_on_good_version(answers: Sequence[Answer], bad: str, onset: float) -> float | None:
    """The moment after which no answer comes from `bad`: the send time of the first answered
    request after the last answer from it (None when `bad` still answered the last one, or did not
    answer after the onset). For a canary that ends its share of traffic; for a promoted version it
    is the first answer of the last good one, after which every answer is from it."""
    last_bad = max((i for i, answer in enumerate(answers) if answer.version == bad), default=None)
    if last_bad is None or answers[last_bad].sent < onset:
        return None
    later = (answer.sent for answer in answers[last_bad + 1 :] if answer.version is not None)
    return next(later, None)


def rises(samples: Sequence[tuple[float, float]], after: float) -> list[float]:
    """The times a counter, sampled as (time, value), went up after `after`. Its level at `after` is
    the last sample before it, or the first sample when sampling began later (the counter was
    already there; one that is absent is sampled as 0)."""
    if not samples:
        return []
    before = [value for t, value in samples if t <= after]
    level = before[-1] if before else samples[0][1]
    out = []
    for t, value in samples:
        if t > after and value > level:
            out.append(t)
        if t > after:
            level = max(level, value)
    return out


def first_rise(samples: Sequence[tuple[float, float]], after: float) -> float | None:
    """When a counter, sampled as (time, value), first rose above the value it had at `after`."""
    return next(iter(rises(samples, after)), None)
