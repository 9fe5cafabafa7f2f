"""Evaluation metrics for OOD detection and calibration (numpy).

OOD convention: higher score = more out-of-distribution. AUROC is the probability that a random
OOD input scores higher than a random in-distribution one (ties count half). FPR@95TPR treats
in-distribution as the positive class: the threshold accepts 95% of in-distribution inputs, and
the FPR is the share of OOD inputs it accepts too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def auroc(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """Mann-Whitney estimate of P(score_ood > score_id) + 0.5 P(equal)."""
    a = np.asarray(id_scores, dtype=np.float64).ravel()
    b = np.asarray(ood_scores, dtype=np.float64).ravel()
    if a.size == 0 or b.size == 0:
        raise ValueError("AUROC needs at least one in-distribution and one OOD score")
    both = np.concatenate([a, b])
    ranks = _average_ranks(both)
    rank_sum_ood = float(np.sum(ranks[a.size :]))
    return (rank_sum_ood - b.size * (b.size + 1) / 2.0) / (a.size * b.size)


def _average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    # ranks 1..n, tied values share the mean of their ranks
    boundaries = np.flatnonzero(np.diff(sorted_x)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [x.size]])
    mean_rank = (starts + ends + 1) / 2.0
    ranks_sorted = np.repeat(mean_rank, ends - starts)
    ranks = np.empty_like(ranks_sorted)
    ranks[order] = ranks_sorted
    return ranks


def threshold_at_acceptance(id_scores: np.ndarray, acceptance: float) -> float:
    """Smallest observed score t with at least ``acceptance`` of ``id_scores`` <= t."""
    s = np.sort(np.asarray(id_scores, dtype=np.float64).ravel())
    if s.size == 0:
        raise ValueError("cannot pick a threshold from an empty set of scores")
    if not 0.0 < acceptance <= 1.0:
        raise ValueError(f"acceptance must be in (0, 1], got {acceptance}")
    k = int(np.ceil(acceptance * s.size - 1e-9)) - 1
    return float(s[min(max(k, 0), s.size - 1)])


def fpr_at_tpr(id_scores: np.ndarray, ood_scores: np.ndarray, tpr: float = 0.95) -> float:
    """Share of OOD inputs accepted by the threshold that accepts ``tpr`` of in-distribution ones."""
    t = threshold_at_acceptance(id_scores, tpr)
    return float(np.mean(np.asarray(ood_scores, dtype=np.float64) <= t))


def roc_curve(id_scores: np.ndarray, ood_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) with OOD as positive, for plotting."""
    a = np.asarray(id_scores, dtype=np.float64).ravel()
    b = np.asarray(ood_scores, dtype=np.float64).ravel()
    thresholds = np.unique(np.concatenate([a, b]))[::-1]
    a_sorted, b_sorted = np.sort(a), np.sort(b)
    # share of each set scoring >= threshold (flagged as OOD)
    fpr = 1.0 - np.searchsorted(a_sorted, thresholds, side="left") / a.size
    tpr = 1.0 - np.searchsorted(b_sorted, thresholds, side="left") / b.size
    return np.concatenate([[0.0], fpr]), np.concatenate([[0.0], tpr])


@dataclass(frozen=True)
class ReliabilityBins:
    edges: np.ndarray  # (B+1,)
    confidence: np.ndarray  # (B,) mean confidence per bin (NaN when empty)
    accuracy: np.ndarray  # (B,) accuracy per bin (NaN when empty)
    counts: np.ndarray  # (B,)


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> ReliabilityBins:
    conf = np.asarray(confidence, dtype=np.float64).ravel()
    ok = np.asarray(correct, dtype=np.float64).ravel()
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, weights=conf, minlength=bins) / counts
        accuracy = np.bincount(index, weights=ok, minlength=bins) / counts
    return ReliabilityBins(edges, mean_conf, accuracy, counts)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """ECE: sum over equal-width confidence bins of (share of samples) * |accuracy - confidence|."""
    r = reliability(confidence, correct, bins)
    filled = r.counts > 0
    weights = r.counts[filled] / r.counts.sum()
    return float(np.sum(weights * np.abs(r.accuracy[filled] - r.confidence[filled])))


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - np.max(z, axis=1, keepdims=True)
    log_norm = np.log(np.sum(np.exp(z), axis=1))
    y = np.asarray(labels, dtype=np.int64)
    return float(np.mean(log_norm - z[np.arange(z.shape[0]), y]))
