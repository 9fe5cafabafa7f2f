"""The sidecar's chi-square tail against scipy's, over the degrees of freedom the drift test uses and
tail depths down to where p-values stop mattering (1e-300)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import chdtrc, chdtri

from guardedmodel_sidecar.guard.chi_square import chi_square_survival

DEGREES = [1, 2, 3, 4, 5, 7, 9, 10, 17, 33, 65, 99, 150, 500, 0.5, 2.5]


@pytest.mark.parametrize("df", DEGREES)
def test_matches_scipy_from_the_centre_to_the_far_tail(df: float) -> None:
    xs = np.concatenate([np.linspace(1e-3, 6 * df + 100, 500), [df - 1e-9, df + 1, df + 2, df / 2 + 1]])
    for x in xs[xs > 0]:
        expected = float(chdtrc(df, x))
        if expected < 1e-300:
            continue
        assert chi_square_survival(df, float(x)) == pytest.approx(expected, rel=1e-11), (df, x)


def test_p_values_at_the_drift_tests_levels_keep_their_relative_accuracy() -> None:
    """alpha / K for K statistics: the upper tail is computed directly, never as 1 - P."""
    for df in (1, 9, 65):
        for p in (1e-3, 1e-5, 1e-9, 1e-12):
            x = float(chdtri(df, p))
            assert chi_square_survival(df, x) == pytest.approx(p, rel=1e-9)


def test_edges() -> None:
    assert chi_square_survival(3, 0.0) == 1.0
    assert chi_square_survival(3, -1.0) == 1.0
    assert chi_square_survival(3, math.inf) == 0.0
    assert math.isnan(chi_square_survival(3, math.nan))
    assert chi_square_survival(2, 1e6) == 0.0
    with pytest.raises(ValueError, match="degrees of freedom"):
        chi_square_survival(0, 1.0)
