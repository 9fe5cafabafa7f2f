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
    ood_threshold: float | None
    ood_action: str  # reject | review | flag


@dataclass(frozen=True, slots=True)
class Decision:
    decision: str
    per_sample: tuple[str, ...]
    confidence: float  # the lowest calibrated confidence in the batch
    ood_score: float | None  # the highest OOD score in the batch
    ood_flagged: bool
    reasons: tuple[str, ...]


def decide(
    confidence: np.ndarray,
    ood_scores: np.ndarray | None,
    gate_flags: list[str],
    policy: DecisionPolicy,
) -> Decision:
    codes = np.zeros(confidence.shape[0], dtype=np.int8)
    reasons: list[str] = list(gate_flags)
    if gate_flags:
        codes[:] = 1
    if policy.review_below is not None:
        low = confidence < policy.review_below
        if low.any():
            np.maximum(codes, low.astype(np.int8), out=codes)
            reasons.append(
                f"calibrated confidence {float(confidence[low].min()):.4f} is below reviewBelow "
                f"{policy.review_below:g} ({int(low.sum())} of {low.size} samples)"
            )
    ood_flagged = False
    ood_max: float | None = None
    if ood_scores is not None and ood_scores.size:
        ood_max = float(ood_scores.max())
        if policy.ood_threshold is not None and ood_max > policy.ood_threshold:
            over = ood_scores > policy.ood_threshold
            ood_flagged = True
            severity = {"reject": 2, "review": 1}.get(policy.ood_action, 0)
            if severity:
                np.maximum(codes, over.astype(np.int8) * np.int8(severity), out=codes)
            reasons.append(
                f"{policy.ood_method} OOD score {ood_max:.4g} is above the threshold "
                f"{policy.ood_threshold:.4g} ({int(over.sum())} of {over.size} samples; action {policy.ood_action})"
            )
    worst = int(codes.max()) if codes.size else 0
    per_sample = tuple(DECISIONS[c] for c in codes.tolist())
    return Decision(
        decision=DECISIONS[worst],
        per_sample=per_sample,
        confidence=float(confidence.min()) if confidence.size else float("nan"),
        ood_score=ood_max,
        ood_flagged=ood_flagged,
        reasons=tuple(reasons),
    )
