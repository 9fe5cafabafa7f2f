from __future__ import annotations

import numpy as np
import pytest
from guard_synthetic import C, D, make_artifact
from scipy import special, stats

from guardedmodel_sidecar.guard.artifact import FusedParams, GuardArtifact, KnnParams, MahalanobisParams
from guardedmodel_sidecar.guard.scoring import (
    METHODS,
    FusedScorer,
    KnnScorer,
    MahalanobisScorer,
    ScorerError,
    calibrated_confidence,
    make_ood_scorer,
    softmax,
)


def test_softmax_is_stable_and_normalised() -> None:
    logits = np.array([[1000.0, 999.0, -1000.0], [0.0, 0.0, 0.0]])
    p = softmax(logits, temperature=2.0)
    assert np.allclose(p.sum(axis=1), 1.0)
    assert np.allclose(p[0, :2], special.softmax([500.0, 499.5]))
    assert np.allclose(p[1], 1 / 3)


def test_calibrated_confidence_is_max_softmax_at_temperature(rng: np.random.Generator) -> None:
    logits = rng.normal(scale=4.0, size=(64, 7))
    conf, pred = calibrated_confidence(logits, 2.5)
    expected = special.softmax(logits / 2.5, axis=1)
    assert np.allclose(conf, expected.max(axis=1))
    assert np.array_equal(pred, expected.argmax(axis=1))
    assert pred.dtype == np.int64
    # a higher temperature can only lower the top probability
    assert np.all(calibrated_confidence(logits, 5.0)[0] <= conf + 1e-12)


def test_scores_match_their_definitions(artifact: GuardArtifact, rng: np.random.Generator) -> None:
    logits = rng.normal(size=(17, C))
    features = rng.normal(size=(17, D))
    maha = artifact.detectors["mahalanobis"]
    diffs = features[:, None, :] - maha.class_means[None]
    expected_maha = np.einsum("ncd,de,nce->nc", diffs, maha.precision, diffs).min(axis=1)
    knn = artifact.detectors["knn"]
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    dists = np.linalg.norm(unit[:, None, :] - knn.bank[None].astype(np.float64), axis=2)
    expected_knn = np.sort(dists, axis=1)[:, knn.k - 1]
    vim = artifact.detectors["vim"]
    residual = np.linalg.norm((features - vim.origin) @ vim.residual_basis, axis=1)
    expected = {
        "mahalanobis": expected_maha,
        "knn": expected_knn,
        "energy": -special.logsumexp(logits, axis=1),
        "msp": 1.0 - special.softmax(logits / 1.7, axis=1).max(axis=1),
        "vim": vim.alpha * residual - special.logsumexp(logits, axis=1),
    }
    expected["fused"] = reference_fused(artifact.detectors["fused"], expected)
    for method in METHODS:
        scores = make_ood_scorer(method, artifact).score(logits, features)
        assert scores.shape == (17,)
        assert np.allclose(scores, expected[method], rtol=1e-5, atol=1e-5), method


def test_batch_of_one_and_one_dimensional_rows_agree(
    artifact: GuardArtifact, rng: np.random.Generator
) -> None:
    logits = rng.normal(size=(5, C))
    features = rng.normal(size=(5, D))
    for method in METHODS:
        scorer = make_ood_scorer(method, artifact)
        batch = scorer.score(logits, features)
        single = np.array([scorer.score(logits[i], features[i])[0] for i in range(5)])
        assert np.allclose(batch, single, rtol=1e-5), method


