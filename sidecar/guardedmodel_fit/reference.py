"""Reference distributions stored in the artifact for drift statistics and input checks (numpy)."""

from __future__ import annotations

import numpy as np

from guardedmodel_sidecar.guard.artifact import DriftReference, InputReference
from guardedmodel_sidecar.guard.drift import bin_counts


def quantile_edges(values: np.ndarray, bins: int) -> np.ndarray:
    """Per-column quantile bin edges (D, bins+1) of ``values`` (n, D)."""
    qs = np.linspace(0.0, 1.0, bins + 1)
    return np.quantile(np.asarray(values, dtype=np.float64), qs, axis=0).T.copy()


def drift_reference(
    features: np.ndarray | None,
    confidence: np.ndarray,
    predicted: np.ndarray,
    num_classes: int,
    *,
    feature_bins: int = 10,
    confidence_bins: int = 10,
) -> DriftReference:
    """Bin edges from quantiles; expected fractions by binning the same data with those edges.

    Binning the reference with its own edges (rather than assuming 1/B per bin) keeps expected
    and observed consistent when quantiles tie, e.g. a ReLU feature that is zero 40% of the time.
    """
    if features is None or features.shape[1] == 0:
        f_edges = np.zeros((0, feature_bins + 1))
        f_frac = np.zeros((0, feature_bins))
    else:
        f_edges = quantile_edges(features, feature_bins)
        counts = bin_counts(features, f_edges)
        f_frac = counts / counts.sum(axis=1, keepdims=True)
    conf = np.asarray(confidence, dtype=np.float64)
    c_edges = quantile_edges(conf[:, None], confidence_bins)[0]
    c_edges[0], c_edges[-1] = 0.0, 1.0
    c_counts = bin_counts(conf, c_edges)
    class_counts = np.bincount(np.asarray(predicted, dtype=np.int64), minlength=num_classes)
    return DriftReference(
        feature_edges=f_edges,
        feature_fractions=f_frac,
        confidence_edges=c_edges,
        confidence_fractions=c_counts / c_counts.sum(),
        class_fractions=class_counts / max(class_counts.sum(), 1),
        samples=int(conf.shape[0]),  # the drift test weighs the reference's own sampling noise
    )


def input_reference(
    inputs: np.ndarray, name: str, *, quantile: float = 0.001, margin: float = 0.1
) -> InputReference:
    """Value range, mean/std, and the [q, 1-q] range of per-sample mean/std widened by ``margin``."""
    x = np.asarray(inputs, dtype=np.float64)
    flat = x.reshape(x.shape[0], -1)
    sample_means = flat.mean(axis=1)
    sample_stds = flat.std(axis=1)

    def widened(v: np.ndarray) -> tuple[float, float]:
        lo, hi = np.quantile(v, [quantile, 1.0 - quantile])
        pad = margin * (hi - lo)
        return float(lo - pad), float(hi + pad)

    return InputReference(
        name=name,
        shape=tuple(int(s) for s in x.shape[1:]),
        minimum=float(flat.min()),
        maximum=float(flat.max()),
        mean=float(flat.mean()),
        std=float(flat.std()),
        sample_mean_range=widened(sample_means),
        sample_std_range=widened(sample_stds),
    )
