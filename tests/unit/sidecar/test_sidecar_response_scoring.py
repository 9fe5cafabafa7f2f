"""A Triton answer the guard cannot score (an output missing or of the wrong shape, as a crashing backend
sends) is Triton's fault: a 502 (gRPC UNAVAILABLE) that names what is wrong, never an internal error."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from guardedmodel_sidecar.decision import DecisionPolicy
from guardedmodel_sidecar.errors import UpstreamError
from guardedmodel_sidecar.gate import InputGate
from guardedmodel_sidecar.guard.artifact import MahalanobisParams
from guardedmodel_sidecar.guard.scoring import MahalanobisScorer
from guardedmodel_sidecar.protocol.model import InferResponse, OutputTensor
from guardedmodel_sidecar.response_scoring import score_response
from guardedmodel_sidecar.version_guard import VersionGuard
from guardedmodel_sidecar.version_metrics import VersionMetrics

CLASSES, FEATURES = 3, 4


def guard() -> VersionGuard:
    scorer = MahalanobisScorer(
        MahalanobisParams(np.zeros((CLASSES, FEATURES)), np.eye(FEATURES)), CLASSES, FEATURES
    )
    policy = DecisionPolicy(0.6, "mahalanobis", 10.0, "review")
    metrics = VersionMetrics("m", "1", "mahalanobis", 10.0, None, FEATURES)
    gate = InputGate((), max_batch=8)
    return VersionGuard("1", gate, 1.0, scorer, policy, "LOGITS", "FEATURES", True, metrics)


def tensor(name: str, array: np.ndarray) -> OutputTensor:
    array = array.astype(np.float32)
    return OutputTensor(name, "FP32", array.shape, array.tobytes())


def answer(*outputs: OutputTensor) -> InferResponse:
    return InferResponse("m", "1", "", {}, list(outputs))


def test_a_whole_answer_is_scored() -> None:
    scores = score_response(
        guard(), answer(tensor("LOGITS", np.eye(2, CLASSES)), tensor("FEATURES", np.ones((2, FEATURES))))
    )
    assert scores.ood is not None and scores.ood.shape == (2,)


@pytest.mark.parametrize(
    ("outputs", "why"),
    [
        ((tensor("LOGITS", np.eye(2, CLASSES)),), "needs the model's features; none were given"),
        (
            (tensor("LOGITS", np.eye(2, CLASSES)), tensor("FEATURES", np.ones((2, FEATURES + 1)))),
            "features must have shape",
        ),
        (
            (tensor("LOGITS", np.eye(2, CLASSES + 2)), tensor("FEATURES", np.ones((2, FEATURES)))),
            "logits must have shape",
        ),
    ],
)
def test_an_answer_the_guard_cannot_score_is_a_502(outputs: tuple[OutputTensor, ...], why: str) -> None:
    with pytest.raises(UpstreamError, match=why) as refused:
        score_response(guard(), answer(*outputs))
    assert refused.value.http_status == 502 and refused.value.grpc_code == grpc.StatusCode.UNAVAILABLE
    assert "model 'm' version 1 answered in a form the guard cannot score" in refused.value.message
