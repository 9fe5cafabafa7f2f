"""A tiny classifier served by Triton's Python backend, with a guard artifact fitted in numpy.

Small enough to load in a second, real enough to exercise the whole sidecar: input ``INPUT`` FP32
[8] in [0, 1], outputs ``FEATURES`` FP32 [16] (a fixed random ReLU layer) and ``LOGITS`` FP32 [4]
(nearest class centroid in feature space). Four well-separated input clusters are the four classes;
anything far from them is out of distribution. Version 2 is the same network with a sharper head
(the same top-1 class everywhere). Version 3, written only where a test asks for it, is a regressed
retrain: its head has the centroids of classes 0 and 1 swapped, so it disagrees with version 1 on
exactly the rows version 1 puts in class 0 or 1.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from guardedmodel_sidecar.guard.artifact import (
    DriftReference,
    EnergyParams,
    GuardArtifact,
    InputReference,
    MahalanobisParams,
    MspParams,
    save_artifact,
)
from guardedmodel_sidecar.guard.scoring import calibrated_confidence, make_ood_scorer

MODEL = "toy"
INPUT_DIM, FEATURE_DIM, CLASSES = 8, 16, 4

NETWORK = textwrap.dedent(
    """
    import numpy as np


    def forward(x, p):
        features = np.maximum(x @ p["w1"] + p["b1"], 0.0).astype(np.float32)
        d = ((features[:, None, :] - p["centroids"][None, :, :]) ** 2).sum(axis=2)
        logits = (-p["sharpness"] * d).astype(np.float32)
        return logits, features
    """
)

MODEL_PY = textwrap.dedent(
    """
    import os

    import numpy as np
    import triton_python_backend_utils as pb_utils

    from network import forward


    class TritonPythonModel:
        def initialize(self, args):
            here = os.path.dirname(__file__)
            self.params = dict(np.load(os.path.join(here, "params.npz")))

        def execute(self, requests):
            responses = []
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
                logits, features = forward(x, self.params)
                responses.append(pb_utils.InferenceResponse([
                    pb_utils.Tensor("LOGITS", logits), pb_utils.Tensor("FEATURES", features)
                ]))
            return responses
    """
)

CONFIG = textwrap.dedent(
    """
    name: "toy"
    backend: "python"
    max_batch_size: 64
    input [{ name: "INPUT", data_type: TYPE_FP32, dims: [ 8 ] }]
    output [
      { name: "LOGITS", data_type: TYPE_FP32, dims: [ 4 ] },
      { name: "FEATURES", data_type: TYPE_FP32, dims: [ 16 ] }
    ]
    instance_group [{ kind: KIND_CPU, count: 1 }]
    """
)


def _forward(x: np.ndarray, params: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    namespace: dict[str, object] = {}
    exec(NETWORK, namespace)  # the exact code Triton runs
    return namespace["forward"](x, params)  # type: ignore[operator]


@dataclass(frozen=True)
class ToyData:
    centers: np.ndarray  # (C, INPUT_DIM)

    def sample(self, n: int, seed: int, spread: float = 0.06) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, CLASSES, n)
        x = self.centers[labels] + rng.normal(0.0, spread, (n, INPUT_DIM))
        return np.clip(x, 0.0, 1.0).astype(np.float32), labels

    def ambiguous(self, n: int, seed: int) -> np.ndarray:
        """Midway between two class centers: in range, but the model cannot be sure."""
        rng = np.random.default_rng(seed)
        mid = 0.5 * (self.centers[0] + self.centers[1])
        return np.clip(mid + rng.normal(0.0, 0.005, (n, INPUT_DIM)), 0, 1).astype(np.float32)

    def far_ood(self, n: int, seed: int) -> np.ndarray:
        """Inputs in the valid range but nowhere near any class (e.g. every value at one extreme)."""
        rng = np.random.default_rng(seed)
        x = rng.choice([0.0, 1.0], size=(n, INPUT_DIM)).astype(np.float32)
        return x


def toy_data() -> ToyData:
    rng = np.random.default_rng(7)
    return ToyData(rng.uniform(0.25, 0.75, (CLASSES, INPUT_DIM)))


def _params(version: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    w1 = rng.normal(0.0, 1.0, (INPUT_DIM, FEATURE_DIM)).astype(np.float32)
    b1 = rng.normal(0.0, 0.1, FEATURE_DIM).astype(np.float32)
    data = toy_data()
    centroids = np.maximum(data.centers.astype(np.float32) @ w1 + b1, 0.0).astype(np.float32)
    if version == "3":
        centroids = centroids[[1, 0, 2, 3]]
    sharpness = np.float32(2.0 if version == "1" else 4.0)
    return {"w1": w1, "b1": b1, "centroids": centroids, "sharpness": np.asarray(sharpness)}


def fit_guard(version: str, params: dict[str, np.ndarray]) -> GuardArtifact:
    data = toy_data()
    x, labels = data.sample(4000, seed=int(version) * 101)
    logits, features = _forward(x, params)
    # temperature: grid search on the validation NLL
    best_t, best_nll = 1.0, np.inf
    for t in np.linspace(0.25, 5.0, 40):
        z = logits.astype(np.float64) / t
        z -= z.max(axis=1, keepdims=True)
        nll = -(z[np.arange(len(labels)), labels] - np.log(np.exp(z).sum(axis=1))).mean()
        if nll < best_nll:
            best_t, best_nll = float(t), nll
    f64 = features.astype(np.float64)
    means = np.stack([f64[labels == c].mean(axis=0) for c in range(CLASSES)])
    centered = f64 - means[labels]
    covariance = centered.T @ centered / len(labels) + 1e-3 * np.eye(FEATURE_DIM)
    confidence, predicted = calibrated_confidence(logits, best_t)
    bins = 10
    qs = np.linspace(0, 1, bins + 1)
    feature_edges = np.quantile(f64, qs, axis=0).T
    feature_fractions = np.full((FEATURE_DIM, bins), 1.0 / bins)
    confidence_edges = np.quantile(confidence, qs)
    per_sample_mean = x.reshape(len(x), -1).mean(axis=1)
    per_sample_std = x.reshape(len(x), -1).std(axis=1)
    m_lo, m_hi = np.quantile(per_sample_mean, [0.001, 0.999])
    s_lo, s_hi = np.quantile(per_sample_std, [0.001, 0.999])
    artifact = GuardArtifact(
        format_version=1,
        model_name=MODEL,
        model_version=version,
        num_classes=CLASSES,
        feature_dim=FEATURE_DIM,
        temperature=best_t,
        detectors={
            "mahalanobis": MahalanobisParams(means, np.linalg.inv(covariance)),
            "energy": EnergyParams(1.0),
            "msp": MspParams(best_t),
        },
        thresholds={},
        target_acceptance=0.99,
        reference=DriftReference(
            feature_edges=feature_edges,
            feature_fractions=feature_fractions,
            confidence_edges=confidence_edges,
            confidence_fractions=np.full(bins, 1.0 / bins),
            class_fractions=np.bincount(predicted, minlength=CLASSES) / len(predicted),
        ),
        input_reference=InputReference(
            name="INPUT",
            shape=(INPUT_DIM,),
            minimum=float(x.min()),
            maximum=float(x.max()),
            mean=float(x.mean()),
            std=float(x.std()),
            sample_mean_range=(float(m_lo) - 0.03, float(m_hi) + 0.03),
            sample_std_range=(float(s_lo) * 0.7, float(s_hi) * 1.3),
        ),
    )
    thresholds = {
        method: float(np.quantile(make_ood_scorer(method, artifact).score(logits, features), 0.99))
        for method in artifact.detectors
    }
    return GuardArtifact(**{**artifact.__dict__, "thresholds": thresholds})


def write_toy_repository(root: Path, versions: tuple[str, ...] = ("1", "2")) -> Path:
    """A Triton model repository with the toy model and a guard artifact next to each version."""
    repository = root / "models"
    model_dir = repository / MODEL
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(CONFIG)
    for version in versions:
        vdir = model_dir / version
        vdir.mkdir(exist_ok=True)
        params = _params(version)
        np.savez(vdir / "params.npz", **params)
        (vdir / "network.py").write_text(NETWORK)
        (vdir / "model.py").write_text(MODEL_PY)
        save_artifact(fit_guard(version, params), vdir / "guard")
    return repository


def reference_outputs(x: np.ndarray, version: str = "1") -> tuple[np.ndarray, np.ndarray]:
    return _forward(x, _params(version))
