"""The drift test: its statistics against scipy's, its p-values under no drift (simulated with a
finite reference, as a fit has), its power against real shifts, and the decision rules."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from scipy.stats import binomtest, chi2_contingency, power_divergence

from guardedmodel_fit.reference import drift_reference
from guardedmodel_sidecar.guard.artifact import DriftReference
from guardedmodel_sidecar.guard.drift import DriftAccumulator, DriftCounts
from guardedmodel_sidecar.guard.drift_decision import (
    Decision,
    DriftPolicy,
    bonferroni,
    decide_window,
    goodness_of_fit_p,
    group_bins,
    homogeneity_p,
    window_p_values,
)

FEATURES, CLASSES, REFERENCE_ROWS = 8, 6, 4000
_MIX = np.random.default_rng(0).normal(size=(3, FEATURES + CLASSES))


def population(
    rng: np.random.Generator, n: int, *, shift: float = 0.0, class_bias: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of a small network's outputs: correlated ReLU features (many exact zeros, so bins tie),
    a softmax confidence and a skewed class mix. ``shift`` moves every feature's pre-activation
    (a grey-level shift does that); ``class_bias`` favours class 0 (a class-prior shift)."""
    z = rng.normal(size=(n, 3))
    hidden = z @ _MIX + rng.normal(scale=0.7, size=(n, FEATURES + CLASSES))
    features = np.maximum(hidden[:, :FEATURES] + np.linspace(-1.0, 1.0, FEATURES) + shift, 0.0)
    logits = hidden[:, FEATURES:] + np.linspace(0.0, 1.5, CLASSES)
    logits[:, 0] += class_bias
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    return features, probs.max(axis=1), probs.argmax(axis=1)


def fitted_reference(rng: np.random.Generator, rows: int = REFERENCE_ROWS) -> DriftReference:
    """What the fit stores: quantile bins of a finite calibration split, and its row count."""
    return drift_reference(*population(rng, rows), CLASSES)


def window_counts(acc: DriftAccumulator, rng: np.random.Generator, n: int, **shift: float) -> DriftCounts:
    return acc.count(*population(rng, n, **shift))


# ------------------------------------------------------------------ the statistics, closed forms


def test_homogeneity_is_scipys_cressie_read_test_on_the_two_row_table() -> None:
    reference = np.array([400.0, 300.0, 200.0, 100.0])
    window = np.array([60.0, 80.0, 40.0, 20.0])
    want = chi2_contingency(np.vstack([reference, window]), correction=False, lambda_="cressie-read")
    assert homogeneity_p(reference, window) == pytest.approx(want.pvalue, rel=1e-9)


def test_goodness_of_fit_is_scipys_cressie_read_test() -> None:
    fractions = np.array([0.4, 0.3, 0.2, 0.1])
    window = np.array([60.0, 80.0, 40.0, 20.0])
    want = power_divergence(window, fractions * 200, lambda_="cressie-read")
    assert goodness_of_fit_p(fractions, window) == pytest.approx(want.pvalue, rel=1e-9)


def test_sparse_bins_are_grouped_before_testing() -> None:
    # ordered: neighbours join until a group reaches the need (10 here); the short tail joins the last group
    assert group_bins(np.array([4, 4, 4, 0, 12, 3]), 10, ordered=True).tolist() == [0, 0, 0, -1, 1, 1]
    # unordered (classes): the rarest join first
    assert group_bins(np.array([50, 2, 40, 3, 6]), 10, ordered=False).tolist() == [2, 0, 1, 0, 0]
    # one group: nothing to test
    assert group_bins(np.array([3, 3, 3]), 10, ordered=True).tolist() == [0, 0, 0]
    assert math.isnan(homogeneity_p(np.array([900.0, 100.0]), np.array([5.0, 1.0])))
    # the grouped test is the plain test on the grouped table
    reference, window = np.array([300.0, 20.0, 20.0, 660.0]), np.array([30.0, 3.0, 1.0, 66.0])
    grouped = homogeneity_p(np.array([340.0, 660.0]), np.array([34.0, 66.0]))
    assert homogeneity_p(reference, window) == pytest.approx(grouped)


def test_a_bin_the_reference_never_saw_counts_as_evidence() -> None:
    # too few rows to test it alone, the unseen bin joins its neighbour, whose excess still shows
    fractions = np.array([0.5, 0.5, 0.0])
    assert goodness_of_fit_p(fractions, np.array([500.0, 500.0, 0.0])) > 0.5
    assert goodness_of_fit_p(fractions, np.array([400.0, 400.0, 200.0])) < 1e-6
    assert homogeneity_p(fractions * 4000, np.array([400.0, 400.0, 200.0])) < 1e-6


def test_bonferroni() -> None:
    assert bonferroni([0.01, 0.5, math.nan, 0.2]) == pytest.approx(0.03)
    assert bonferroni([0.6, 0.9]) == 1.0
    assert math.isnan(bonferroni([math.nan]))


# ------------------------------------------------------------------ no drift: p-values are valid


def null_p_values(seed: int, n: int, references: int, windows: int, rows: int = REFERENCE_ROWS) -> np.ndarray:
    """Window p-values when nothing drifted: each reference is its own finite fit sample (the test
    is valid over the draw of the reference too), windows are new rows of the same population."""
    rng = np.random.default_rng(seed)
    out = []
    policy = DriftPolicy(alpha=0.05, min_samples=1)
    for _ in range(references):
        reference = fitted_reference(rng, rows)
        acc = DriftAccumulator(reference)
        for _ in range(windows):
            out.append(decide_window(reference, window_counts(acc, rng, n), policy).p_value)
    return np.nan_to_num(np.asarray(out), nan=1.0)


