"""The audit records (and review items) the pipeline writes: one per request, whatever its outcome.

Records are plain dicts; the audit log serialises them. Inputs are kept as a digest (a reviewer's item
also carries a capped preview of the inputs), so the audit log identifies payloads without storing them.

A shadow candidate's answer to a copied or replayed request is a *comparison record*: it carries
``shadow_of`` (the id of the request it copies) and ``candidate``/``baseline`` instead of ``version``,
and no ``status``, so nothing that counts served requests by version or status can take it for one.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import numpy as np

from guardedmodel_sidecar.audit import client_id
from guardedmodel_sidecar.comparison import ComparisonCounts, RowScores
from guardedmodel_sidecar.decision import REJECT, Decision
from guardedmodel_sidecar.errors import GuardError, OutOfDistribution
from guardedmodel_sidecar.protocol.model import InferRequest
from guardedmodel_sidecar.response_scoring import Scores
from guardedmodel_sidecar.version_guard import VersionGuard

_PREVIEW_BYTES = 1 << 20


def scored_record(
    request: InferRequest,
    request_id: str,
    model: str,
    guard: VersionGuard,
    decision: Decision,
    scores: Scores,
    *,
    answered: bool,
) -> dict[str, Any]:
    """The record of a request the model answered and the guard scored: the request's decision (its
    worst row's) and, per row, the decision, calibrated confidence, predicted class, OOD score and
    p-value. ``answered``: the caller got the model's answer (every row, or the rows not refused)."""
    record = {
        "id": request_id,
        "client_id": client_id(request.id),
        "ts": time.time(),
        "model": model,
        "version": guard.version,
        "status": 200 if answered else OutOfDistribution.http_status,
        "decision": decision.decision,
        "decisions": decision.per_sample,
        "rows_review": decision.rows_review,
        "rows_rejected": decision.rows_rejected,
        "confidence": scores.confidence,
        "predicted": scores.predicted,
        "ood_method": guard.policy.ood_method,
        "ood_score": scores.ood,
        "reasons": decision.reasons,
        "batch": int(scores.confidence.shape[0]),
        "input_digest": input_digest(request),
    }
    if scores.ood_p_value is not None:
        record["ood_p_value"] = scores.ood_p_value
    if scores.ood is not None:
        # per-row OOD is recoverable from the record alone: ood_score > ood_threshold (null: never)
        record["ood_threshold"] = guard.policy.ood_threshold
    return record


def comparison_record(
    record_id: str,
    shadow_of: str,
    source: str,
    model: str,
    candidate: str,
    baseline: str,
    scores: Scores,
    rows: RowScores,
    counts: ComparisonCounts,
) -> dict[str, Any]:
    """A shadow candidate's answer to request ``shadow_of`` (copied live, or replayed from the audit
    log: ``source``), per row, and how it compares with the ``baseline`` version's answer."""
    return {
        "id": record_id,
        "shadow_of": shadow_of,
        "source": source,
        "ts": time.time(),
        "model": model,
        "candidate": candidate,
        "baseline": baseline,
        "batch": rows.rows,
        "agreements": counts.agreements,
        "confidence": scores.confidence,
        "predicted": scores.predicted,
        "ood_score": scores.ood,
        "ood": rows.ood,
    }


def review_item(
    record: dict[str, Any], request: InferRequest, rows: list[int] | None = None
) -> dict[str, Any]:
    """What a reviewer gets: the audit record, the rows that ask for review (``review_rows``, indices
    into the batch) and those rows' inputs to look at. ``rows`` None: every row."""
    if rows is None:
        return {**record, "review_rows": list(range(record["batch"])), "inputs": inputs_preview(request)}
    return {**record, "review_rows": rows, "inputs": inputs_preview(request, rows)}


def failure_record(
    request: InferRequest,
    request_id: str,
    guard: VersionGuard | None,
    stage: str,
    exc: GuardError,
    refused: bool,
) -> dict[str, Any]:
    """The record of a request refused (``refused``) or failed at ``stage`` before it was scored."""
    return {
        "id": request_id,
        "client_id": client_id(request.id),
        "ts": time.time(),
        "model": request.model_name,
        "version": guard.version if guard else request.model_version or None,
        "status": exc.http_status,
        "decision": REJECT if refused else "error",
        "stage": stage,
        "error": exc.message,
        "batch": request.batch_size() if request.inputs else 0,
        "input_digest": input_digest(request),
    }


def undecodable_record(
    record_id: str, model: str, version: str, exc: GuardError, body: bytes | memoryview
) -> dict[str, Any]:
    """The record of a request that never became an InferRequest (bad JSON, sizes that do not add up)."""
    return {
        "id": record_id,
        "client_id": None,
        "ts": time.time(),
        "model": model,
        "version": version or None,
        "status": exc.http_status,
        "decision": REJECT,
        "stage": "decode",
        "error": exc.message,
        "batch": 0,
        "input_digest": hashlib.sha256(body).hexdigest()[:32],
    }


def input_digest(request: InferRequest) -> str:
    """SHA-256 of the inputs' v2 binary form, first 128 bits: SHA-256 runs in hardware on the
    CPUs we serve on (about twice as fast as blake2b here), and 128 bits identify a payload."""
    inputs = request.inputs
    if len(inputs) == 1:
        return hashlib.sha256(inputs[0].raw).hexdigest()[:32]
    h = hashlib.sha256()
    for tensor in inputs:
        h.update(tensor.raw)
    return h.hexdigest()[:32]


def inputs_preview(request: InferRequest, rows: list[int] | None = None) -> list[dict[str, Any]]:
    """The inputs a reviewer looks at (numeric ones as lists; capped at 1 MiB per tensor): every row,
    or only ``rows`` of tensors with a batch dimension (the shape then counts those rows)."""
    out = []
    batch = request.batch_size()
    for tensor in request.inputs:
        array = tensor.array
        shape = tensor.shape
        if rows is not None and array is not None and shape and shape[0] == batch:
            array = array[rows]
            shape = (len(rows), *shape[1:])
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": shape}
        if array is not None and array.nbytes <= _PREVIEW_BYTES:
            entry["data"] = np.ascontiguousarray(array)
        out.append(entry)
    return out
