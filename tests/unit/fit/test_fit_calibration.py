from __future__ import annotations

import numpy as np
import pytest
from scipy import special

from guardedmodel_fit import metrics
from guardedmodel_fit.calibration import fit_temperature


@pytest.mark.parametrize("true_temperature", [0.5, 1.0, 2.5])
def test_temperature_scaling_recovers_the_generating_temperature(true_temperature: float) -> None:
    """Labels drawn from softmax(z / T0): the NLL-optimal temperature is T0 (up to sampling noise)."""
    rng = np.random.default_rng(11)
    logits = rng.normal(scale=3.0, size=(20000, 6))
    probs = special.softmax(logits / true_temperature, axis=1)
    labels = (rng.random((len(logits), 1)) > np.cumsum(probs, axis=1)).sum(axis=1)
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(true_temperature, rel=0.04)
    conf_raw = probs.max(axis=1) if true_temperature == 1.0 else special.softmax(logits, axis=1).max(axis=1)
    pred = logits.argmax(axis=1)
    conf_fit = special.softmax(logits / t, axis=1).max(axis=1)
    ece_after = metrics.expected_calibration_error(conf_fit, pred == labels)
    assert ece_after < 0.015
    assert ece_after <= metrics.expected_calibration_error(conf_raw, pred == labels) + 0.005


def test_temperature_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="empty"):
        fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int))
    with pytest.raises(ValueError, match=r"logits \(n, C\) and labels \(n,\)"):
        fit_temperature(np.zeros((4, 3)), np.zeros(5, dtype=int))
