"""The drift decision: a chi-square test per binned statistic, combined with Bonferroni (numpy only).

PSI says how far a window moved; it does not say whether that is more than the noise of a small
window. This module answers the second question with a p-value, so that an undrifted window is
called drifted with probability at most ``alpha``, whatever the window size:

* Each binned statistic (every feature's bins, the calibrated-confidence bins, the predicted-class
  mix) is a 2 x B contingency table: reference counts (fractions x ``reference.samples``) against
  the window's counts. A chi-square test of homogeneity asks whether both rows come from
  one distribution; it is a two-sample test, so the reference's own sampling noise (a finite fit
  split) counts too. Artifacts without ``samples`` fall back to a goodness-of-fit test against the
  fractions, which treats them as exact.
* The statistic is Cressie and Read's power divergence with lambda = 2/3, not Pearson's X^2: both
  are chi-square with B - 1 degrees of freedom for large counts, but the test reads tail
  probabilities near alpha / K (1e-5 for 66 statistics at alpha 0.001), where X^2 over counts of
  about 10 per bin rejects 1.5-2 times too often and lambda = 2/3 does not (``_divergence``).
* The chi-square approximation needs large enough expected counts. Bins are grouped so every
  group expects at least ``MIN_EXPECTED`` (15) in both rows: neighbouring bins for ordered statistics
  (features, confidence), the rarest classes together for the class mix. The grouping reads only
  the reference's shares, never the window's counts: the fit's bins are quantiles of the reference
  itself (about equal counts), and grouping on the pooled counts would then choose bins by the
  window's own deviations, which simulation shows rejects 1.5 times too often in the tail. Bins
  empty in both rows are dropped. A statistic left with one group has no test (a tiny window, or
  a constant feature); one left with two groups needs twice the expected count (``_testable``).
  With the fit's 10 quantile bins, the smallest window with a test is about 50 rows.
* The K tests of one window are combined with Bonferroni, p = min(1, K * min p), valid however the
  features depend on each other (they do: they come from one network).

The decision per window: ``insufficient`` below ``min_samples`` rows, or when no statistic could be
tested (neither drift nor no drift); ``drifted`` when p <= alpha, else ``stable``. With several worker processes each tests at
alpha / workers, so the pod's false-alarm rate stays alpha (see ``metrics_aggregate``).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np

from .artifact import DriftReference
from .chi_square import chi_square_survival
from .drift import DriftCounts

# Cochran's rule asks for 5; the tail probabilities this test reads (alpha / K ~ 1e-5) need more:
# simulated with 66 statistics at alpha 0.001, windows whose every bin expected exactly 10 rows
# raised 1.6 times alpha in false alarms on one draw of references, 15 and 20 expected stayed at alpha.
MIN_EXPECTED = 15.0
LAMBDA = 2.0 / 3.0  # Cressie-Read power divergence; see _divergence


def _divergence(observed: np.ndarray, expected: np.ndarray) -> float:
    """Cressie-Read power divergence with lambda = 2/3, summed over cells; chi-square distributed
    under the null like Pearson's X^2 (lambda = 1), but with a far more accurate tail for small
    expected counts: simulated at 10 expected per cell, Pearson's X^2 exceeds its nominal 1e-4 level
    1.3-1.7 times as often, lambda = 2/3 stays at or below it (Cressie and Read, 1984)."""
    o, e = observed, expected
    cells = o * ((o / e) ** LAMBDA - 1.0) + LAMBDA * (e - o)  # each >= 0; the last term sums to 0
    return float(2.0 / (LAMBDA * (LAMBDA + 1.0)) * np.sum(cells))


class Decision(enum.StrEnum):
    DRIFTED = "drifted"
    STABLE = "stable"
    INSUFFICIENT = "insufficient"

    @property
    def gauge(self) -> float:
        """guardedmodel_drift_detected: 1 drifted, 0 stable, NaN not enough data to tell."""
        return {Decision.DRIFTED: 1.0, Decision.STABLE: 0.0}.get(self, math.nan)


@dataclass(frozen=True)
class DriftPolicy:
    """How windows are made and tested. ``alpha`` is the per-window false-alarm rate of the whole
    pod; ``workers`` processes share it (each tests at alpha / workers). ``window_rows`` set: a
    window closes once it holds that many rows (None: a time window, closed from outside)."""

    alpha: float = 0.001
    min_samples: int = 100
    workers: int = 1
    window_rows: int | None = None

    @property
    def test_alpha(self) -> float:
        return self.alpha / max(1, self.workers)


@dataclass(frozen=True)
class DriftTestResult:
    decision: Decision
    p_value: float  # Bonferroni-combined; NaN when insufficient
    tests: int  # K: the statistics that had a test
    weakest: str  # the statistic with the smallest p-value ("feature 12", "confidence", "classes")
    n: int  # rows in the window


def group_bins(totals: np.ndarray, need: float, ordered: bool) -> np.ndarray:
    """Group index per bin so that every group's total reaches ``need`` (-1 for bins with total 0).

    Ordered bins join their right-hand neighbours (a short last group joins the one before it);
    unordered bins (classes) are grouped from the rarest up. One group means no test is possible.
    """
    groups = np.full(totals.shape[0], -1, dtype=np.int64)
    live = np.flatnonzero(totals > 0)
    if not ordered:
        live = live[np.argsort(totals[live], kind="stable")]
    group, running = 0, 0.0
    for index in live:
        groups[index] = group
        running += totals[index]
        if running >= need:
            group, running = group + 1, 0.0
    if 0 < running < need and group > 0:
        groups[groups == group] = group - 1  # the short remainder joins the group before it
    return groups


def _shares(fractions: np.ndarray, window: np.ndarray) -> np.ndarray:
    """What bins are grouped on: the reference's shares only, never the window's counts (grouping
    on the window's own counts would pick which deviations to keep, and the test would reject too
    often). A bin the reference never saw but the window did is evidence, not an empty bin: it
    gets the smallest positive weight, so that it joins its neighbours."""
    return np.where((fractions > 0) | (window > 0), np.maximum(fractions, 1e-12), 0.0)


def _testable(shares: np.ndarray, groups: np.ndarray, rows: float) -> bool:
    """Two groups at least; with exactly two (one degree of freedom, the coarsest and most discrete
    statistic) each must expect 2 * MIN_EXPECTED rows: at 10, simulated tests at the 1 % level
    rejected 1.15 times too often, at 20 they did not."""
    if groups.max() < 1:
        return False
    if groups.max() > 1:
        return True
    return float(_grouped(shares, groups).min()) * rows >= 2 * MIN_EXPECTED


def _grouped(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    keep = groups >= 0
    return np.bincount(groups[keep], weights=values[keep], minlength=int(groups.max()) + 1)


def homogeneity_p(reference: np.ndarray, window: np.ndarray, ordered: bool = True) -> float:
    """Chi-square test (power divergence) that two count vectors come from one distribution (2 x B table).

    ``reference`` may hold non-integer counts (fractions x rows). NaN when no test is possible.
    """
    m, n = float(reference.sum()), float(window.sum())
    if m <= 0 or n <= 0:
        return math.nan
    # the smaller row expects min(m, n) * reference share of each group: at least MIN_EXPECTED
    shares = _shares(reference / m, window)
    groups = group_bins(shares, MIN_EXPECTED / min(m, n), ordered)
    if not _testable(shares, groups, min(m, n)):
        return math.nan
    r, w = _grouped(reference, groups), _grouped(window, groups)
    t = r + w
    er, ew = t * (m / (m + n)), t * (n / (m + n))
    statistic = _divergence(r, er) + _divergence(w, ew)
    return chi_square_survival(r.shape[0] - 1, statistic)


def goodness_of_fit_p(fractions: np.ndarray, window: np.ndarray, ordered: bool = True) -> float:
    """Chi-square test (power divergence) of window counts against known fractions. NaN when no test is possible."""
    n = float(window.sum())
    total = float(fractions.sum())
    if n <= 0 or total <= 0:
        return math.nan
    expected = fractions * (n / total)
    shares = _shares(fractions / total, window)
    groups = group_bins(shares, MIN_EXPECTED / n, ordered)
    if not _testable(shares, groups, n):
        return math.nan
    o, e = _grouped(window, groups), _grouped(expected, groups)
    statistic = _divergence(o, e)
    return chi_square_survival(o.shape[0] - 1, statistic)


def bonferroni(p_values: list[float]) -> float:
    """min(1, K * min p) over the tests that ran; NaN when none did."""
    ran = [p for p in p_values if not math.isnan(p)]
    return min(1.0, len(ran) * min(ran)) if ran else math.nan


def window_p_values(reference: DriftReference, counts: DriftCounts) -> dict[str, float]:
    """One p-value per binned statistic of the window (NaN where no test is possible)."""
    rows = reference.samples

    def test(fractions: np.ndarray, window: np.ndarray, ordered: bool) -> float:
        fractions = np.asarray(fractions, dtype=np.float64)
        window = np.asarray(window, dtype=np.float64)
        if rows > 0:
            return homogeneity_p(fractions / max(fractions.sum(), 1e-300) * rows, window, ordered)
        return goodness_of_fit_p(fractions, window, ordered)

    out: dict[str, float] = {}
    if counts.features.shape[0] and counts.features.sum() > 0:
        for j in range(counts.features.shape[0]):
            out[f"feature {j}"] = test(reference.feature_fractions[j], counts.features[j], True)
    out["confidence"] = test(reference.confidence_fractions, counts.confidence, True)
    out["classes"] = test(reference.class_fractions, counts.classes, False)
    return out


def decide_window(reference: DriftReference, counts: DriftCounts, policy: DriftPolicy) -> DriftTestResult:
    """The window's decision: insufficient below min_samples, drifted when p <= alpha / workers."""
    if counts.n < policy.min_samples:
        return DriftTestResult(Decision.INSUFFICIENT, math.nan, 0, "", counts.n)
    p_values = window_p_values(reference, counts)
    ran = {k: p for k, p in p_values.items() if not math.isnan(p)}
    p = bonferroni(list(ran.values()))
    if math.isnan(p):  # nothing testable: too few rows to fill two groups of any statistic
        return DriftTestResult(Decision.INSUFFICIENT, math.nan, 0, "", counts.n)
    weakest = min(ran, key=lambda k: ran[k])
    decision = Decision.DRIFTED if p <= policy.test_alpha else Decision.STABLE
    return DriftTestResult(decision, p, len(ran), weakest, counts.n)