def reference_interpolated_p_value(reference: np.ndarray, s: float) -> float:
    """By counting: the conformal p-value (1 + #{A >= s}) / (n + 1) outside the calibration range;
    inside, lo < s <= hi the calibration scores around s, the rank #{A < x} interpolated linearly
    between x = lo and x = hi."""
    n = reference.size
    lower, upper = reference[reference < s], reference[reference >= s]
    if not (lower.size and upper.size):
        return float((1 + np.count_nonzero(reference >= s)) / (n + 1))
    lo, hi = lower.max(), upper.min()
    rank_lo, rank_hi = np.count_nonzero(reference < lo), np.count_nonzero(reference < hi)
    rank = rank_lo + (rank_hi - rank_lo) * (s - lo) / (hi - lo)
    return float((1 + n - rank) / (n + 1))


def reference_fused(params: FusedParams, member_scores: dict[str, np.ndarray]) -> np.ndarray:
    """The fused statistic spelt out: each member's interpolated p-value, then Fisher's
    -2 sum ln p or -ln min p."""
    p = np.array(
        [
            [reference_interpolated_p_value(reference, s) for s in member_scores[m]]
            for m, reference in zip(params.members, params.member_calibration, strict=True)
        ]
    )
    if params.combination == "fisher":
        return -2.0 * np.log(p).sum(axis=0)
    return -np.log(p.min(axis=0))


@pytest.mark.parametrize("combination", ["fisher", "min"])
@pytest.mark.parametrize("batch", [1, 23])
def test_fused_score_is_the_combined_conformal_p_values_of_its_members(
    rng: np.random.Generator, combination: str, batch: int
) -> None:
    artifact = make_artifact(rng, combination=combination)
    fused = artifact.detectors["fused"]
    assert isinstance(fused, FusedParams) and fused.combination == combination
    logits, features = 1.5 * rng.normal(size=(batch, C)), 1.5 * rng.normal(size=(batch, D))
    members = {m: make_ood_scorer(m, artifact).score(logits, features) for m in fused.members}
    # exact ties with calibration scores decide the count: use calibration values themselves too
    members["mahalanobis"][0] = fused.member_calibration[0, 7]
    scorer = make_ood_scorer("fused", artifact)
    assert isinstance(scorer, FusedScorer) and scorer.requires_features
    got = np.array([scorer._score_row([float(members[m][i]) for m in fused.members]) for i in range(batch)])
    assert np.allclose(got, reference_fused(fused, members), rtol=1e-12)
    assert np.allclose(scorer.score(logits, features)[1:], reference_fused(fused, members)[1:], rtol=1e-12)


def test_fused_score_is_nan_when_a_member_cannot_score(rng: np.random.Generator) -> None:
    artifact = make_artifact(rng)
    scorer = make_ood_scorer("fused", artifact)
    logits, features = rng.normal(size=(3, C)), rng.normal(size=(3, D))
    features[1, 0] = np.nan
    scores = scorer.score(logits, features)
    assert np.isnan(scores[1]) and np.all(np.isfinite(scores[[0, 2]]))
    assert np.isnan(scorer.score(logits[1], features[1])[0])


def test_logit_scores_at_batch_one_give_nan_for_nan_or_infinite_logits(artifact: GuardArtifact) -> None:
    for method in ("energy", "msp"):
        scorer = make_ood_scorer(method, artifact)
        for bad in (np.nan, np.inf):
            row = np.array([[0.5, bad, -1.0, 2.0]])
            assert np.isnan(scorer.score(row, None)[0]), (method, bad)
            assert np.isnan(scorer.score(np.repeat(row, 2, axis=0), None)).all(), (method, bad)


@pytest.mark.parametrize("k", [1, 4, 20])
def test_knn_kth_neighbour_for_every_k(rng: np.random.Generator, k: int) -> None:
    bank = rng.normal(size=(200, 8))
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    scorer = KnnScorer(KnnParams(bank.astype(np.float32), k), 3, 8)
    f = rng.normal(size=(9, 8))
    unit = f / np.linalg.norm(f, axis=1, keepdims=True)
    expected = np.sort(np.linalg.norm(unit[:, None] - bank[None], axis=2), axis=1)[:, k - 1]
    assert np.allclose(scorer.score(np.zeros((9, 3)), f), expected, atol=1e-5)


