"""What a conformal OOD decision promises and what it achieved: the figures of the fit report.

For a detector with n calibration scores and an error rate alpha (reject when p <= alpha):

- **expected**: the in-distribution rejection rate averaged over calibration sets,
  l / (n + 1) with l = floor(alpha (n + 1)); at most alpha, by construction;
- **band**: for *this* calibration set the rate is itself random, Beta(l, n + 1 - l); the 90 %
  band is its 5 % and 95 % quantiles (what another draw of the calibration data could give);
- **measured**: the share of the evaluation split (in-distribution, not used for calibration)
  rejected, with a 95 % Clopper-Pearson interval for the rate it estimates.

scipy is used here only (the fit), never in the sidecar's request path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from guardedmodel_sidecar.guard.conformal import ConformalReference, guaranteed_rejection_rate


def clopper_pearson(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval for the rate behind ``successes`` of ``trials``."""
    if trials <= 0:
        raise ValueError("a binomial interval needs at least one trial")
    if not 0 <= successes <= trials:
        raise ValueError(f"successes {successes} not within 0..{trials}")
    tail = (1.0 - confidence) / 2.0
    lo = 0.0 if successes == 0 else float(stats.beta.ppf(tail, successes, trials - successes + 1))
    hi = 1.0 if successes == trials else float(stats.beta.ppf(1.0 - tail, successes + 1, trials - successes))
    return lo, hi


def calibration_band(alpha: float, n: int, coverage: float = 0.9) -> tuple[float, float]:
    """The central ``coverage`` band of the rejection rate given one calibration set of size n:
    Beta(l, n + 1 - l), l = floor(alpha (n + 1)); (0, 0) when l = 0 (nothing is ever rejected)."""
    rank = round(guaranteed_rejection_rate(alpha, n) * (n + 1))
    if rank == 0:
        return 0.0, 0.0
    tail = (1.0 - coverage) / 2.0
    lo, hi = stats.beta.ppf([tail, 1.0 - tail], rank, n + 1 - rank)
    return float(lo), float(hi)


def rejection_figures(
    calibration_scores: np.ndarray, evaluation_scores: np.ndarray, alphas: Sequence[float]
) -> dict[str, Any]:
    """Per alpha: the score threshold, expected rate, 90 % band and the measured evaluation rate
    with its 95 % interval. Keys are the alphas as strings ("0.05"), so the report is JSON."""
    reference = ConformalReference(calibration_scores)
    scores = np.asarray(evaluation_scores, dtype=np.float64)
    out: dict[str, Any] = {"calibration_samples": reference.n, "evaluation_samples": int(scores.size)}
    for alpha in alphas:
        threshold = reference.threshold(alpha)
        # p <= alpha  <=>  score > threshold; a NaN score has the smallest p-value
        rejected = int(np.sum((scores > threshold) | np.isnan(scores)))
        lo, hi = calibration_band(alpha, reference.n)
        ci_lo, ci_hi = clopper_pearson(rejected, int(scores.size))
        out[f"{alpha:g}"] = {
            "threshold": threshold if math.isfinite(threshold) else None,
            "expected": guaranteed_rejection_rate(alpha, reference.n),
            "band_90": [lo, hi],
            "measured": rejected / scores.size,
            "measured_ci_95": [ci_lo, ci_hi],
        }
    return out
