"""The demo's traffic: the input categories it sends, and what the sidecar decided for each request.

Requests go through an unchanged tritonclient, as a user's client would send them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MODEL = "fashion-mnist"


@dataclass
class Outcome:
    """What the sidecar answered to one batch of requests."""

    decisions: Counter[str] = field(default_factory=Counter)
    confidences: list[float] = field(default_factory=list)
    ood_scores: list[float] = field(default_factory=list)
    versions: Counter[str] = field(default_factory=Counter)
    refusals: list[str] = field(default_factory=list)


@dataclass
class FreshRows:
    """Successive rows of a data set, cycling: sustained traffic that is a sample of the distribution.
    Sending the same few rows again and again is not one: the drift test rightly calls such windows
    drifted, whatever else changed."""

    rows: np.ndarray
    sent: int = 0

    def next(self, count: int) -> np.ndarray:
        index = np.arange(self.sent, self.sent + count) % len(self.rows)
        self.sent += count
        return self.rows[index]


def traffic_sets(build: Any, requests: int) -> dict[str, np.ndarray]:
    """`requests` inputs per category, drawn from the worked example's data sets; the first
    category is the in-distribution sample the later acts reuse."""
    rng = np.random.default_rng(7)

    def take(name: str) -> np.ndarray:
        inputs = np.asarray(build.dataset(name).inputs, dtype=np.float32)
        return inputs[rng.choice(len(inputs), size=requests, replace=False)]

    good = take("validation")
    corrupted = good.copy()
    corrupted[:, 0, :4, :4] = np.nan
    return {
        "in-distribution": good,
        "held-out classes (near-OOD)": take("held-out-classes"),
        "handwritten digits (far-OOD)": take("digits"),
        "inverted images": take("inverted"),
        "grey-level shift": take("grey-shift"),
        "out of range (x255)": good * 255.0,
        "NaN pixels": corrupted,
    }


def connection_lost() -> tuple[type[BaseException], ...]:
    """What tritonclient's HTTP client raises when the server goes away mid-request (a pod that
    rolls): refused or reset connections, or one closed before the response's headers."""
    from geventhttpclient.response import HTTPConnectionClosed

    return (OSError, HTTPConnectionClosed)


def send(
    address: str, inputs: np.ndarray, *, request_ids: Sequence[str] | None = None, version: str = ""
) -> Outcome:
    """One request per input to the sidecar's HTTP listener at `address` (host:port); the guard's
    decision read from each answer. `request_ids`: the client's id of each request (the audit record
    and a review item carry it); `version`: ask for that model version instead of the routed one."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(address)
    outcome = Outcome()
    try:
        for index, sample in enumerate(inputs):
            tensor = httpclient.InferInput("INPUT", [1, *sample.shape], "FP32")
            tensor.set_data_from_numpy(sample[None], binary_data=True)
            request_id = request_ids[index] if request_ids is not None else ""
            try:
                result = client.infer(MODEL, [tensor], model_version=version, request_id=request_id)
            except InferenceServerException as error:
                # 400: the gate refused a malformed input; 422: the scorer rejected it as OOD.
                kind = "rejected as OOD" if str(error.status()) == "422" else "refused by gate"
                outcome.decisions[kind] += 1
                outcome.refusals.append(f"[{error.status()}] {error.message()}")
                continue
            parameters = result.get_response().get("parameters", {})
            outcome.decisions[parameters.get("guard_decision", "?")] += 1
            outcome.versions[str(parameters.get("model_version", "?"))] += 1
            if parameters.get("guard_confidence") is not None:
                outcome.confidences.append(float(parameters["guard_confidence"]))
            if parameters.get("guard_ood_score") is not None:
                outcome.ood_scores.append(float(parameters["guard_ood_score"]))
    finally:
        client.close()
    return outcome


@dataclass
class BatchOutcome:
    """What the sidecar answered to batched requests, row by row."""

    decisions: list[str] = field(default_factory=list)  # per row, from GUARD_DECISION
    blanked: int = 0  # rows whose LOGITS came back NaN
    p_values: list[float] = field(default_factory=list)  # per row, from GUARD_OOD_P_VALUE
    refused_requests: int = 0  # every row refused: the request is refused whole (422)


def mixed_batch(
    good: np.ndarray, odd: np.ndarray, batch: int = 32, odd_rows: int = 3
) -> tuple[np.ndarray, list[int]]:
    """One batch of in-distribution rows with a few odd rows spread over it, and where they are."""
    x = good[:batch].copy()
    positions = [int(i) for i in np.linspace(batch // (2 * odd_rows), batch - 1, odd_rows).round()]
    x[positions] = odd[:odd_rows]
    return x, positions


def send_batches(address: str, inputs: np.ndarray, batch: int = 32) -> BatchOutcome:
    """``inputs`` in requests of ``batch`` rows; each row's decision read from the guard's outputs."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(address)
    outcome = BatchOutcome()
    try:
        for start in range(0, len(inputs), batch):
            rows = np.ascontiguousarray(inputs[start : start + batch])
            tensor = httpclient.InferInput("INPUT", list(rows.shape), "FP32")
            tensor.set_data_from_numpy(rows, binary_data=True)
            try:
                result = client.infer(MODEL, [tensor])  # unchanged call: every output comes back
            except InferenceServerException:
                outcome.refused_requests += 1
                outcome.decisions += ["reject"] * len(rows)
                continue
            outcome.decisions += [d.decode() for d in result.as_numpy("GUARD_DECISION")]
            outcome.blanked += int(np.isnan(result.as_numpy("LOGITS")).all(axis=1).sum())
            p_values = result.as_numpy("GUARD_OOD_P_VALUE")
            if p_values is not None:
                outcome.p_values += [float(p) for p in p_values]
    finally:
        client.close()
    return outcome
