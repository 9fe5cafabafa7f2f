"""Conformal p-values: an OOD score turned into an error rate (pure numpy).

Given n in-distribution calibration scores that the detector was not fitted on, the p-value of a
new score s is

    p(s) = (1 + #{i : s_i >= s}) / (n + 1)

If the new input and the calibration inputs are exchangeable (drawn from the same distribution),
P(p <= alpha) <= alpha for every alpha, whatever the detector and for every n: rejecting when
p <= alpha rejects at most an alpha share of in-distribution inputs (exactly
floor(alpha (n + 1)) / (n + 1), which is within 1 / (n + 1) of alpha). That is the error rate
``spec.gate.ood.alpha`` states. The guarantee is an average over the draw of the calibration set;
for one fixed calibration set the rate is itself random, Beta(l, n + 1 - l)-distributed with
l = floor(alpha (n + 1)), and the fit report shows that band.

A NaN score counts as larger than every calibration score (p = 1 / (n + 1)): an input the
detector cannot score is not called in-distribution.
"""

from __future__ import annotations

import bisect
import math

import numpy as np


class ConformalError(ValueError):
    """Calibration scores that cannot give p-values; the message says what to change."""


class ConformalReference:
    """Sorted in-distribution calibration scores of one detector (higher = more OOD)."""

    __slots__ = ("_below", "_below_list", "_distinct", "_distinct_list", "_sorted", "_sorted_list", "n")

    def __init__(self, calibration_scores: np.ndarray) -> None:
        scores = np.asarray(calibration_scores, dtype=np.float64).ravel()
        if scores.size == 0:
            raise ConformalError("conformal p-values need at least one calibration score")
        if not np.all(np.isfinite(scores)):
            raise ConformalError("calibration scores must be finite (NaN or infinity found)")
        self._sorted = np.sort(scores)
        self._sorted_list: list[float] = self._sorted.tolist()
        self.n = int(scores.size)
        # the distinct scores and how many calibration scores lie below each: the knots of the
        # interpolated p-value
        distinct, first = np.unique(self._sorted, return_index=True)
        self._distinct, self._below = distinct, first.astype(np.float64)
        self._distinct_list: list[float] = distinct.tolist()
        self._below_list: list[float] = self._below.tolist()

    @property
    def sorted_scores(self) -> np.ndarray:
        return self._sorted

    def p_values(self, scores: np.ndarray) -> np.ndarray:
        """One p-value per score, shape of ``scores`` flattened to (b,), float64 in [1/(n+1), 1]."""
        s = np.asarray(scores, dtype=np.float64).ravel()
        # side="left": the number of calibration scores below s, so n - it counts those >= s;
        # NaN sorts after everything, so it gets the smallest p-value.
        below = np.searchsorted(self._sorted, s, side="left")
        return (1.0 + self.n - below) / (self.n + 1.0)

    def p_value(self, score: float) -> float:
        """One score in plain Python floats (bisect on a list beats numpy for a single value)."""
        if score != score:  # NaN
            return 1.0 / (self.n + 1.0)
        below = bisect.bisect_left(self._sorted_list, score)
        return (1.0 + self.n - below) / (self.n + 1.0)

    def interpolated_p_values(self, scores: np.ndarray) -> np.ndarray:
        """The p-value made continuous in the score: between neighbouring distinct calibration
        scores u < v it is linear from p(u) to p(v), so it equals ``p_values`` at every calibration
        score, is never below it, and has no jumps but the last one (above the largest calibration
        score it is 1 / (n + 1)). NaN gets 1 / (n + 1), as in ``p_values``.

        For the fused detector's members: the step function would give the combined statistic
        many ties (so a rejection rate below alpha: lost power). Validity does not rest on these
        values; the fused statistic has its own calibration scores.
        """
        n = self.n
        rank = np.interp(np.asarray(scores, dtype=np.float64).ravel(), self._distinct, self._below, 0.0, n)
        np.nan_to_num(rank, copy=False, nan=n)
        np.subtract(1.0 + n, rank, out=rank)
        rank /= n + 1.0  # in place, the same arithmetic as p_values (equal at calibration scores)
        return rank

    def interpolated_p_value(self, score: float) -> float:
        """``interpolated_p_values`` of one score in plain Python floats."""
        n = self.n
        if score != score:  # NaN
            return 1.0 / (n + 1.0)
        values, below = self._distinct_list, self._below_list
        k = bisect.bisect_left(values, score)
        if k == 0:
            rank = 0.0
        elif k == len(values):
            rank = float(n)
        else:
            lower, upper = values[k - 1], values[k]
            rank = below[k - 1] + (below[k] - below[k - 1]) * (score - lower) / (upper - lower)
        return (1.0 + n - rank) / (n + 1.0)

    def threshold(self, alpha: float) -> float:
        """The score above which p <= alpha: a row is OOD at level alpha iff score > threshold.

        p(s) <= alpha  <=>  #{s_i >= s} <= alpha (n + 1) - 1 =: m. With m < 0 nothing is ever
        rejected (+inf); otherwise s must exceed the (n - m)-th smallest calibration score.
        """
        check_alpha(alpha)
        m = math.floor(alpha * (self.n + 1) + 1e-9) - 1
        if m < 0:
            return math.inf
        return float(self._sorted[self.n - m - 1])


def check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ConformalError(f"alpha must be in (0, 1), got {alpha}")


def guaranteed_rejection_rate(alpha: float, n: int) -> float:
    """The exact in-distribution rejection rate of ``p <= alpha`` with n calibration scores
    (averaged over calibration sets): floor(alpha (n + 1)) / (n + 1) <= alpha."""
    check_alpha(alpha)
    return math.floor(alpha * (n + 1) + 1e-9) / (n + 1)


# ------------------------------------------------------------------------------------------ fusion


def combine_p_values(p_values: np.ndarray, combination: str) -> np.ndarray:
    """One statistic per column of ``p_values`` (M members, b rows), higher = more OOD.

    ``fisher``: -2 sum_i ln p_i (Fisher's method); ``min``: -ln min_i p_i (the minimum, as in a
    Bonferroni correction). The statistic is only a ranking: with dependent members neither has
    its textbook null distribution, so the fused detector calibrates it conformally on its own
    calibration scores. Conformal p-values are >= 1 / (n + 1), so the logarithms are finite.
    """
    p = np.asarray(p_values, dtype=np.float64)
    if combination == "fisher":
        out: np.ndarray = -2.0 * np.sum(np.log(p), axis=0)
        return out
    if combination == "min":
        return -np.log(np.min(p, axis=0))
    raise ConformalError(f"unknown p-value combination {combination!r} (known: fisher, min)")


def combine_p_value_row(p_values: list[float], combination: str) -> float:
    """``combine_p_values`` for one row in plain Python floats (the batch-1 path)."""
    if combination == "fisher":
        return -2.0 * sum(math.log(p) for p in p_values)
    if combination == "min":
        return -math.log(min(p_values))
    raise ConformalError(f"unknown p-value combination {combination!r} (known: fisher, min)")
