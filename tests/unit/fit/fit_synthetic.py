"""Synthetic models and data with known answers, for the fit tests."""

from __future__ import annotations

import numpy as np

from guardedmodel_fit.extract import Extracted, ModelSpec

SPEC = ModelSpec("synthetic", "1", "INPUT", (4,), "LOGITS", "FEATURES")


def gaussian_classes(
    rng: np.random.Generator, n: int, *, num_classes: int = 3, dim: int = 8, separation: float = 2.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, labels, class means): Gaussians with one shared covariance, unit variance in the
    first half of the dimensions (where the class means differ) and small in the rest, like deep
    features that occupy a low-dimensional subspace."""
    means = separation * np.eye(num_classes, dim)
    labels = rng.integers(0, num_classes, size=n)
    scale = np.where(np.arange(dim) < dim // 2, 1.0, 0.05)
    return means[labels] + rng.normal(size=(n, dim)) * scale, labels, means


def linear_logits(features: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Logits of the Bayes classifier for equal-covariance Gaussians: affine in the features."""
    return features @ means.T - 0.5 * np.sum(means**2, axis=1)


def extracted(name: str, features: np.ndarray, logits: np.ndarray, labels: np.ndarray | None) -> Extracted:
    inputs = features[:, :4].astype(np.float32)  # stand-in raw inputs for the input reference
    return Extracted(name, logits, features, labels, inputs)


def synthetic_sets(rng: np.random.Generator, n: int = 3000) -> tuple[Extracted, Extracted, list[Extracted]]:
    """(validation, fit, [near OOD, far OOD]) from one generative model."""
    f, y, means = gaussian_classes(rng, n)
    fit_f, fit_y, _ = gaussian_classes(rng, n)
    val = extracted("validation", f, linear_logits(f, means), y)
    fit = extracted("fit", fit_f, linear_logits(fit_f, means), fit_y)
    near = rng.normal(size=(800, 8)) * 1.5 + 2.0 * means[2]  # beyond class 2, wider
    far = rng.normal(size=(800, 8)) + 8.0 * np.eye(8)[7]  # a direction no class uses
    oods = [
        extracted("near", near, linear_logits(near, means), None),
        extracted("far", far, linear_logits(far, means), None),
    ]
    return val, fit, oods
