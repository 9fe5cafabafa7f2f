"""Conformal p-values and the fused detector against their closed forms, by simulation.

Under exchangeability the rank of a new score among n calibration scores is uniform on 1..n+1,
so P(p <= alpha) = floor(alpha (n + 1)) / (n + 1) exactly (averaged over calibration draws);
the fused detector keeps that whatever the dependence between its members.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from guard_synthetic import C, D, draw_inputs, make_artifact
from scipy import stats

from guardedmodel_sidecar.guard.artifact import FusedParams, GuardArtifact, MahalanobisParams, VimParams
from guardedmodel_sidecar.guard.conformal import (
    ConformalError,
    ConformalReference,
    combine_p_value_row,
    combine_p_values,
    guaranteed_rejection_rate,
)
from guardedmodel_sidecar.guard.scoring import make_ood_scorer


def test_p_value_ranks_are_uniform_over_calibration_draws(rng: np.random.Generator) -> None:
    """One calibration set of n = 19 and one new score per draw: (n + 1) p is uniform on 1..20."""
    n, draws = 19, 6000
    ranks = np.empty(draws, dtype=np.int64)
    for i in range(draws):
        scores = rng.gamma(2.0, size=n + 1)  # skewed, like OOD scores
        p = ConformalReference(scores[:n]).p_value(float(scores[n]))
        ranks[i] = round(p * (n + 1))
    counts = np.bincount(ranks, minlength=n + 2)[1:]
    assert counts.sum() == draws
    assert stats.chisquare(counts).pvalue > 1e-3


def test_p_values_of_fresh_draws_are_uniform_by_ks(rng: np.random.Generator) -> None:
    """Randomised p-values p - U / (n + 1) are exactly Uniform(0, 1) under exchangeability."""
    n, sets, fresh = 499, 40, 100
    p = np.concatenate(
        [
            ConformalReference(rng.standard_t(3, size=n)).p_values(rng.standard_t(3, size=fresh))
            - rng.uniform(size=fresh) / (n + 1)
            for _ in range(sets)
        ]
    )
    assert stats.kstest(p, "uniform").pvalue > 1e-3


@pytest.mark.parametrize(("n", "alpha"), [(57, 0.05), (99, 0.1), (240, 0.01), (30, 0.2)])
def test_rejection_rate_is_the_guaranteed_one(rng: np.random.Generator, n: int, alpha: float) -> None:
    """P(p <= alpha) = floor(alpha (n + 1)) / (n + 1) <= alpha, also where alpha (n + 1) is not an
    integer (57: 2.9, 240: 2.41); one fresh score per calibration draw, so draws are independent."""
    draws = 40000
    data = rng.lognormal(size=(draws, n + 1))
    # rank of the fresh score among the calibration ones, vectorised: p = (1 + #{s_i >= s}) / (n + 1)
    p = (1 + np.sum(data[:, :n] >= data[:, n : n + 1], axis=1)) / (n + 1)
    rate = float(np.mean(p <= alpha))
    expected = guaranteed_rejection_rate(alpha, n)
    assert expected <= alpha
    tolerance = 4.0 * np.sqrt(expected * (1 - expected) / draws)
    assert rate == pytest.approx(expected, abs=tolerance)
    assert rate <= alpha + tolerance


@pytest.mark.parametrize("n", [1, 7, 100, 1000])
def test_threshold_decision_equals_p_value_decision(rng: np.random.Generator, n: int) -> None:
    calibration = rng.integers(0, 12, size=n).astype(np.float64)  # many ties
    reference = ConformalReference(calibration)
    scores = np.concatenate([calibration, rng.integers(-2, 15, size=300).astype(np.float64), [np.inf]])
    for alpha in (0.001, 0.01, 0.05, 0.1, 0.2, 0.5, 0.99):
        threshold = reference.threshold(alpha)
        assert np.array_equal(scores > threshold, reference.p_values(scores) <= alpha), alpha
        single = np.array([reference.p_value(float(s)) for s in scores])
        assert np.array_equal(single, reference.p_values(scores))


def test_a_nan_score_gets_the_smallest_p_value() -> None:
    reference = ConformalReference(np.arange(9.0))
    assert reference.p_value(float("nan")) == pytest.approx(0.1)
    assert reference.p_values(np.array([np.nan, -1.0]))[0] == pytest.approx(0.1)
    assert reference.p_values(np.array([np.nan, -1.0]))[1] == 1.0


def test_bad_calibration_scores_and_alphas_are_refused() -> None:
    with pytest.raises(ConformalError, match="at least one calibration score"):
        ConformalReference(np.zeros(0))
    with pytest.raises(ConformalError, match="must be finite"):
        ConformalReference(np.array([1.0, np.inf]))
    with pytest.raises(ConformalError, match=r"alpha must be in \(0, 1\)"):
        ConformalReference(np.ones(3)).threshold(0.0)
    with pytest.raises(ConformalError, match="unknown p-value combination 'simes'"):
        combine_p_values(np.full((2, 3), 0.5), "simes")


def test_combinations_in_closed_form() -> None:
    p = np.array([[0.5, 0.01], [0.2, 1.0]])
    assert np.allclose(combine_p_values(p, "fisher"), [-2 * np.log(0.1), -2 * np.log(0.01)])
    assert np.allclose(combine_p_values(p, "min"), [-np.log(0.2), -np.log(0.01)])
    for rule in ("fisher", "min"):
        assert combine_p_value_row([0.5, 0.2], rule) == pytest.approx(combine_p_values(p[:, :1], rule)[0])


def _fused_on_draws(
    artifact: GuardArtifact,
    rng: np.random.Generator,
    members: tuple[str, ...],
    combination: str,
    n_a: int,
    n_b: int,
) -> ConformalReference:
    """Fit the fused detector the way the fit does, on fresh in-distribution draws: members'
    references on A, the fused statistic's calibration scores on B."""
    logits, features = draw_inputs(rng, n_a)
    table = np.stack([np.sort(make_ood_scorer(m, artifact).score(logits, features)) for m in members])
    artifact.detectors["fused"] = FusedParams(members, combination, table)
    logits, features = draw_inputs(rng, n_b)
    return ConformalReference(make_ood_scorer("fused", artifact).score(logits, features))


