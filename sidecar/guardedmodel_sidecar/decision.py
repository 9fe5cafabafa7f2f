"""accept | review | reject from calibrated confidence, OOD score and gate flags (pure).

Per sample: an OOD score above the threshold takes the spec's action (reject, review, or flag, which
keeps ``accept`` but marks it); a calibrated confidence below ``reviewBelow`` asks for review. A gate
flag (e.g. a brightness shift) asks for review of the whole request. The request's decision is the
most severe of its samples', so a batch is only ``accept`` when every sample is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ACCEPT = "accept"
REVIEW = "review"
REJECT = "reject"
DECISIONS = (ACCEPT, REVIEW, REJECT)


@dataclass(frozen=True)
class DecisionPolicy:
    review_below: float | None
    ood_method: str  # "none" disables OOD scoring
    ood_threshold: float | None  # a row is OOD when its score > this (a raw threshold, or alpha's)
    ood_action: str  # reject | review | flag
    ood_alpha: float | None = None  # set when the threshold comes from a conformal alpha
    batch_policy: str = "perRow"  # perRow | wholeRequest


@dataclass(frozen=True, slots=True)
class Decision:
    decision: str
    per_sample: tuple[str, ...]
    confidence: float  # the lowest calibrated confidence in the batch
    ood_score: float | None  # the highest OOD score in the batch
    ood_flagged: bool
    reasons: tuple[str, ...]


_ALL_ACCEPT: dict[int, tuple[str, ...]] = {}


def _all_accept(batch: int) -> tuple[str, ...]:
    cached = _ALL_ACCEPT.get(batch)
    if cached is None:
        cached = _ALL_ACCEPT[batch] = (ACCEPT,) * batch
    return cached


def decide(
    confidence: np.ndarray,
    ood_scores: np.ndarray | None,
    gate_flags: list[str],
    policy: DecisionPolicy,
) -> Decision:
    if confidence.size == 0:
        return Decision(ACCEPT, (), float("nan"), None, False, tuple(gate_flags))
    # Fast path (the common case): two reductions decide that every sample is accepted; for one
    # sample, reading the value (.item) is a tenth of the cost of reducing a 1-element array.
    if confidence.shape[0] == 1:
        lowest = confidence.item()
        highest_ood = ood_scores.item() if ood_scores is not None and ood_scores.size == 1 else None
    else:
        lowest = float(confidence.min())
        highest_ood = float(ood_scores.max()) if ood_scores is not None and ood_scores.size else None
    confident = policy.review_below is None or lowest >= policy.review_below
    in_distribution = (
        highest_ood is None or policy.ood_threshold is None or not highest_ood > policy.ood_threshold
    )
    if confident and in_distribution and not gate_flags:
        return Decision(ACCEPT, _all_accept(confidence.shape[0]), lowest, highest_ood, False, ())
    return _decide_in_detail(confidence, ood_scores, gate_flags, policy, lowest, highest_ood)


def _decide_in_detail(
    confidence: np.ndarray,
    ood_scores: np.ndarray | None,
    gate_flags: list[str],
    policy: DecisionPolicy,
    lowest: float,
    ood_max: float | None,
) -> Decision:
    codes = np.zeros(confidence.shape[0], dtype=np.int8)
    reasons: list[str] = list(gate_flags)
    if gate_flags:
        codes[:] = 1
    if policy.review_below is not None and lowest < policy.review_below:
        low = confidence < policy.review_below
        np.maximum(codes, low.astype(np.int8), out=codes)
        reasons.append(
            f"calibrated confidence {lowest:.4f} is below reviewBelow "
            f"{policy.review_below:g} ({int(low.sum())} of {low.size} samples)"
        )
    ood_flagged = False
    threshold = policy.ood_threshold
    if ood_scores is not None and ood_max is not None and threshold is not None and ood_max > threshold:
        over = ood_scores > threshold
        ood_flagged = True
        severity = {"reject": 2, "review": 1}.get(policy.ood_action, 0)
        if severity:
            np.maximum(codes, over.astype(np.int8) * np.int8(severity), out=codes)
        reasons.append(
            f"{policy.ood_method} OOD score {ood_max:.4g} is above the threshold "
            f"{threshold:.4g} ({int(over.sum())} of {over.size} samples; action {policy.ood_action})"
        )
    worst = int(codes.max())
    per_sample = tuple(DECISIONS[c] for c in codes.tolist())
    return Decision(
        decision=DECISIONS[worst],
        per_sample=per_sample,
        confidence=lowest,
        ood_score=ood_max,
        ood_flagged=ood_flagged,
        reasons=tuple(reasons),
    )
