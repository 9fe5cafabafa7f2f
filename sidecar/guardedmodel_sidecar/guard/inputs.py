"""Raw-input checks against the statistics of the validation set (numpy only).

These catch what the model's own scores can miss cheaply and explainably: values outside the
range ever seen (corrupted values, wrong scaling), and a per-sample mean or spread far from
what validation samples had (grey-level shift, inverted or blank images).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .artifact import InputReference


@dataclass(frozen=True, eq=False)
class InputFindings:
    """Per-sample flags, each (b,) bool; ``any`` is their union."""

    out_of_range: np.ndarray
    mean_shift: np.ndarray
    spread_shift: np.ndarray

    @property
    def any(self) -> np.ndarray:
        return self.out_of_range | self.mean_shift | self.spread_shift

    def reason(self, row: int) -> str | None:
        """A sentence a person understands for one sample, or None when it looks normal."""
        parts = []
        if self.out_of_range[row]:
            parts.append("values outside the range seen in validation")
        if self.mean_shift[row]:
            parts.append("mean intensity unlike validation samples (level shift?)")
        if self.spread_shift[row]:
            parts.append("contrast/spread unlike validation samples")
        return "; ".join(parts) or None


def check_inputs(
    batch: np.ndarray, reference: InputReference, *, range_tolerance: float = 0.0
) -> InputFindings:
    """Flag samples of ``batch`` (b, *reference.shape) whose statistics the validation set never had.

    ``range_tolerance`` widens [minimum, maximum] by that fraction of the range.
    """
    x = np.asarray(batch, dtype=np.float64)
    size = int(np.prod(reference.shape)) if reference.shape else 1
    if x.size % size != 0 or x.ndim == 0:
        raise ValueError(f"input of shape {x.shape} does not hold samples of shape {reference.shape}")
    x = x.reshape(-1, size)
    slack = range_tolerance * (reference.maximum - reference.minimum)
    lo_ok = np.min(x, axis=1) >= reference.minimum - slack
    hi_ok = np.max(x, axis=1) <= reference.maximum + slack
    means = np.mean(x, axis=1)
    stds = np.std(x, axis=1)
    m_lo, m_hi = reference.sample_mean_range
    s_lo, s_hi = reference.sample_std_range
    return InputFindings(
        out_of_range=~(lo_ok & hi_ok),  # NaN compares False, so NaN rows are flagged too
        mean_shift=~((means >= m_lo) & (means <= m_hi)),
        spread_shift=~((stds >= s_lo) & (stds <= s_hi)),
    )
