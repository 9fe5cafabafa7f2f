"""Guard artifacts built from explicit synthetic parameters (no fitting involved), for guard tests.

Their calibration scores are the detectors' own scores on draws of the synthetic inputs
(``draw_inputs``), and the fused detector is made the same way the fit makes it: members'
references on one part of the draws, its own calibration scores on the other.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from guardedmodel_sidecar.guard.artifact import (
    FORMAT_VERSION,
    DriftReference,
    EnergyParams,
    FusedParams,
    GuardArtifact,
    InputReference,
    KnnParams,
    MahalanobisParams,
    MspParams,
    VimParams,
)

C, D = 4, 6


def draw_inputs(rng: np.random.Generator, n: int, feature_dim: int = D) -> tuple[np.ndarray, np.ndarray]:
    """(logits (n, C), features (n, D)): the synthetic in-distribution inputs."""
    return rng.normal(size=(n, C)), rng.normal(size=(n, feature_dim))


def make_artifact(
    rng: np.random.Generator,
    *,
    feature_dim: int = D,
    with_features: bool = True,
    calibration_samples: int = 400,
    combination: str = "fisher",
) -> GuardArtifact:
    d = feature_dim if with_features else 0
    detectors: dict = {"energy": EnergyParams(1.0), "msp": MspParams(1.7)}
    thresholds = {"energy": -2.0, "msp": 0.4}
    if with_features:
        a = rng.normal(size=(d, d))
        bank = rng.normal(size=(50, d))
        bank /= np.linalg.norm(bank, axis=1, keepdims=True)
        q, _ = np.linalg.qr(rng.normal(size=(d, d)))
        detectors |= {
            "mahalanobis": MahalanobisParams(rng.normal(size=(C, d)), a @ a.T + np.eye(d)),
            "knn": KnnParams(bank.astype(np.float32), 3),
            "vim": VimParams(rng.normal(size=d), q[:, 2:], 1.3),
        }
        thresholds |= {"mahalanobis": 10.0, "knn": 0.5, "vim": 1.0}
    edges = np.sort(rng.normal(size=(d, 6)), axis=1)
    reference = DriftReference(
        feature_edges=edges,
        feature_fractions=np.full((d, 5), 0.2),
        confidence_edges=np.linspace(0.0, 1.0, 5),
        confidence_fractions=np.full(4, 0.25),
        class_fractions=np.full(C, 1.0 / C),
    )
    artifact = GuardArtifact(
        format_version=FORMAT_VERSION,
        model_name="synthetic",
        model_version="3",
        num_classes=C,
        feature_dim=d,
        temperature=1.7,
        detectors=detectors,
        thresholds=thresholds,
        target_acceptance=0.95,
        reference=reference,
        input_reference=InputReference("INPUT", (2, 3), 0.0, 1.0, 0.5, 0.2, (0.3, 0.7), (0.1, 0.3)),
        features_output="FEATURES" if with_features else None,
        metadata={"report": {"note": "synthetic"}},
    )
    return (
        with_calibration(artifact, rng, calibration_samples, combination) if calibration_samples else artifact
    )


def with_calibration(
    artifact: GuardArtifact, rng: np.random.Generator, n: int, combination: str = "fisher"
) -> GuardArtifact:
    """``artifact`` with every detector's calibration scores on n fresh draws, and (with features)
    a fused Mahalanobis + energy detector whose members' references and own scores split them."""
    from guardedmodel_sidecar.guard.scoring import make_ood_scorer

    logits, features = draw_inputs(rng, n, max(artifact.feature_dim, 1))
    feats = features if artifact.feature_dim else None
    scores = {m: make_ood_scorer(m, artifact).score(logits, feats) for m in artifact.detectors}
    calibration = {m: np.sort(v) for m, v in scores.items()}
    detectors = dict(artifact.detectors)
    if {"mahalanobis", "energy"} <= set(detectors):
        half = n // 2
        members = ("mahalanobis", "energy")
        table = np.stack([np.sort(scores[m][:half]) for m in members])
        detectors["fused"] = FusedParams(members, combination, table)
        draft = dataclasses.replace(artifact, detectors=detectors)
        b_logits = logits[half:]
        b_feats = None if feats is None else feats[half:]
        calibration["fused"] = np.sort(make_ood_scorer("fused", draft).score(b_logits, b_feats))
    thresholds = {m: float(v[int(0.95 * (v.size - 1))]) for m, v in calibration.items()}
    return dataclasses.replace(
        artifact,
        detectors=detectors,
        thresholds={
            **artifact.thresholds,
            **{m: t for m, t in thresholds.items() if m not in artifact.thresholds},
        },
        calibration_scores=calibration,
        auto_method="fused" if "fused" in detectors else "energy",
    )
