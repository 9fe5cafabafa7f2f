"""Drift statistics against the reference distributions stored in a guard artifact (pure numpy).

The sidecar never keeps raw features: each batch is binned into counts with the reference's
bin edges (``DriftAccumulator.count``), counts of a time window are summed (``DriftCounts`` adds
and subtracts), and the window's counts are compared with the reference fractions
(``DriftAccumulator.score``).

PSI is the effect size: how far a window moved. Reading it (the usual rule of thumb):
  PSI < 0.1  no meaningful shift;  0.1 - 0.2  moderate shift, watch it;  PSI > 0.2  large shift.
PSI of a window of n samples over B bins is biased upwards by about (B - 1) / n even without
any drift (``DriftScores.noise_floor``), so PSI alone cannot say whether a small window drifted:
that decision, with a stated false-alarm rate, is ``drift_decision.decide_window``'s (a chi-square
test on the same counts). The operator and the alert act when both say so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .artifact import DriftReference

DRIFT_PSI_THRESHOLD = 0.2
DEFAULT_EPS = 1e-4


def psi(expected_fractions: np.ndarray, observed_counts: np.ndarray, eps: float = DEFAULT_EPS) -> np.ndarray:
    """Population stability index over the last axis: sum (o - e) * ln(o / e).

    ``expected_fractions`` (..., B) sums to 1 along the last axis; ``observed_counts`` (..., B)
    are raw counts. Fractions are floored at ``eps`` so empty bins stay finite. Rows with no
    observations give NaN (no data is not the same as no drift).
    """
    expected = np.clip(np.asarray(expected_fractions, dtype=np.float64), eps, None)
    counts = np.asarray(observed_counts, dtype=np.float64)
    totals = np.sum(counts, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        observed = np.clip(counts / totals, eps, None)
        out = np.sum((observed - expected) * np.log(observed / expected), axis=-1)
    return np.where(np.squeeze(totals, -1) > 0, out, np.nan)


def ks_statistic(expected_fractions: np.ndarray, observed_counts: np.ndarray) -> np.ndarray:
    """Kolmogorov-Smirnov distance between binned distributions: max |CDF_e - CDF_o| over bin edges.

    Binning makes this a lower bound of the continuous KS statistic. NaN where nothing was observed.
    """
    expected = np.asarray(expected_fractions, dtype=np.float64)
    counts = np.asarray(observed_counts, dtype=np.float64)
    totals = np.sum(counts, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        observed_cdf = np.cumsum(counts, axis=-1) / totals
    expected_cdf = np.cumsum(expected, axis=-1) / np.sum(expected, axis=-1, keepdims=True)
    out = np.max(np.abs(observed_cdf - expected_cdf), axis=-1)
    return np.where(np.squeeze(totals, -1) > 0, out, np.nan)


def bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Count ``values`` (n, D) into per-column bins ``edges`` (D, B+1) -> counts (D, B) int64.

    The outermost edges are open: values below the first edge fall in bin 0, above the last in
    bin B-1. Rows holding NaN or infinity are skipped (the gate rejects those before the model).
    A 1-D ``values`` with 1-D ``edges`` is one column.
    """
    one_column = np.ndim(edges) == 1
    e = np.atleast_2d(np.asarray(edges, dtype=np.float64))
    v = np.asarray(values, dtype=np.float64)
    v = v.reshape(-1, 1) if one_column else v.reshape(v.shape[0] if v.ndim else 0, -1)
    d, b = e.shape[0], e.shape[1] - 1
    if v.shape[1] != d:
        raise ValueError(f"values have {v.shape[1]} columns but the reference has {d}")
    v = v[np.all(np.isfinite(v), axis=1)]
    # bin index = how many interior edges the value reaches; duplicate edges (ties in the
    # reference, e.g. ReLU zeros) give empty bins for live and reference data alike. One binary
    # search per column: a tenth of the time of comparing every value with every edge.
    columns = np.ascontiguousarray(v.T)
    index = np.empty(columns.shape, dtype=np.int64)  # (D, n) in 0..B-1
    for j in range(d):
        index[j] = np.searchsorted(e[j, 1:-1], columns[j], side="right")
    flat = (index + (np.arange(d) * b)[:, None]).ravel()
    counts = np.bincount(flat, minlength=d * b).reshape(d, b)
    return counts[0] if one_column else counts


