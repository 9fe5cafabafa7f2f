"""The guard's per-row results as v2 output tensors, and the rows of an answer that were refused (pure).

Every infer response can carry, next to the model's outputs, one tensor per guard result, shape
[batch]:

  GUARD_DECISION     BYTES  accept | review | reject, per row
  GUARD_CONFIDENCE   FP32   calibrated confidence (the model's top-class probability after scaling)
  GUARD_OOD_SCORE    FP32   the OOD detector's score (higher = more out of distribution); only when
                            the version scores OOD
  GUARD_OOD_P_VALUE  FP32   the score's conformal p-value; only when the version's guard has
                            in-distribution calibration scores

A caller gets them by naming them in the request's ``outputs`` or by asking for every output (no
``outputs``), so an unchanged v2 client reads ``result.as_numpy("GUARD_DECISION")``. They are built
here once, as ``OutputTensor``s, so the HTTP JSON, HTTP binary and gRPC encoders carry them like any
model output. A model output with one of these names is the model's: it wins, and the guard's is
left out.

A request answered per row whose refused rows must not read as model answers has those rows
overwritten: NaN in floating-point outputs (FP16, BF16, FP32, FP64), zero (empty for BYTES, false for
BOOL) in the others when the caller reads GUARD_DECISION. Every other byte stays Triton's.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

from guardedmodel_sidecar.protocol.datatypes import (
    BYTES,
    NUMPY_DTYPES,
    deserialize_bytes_elements,
    element_count,
    serialize_bytes_elements,
)
from guardedmodel_sidecar.protocol.model import InferResponse, OutputTensor

GUARD_DECISION = "GUARD_DECISION"
GUARD_CONFIDENCE = "GUARD_CONFIDENCE"
GUARD_OOD_SCORE = "GUARD_OOD_SCORE"
GUARD_OOD_P_VALUE = "GUARD_OOD_P_VALUE"
# In the order they follow the model's outputs in a response.
GUARD_OUTPUTS = (GUARD_DECISION, GUARD_CONFIDENCE, GUARD_OOD_SCORE, GUARD_OOD_P_VALUE)
GUARD_OUTPUT_NAMES = frozenset(GUARD_OUTPUTS)

# Datatypes whose elements can be NaN; BF16 has no numpy dtype, so its rows are written as bits.
NAN_DATATYPES = frozenset(["FP16", "BF16", "FP32", "FP64"])
_BF16_NAN = 0x7FC0  # the quiet NaN of bfloat16 (the top half of float32's 0x7FC00000)

_DECISION_ELEMENT = {d: serialize_bytes_elements([d]) for d in ("accept", "review", "reject")}
_ALL_SAME: dict[tuple[str, int], bytes] = {}
_F32 = struct.Struct("<f")


@dataclass(frozen=True, slots=True)
class RowResults:
    """What the guard said about each row of one response (arrays of shape (b,))."""

    decisions: tuple[str, ...]  # accept | review | reject
    confidence: np.ndarray
    ood_score: np.ndarray | None
    ood_p_value: np.ndarray | None

    def available(self) -> tuple[str, ...]:
        """The guard outputs this response can carry."""
        if self.ood_score is None:
            return (GUARD_DECISION, GUARD_CONFIDENCE)
        if self.ood_p_value is None:
            return (GUARD_DECISION, GUARD_CONFIDENCE, GUARD_OOD_SCORE)
        return GUARD_OUTPUTS


def _decisions_raw(decisions: tuple[str, ...]) -> bytes:
    first = decisions[0] if decisions else "accept"
    if decisions.count(first) == len(decisions):  # every row alike: the common case, made once
        key = (first, len(decisions))
        raw = _ALL_SAME.get(key)
        if raw is None:
            raw = _ALL_SAME[key] = _DECISION_ELEMENT[first] * len(decisions)
        return raw
    return b"".join(map(_DECISION_ELEMENT.__getitem__, decisions))


def _fp32(name: str, values: np.ndarray, *, unbounded: bool = False) -> OutputTensor:
    """``values`` as an FP32 tensor; ``unbounded``: they may lie beyond float32's range (an OOD
    score), and become +-inf there. Confidences and p-values lie in [0, 1]."""
    if values.shape[0] == 1:  # one row: struct is ~10x cheaper than numpy's cast
        value = values.item()
        try:
            raw = _F32.pack(value)
        except OverflowError:  # beyond float32: inf, as numpy casts it
            raw = _F32.pack(math.copysign(math.inf, value))
        return OutputTensor(name, "FP32", (1,), raw)
    if unbounded:
        with np.errstate(over="ignore"):  # errstate costs more than the cast: only where needed
            array = values.astype("<f4")
    else:
        array = values.astype("<f4")
    return OutputTensor(name, "FP32", (array.shape[0],), array.tobytes(), array)


def guard_tensors(rows: RowResults, names: Collection[str]) -> list[OutputTensor]:
    """The guard outputs among ``names`` that ``rows`` can carry, in GUARD_OUTPUTS order."""
    tensors: list[OutputTensor] = []
    if GUARD_DECISION in names:
        raw = _decisions_raw(rows.decisions)
        tensors.append(OutputTensor(GUARD_DECISION, BYTES, (len(rows.decisions),), raw))
    if GUARD_CONFIDENCE in names:
        tensors.append(_fp32(GUARD_CONFIDENCE, rows.confidence))
    if GUARD_OOD_SCORE in names and rows.ood_score is not None:
        tensors.append(_fp32(GUARD_OOD_SCORE, rows.ood_score, unbounded=True))
    if GUARD_OOD_P_VALUE in names and rows.ood_p_value is not None:
        tensors.append(_fp32(GUARD_OOD_P_VALUE, rows.ood_p_value))
    return tensors


def row_maskable(out: OutputTensor, rows: int) -> bool:
    """Whether ``out`` has one entry per row (its first dimension is the batch), so rows can be
    overwritten one by one."""
    return bool(out.shape) and out.shape[0] == rows


def masked_rows(out: OutputTensor, refused: np.ndarray) -> OutputTensor:
    """``out`` with the rows where ``refused`` (bool, (b,)) is true overwritten: NaN for floating-point
    datatypes, zero (false, empty) for the others. The other rows keep Triton's bytes exactly."""
    rows = refused.shape[0]
    if out.datatype == BYTES:
        per_row = element_count(out.shape[1:])
        elements = deserialize_bytes_elements(out.raw)
        for row in np.flatnonzero(refused).tolist():
            elements[row * per_row : (row + 1) * per_row] = [b""] * per_row
        return OutputTensor(out.name, out.datatype, out.shape, serialize_bytes_elements(elements))
    data = np.frombuffer(out.raw, dtype=np.uint8).reshape(rows, -1).copy()
    if out.datatype == "BF16":
        data.view("<u2")[refused] = _BF16_NAN
    elif out.datatype in NAN_DATATYPES:
        data.view(NUMPY_DTYPES[out.datatype])[refused] = np.nan
    else:
        data[refused] = 0
    return OutputTensor(out.name, out.datatype, out.shape, data.tobytes())


def with_guard_outputs(response: InferResponse, outputs: list[OutputTensor]) -> InferResponse:
    """``response`` with ``outputs`` as its outputs (the model's, masked or not, then the guard's)."""
    return InferResponse(
        response.model_name, response.model_version, response.id, response.parameters, outputs
    )
