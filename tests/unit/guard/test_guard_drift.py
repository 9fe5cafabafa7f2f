from __future__ import annotations

import numpy as np
import pytest

from guardedmodel_sidecar.guard.artifact import DriftReference
from guardedmodel_sidecar.guard.drift import (
    DRIFT_PSI_THRESHOLD,
    DriftAccumulator,
    bin_counts,
    ks_statistic,
    psi,
)


def test_psi_and_ks_known_values() -> None:
    # (0.75 - 0.5) ln 1.5 + (0.25 - 0.5) ln 0.5
    assert psi(np.array([0.5, 0.5]), np.array([75, 25])) == pytest.approx(
        0.25 * np.log(1.5) + 0.25 * np.log(2)
    )
    assert ks_statistic(np.array([0.5, 0.5]), np.array([75, 25])) == pytest.approx(0.25)
    assert psi(np.array([0.2] * 5), np.array([10] * 5)) == pytest.approx(0.0)


def test_psi_is_vectorised_and_nan_without_data() -> None:
    expected = np.array([[0.5, 0.5], [0.9, 0.1], [0.5, 0.5]])
    counts = np.array([[50, 50], [10, 90], [0, 0]])
    out = psi(expected, counts)
    assert out.shape == (3,)
    assert out[0] == pytest.approx(0.0)
    assert out[1] == pytest.approx(0.8 * np.log(9) * 2)
    assert np.isnan(out[2])
    assert np.isnan(ks_statistic(expected, counts)[2])


def test_bin_counts_matches_histogram_with_open_outer_bins(rng: np.random.Generator) -> None:
    values = rng.normal(size=(500, 3))
    edges = np.array([np.linspace(-1, 1, 5), np.linspace(-2, 0, 5), np.linspace(0, 3, 5)])
    counts = bin_counts(values, edges)
    for j in range(3):
        clipped = np.clip(values[:, j], edges[j, 0], edges[j, -1])
        hist, _ = np.histogram(clipped, bins=edges[j])
        assert np.array_equal(counts[j], hist)
    assert counts.sum() == 1500


def test_bin_counts_skips_non_finite_rows_and_handles_tied_edges() -> None:
    values = np.array([[0.0], [0.0], [np.nan], [2.0], [np.inf]])
    edges = np.array([[0.0, 0.0, 0.0, 1.0, 3.0]])  # ReLU-like ties at zero
    counts = bin_counts(values, edges)
    assert counts.tolist() == [[0, 0, 2, 1]]


def _reference(rng: np.random.Generator, n: int = 20000) -> tuple[DriftReference, np.ndarray, np.ndarray]:
    feats = rng.normal(size=(n, 4))
    conf = rng.beta(8, 2, size=n)
    edges = np.quantile(feats, np.linspace(0, 1, 11), axis=0).T
    f_counts = bin_counts(feats, edges)
    c_edges = np.quantile(conf, np.linspace(0, 1, 11))
    c_edges[0], c_edges[-1] = 0.0, 1.0
    c_counts = bin_counts(conf, c_edges)
    ref = DriftReference(edges, f_counts / n, c_edges, c_counts / n, np.full(3, 1 / 3))
    return ref, feats, conf


def test_accumulator_separates_no_drift_from_a_shift(rng: np.random.Generator) -> None:
    ref, _, _ = _reference(rng)
    acc = DriftAccumulator(ref)
    n = 4000
    same = acc.count(rng.normal(size=(n, 4)), rng.beta(8, 2, size=n), rng.integers(0, 3, size=n))
    calm = acc.score(same)
    assert calm.score < 0.05 and not calm.drifted
    assert calm.noise_floor == pytest.approx(9 / n)
    shifted = acc.count(rng.normal(loc=0.8, size=(n, 4)), rng.beta(3, 3, size=n), np.zeros(n, dtype=int))
    loud = acc.score(shifted)
    assert loud.drifted and loud.score > DRIFT_PSI_THRESHOLD
    assert loud.feature_psi_mean > DRIFT_PSI_THRESHOLD
    assert loud.confidence_psi > DRIFT_PSI_THRESHOLD
    assert loud.class_psi > DRIFT_PSI_THRESHOLD


def test_window_counts_add_and_subtract(rng: np.random.Generator) -> None:
    ref, _, _ = _reference(rng)
    acc = DriftAccumulator(ref)
    a = acc.count(rng.normal(size=(30, 4)), rng.random(30), rng.integers(0, 3, 30))
    b = acc.count(rng.normal(size=(20, 4)), rng.random(20), rng.integers(0, 3, 20))
    window = acc.zeros() + a + b
    assert window.n == 50 and window.features.sum() == 200 and window.classes.sum() == 50
    back = window - a
    assert np.array_equal(back.features, b.features) and back.n == 20
    assert np.isnan(acc.score(acc.zeros()).score)


def test_accumulator_without_feature_reference(rng: np.random.Generator) -> None:
    ref = DriftReference(
        np.zeros((0, 11)), np.zeros((0, 10)), np.linspace(0, 1, 5), np.full(4, 0.25), np.full(2, 0.5)
    )
    acc = DriftAccumulator(ref)
    scores = acc.score(acc.count(None, rng.random(400), rng.integers(0, 2, 400)))
    assert np.isnan(scores.feature_psi_mean)
    assert np.isfinite(scores.score) and scores.score < DRIFT_PSI_THRESHOLD
