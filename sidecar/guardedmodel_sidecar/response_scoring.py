"""Scores of a Triton response under one version's guard: calibrated confidence, predicted class,
OOD score (and its conformal p-value when the guard has calibration scores) and the features drift
needs, one per row. The micro-batcher scores a stacked batch once and hands each caller its rows;
otherwise the pipeline scores each response."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from guardedmodel_sidecar.errors import GuardError, Unavailable, UpstreamError
from guardedmodel_sidecar.guard.scoring import ScorerError, calibrated_confidence
from guardedmodel_sidecar.protocol.model import InferResponse
from guardedmodel_sidecar.version_guard import VersionGuard


@dataclass(slots=True)
class Scores:
    confidence: np.ndarray  # (b,) calibrated
    predicted: np.ndarray  # (b,) class index
    ood: np.ndarray | None  # (b,) higher = more OOD
    features: np.ndarray | None  # (b, D) when drift or the detector needs them
    ood_p_value: np.ndarray | None = None  # (b,) conformal p-value of ``ood``, when the guard has one

    def rows(self, start: int, stop: int) -> Scores:
        return Scores(
            self.confidence[start:stop],
            self.predicted[start:stop],
            None if self.ood is None else self.ood[start:stop],
            None if self.features is None else self.features[start:stop],
            None if self.ood_p_value is None else self.ood_p_value[start:stop],
        )


def single_row_confidence(logits: np.ndarray, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """``calibrated_confidence`` for one row in plain Python floats.

    Same formula (max softmax = 1 / sum_j exp((z_j - z_max) / T)); a dozen numpy calls on a
    10-element array cost ~20x more than this loop, and batch 1 is the common request. A unit test
    holds it equal to the guard's vectorised version.
    """
    values = logits.tolist()
    top = max(values)
    inv_t = 1.0 / temperature
    total = 0.0
    for v in values:
        total += math.exp((v - top) * inv_t)
    return np.array([1.0 / total]), np.array([values.index(top)], dtype=np.int64)


def score_response(guard: VersionGuard, response: InferResponse) -> Scores:
    logits_out = response.output(guard.logits_output)
    if logits_out is None:
        raise Unavailable(
            f"model '{guard.metrics.model}' version {guard.version} returned no '{guard.logits_output}' "
            "output; the guard cannot score it (set tuning.logitsOutput to the logits output's name)"
        )
    logits = logits_out.as_numpy()
    logits = logits.reshape(logits.shape[0], -1)
    features = None
    if guard.needs_features and guard.features_output:
        features_out = response.output(guard.features_output)
        if features_out is not None:
            features = features_out.as_numpy()
            features = features.reshape(features.shape[0], -1)
    try:
        if logits.shape[0] == 1:
            confidence, predicted = single_row_confidence(logits[0], guard.temperature)
        else:
            confidence, predicted = calibrated_confidence(logits, guard.temperature)
        ood = guard.scorer.score(logits, features) if guard.scorer is not None else None
    except ScorerError as exc:
        # Triton's answer, not the sidecar, is at fault (an output missing or of the wrong shape, as a
        # backend that is crashing sends): a 502 that says so, not an internal error.
        raise UpstreamError(
            f"model '{guard.metrics.model}' version {guard.version} answered in a form the guard cannot "
            f"score: {exc}",
            502,
        ) from None
    p_value = None
    conformal = guard.conformal
    if ood is not None and conformal is not None:
        # One row: bisect on a list beats numpy's searchsorted on a 1-element array.
        p_value = np.array([conformal.p_value(ood.item())]) if ood.shape[0] == 1 else conformal.p_values(ood)
    return Scores(confidence, predicted, ood, features, p_value)


def score_version(guards: dict[str, VersionGuard], version: str, response: InferResponse) -> Scores | None:
    """Scores of a whole (stacked) response, for the micro-batcher; None when it cannot (the
    pipeline then scores each caller's rows itself and reports what is wrong)."""
    guard = guards.get(version)
    if guard is None:
        return None
    try:
        return score_response(guard, response)
    except (GuardError, ScorerError, ValueError):
        return None
