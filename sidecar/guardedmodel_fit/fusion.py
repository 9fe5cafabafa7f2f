"""Fitting the fused detector on in-distribution data only (no OOD set is tuned on).

The calibration split is cut at random into two parts:

- **A** holds the members' p-value references: each member's score becomes the conformal
  p-value (1 + #{A scores >= s}) / (n_A + 1), never 0, so Fisher's ln p is finite;
- **B** holds the fused statistic's own calibration scores: the fused p-value is the conformal
  p-value of the combined statistic against B.

The members are dependent (they score the same input), so Fisher's chi-square or Simes'
reference distribution would not hold; but the rows of B are exchangeable with a new
in-distribution input, and the statistic is a fixed function of the input once A is fixed, so the
fused p-value is valid in finite samples whatever the dependence.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from guardedmodel_sidecar.guard.artifact import DetectorParams, FusedParams

from .fit_config import DEFAULT_FUSION_MEMBERS, FitConfig


def fusion_members(config: FitConfig, fitted: Mapping[str, DetectorParams]) -> tuple[str, ...]:
    """The members to fuse: those asked for, or the default pair where fitted (ViM may be skipped
    by the fit, and models without features have no feature detectors)."""
    wanted = DEFAULT_FUSION_MEMBERS if config.fusion_members is None else config.fusion_members
    return tuple(m for m in dict.fromkeys(wanted) if m in fitted)


def split_calibration(n: int, reference_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(A, B) row indices of an n-row calibration split, at random, both non-empty."""
    if n < 2:
        raise ValueError(f"fusion needs at least 2 calibration rows, got {n}")
    size_a = min(max(round(reference_fraction * n), 1), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[:size_a]), np.sort(order[size_a:])


def fused_params(
    member_scores: Mapping[str, np.ndarray], members: tuple[str, ...], combination: str, part_a: np.ndarray
) -> FusedParams:
    """The fused detector's parameters: each member's sorted scores on part A of the calibration
    split (``member_scores`` are the members' scores on the whole split, row-aligned)."""
    table = np.stack([np.sort(np.asarray(member_scores[m], dtype=np.float64)[part_a]) for m in members])
    return FusedParams(members=members, combination=combination, member_calibration=table)
