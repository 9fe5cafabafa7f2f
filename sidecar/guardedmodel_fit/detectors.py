"""Fitting the OOD detectors' parameters from in-distribution features and logits (numpy)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from guardedmodel_sidecar.guard.artifact import KnnParams, MahalanobisParams, VimParams


def fit_mahalanobis(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    shrinkage: float = 1e-3,
    normalise: bool = False,
) -> MahalanobisParams:
    """Class means and the precision of the pooled within-class covariance.

    A small ridge (``shrinkage`` x mean variance) keeps the covariance invertible when features
    are collinear or constant, which is common after a ReLU. ``normalise`` fits on L2-normalised
    features (the scorer then normalises too).
    """
    f = np.asarray(features, dtype=np.float64)
    if normalise:
        f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    y = np.asarray(labels, dtype=np.int64)
    present = np.bincount(y, minlength=num_classes)
    missing = np.flatnonzero(present == 0)
    if missing.size:
        raise ValueError(
            f"classes {missing.tolist()} have no samples in the fitting data; Mahalanobis needs each class"
        )
    means = np.zeros((num_classes, f.shape[1]))
    np.add.at(means, y, f)
    means /= present[:, None]
    centred = f - means[y]
    cov = centred.T @ centred / max(f.shape[0] - num_classes, 1)
    ridge = shrinkage * max(float(np.trace(cov)) / cov.shape[0], 1e-12)
    cov[np.diag_indices_from(cov)] += ridge
    precision = np.linalg.inv(cov)
    return MahalanobisParams(
        class_means=means, precision=0.5 * (precision + precision.T), normalise=normalise
    )


def fit_knn(features: np.ndarray, *, k: int = 5, bank_size: int | None = 4096, seed: int = 0) -> KnnParams:
    """A bank of L2-normalised features; subsampled (seeded) to ``bank_size`` to bound request cost."""
    f = np.asarray(features, dtype=np.float64)
    if bank_size is not None and f.shape[0] > bank_size:
        pick = np.random.default_rng(seed).choice(f.shape[0], size=bank_size, replace=False)
        f = f[np.sort(pick)]
    norms = np.linalg.norm(f, axis=1, keepdims=True)
    bank = (f / np.maximum(norms, 1e-12)).astype(np.float32)
    return KnnParams(bank=bank, k=int(min(max(k, 1), bank.shape[0])))


@dataclass(frozen=True)
class LinearHead:
    weight: np.ndarray  # (C, D)
    bias: np.ndarray  # (C,)
    relative_error: float  # ||F W^T + b - logits|| / ||logits|| on the data it was fitted to


def recover_linear_head(features: np.ndarray, logits: np.ndarray) -> LinearHead:
    """Least-squares fit of logits = W f + b; exact (error ~1e-6) when the last layer is linear."""
    f = np.asarray(features, dtype=np.float64)
    z = np.asarray(logits, dtype=np.float64)
    design = np.hstack([f, np.ones((f.shape[0], 1))])
    solution, *_ = np.linalg.lstsq(design, z, rcond=None)
    error = float(np.linalg.norm(design @ solution - z)) / max(float(np.linalg.norm(z)), 1e-12)
    return LinearHead(weight=solution[:-1].T, bias=solution[-1], relative_error=float(error))


def fit_vim(
    features: np.ndarray, logits: np.ndarray, head: LinearHead, *, principal_dim: int | None = None
) -> VimParams:
    """ViM: origin -pinv(W) b, principal subspace of centred features, alpha matching logit scale.

    ``principal_dim`` defaults to the smallest dimension holding 90% of the centred feature
    variance, but never below the number of classes (the logits live in that span).
    """
    f = np.asarray(features, dtype=np.float64)
    z = np.asarray(logits, dtype=np.float64)
    origin = -np.linalg.pinv(head.weight) @ head.bias
    centred = f - origin
    # principal directions of the (uncentred w.r.t. the data mean, centred on origin) features
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    d = f.shape[1]
    if principal_dim is None:
        energy = np.cumsum(singular**2) / np.sum(singular**2)
        principal_dim = int(np.searchsorted(energy, 0.9) + 1)
        principal_dim = max(principal_dim, z.shape[1])
    principal_dim = int(min(max(principal_dim, 1), d - 1))
    residual_basis = vt[principal_dim:].T  # (D, D - r), orthonormal columns
    residual_norm = np.linalg.norm(centred @ residual_basis, axis=1)
    alpha = float(np.mean(np.max(z, axis=1)) / max(np.mean(residual_norm), 1e-12))
    return VimParams(origin=origin, residual_basis=residual_basis, alpha=alpha)