def test_mahalanobis_auroc_matches_the_optimal_test_for_a_scale_shift(rng: np.random.Generator) -> None:
    """In-distribution N(0, S), OOD N(0, s^2 S): the squared Mahalanobis distance is chi2_D and
    s^2 chi2_D, the likelihood ratio is monotone in it, so the best AUROC is P(F(D, D) < s^2)."""
    d, s, n = 5, 1.3, 6000
    a = rng.normal(size=(d, d))
    cov = a @ a.T + 0.5 * np.eye(d)
    chol = np.linalg.cholesky(cov)
    params = MahalanobisParams(np.zeros((2, d)), np.linalg.inv(cov))
    scorer = MahalanobisScorer(params, 2, d)
    id_scores = scorer.score(np.zeros((n, 2)), rng.normal(size=(n, d)) @ chol.T)
    ood_scores = scorer.score(np.zeros((n, 2)), s * rng.normal(size=(n, d)) @ chol.T)
    ranks = stats.rankdata(np.concatenate([id_scores, ood_scores]))
    auroc = (ranks[n:].sum() - n * (n + 1) / 2) / (n * n)
    assert auroc == pytest.approx(stats.f.cdf(s**2, d, d), abs=0.015)


@pytest.mark.parametrize("batch", [1, 9])
def test_normalised_mahalanobis_is_the_distance_of_the_unit_feature(
    rng: np.random.Generator, batch: int
) -> None:
    d, c = 6, 3
    a = rng.normal(size=(d, d))
    precision = np.linalg.inv(a @ a.T + 0.5 * np.eye(d))
    means = rng.normal(size=(c, d))
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    scorer = MahalanobisScorer(MahalanobisParams(means, precision, normalise=True), c, d)
    features = 3.0 * rng.normal(size=(batch, d)).astype(np.float32)
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    diffs = unit[:, None, :] - means[None]
    expected = np.einsum("ncd,de,nce->nc", diffs, precision, diffs).min(axis=1)
    assert np.allclose(scorer.score(np.zeros((batch, c)), features), expected, rtol=1e-5, atol=1e-6)


def test_feature_methods_refuse_an_artifact_without_features(rng: np.random.Generator) -> None:
    logits_only = make_artifact(rng, with_features=False)
    assert make_ood_scorer("energy", logits_only).score(np.zeros((2, C)), None).shape == (2,)
    with pytest.raises(ScorerError, match="no 'mahalanobis' detector"):
        make_ood_scorer("mahalanobis", logits_only)


def test_clear_errors_for_unknown_methods_and_bad_shapes(artifact: GuardArtifact) -> None:
    with pytest.raises(ScorerError, match=r"unknown OOD method 'odin'.*mahalanobis"):
        make_ood_scorer("odin", artifact)
    scorer = make_ood_scorer("mahalanobis", artifact)
    with pytest.raises(ScorerError, match="needs the model's features"):
        scorer.score(np.zeros((2, C)), None)
    with pytest.raises(ScorerError, match=rf"features must have shape \(2, {D}\)"):
        scorer.score(np.zeros((2, C)), np.zeros((2, D + 1)))
    with pytest.raises(ScorerError, match=rf"logits must have shape \(batch, {C}\)"):
        make_ood_scorer("energy", artifact).score(np.zeros((2, C + 2)), None)


def test_singular_precision_still_scores(rng: np.random.Generator) -> None:
    v = rng.normal(size=(D, 2))
    precision = v @ v.T  # rank 2: Cholesky fails, the eigen square root takes over
    scorer = MahalanobisScorer(MahalanobisParams(np.zeros((C, D)), precision), C, D)
    f = rng.normal(size=(4, D))
    assert np.allclose(
        scorer.score(np.zeros((4, C)), f), np.einsum("nd,de,ne->n", f, precision, f), atol=1e-8
    )
