from __future__ import annotations

import numpy as np
import pytest

from guardedmodel_sidecar.guard.artifact import InputReference
from guardedmodel_sidecar.guard.inputs import check_inputs

REF = InputReference("INPUT", (2, 3), 0.0, 1.0, 0.3, 0.3, (0.2, 0.4), (0.1, 0.5))


def test_normal_samples_pass_and_each_shift_is_named() -> None:
    normal = np.array([[0.0, 0.6, 0.3, 0.2, 0.5, 0.2]])
    grey = normal * 0.3 + 0.6  # mean 0.69: a level shift within the value range
    flat = np.full((1, 6), 0.3)  # right mean, no spread
    wild = normal.copy()
    wild[0, 0] = 7.0
    nan = normal.copy()
    nan[0, 1] = np.nan
    batch = np.concatenate([normal, grey, flat, wild, nan]).reshape(5, 2, 3)
    findings = check_inputs(batch, REF)
    assert findings.any.tolist() == [False, True, True, True, True]
    assert findings.reason(0) is None
    assert "level shift" in (findings.reason(1) or "")
    assert "contrast" in (findings.reason(2) or "")
    assert "outside the range" in (findings.reason(3) or "")
    assert findings.out_of_range[4]


def test_range_tolerance_widens_the_range() -> None:
    x = np.array([[1.05, 0.2, 0.1, 0.2, 0.3, 0.1]])
    assert check_inputs(x, REF).out_of_range[0]
    assert not check_inputs(x, REF, range_tolerance=0.1).out_of_range[0]


def test_wrong_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match=r"does not hold samples of shape \(2, 3\)"):
        check_inputs(np.zeros((1, 5)), REF)