@pytest.mark.parametrize("combination", ["fisher", "min"])
def test_fused_p_values_are_valid_for_strongly_dependent_members(
    rng: np.random.Generator, combination: str
) -> None:
    """Mahalanobis distance |f|^2 and ViM's 1000 |f| - logsumexp(logits) rank inputs almost alike:
    Fisher's chi-square (which assumes independent members) rejects far more than alpha, the
    conformal fused p-value rejects alpha's share."""
    base = make_artifact(rng, calibration_samples=0)
    base = dataclasses.replace(
        base,
        detectors={
            **base.detectors,
            "mahalanobis": MahalanobisParams(np.zeros((C, D)), np.eye(D)),
            "vim": VimParams(np.zeros(D), np.eye(D), 1000.0),
        },
    )
    members = ("mahalanobis", "vim")
    n_a, n_b, fresh, repeats, alpha = 100, 199, 200, 150, 0.05
    conditional_rates, naive_rates = [], []
    for _ in range(repeats):
        artifact = dataclasses.replace(base, detectors=dict(base.detectors))
        reference = _fused_on_draws(artifact, rng, members, combination, n_a, n_b)
        logits, features = draw_inputs(rng, fresh)
        statistic = make_ood_scorer("fused", artifact).score(logits, features)
        conditional_rates.append(np.mean(reference.p_values(statistic) <= alpha))
        if combination == "fisher":  # the textbook reference distribution assumes independence
            naive_rates.append(np.mean(stats.chi2.sf(statistic, 2 * len(members)) <= alpha))
    rate = float(np.mean(conditional_rates))
    expected = guaranteed_rejection_rate(alpha, n_b)
    standard_error = float(np.std(conditional_rates)) / np.sqrt(repeats)
    assert rate == pytest.approx(expected, abs=4 * standard_error + 0.003)
    if naive_rates:
        assert np.mean(naive_rates) > 1.4 * alpha


def test_fused_detector_flags_what_one_member_sees(rng: np.random.Generator) -> None:
    """A row far out for Mahalanobis (features) and ordinary for energy (logits) is rejected."""
    artifact = make_artifact(rng, calibration_samples=800)
    reference = ConformalReference(artifact.calibration_scores["fused"])
    scorer = make_ood_scorer("fused", artifact)
    logits, features = draw_inputs(rng, 50)
    far = scorer.score(logits, features + 25.0)
    near = scorer.score(logits, features)
    assert np.mean(reference.p_values(far) <= 0.05) == 1.0
    assert np.mean(reference.p_values(near) <= 0.05) < 0.3


def test_interpolated_p_values_join_the_conformal_ones_continuously(rng: np.random.Generator) -> None:
    calibration = np.sort(rng.integers(0, 30, size=60).astype(np.float64))  # ties included
    reference = ConformalReference(calibration)
    n = calibration.size
    grid = np.linspace(-5.0, 35.0, 4001)
    smooth = reference.interpolated_p_values(grid)
    step = reference.p_values(grid)
    # between the step function at s and at the calibration score just below s
    below = np.concatenate([[-np.inf], calibration])[np.searchsorted(calibration, grid, side="left")]
    assert np.all(smooth >= step) and np.all(smooth <= reference.p_values(below) + 1e-12)
    assert np.array_equal(reference.interpolated_p_values(calibration), reference.p_values(calibration))
    assert np.all(np.diff(smooth) <= 1e-12)  # non-increasing in the score
    # continuous at every calibration score (ties too) but the largest, above which it drops to
    # the floor 1 / (n + 1); the step function jumps at each
    points = np.unique(calibration)[:-1]
    jumps = reference.interpolated_p_values(points + 1e-9) - reference.interpolated_p_values(points - 1e-9)
    assert np.max(np.abs(jumps)) < 1e-6
    assert np.all(reference.p_values(points + 1e-9) < reference.p_values(points - 1e-9))
    top = calibration[-1]
    assert reference.interpolated_p_values(np.array([top + 1e-9]))[0] == 1 / (n + 1)
    assert reference.interpolated_p_values(np.array([-1.0, 99.0, np.nan])).tolist() == [
        1.0,
        1 / (n + 1),
        1 / (n + 1),
    ]
    single = np.array([reference.interpolated_p_value(float(s)) for s in grid])
    assert np.allclose(single, smooth, rtol=0, atol=1e-12)
