"""Row-by-row comparison of a shadow candidate's answers with the stable version's (pure).

Both sides are reduced to what the rollout compares per row: the top-1 class, the calibrated
confidence and whether the row is out of distribution under that version's own guard. The counts
are sums (rows, agreements, confidence sums, OOD rows), so they are Prometheus counters and add up
over requests, workers and pods; the operator divides by rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from guardedmodel_sidecar.response_scoring import Scores


@dataclass(frozen=True)
class RowScores:
    """One side's answer, per row: top-1 class, calibrated confidence, OOD decision."""

    predicted: np.ndarray  # (b,) int64
    confidence: np.ndarray  # (b,) float64
    ood: np.ndarray  # (b,) bool

    @property
    def rows(self) -> int:
        return int(self.predicted.shape[0])


@dataclass(frozen=True)
class ComparisonCounts:
    rows: int = 0
    agreements: int = 0  # rows with the same top-1 class
    candidate_confidence: float = 0.0
    baseline_confidence: float = 0.0
    candidate_ood: int = 0
    baseline_ood: int = 0

    def __add__(self, other: ComparisonCounts) -> ComparisonCounts:
        return ComparisonCounts(
            self.rows + other.rows,
            self.agreements + other.agreements,
            self.candidate_confidence + other.candidate_confidence,
            self.baseline_confidence + other.baseline_confidence,
            self.candidate_ood + other.candidate_ood,
            self.baseline_ood + other.baseline_ood,
        )


def compare_rows(candidate: RowScores, baseline: RowScores) -> ComparisonCounts:
    """The counts of one request answered by both sides; raises ValueError when their rows differ."""
    if candidate.rows != baseline.rows:
        raise ValueError(f"the candidate answered {candidate.rows} rows and the baseline {baseline.rows}")
    return ComparisonCounts(
        rows=candidate.rows,
        agreements=int(np.count_nonzero(candidate.predicted == baseline.predicted)),
        candidate_confidence=_finite_sum(candidate.confidence),
        baseline_confidence=_finite_sum(baseline.confidence),
        candidate_ood=int(np.count_nonzero(candidate.ood)),
        baseline_ood=int(np.count_nonzero(baseline.ood)),
    )


def rows_from_scores(scores: Scores, ood_threshold: float | None) -> RowScores:
    """A guard's scores as compared: a row is OOD when its score is above the threshold, as
    ``decision.decide`` judges it (whatever action the spec then takes)."""
    predicted = np.asarray(scores.predicted, dtype=np.int64).reshape(-1)
    return RowScores(
        predicted,
        np.asarray(scores.confidence, dtype=np.float64).reshape(-1),
        _ood_rows(scores.ood, ood_threshold, predicted.shape[0]),
    )


def rows_from_record(record: Mapping[str, Any]) -> RowScores:
    """What the stable answered, from its audit record (``audit_records.scored_record``): predicted
    class, confidence, and per row OOD from the record's OOD scores and threshold. Raises ValueError
    on a record that is not a scored one."""
    predicted = record.get("predicted")
    confidence = record.get("confidence")
    if (
        not isinstance(predicted, list)
        or not isinstance(confidence, list)
        or len(predicted) != len(confidence)
    ):
        raise ValueError(f"audit record {record.get('id')} has no per-row predictions and confidences")
    scores = record.get("ood_score")
    ood = None if not isinstance(scores, list) else np.array([_number(s) for s in scores], dtype=np.float64)
    threshold = record.get("ood_threshold")
    return RowScores(
        np.array([int(p) for p in predicted], dtype=np.int64),
        np.array([_number(c) for c in confidence], dtype=np.float64),
        _ood_rows(ood, None if threshold is None else float(threshold), len(predicted)),
    )


def _ood_rows(scores: np.ndarray | None, threshold: float | None, rows: int) -> np.ndarray:
    if scores is None or threshold is None or math.isnan(threshold):
        return np.zeros(rows, dtype=bool)
    ood = np.asarray(scores, dtype=np.float64).reshape(-1) > threshold  # NaN is not above
    if ood.shape[0] != rows:
        raise ValueError(f"{ood.shape[0]} OOD scores for {rows} rows")
    return ood


def _number(value: Any) -> float:
    """A JSON number; null (how the audit log writes NaN and infinities) is NaN."""
    return math.nan if value is None else float(value)


def _finite_sum(values: np.ndarray) -> float:
    return float(values[np.isfinite(values)].sum())


def worker_share(total: int, workers: int, index: int) -> int:
    """Worker ``index``'s part of ``total`` replayed requests: the parts of all workers add up to
    ``total`` (each worker replays from its own audit log, which holds its share of the traffic)."""
    workers = max(1, workers)
    return total // workers + (1 if index < total % workers else 0)
