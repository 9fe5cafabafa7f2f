from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from guardedmodel_fit import metrics


@pytest.mark.parametrize("d", [0.5, 1.0, 2.0])
def test_auroc_of_two_gaussians_is_phi_of_d_over_sqrt2(d: float) -> None:
    rng = np.random.default_rng(7)
    id_scores, ood_scores = rng.normal(size=20000), rng.normal(loc=d, size=20000)
    assert metrics.auroc(id_scores, ood_scores) == pytest.approx(stats.norm.cdf(d / np.sqrt(2)), abs=0.006)


def test_auroc_extremes_and_ties() -> None:
    assert metrics.auroc([0, 1, 2], [3, 4]) == 1.0
    assert metrics.auroc([3, 4], [0, 1]) == 0.0
    assert metrics.auroc([1, 1, 1], [1, 1]) == 0.5
    with pytest.raises(ValueError, match="at least one"):
        metrics.auroc([], [1.0])


def test_fpr_at_95_tpr_of_two_gaussians() -> None:
    rng = np.random.default_rng(8)
    d = 2.0
    fpr = metrics.fpr_at_tpr(rng.normal(size=40000), rng.normal(loc=d, size=40000), 0.95)
    # threshold at the 95% quantile of N(0,1); OOD N(d,1) accepted below it
    assert fpr == pytest.approx(stats.norm.cdf(stats.norm.ppf(0.95) - d), abs=0.01)


def test_threshold_accepts_at_least_the_target_share() -> None:
    scores = np.arange(1, 101, dtype=float)
    t = metrics.threshold_at_acceptance(scores, 0.95)
    assert t == 95.0 and np.mean(scores <= t) == 0.95
    assert metrics.threshold_at_acceptance(scores[:7], 0.95) == 7.0  # ceil: 6.65 -> all 7


def test_roc_curve_area_matches_auroc() -> None:
    rng = np.random.default_rng(9)
    a, b = rng.normal(size=500), rng.normal(loc=1.0, size=400)
    fpr, tpr = metrics.roc_curve(a, b)
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == pytest.approx(1) and tpr[-1] == pytest.approx(1)
    assert float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)) == pytest.approx(
        metrics.auroc(a, b), abs=1e-9
    )


def test_ece_known_values() -> None:
    rng = np.random.default_rng(10)
    conf = rng.uniform(0.3, 1.0, size=100000)
    calibrated = rng.random(conf.size) < conf
    assert metrics.expected_calibration_error(conf, calibrated) < 0.01
    overconfident = np.full(1000, 0.9)
    correct = np.arange(1000) < 700
    assert metrics.expected_calibration_error(overconfident, correct) == pytest.approx(0.2)


def test_nll_of_uniform_logits_is_log_classes() -> None:
    assert metrics.negative_log_likelihood(np.zeros((5, 4)), np.arange(5) % 4) == pytest.approx(np.log(4))