def at_most(count: int, trials: int, rate: float) -> bool:
    """count/trials is not significantly above rate (one-sided binomial test at 1 %)."""
    return binomtest(count, trials, rate, alternative="greater").pvalue > 0.01


@pytest.mark.parametrize("n", [50, 100, 400])  # 50: about the smallest window with a test
def test_false_alarm_rate_is_at_most_alpha_at_every_window_size(n: int) -> None:
    p = null_p_values(seed=n, n=n, references=20, windows=60)
    for alpha in (0.01, 0.05, 0.2):
        assert at_most(int(np.sum(p <= alpha)), p.size, alpha), (alpha, np.mean(p <= alpha))


def test_each_statistics_p_value_is_uniform_under_no_drift() -> None:
    """Per statistic (before Bonferroni) the rejection rate matches its level, not just stays
    below it: the test is not needlessly conservative. Features 0-1 are mostly zeros (few bins,
    discrete p-values), so the check uses the smooth ones and the class mix."""
    rng = np.random.default_rng(7)
    pooled: list[float] = []
    for _ in range(10):
        reference = fitted_reference(rng)
        acc = DriftAccumulator(reference)
        for _ in range(60):
            p = window_p_values(reference, window_counts(acc, rng, 200))
            pooled += [p[k] for k in ("feature 6", "feature 7", "confidence", "classes")]
    values = np.asarray(pooled)
    for level in (0.05, 0.2, 0.5):
        rate = float(np.mean(values <= level))
        assert abs(rate - level) < 4 * math.sqrt(level * (1 - level) / values.size), (level, rate)


def test_old_artifacts_without_a_row_count_use_goodness_of_fit() -> None:
    rng = np.random.default_rng(3)
    # fractions from a reference 50 times larger than a window: near exact, the GOF test holds
    p = []
    for _ in range(5):
        reference = replace(fitted_reference(rng, 50_000), samples=0)
        acc = DriftAccumulator(reference)
        policy = DriftPolicy(alpha=0.05, min_samples=1)
        p += [decide_window(reference, window_counts(acc, rng, 200), policy).p_value for _ in range(60)]
    values = np.nan_to_num(np.asarray(p), nan=1.0)
    assert at_most(int(np.sum(values <= 0.05)), values.size, 0.05)


@pytest.mark.slow
@pytest.mark.parametrize("n", [50, 60, 100, 1000])
def test_false_alarm_rate_at_the_default_alpha(n: int) -> None:
    """alpha = 0.001 needs many windows to check: 20,000 per size (minutes)."""
    p = null_p_values(seed=1000 + n, n=n, references=40, windows=500)
    assert at_most(int(np.sum(p <= 0.001)), p.size, 0.001), np.mean(p <= 0.001)


# ------------------------------------------------------------------ power and the decision rules


@pytest.mark.parametrize(
    ("shift", "n"),
    # a feature shift of 0.4 standard deviations; class 0 from 2.5 % to 10 % of the rows
    [({"shift": 0.4}, 200), ({"class_bias": 1.0}, 600), ({"shift": 1.0}, 60)],
)
def test_a_real_shift_is_detected(shift: dict[str, float], n: int) -> None:
    rng = np.random.default_rng(11)
    reference = fitted_reference(rng)
    acc = DriftAccumulator(reference)
    policy = DriftPolicy(alpha=0.001, min_samples=20)
    results = [decide_window(reference, window_counts(acc, rng, n, **shift), policy) for _ in range(20)]
    assert sum(r.decision is Decision.DRIFTED for r in results) >= 19
    assert all(r.p_value <= 0.001 for r in results if r.decision is Decision.DRIFTED)
    if n >= 200:  # every feature, the confidence and the class mix; smaller windows test fewer
        assert results[0].tests == FEATURES + 2


def test_too_few_rows_is_insufficient_data_not_a_verdict() -> None:
    rng = np.random.default_rng(5)
    reference = fitted_reference(rng)
    acc = DriftAccumulator(reference)
    policy = DriftPolicy(alpha=0.001, min_samples=100)
    few = window_counts(acc, rng, 99, shift=3.0)  # drifted, but too few rows to say so
    result = decide_window(reference, few, policy)
    assert result.decision is Decision.INSUFFICIENT and math.isnan(result.p_value)
    assert math.isnan(result.decision.gauge)
    # enough rows by minSamples, too few to fill three groups of 15 expected rows (or two of 30)
    # in any statistic
    for n in (12, 30):
        tiny = decide_window(reference, window_counts(acc, rng, n), replace(policy, min_samples=10))
        assert tiny.decision is Decision.INSUFFICIENT and tiny.tests == 0
    assert decide_window(reference, window_counts(acc, rng, 400, shift=3.0), policy).decision.gauge == 1.0
    assert decide_window(reference, acc.zeros(), policy).decision is Decision.INSUFFICIENT


def test_workers_share_alpha() -> None:
    rng = np.random.default_rng(9)
    reference = fitted_reference(rng)
    acc = DriftAccumulator(reference)
    counts = window_counts(acc, rng, 150, shift=0.25)
    p = decide_window(reference, counts, DriftPolicy(alpha=0.5, min_samples=1)).p_value
    # a p-value between alpha / 4 and alpha: drifted for one process, stable for one of four
    alpha = 2 * p
    assert decide_window(reference, counts, DriftPolicy(alpha, 1)).decision is Decision.DRIFTED
    assert decide_window(reference, counts, DriftPolicy(alpha, 1, workers=4)).decision is Decision.STABLE
    assert DriftPolicy(0.001, workers=4).test_alpha == pytest.approx(0.00025)
