"""Request-time scoring: calibrated confidence and out-of-distribution scores (numpy only).

Every scorer takes a batch of logits (b, C) and, where it needs them, penultimate features
(b, D) and returns one score per row, shape (b,), float64. HIGHER = MORE out-of-distribution;
compare with ``artifact.thresholds[method]`` (accept when score <= threshold).

Everything that does not depend on the request (Cholesky factors, whitened class means,
transposed feature banks) is computed once when the scorer is made, so a request costs a few
small matrix products. At batch 1 the logit scores and the fusion run on plain Python floats:
numpy's per-call overhead costs more than the arithmetic on a 10-element row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from .artifact import (
    DETECTOR_TYPES,
    FEATURE_METHODS,
    EnergyParams,
    FusedParams,
    GuardArtifact,
    KnnParams,
    MahalanobisParams,
    MspParams,
    VimParams,
)
from .conformal import ConformalReference, combine_p_value_row

METHODS: tuple[str, ...] = tuple(DETECTOR_TYPES)


class ScorerError(ValueError):
    """A scorer cannot be built or called as asked; the message says what to change."""


# ----------------------------------------------------------------------------------- confidence


def _as_logits(logits: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or (num_classes is not None and x.shape[1] != num_classes):
        want = f"(batch, {num_classes})" if num_classes is not None else "(batch, classes)"
        raise ScorerError(f"logits must have shape {want}, got {np.shape(logits)}")
    return x


def _batch_of(logits: np.ndarray, num_classes: int) -> int:
    """The batch size of ``logits`` (checked like ``_as_logits``) for scorers that only need that:
    converting the logits to float64 just to count rows costs more than the check."""
    shape = np.shape(logits)
    if len(shape) == 1 and shape[0] == num_classes:
        return 1
    if len(shape) == 2 and shape[1] == num_classes:
        return int(shape[0])
    raise ScorerError(f"logits must have shape (batch, {num_classes}), got {shape}")


def _single_row(logits: np.ndarray, num_classes: int) -> list[float] | None:
    """The logits as Python floats when the batch is one row (checked like ``_as_logits``),
    else None."""
    if _batch_of(logits, num_classes) != 1:
        return None
    row: list[float] = np.asarray(logits).reshape(-1).tolist()
    return row


def logsumexp(x: np.ndarray, axis: int = -1) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    return np.log(np.sum(np.exp(x - m), axis=axis)) + np.squeeze(m, axis=axis)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Softmax of logits / temperature, row-wise, numerically stable; (b, C) float64."""
    z = _as_logits(logits) / float(temperature)
    z = z - np.max(z, axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= np.sum(z, axis=1, keepdims=True)
    return z


def calibrated_confidence(logits: np.ndarray, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """(confidence (b,) float64, predicted class (b,) int64) after temperature scaling.

    The confidence is the largest softmax probability at the calibrated temperature; with good
    calibration its mean over a window estimates the model's accuracy on that window.
    """
    z = _as_logits(logits)
    predicted = np.argmax(z, axis=1)
    top = z[np.arange(z.shape[0]), predicted]
    # max softmax = 1 / sum_j exp((z_j - z_max) / T): no full probability matrix needed
    confidence = 1.0 / np.sum(np.exp((z - top[:, None]) / float(temperature)), axis=1)
    return confidence, predicted.astype(np.int64, copy=False)


# -------------------------------------------------------------------------------------- scorers


class OodScorer(Protocol):
    method: str
    requires_features: bool

    def score(self, logits: np.ndarray, features: np.ndarray | None) -> np.ndarray: ...


class _FeatureScorer:
    requires_features = True
    method = ""

    def __init__(self, num_classes: int, feature_dim: int) -> None:
        self.num_classes = num_classes
        self.feature_dim = feature_dim

    def _features(self, features: np.ndarray | None, batch: int, dtype: type = np.float64) -> np.ndarray:
        if features is None:
            raise ScorerError(f"the {self.method} OOD score needs the model's features; none were given")
        f: np.ndarray = (
            features.astype(dtype)
            if isinstance(features, np.ndarray) and features.dtype != dtype
            else np.asarray(features, dtype=dtype)
        )
        if f.ndim == 1:
            f = f[None, :]
        if f.ndim != 2 or f.shape[1] != self.feature_dim or f.shape[0] != batch:
            raise ScorerError(
                f"features must have shape ({batch}, {self.feature_dim}) to match the logits, "
                f"got {np.shape(features)}"
            )
        return f


class MahalanobisScorer(_FeatureScorer):
    """min over classes of (f - mu_c)^T P (f - mu_c), P the shared precision."""

    method = "mahalanobis"

    def __init__(self, params: MahalanobisParams, num_classes: int, feature_dim: int) -> None:
        super().__init__(num_classes, feature_dim)
        whitener = _psd_square_root(np.asarray(params.precision, dtype=np.float64))
        # With P = L L^T and z = f L: (f - mu)^T P (f - mu) = |z|^2 - 2 z.(mu L) + |mu L|^2.
        # [L | -2 L (M L)^T] gives z and every cross term in one product, so a request costs
        # one matrix product and a few reductions whatever the number of classes.
        means_w = np.asarray(params.class_means, dtype=np.float64) @ whitener  # (C, D)
        self._projection = np.ascontiguousarray(np.hstack([whitener, -2.0 * whitener @ means_w.T]))
        self._mean_norms = np.sum(means_w * means_w, axis=1)  # (C,)
        self._mean_norm_list: list[float] = self._mean_norms.tolist()
        self._normalise = bool(params.normalise)

    def score(self, logits: np.ndarray, features: np.ndarray | None) -> np.ndarray:
        batch = _batch_of(logits, self.num_classes)
        f = self._features(features, batch)
        if batch == 1:
            return np.array([self._score_row(f[0])])
        d = self.feature_dim
        y = f @ self._projection
        z, cross = y[:, :d], y[:, d:]
        squared = np.einsum("ij,ij->i", z, z)
        if self._normalise:
            # z and the cross terms of f / |f| are those of f scaled by 1 / |f| (and 1 / |f|^2).
            inv = 1.0 / np.maximum(np.sqrt(np.einsum("ij,ij->i", f, f)), 1e-12)
            squared *= inv * inv
            cross = cross * inv[:, None]
        out = squared + np.min(cross + self._mean_norms, axis=1)
        return np.maximum(out, 0.0, out=out)  # the expansion can dip below 0 by rounding

    def _score_row(self, f: np.ndarray) -> float:
        """One row: one product, one dot, the rest on C Python floats (numpy calls on
        C-element arrays cost more than the arithmetic)."""
        d = self.feature_dim
        y = np.dot(f, self._projection)  # np.dot: less dispatch than the @ operator on 1-D rows
        z = y[:d]
        squared = float(np.dot(z, z))
        cross = y[d:].tolist()
        scale = 1.0
        if self._normalise:
            scale = 1.0 / max(math.sqrt(float(np.dot(f, f))), 1e-12)
            squared *= scale * scale
        nearest = min(c * scale + m for c, m in zip(cross, self._mean_norm_list, strict=True))
        return max(squared + nearest, 0.0)


class KnnScorer(_FeatureScorer):
    """Euclidean distance from the normalised features to their k-th nearest neighbour in the bank."""

    method = "knn"

    def __init__(self, params: KnnParams, num_classes: int, feature_dim: int) -> None:
        super().__init__(num_classes, feature_dim)
        self._bank_t = np.ascontiguousarray(np.asarray(params.bank, dtype=np.float32).T)  # (D, N)
        self._k = int(params.k)

    def score(self, logits: np.ndarray, features: np.ndarray | None) -> np.ndarray:
        batch = _batch_of(logits, self.num_classes)
        f = self._features(features, batch, np.float32)
        norms = np.sqrt(np.einsum("ij,ij->i", f, f))
        sims = f @ self._bank_t
        # the k-th largest cosine similarity is the k-th nearest neighbour on the unit sphere
        kth = _kth_largest(sims, self._k) / np.maximum(norms, 1e-12)
        return np.sqrt(np.maximum(2.0 - 2.0 * kth.astype(np.float64), 0.0))


class VimScorer(_FeatureScorer):
    """alpha * |residual of (f - origin) off the principal subspace| - logsumexp(logits)."""

    method = "vim"

    def __init__(self, params: VimParams, num_classes: int, feature_dim: int) -> None:
        super().__init__(num_classes, feature_dim)
        basis = np.asarray(params.residual_basis, dtype=np.float64)
        self._basis = np.ascontiguousarray(basis)
        self._origin_proj = np.asarray(params.origin, dtype=np.float64) @ basis
        self._alpha = float(params.alpha)

    def score(self, logits: np.ndarray, features: np.ndarray | None) -> np.ndarray:
        z = _as_logits(logits, self.num_classes)
        r = self._features(features, z.shape[0]) @ self._basis
        r -= self._origin_proj
        return self._alpha * np.sqrt(np.einsum("ij,ij->i", r, r)) - logsumexp(z, axis=1)


class EnergyScorer:
    """Free energy -T logsumexp(logits / T); in-distribution inputs have lower (more negative) energy."""

    method = "energy"
    requires_features = False

    def __init__(self, params: EnergyParams, num_classes: int) -> None:
        self.num_classes = num_classes
        self._t = float(params.temperature)

    def score(self, logits: np.ndarray, features: np.ndarray | None = None) -> np.ndarray:
        row = _single_row(logits, self.num_classes)
        if row is not None:
            return np.array([self._score_row(row)])
        z = _as_logits(logits, self.num_classes)
        return -self._t * logsumexp(z / self._t, axis=1)

    def _score_row(self, row: list[float]) -> float:
        top, t = max(row), self._t
        # NaN or +inf logits give NaN, as in the numpy path
        return -(t * math.log(sum(math.exp((v - top) / t) for v in row)) + top)


class MspScorer:
    """1 - maximum softmax probability (the baseline every other detector should beat)."""

    method = "msp"
    requires_features = False

    def __init__(self, params: MspParams, num_classes: int) -> None:
        self.num_classes = num_classes
        self._t = float(params.temperature)

    def score(self, logits: np.ndarray, features: np.ndarray | None = None) -> np.ndarray:
        row = _single_row(logits, self.num_classes)
        if row is not None:
            top, t = max(row), self._t
            return np.array([1.0 - 1.0 / sum(math.exp((v - top) / t) for v in row)])
        z = _as_logits(logits, self.num_classes)
        confidence, _ = calibrated_confidence(z, self._t)
        return 1.0 - confidence


class FusedScorer:
    """Conformal fusion: each member's score becomes its conformal p-value against the member's
    calibration scores (part A of the calibration split; interpolated between them, so the
    statistic has no ties), and the p-values are combined (Fisher's -2 sum ln p, or -ln min p). The result is a score like any other (higher = more OOD); its own
    calibration scores (part B) turn it into a p-value that is valid whatever the dependence
    between members."""

    method = "fused"

    def __init__(self, params: FusedParams, members: Sequence[OodScorer]) -> None:
        if len(members) != params.member_calibration.shape[0]:
            raise ScorerError(
                f"fused detector has {params.member_calibration.shape[0]} calibration rows for "
                f"{len(members)} members"
            )
        self.members = tuple(members)
        self.requires_features = any(m.requires_features for m in self.members)
        if params.combination not in ("fisher", "min"):
            raise ScorerError(f"unknown p-value combination {params.combination!r} (known: fisher, min)")
        self._references = tuple(ConformalReference(row) for row in params.member_calibration)
        self._combination = params.combination

    def score(self, logits: np.ndarray, features: np.ndarray | None) -> np.ndarray:
        member_scores = [m.score(logits, features) for m in self.members]
        if member_scores[0].shape[0] == 1:
            return np.array([self._score_row([float(s[0]) for s in member_scores])])
        p = [ref.interpolated_p_values(s) for ref, s in zip(self._references, member_scores, strict=True)]
        # combine_p_values without stacking the rows (a copy that costs more than the sums)
        if self._combination == "fisher":
            out = np.log(p[0])
            for q in p[1:]:
                out += np.log(q)
            out *= -2.0
        else:
            smallest = p[0]
            for q in p[1:]:
                np.minimum(smallest, q, out=smallest)
            out = -np.log(smallest)
        # a row a member cannot score is not scored by the fusion either (as with single detectors)
        for member in member_scores:
            if np.isnan(member.sum()):
                out[np.isnan(member)] = np.nan
        return out

    def _score_row(self, scores: list[float]) -> float:
        if any(s != s for s in scores):  # NaN
            return math.nan
        p = [ref.interpolated_p_value(s) for ref, s in zip(self._references, scores, strict=True)]
        return combine_p_value_row(p, self._combination)


def make_ood_scorer(method: str, artifact: GuardArtifact) -> OodScorer:
    """Build the scorer for ``method`` from a loaded artifact (precomputes what it can)."""
    if method not in DETECTOR_TYPES:
        raise ScorerError(f"unknown OOD method {method!r}; known methods: {', '.join(METHODS)}")
    params = artifact.detectors.get(method)
    if params is None:
        fitted = ", ".join(artifact.detectors) or "none"
        raise ScorerError(
            f"the guard artifact of {artifact.model_name} version {artifact.model_version} has no "
            f"{method!r} detector (fitted: {fitted}); refit with that method or choose another"
        )
    if method in FEATURE_METHODS and (artifact.feature_dim <= 0 or not artifact.features_output):
        raise ScorerError(
            f"the {method!r} OOD score needs penultimate features, but the artifact of "
            f"{artifact.model_name} has none; use 'energy' or 'msp', or export a features output"
        )
    c, d = artifact.num_classes, artifact.feature_dim
    if isinstance(params, FusedParams):
        if "fused" in params.members:
            raise ScorerError("the fused detector cannot be its own member")
        return FusedScorer(params, [make_ood_scorer(m, artifact) for m in params.members])
    if isinstance(params, MahalanobisParams):
        return MahalanobisScorer(params, c, d)
    if isinstance(params, KnnParams):
        return KnnScorer(params, c, d)
    if isinstance(params, VimParams):
        return VimScorer(params, c, d)
    if isinstance(params, EnergyParams):
        return EnergyScorer(params, c)
    if isinstance(params, MspParams):
        return MspScorer(params, c)
    raise ScorerError(f"detector {method!r} has unexpected parameters {type(params).__name__}")


def _kth_largest(x: np.ndarray, k: int) -> np.ndarray:
    """k-th largest value of each row. For small k, k passes of max() beat np.partition ~10x."""
    if k == 1:
        return np.max(x, axis=1)
    if k > 16:
        return -np.partition(-x, k - 1, axis=1)[:, k - 1]
    work = x.copy()
    rows = np.arange(x.shape[0])
    for _ in range(k - 1):
        work[rows, np.argmax(work, axis=1)] = -np.inf
    return np.max(work, axis=1)


def _psd_square_root(precision: np.ndarray) -> np.ndarray:
    """L with L @ L.T == precision; Cholesky when it works, an eigen-square-root otherwise."""
    sym = 0.5 * (precision + precision.T)
    try:
        return np.linalg.cholesky(sym)
    except np.linalg.LinAlgError:
        # Nearly singular precisions happen with collinear features; clip tiny negative eigenvalues.
        values, vectors = np.linalg.eigh(sym)
        return vectors * np.sqrt(np.clip(values, 0.0, None))
