"""Consistency checks of a guard artifact: shapes and values that must agree with each other."""

from __future__ import annotations

import dataclasses

import numpy as np

from .artifact_model import (
    COMBINATIONS,
    DETECTOR_TYPES,
    FEATURE_METHODS,
    SUPPORTED_FORMAT_VERSIONS,
    ArtifactError,
    DetectorParams,
    DriftReference,
    EnergyParams,
    FusedParams,
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
    if artifact.format_version not in SUPPORTED_FORMAT_VERSIONS:
        problems.append(
            f"format_version must be one of {SUPPORTED_FORMAT_VERSIONS}, got {artifact.format_version}"
        )
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
        if isinstance(params, FusedParams):
            problems.extend(_check_fused(params, artifact.detectors))
        problems.extend(_check_detector(method, params, c, d))
    problems.extend(_check_reference(artifact.reference, c, d))
    problems.extend(_check_calibration(artifact))
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


def _check_fused(params: FusedParams, detectors: dict[str, DetectorParams]) -> list[str]:
    out: list[str] = []
    members = params.members
    if len(members) < 2 or len(set(members)) != len(members):
        out.append(f"fused members {list(members)} must be two or more distinct detectors")
    for member in members:
        if member not in detectors or isinstance(detectors[member], FusedParams):
            out.append(f"fused member {member!r} is not a fitted single detector")
    if params.combination not in COMBINATIONS:
        out.append(f"fused combination {params.combination!r} is not one of {', '.join(COMBINATIONS)}")
    table = params.member_calibration
    if table.ndim != 2 or table.shape[0] != len(members) or table.shape[1] < 1:
        out.append(f"fused member_calibration shape {table.shape} is not ({len(members)}, n>=1)")
    elif np.any(np.diff(table, axis=1) < 0):
        out.append("fused member_calibration rows are not sorted ascending")
    return out


def _check_calibration(artifact: GuardArtifact) -> list[str]:
    """Calibration scores: one sorted, finite, non-empty vector per fitted detector; the fused
    detector and the auto choice need format version 2 (a version-1 reader cannot honour them)."""
    out: list[str] = []
    for method, scores in artifact.calibration_scores.items():
        if method not in artifact.detectors:
            out.append(f"calibration scores for {method!r} but no such detector")
        elif scores.dtype != np.float64:
            out.append(f"calibration scores for {method!r} are {scores.dtype}, not float64")
        elif scores.ndim != 1 or scores.size < 1:
            out.append(f"calibration scores for {method!r} have shape {scores.shape}, not (n>=1,)")
        elif not np.all(np.isfinite(scores)):
            out.append(f"calibration scores for {method!r} hold NaN or infinity")
        elif np.any(np.diff(scores) < 0):
            out.append(f"calibration scores for {method!r} are not sorted ascending")
    if "fused" in artifact.detectors and "fused" not in artifact.calibration_scores:
        out.append("the fused detector has no calibration scores (its p-values need them)")
    if artifact.auto_method is not None and artifact.auto_method not in artifact.detectors:
        out.append(f"auto_method {artifact.auto_method!r} is not a fitted detector")
    if artifact.format_version < 2 and (
        artifact.calibration_scores or artifact.auto_method is not None or "fused" in artifact.detectors
    ):
        out.append("calibration scores, the fused detector and auto_method need format_version 2")
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
