"""accept | review | reject per row from calibrated confidence, OOD score and gate flags (pure).

Per row: an OOD score above the threshold takes the spec's action (reject, review, or flag, which
keeps ``accept`` but marks it); a calibrated confidence below ``reviewBelow`` asks for review. A gate
flag (e.g. a brightness shift) is about the request's inputs as a whole, so it asks for review of
every row. Each row keeps its own decision (``codes``); the request's summary is the most severe
row's decision, the lowest confidence and the highest OOD score, with the number of rows asking for
review and refused. What a refused row does to the request (answered per row, or the whole request
refused) is the ``batch_policy``'s business, applied by the pipeline.

When ``spec.gate.ood.alpha`` is used the threshold is the conformal one (a score above it has a
p-value at or below alpha), so the decision compares scores and needs no p-values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ACCEPT = "accept"
REVIEW = "review"
REJECT = "reject"
DECISIONS = (ACCEPT, REVIEW, REJECT)
# Row codes: an index into DECISIONS, so the worst row is the largest code.
ACCEPT_CODE, REVIEW_CODE, REJECT_CODE = 0, 1, 2
PER_ROW = "perRow"
WHOLE_REQUEST = "wholeRequest"


@dataclass(frozen=True)
class DecisionPolicy:
    review_below: float | None
    ood_method: str  # "none" disables OOD scoring
    ood_threshold: float | None  # a row is OOD when its score > this (a raw threshold, or alpha's)
    ood_action: str  # reject | review | flag
    ood_alpha: float | None = None  # set when the threshold comes from a conformal alpha
    batch_policy: str = PER_ROW  # perRow | wholeRequest


@dataclass(slots=True)
class Decision:  # not frozen: a frozen dataclass of 11 fields costs ~1 us to make
    decision: str  # the most severe row's decision
    per_sample: tuple[str, ...]  # each row's decision
    confidence: float  # the lowest calibrated confidence of the rows (the request's summary)
    ood_score: float | None  # the highest OOD score of the rows
    ood_flagged: bool
    reasons: tuple[str, ...]
    # Per row, (b,): decision codes (int8, read-only; DECISIONS[code]), calibrated confidence and
    # OOD score (None when the version has no OOD scorer), as scored.
    codes: np.ndarray
    row_confidence: np.ndarray
    row_ood: np.ndarray | None
    rows_review: int = 0
    rows_rejected: int = 0

    @property
    def rows(self) -> int:
        return len(self.per_sample)

    @property
    def all_rejected(self) -> bool:
        return self.rows_rejected == len(self.per_sample) and self.rows_rejected > 0


_ALL_ACCEPT: dict[int, tuple[tuple[str, ...], np.ndarray]] = {}


def _all_accept(batch: int) -> tuple[tuple[str, ...], np.ndarray]:
    """(decisions, codes) of ``batch`` accepted rows, made once per batch size (the codes are
    read-only, so every request can share them)."""
    cached = _ALL_ACCEPT.get(batch)
    if cached is None:
        codes = np.zeros(batch, dtype=np.int8)
        codes.flags.writeable = False
        cached = _ALL_ACCEPT[batch] = ((ACCEPT,) * batch, codes)
    return cached


def decide(
    confidence: np.ndarray,
    ood_scores: np.ndarray | None,
    gate_flags: list[str],
    policy: DecisionPolicy,
) -> Decision:
    if confidence.size == 0:
        per_sample, codes = _all_accept(0)
        return Decision(
            ACCEPT, per_sample, float("nan"), None, False, tuple(gate_flags), codes, confidence, ood_scores
        )
    # Fast path (the common case): two reductions decide that every row is accepted; for one row,
    # reading the value (.item) is a tenth of the cost of reducing a 1-element array.
    if confidence.shape[0] == 1:
        lowest = confidence.item()
        highest_ood = ood_scores.item() if ood_scores is not None and ood_scores.size == 1 else None
    else:
        lowest = float(confidence.min())
        highest_ood = float(ood_scores.max()) if ood_scores is not None and ood_scores.size else None
    # Written so that NaN (a model answering NaN or inf logits) fails each test: a row the guard
    # cannot score is never waved through as confident and in distribution.
    confident = policy.review_below is None or lowest >= policy.review_below
    in_distribution = (
        highest_ood is None or policy.ood_threshold is None or highest_ood <= policy.ood_threshold
    )
    if confident and in_distribution and not gate_flags:
        per_sample, codes = _all_accept(confidence.shape[0])
        return Decision(ACCEPT, per_sample, lowest, highest_ood, False, (), codes, confidence, ood_scores)
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
        codes[:] = REVIEW_CODE
    if policy.review_below is not None and not lowest >= policy.review_below:
        low = ~(confidence >= policy.review_below)  # NaN confidence asks for review
        np.maximum(codes, low.astype(np.int8), out=codes)
        reasons.append(
            f"calibrated confidence {lowest:.4f} is below reviewBelow "
            f"{policy.review_below:g} ({int(low.sum())} of {low.size} samples)"
        )
    ood_flagged = False
    threshold = policy.ood_threshold
    if ood_scores is not None and ood_max is not None and threshold is not None and not ood_max <= threshold:
        over = ~(ood_scores <= threshold)  # a NaN score is out of distribution
        ood_flagged = True
        severity = {"reject": REJECT_CODE, "review": REVIEW_CODE}.get(policy.ood_action, ACCEPT_CODE)
        if severity:
            np.maximum(codes, over.astype(np.int8) * np.int8(severity), out=codes)
        level = f"alpha {policy.ood_alpha:g}, " if policy.ood_alpha is not None else ""
        reasons.append(
            f"{policy.ood_method} OOD score {ood_max:.4g} is above the threshold "
            f"{threshold:.4g} ({level}{int(over.sum())} of {over.size} samples; action {policy.ood_action})"
        )
    code_list = codes.tolist()
    codes.flags.writeable = False
    return Decision(
        decision=DECISIONS[max(code_list)],
        per_sample=tuple(DECISIONS[c] for c in code_list),
        confidence=lowest,
        ood_score=ood_max,
        ood_flagged=ood_flagged,
        reasons=tuple(reasons),
        codes=codes,
        row_confidence=confidence,
        row_ood=ood_scores,
        rows_review=code_list.count(REVIEW_CODE),
        rows_rejected=code_list.count(REJECT_CODE),
    )
