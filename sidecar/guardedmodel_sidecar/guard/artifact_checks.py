"""Consistency checks of a guard artifact: shapes and values that must agree with each other."""

from __future__ import annotations

import dataclasses

import numpy as np

from .artifact_model import (
    DETECTOR_TYPES,
    FEATURE_METHODS,
    ArtifactError,
    DetectorParams,
    DriftReference,
    EnergyParams,
    GuardArtifact,
    KnnParams,
    MahalanobisParams,
    MspParams,
    VimParams,
)

# ----------------------------------------------------------------------------------------- validate


def validate_artifact(artifact: GuardArtifact, *, source: str = "guard artifact") -> None:
    """Check that shapes and values agree with each other; raises ArtifactError."""
    problems: list[str] = []
    c, d = artifact.num_classes, artifact.feature_dim
    if c < 2:
        problems.append(f"num_classes must be >= 2, got {c}")
    if d < 0:
        problems.append(f"feature_dim must be >= 0, got {d}")
    if not (np.isfinite(artifact.temperature) and artifact.temperature > 0):
        problems.append(f"temperature must be a positive finite number, got {artifact.temperature}")
    if not 0.0 < artifact.target_acceptance <= 1.0:
        problems.append(f"target_acceptance must be in (0, 1], got {artifact.target_acceptance}")
    for method in artifact.thresholds:
        if method not in artifact.detectors:
            problems.append(f"threshold for {method!r} but no such detector")
    for method, value in artifact.thresholds.items():
        if not np.isfinite(value):
            problems.append(f"threshold for {method!r} is not finite ({value})")
    for method, params in artifact.detectors.items():
        expected_type = DETECTOR_TYPES.get(method)
        if expected_type is None or not isinstance(params, expected_type):
            problems.append(f"detector {method!r} has parameters of type {type(params).__name__}")
            continue
        if method in FEATURE_METHODS and d == 0:
            problems.append(f"detector {method!r} needs features but feature_dim is 0")
            continue
        problems.extend(_check_detector(method, params, c, d))
    problems.extend(_check_reference(artifact.reference, c, d))
    if problems:
        raise ArtifactError(f"{source}: invalid guard artifact: " + "; ".join(problems))


def _check_detector(method: str, params: DetectorParams, c: int, d: int) -> list[str]:
    out: list[str] = []
    if isinstance(params, MahalanobisParams):
        if params.class_means.shape != (c, d):
            out.append(f"mahalanobis class_means shape {params.class_means.shape} != {(c, d)}")
        if params.precision.shape != (d, d):
            out.append(f"mahalanobis precision shape {params.precision.shape} != {(d, d)}")
    elif isinstance(params, KnnParams):
        if params.bank.ndim != 2 or params.bank.shape[1] != d or params.bank.shape[0] < 1:
            out.append(f"knn bank shape {params.bank.shape} is not (N>=1, {d})")
        elif not 1 <= params.k <= params.bank.shape[0]:
            out.append(f"knn k={params.k} is not within 1..{params.bank.shape[0]}")
    elif isinstance(params, EnergyParams | MspParams):
        if not (np.isfinite(params.temperature) and params.temperature > 0):
            out.append(f"{method} temperature must be positive, got {params.temperature}")
    elif isinstance(params, VimParams):
        if params.origin.shape != (d,):
            out.append(f"vim origin shape {params.origin.shape} != {(d,)}")
        if params.residual_basis.ndim != 2 or params.residual_basis.shape[0] != d:
            out.append(f"vim residual_basis shape {params.residual_basis.shape} is not ({d}, k)")
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        if isinstance(value, np.ndarray) and not np.all(np.isfinite(value)):
            out.append(f"{method} {f.name} holds NaN or infinity")
    return out


def _check_reference(ref: DriftReference, c: int, d: int) -> list[str]:
    out: list[str] = []
    fe, ff = ref.feature_edges, ref.feature_fractions
    if fe.ndim != 2 or fe.shape[0] != d or ff.shape != (d, fe.shape[1] - 1):
        out.append(f"reference feature_edges {fe.shape} / feature_fractions {ff.shape} disagree with D={d}")
    elif d and np.any(np.diff(fe, axis=1) < 0):
        out.append("reference feature_edges are not non-decreasing")
    ce, cf = ref.confidence_edges, ref.confidence_fractions
    if ce.ndim != 1 or cf.shape != (ce.shape[0] - 1,):
        out.append(f"reference confidence_edges {ce.shape} / confidence_fractions {cf.shape} disagree")
    if ref.class_fractions.shape != (c,):
        out.append(f"reference class_fractions shape {ref.class_fractions.shape} != {(c,)}")
    return out
