"""What a caller gets for a request whose rows were decided one by one (pure).

Under ``spec.gate.batchPolicy: perRow`` a batch with some refused rows is answered: the refused rows
of the model's floating-point outputs are NaN, so an unchanged client cannot take them for answers;
the guard's per-row results travel as GUARD_* output tensors (protocol/guard_outputs.py), and the
request-level parameters and headers summarise the rows. ``wholeRequest`` refuses the request when
any row is refused, and so does ``perRow`` when every row is, or when an output cannot carry NaN and
the caller does not read GUARD_DECISION. docs/guard-outputs.md is the client's side of this.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from guardedmodel_sidecar.decision import REJECT_CODE, REVIEW_CODE, WHOLE_REQUEST, Decision
from guardedmodel_sidecar.protocol.guard_outputs import (
    GUARD_DECISION,
    GUARD_OUTPUTS,
    NAN_DATATYPES,
    RowResults,
    guard_tensors,
    masked_rows,
    row_maskable,
    with_guard_outputs,
)
from guardedmodel_sidecar.protocol.model import InferRequest, InferResponse, OutputTensor
from guardedmodel_sidecar.response_scoring import Scores


def guarded_response(
    response: InferResponse,
    request: InferRequest,
    decision: Decision,
    scores: Scores,
    batch_policy: str,
) -> tuple[InferResponse, str | None, tuple[str, ...]]:
    """What the caller gets: (the response with its refused rows blanked and the guard outputs it
    asked for, why the request is refused as a whole or None, the guard outputs the model's own
    outputs of the same name shadow)."""
    model_names = [o.name for o in response.outputs]
    wanted: set[str] | None = None
    if request.outputs is None:
        asked: tuple[str, ...] | list[str] = GUARD_OUTPUTS
    else:
        wanted = {o.name for o in request.outputs}
        asked = [n for n in GUARD_OUTPUTS if n in wanted]
    shadowed = tuple(n for n in asked if n in model_names)
    ours = [n for n in asked if n not in model_names] if shadowed else asked
    outputs = response.outputs
    if decision.rows_rejected:
        # Zeroed rows are told from answers only by a caller that asked for the decisions by name.
        reads_decisions = wanted is not None and GUARD_DECISION in ours
        refusal = _refusal(response, decision, batch_policy, wanted, reads_decisions)
        if refusal is not None:
            return response, refusal, shadowed
        outputs = _blank_refused_rows(response.outputs, decision, wanted)
    if ours:
        rows = RowResults(decision.per_sample, scores.confidence, scores.ood, scores.ood_p_value)
        outputs = [*outputs, *guard_tensors(rows, ours)]
    if outputs is not response.outputs:
        response = with_guard_outputs(response, outputs)
    return response, None, shadowed


def _refusal(
    response: InferResponse, decision: Decision, batch_policy: str, wanted: set[str] | None, reads: bool
) -> str | None:
    """Why a request with refused rows is refused as a whole; None when it is answered per row."""
    refused = f"input refused as out of distribution: {'; '.join(decision.reasons)}"
    if batch_policy == WHOLE_REQUEST or decision.all_rejected:
        return refused
    rows = f"{decision.rows_rejected} of {decision.rows} rows are refused"
    for out in response.outputs:
        if wanted is not None and out.name not in wanted:
            continue  # fetched for the guard, not returned
        if not row_maskable(out, decision.rows):
            return (
                f"{refused}. {rows}, and output '{out.name}' (shape {list(out.shape)}) has no row per "
                "input that could be blanked, so no row is answered"
            )
        if out.datatype not in NAN_DATATYPES and not reads:
            return (
                f"{refused}. {rows}, and output '{out.name}' ({out.datatype}) cannot mark them with NaN; "
                f"name {GUARD_DECISION} in the request's outputs to get the other rows answered (the "
                f"refused rows of '{out.name}' are then zero), or send the refused rows apart"
            )
    return None


def _blank_refused_rows(
    outputs: list[OutputTensor], decision: Decision, wanted: set[str] | None
) -> list[OutputTensor]:
    refused = decision.codes == REJECT_CODE
    return [
        out if wanted is not None and out.name not in wanted else masked_rows(out, refused) for out in outputs
    ]


def summary(
    decision: Decision, scores: Scores, version: str, request_id: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """The request-level parameters and HTTP headers: the worst row's decision, the lowest
    confidence, the highest OOD score (and the lowest p-value), and how many rows were refused or
    asked for review."""
    parameters: dict[str, Any] = {
        "guard_decision": decision.decision,
        "guard_confidence": decision.confidence,
        "model_version": version,
        "guard_rows": decision.rows,
        "guard_rows_review": decision.rows_review,
        "guard_rows_rejected": decision.rows_rejected,
    }
    headers = {
        "Guard-Decision": decision.decision,
        "Guard-Confidence": f"{decision.confidence:.6f}",
        "Guard-Model-Version": version,
    }
    if decision.ood_score is not None:
        parameters["guard_ood_score"] = decision.ood_score
        headers["Guard-Ood-Score"] = f"{decision.ood_score:.6g}"
    p_values = scores.ood_p_value
    if p_values is not None and p_values.size:
        parameters["guard_ood_p_value"] = p_values.item() if p_values.size == 1 else float(p_values.min())
    if decision.rows > 1:
        parameters["guard_decisions"] = ",".join(decision.per_sample)
    if decision.reasons:
        parameters["guard_reasons"] = " | ".join(decision.reasons)
    if decision.rows_rejected:
        headers["Guard-Rows-Rejected"] = str(decision.rows_rejected)
    headers["Guard-Request-Id"] = request_id  # finds the request's audit record
    return parameters, headers


def review_rows(decision: Decision) -> list[int]:
    """The rows (indices into the batch) that ask for review."""
    rows: list[int] = np.flatnonzero(decision.codes == REVIEW_CODE).tolist()
    return rows