@dataclass(frozen=True, eq=False)
class DriftCounts:
    """Binned counts of some traffic; add and subtract them to keep a sliding window cheaply."""

    features: np.ndarray  # (D, B) int64
    confidence: np.ndarray  # (Bc,) int64
    classes: np.ndarray  # (C,) int64
    n: int  # samples counted

    def __add__(self, other: DriftCounts) -> DriftCounts:
        return DriftCounts(
            self.features + other.features,
            self.confidence + other.confidence,
            self.classes + other.classes,
            self.n + other.n,
        )

    def __sub__(self, other: DriftCounts) -> DriftCounts:
        return DriftCounts(
            self.features - other.features,
            self.confidence - other.confidence,
            self.classes - other.classes,
            self.n - other.n,
        )


@dataclass(frozen=True)
class DriftScores:
    """Drift of one window against the reference. ``score`` is the single number to alert on."""

    score: float  # max(feature_psi_mean, confidence_psi, class_psi); > 0.2 is a large shift
    feature_psi_mean: float  # mean PSI over features (NaN without features)
    feature_psi_max: float
    confidence_psi: float  # PSI of the calibrated confidence distribution
    confidence_ks: float
    class_psi: float  # PSI of the predicted-class mix
    n: int
    noise_floor: float  # expected PSI of an undrifted window this small, ~ (B - 1) / n

    @property
    def drifted(self) -> bool:
        """PSI above the rule-of-thumb line, whatever the window size (the fit report's reading of
        large held-out sets); live windows are decided by ``drift_decision``."""
        return bool(self.score > DRIFT_PSI_THRESHOLD)


class DriftAccumulator:
    """Bins batches against one reference and scores windows of counts. Holds no traffic state."""

    def __init__(self, reference: DriftReference, eps: float = DEFAULT_EPS) -> None:
        self.reference = reference
        self.eps = eps
        self._feature_edges = np.asarray(reference.feature_edges, dtype=np.float64)
        self._confidence_edges = np.asarray(reference.confidence_edges, dtype=np.float64)
        self.num_classes = int(reference.class_fractions.shape[0])

    def zeros(self) -> DriftCounts:
        return DriftCounts(
            np.zeros(self.reference.feature_fractions.shape, dtype=np.int64),
            np.zeros(self.reference.confidence_fractions.shape, dtype=np.int64),
            np.zeros(self.num_classes, dtype=np.int64),
            0,
        )

    def count(
        self, features: np.ndarray | None, confidence: np.ndarray, predicted: np.ndarray
    ) -> DriftCounts:
        """Counts of one batch. ``features`` may be None when the reference has no feature bins."""
        conf = np.asarray(confidence, dtype=np.float64).ravel()
        pred = np.asarray(predicted, dtype=np.int64).ravel()
        if conf.shape != pred.shape:
            raise ValueError(
                f"confidence {conf.shape} and predicted {pred.shape} must have one entry per row"
            )
        if self._feature_edges.shape[0] == 0 or features is None:
            feature_counts = np.zeros(self.reference.feature_fractions.shape, dtype=np.int64)
        else:
            feature_counts = bin_counts(features, self._feature_edges)
        pred = pred[(pred >= 0) & (pred < self.num_classes)]
        return DriftCounts(
            features=feature_counts,
            confidence=bin_counts(conf, self._confidence_edges),
            classes=np.bincount(pred, minlength=self.num_classes),
            n=int(conf.shape[0]),
        )

    def score(self, counts: DriftCounts) -> DriftScores:
        ref = self.reference
        if counts.features.shape[0] and counts.features.sum() > 0:
            feature_psi = psi(ref.feature_fractions, counts.features, self.eps)
            f_mean, f_max = float(np.mean(feature_psi)), float(np.max(feature_psi))
        else:
            f_mean = f_max = float("nan")
        c_psi = float(psi(ref.confidence_fractions, counts.confidence, self.eps))
        c_ks = float(ks_statistic(ref.confidence_fractions, counts.confidence))
        k_psi = float(psi(ref.class_fractions, counts.classes, self.eps))
        parts = [x for x in (f_mean, c_psi, k_psi) if np.isfinite(x)]
        bins = max(ref.feature_fractions.shape[1] if ref.feature_fractions.ndim == 2 else 0, 1)
        bins = max(bins, ref.confidence_fractions.shape[0], ref.class_fractions.shape[0])
        return DriftScores(
            score=max(parts) if parts else float("nan"),
            feature_psi_mean=f_mean,
            feature_psi_max=f_max,
            confidence_psi=c_psi,
            confidence_ks=c_ks,
            class_psi=k_psi,
            n=counts.n,
            noise_floor=(bins - 1) / counts.n if counts.n > 0 else float("inf"),
        )
