"""The single-row confidence shortcut equals the guard's vectorised calibrated confidence."""

from __future__ import annotations

import numpy as np
import pytest

from guardedmodel_sidecar.guard.scoring import calibrated_confidence
from guardedmodel_sidecar.response_scoring import single_row_confidence


@pytest.mark.parametrize("temperature", [0.25, 1.0, 3.7])
def test_single_row_confidence_matches_the_guard(temperature: float) -> None:
    rng = np.random.default_rng(1)
    for scale in (0.1, 1.0, 30.0):
        logits = (rng.normal(0, scale, (50, 10))).astype(np.float32)
        for row in logits:
            fast, fast_pred = single_row_confidence(row, temperature)
            ref, ref_pred = calibrated_confidence(row[None, :], temperature)
            np.testing.assert_allclose(fast, ref, rtol=1e-12)
            np.testing.assert_array_equal(fast_pred, ref_pred)
    tie = np.array([2.0, 5.0, 5.0, 1.0], np.float32)
    assert single_row_confidence(tie, 1.0)[1][0] == calibrated_confidence(tie[None, :], 1.0)[1][0] == 1
