"""What a guard fit is asked to do (FitConfig), and whether the given data sets allow it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from guardedmodel_sidecar.guard.artifact import FEATURE_METHODS

from .data import DataError
from .extract import Extracted, ModelSpec

ALL_METHODS: tuple[str, ...] = ("mahalanobis", "energy", "knn", "msp", "vim")


class FitError(ValueError):
    """The guard cannot be fitted from what was given; the message says what to change."""


@dataclass(frozen=True)
class FitConfig:
    methods: tuple[str, ...] = ALL_METHODS
    target_acceptance: float = 0.95
    holdout_fraction: float = 0.5  # of val_set, when no separate fit_set is given
    knn_k: int = 5
    # L2-normalise features for Mahalanobis: often better on real networks, but blind to the
    # feature norm (the textbook detector, the default, is not)
    mahalanobis_normalise: bool = False
    knn_bank_size: int = 4096
    vim_principal_dim: int | None = None
    feature_bins: int = 10
    confidence_bins: int = 10
    ece_bins: int = 15
    seed: int = 0
    progress: bool = True
    metadata: Mapping[str, Any] = field(default_factory=dict)


def check_sets(
    spec: ModelSpec,
    val_set: Extracted,
    fit_set: Extracted | None,
    ood_sets: Sequence[Extracted],
    config: FitConfig,
) -> None:
    """Raise FitError or DataError naming what to change when the sets cannot make a guard."""
    if not 0.5 <= config.target_acceptance < 1.0:
        raise FitError(f"target acceptance must be in [0.5, 1), got {config.target_acceptance}")
    unknown = [m for m in config.methods if m not in ALL_METHODS]
    if unknown:
        raise FitError(f"unknown method(s) {unknown}; known: {', '.join(ALL_METHODS)}")
    if val_set.labels is None:
        raise DataError(
            f"{val_set.name}: the in-distribution validation set needs labels "
            "(temperature scaling and class means are fitted from them)"
        )
    needs_features = [m for m in config.methods if m in FEATURE_METHODS]
    if val_set.features is None and needs_features:
        raise FitError(
            f"model {spec.name} has no feature output, but {', '.join(needs_features)} need(s) its "
            f"penultimate features: export them as an output named {spec.features_output or 'FEATURES'} "
            "(or pass --features-output), or fit with --methods energy,msp"
        )
    c = val_set.logits.shape[1]
    d = None if val_set.features is None else val_set.features.shape[1]
    for other in [fit_set, *ood_sets]:
        if other is None:
            continue
        if other.logits.shape[1] != c:
            raise DataError(
                f"{other.name}: model gave {other.logits.shape[1]} logits here but {c} on {val_set.name}"
            )
        od = None if other.features is None else other.features.shape[1]
        if od != d:
            raise DataError(f"{other.name}: feature dimension {od} differs from {d} on {val_set.name}")
        if other.inputs.shape[1:] != val_set.inputs.shape[1:]:
            raise DataError(
                f"{other.name}: samples have shape {other.inputs.shape[1:]} but {val_set.name} has "
                f"{val_set.inputs.shape[1:]}"
            )
    if val_set.labels.max() >= c:
        raise DataError(f"{val_set.name}: label {int(val_set.labels.max())} is out of range for {c} classes")
    if fit_set is not None:
        if fit_set.labels is None and "mahalanobis" in config.methods:
            raise DataError(f"{fit_set.name}: the fit set needs labels for the Mahalanobis class means")
        if fit_set.labels is not None and fit_set.labels.max() >= c:
            raise DataError(
                f"{fit_set.name}: label {int(fit_set.labels.max())} is out of range for {c} classes"
            )
