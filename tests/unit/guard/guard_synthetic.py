"""Guard artifacts built from explicit synthetic parameters (no fitting involved), for guard tests."""

from __future__ import annotations

import numpy as np

from guardedmodel_sidecar.guard.artifact import (
    FORMAT_VERSION,
    DriftReference,
    EnergyParams,
    GuardArtifact,
    InputReference,
    KnnParams,
    MahalanobisParams,
    MspParams,
    VimParams,
)

C, D = 4, 6


def make_artifact(
    rng: np.random.Generator, *, feature_dim: int = D, with_features: bool = True
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
    return GuardArtifact(
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
