"""What a guard fit is asked to do (FitConfig), and whether the given data sets allow it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from guardedmodel_sidecar.guard.artifact import COMBINATIONS, FEATURE_METHODS, SINGLE_METHODS

from .data import DataError
from .extract import Extracted, ModelSpec

ALL_METHODS: tuple[str, ...] = SINGLE_METHODS
# The fused detector's members unless told otherwise: the best near-OOD detector (features) and a
# logit score that sees what the features miss, both cheap at batch 1 (KNN's 4096-row bank alone
# costs about 20 µs). Members that were not fitted (no features) are left out.
DEFAULT_FUSION_MEMBERS: tuple[str, ...] = ("mahalanobis", "energy")
# The error rates the fit report shows the conformal rejection rate for.
REPORT_ALPHAS: tuple[float, ...] = (0.01, 0.05, 0.1)


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
    # Fusion: the members (None = DEFAULT_FUSION_MEMBERS that were fitted; () = no fused detector),
    # the p-value combination, and the share of the calibration split that holds the members'
    # p-value references (part A; the rest, B, calibrates the fused statistic itself).
    fusion_members: tuple[str, ...] | None = None
    fusion_combination: str = "fisher"
    fusion_reference_fraction: float = 0.5
    # `method: auto` considers detectors whose OOD score costs at most this at batch 1 (median µs
    # on the fitting machine): the guard's maths has 50 µs per request, and the gate, calibrated
    # confidence, drift counting and decision take the rest.
    scorer_budget_us: float = 20.0
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
    if config.fusion_members is not None:
        bad = [m for m in config.fusion_members if m not in ALL_METHODS]
        if bad:
            raise FitError(f"unknown fusion member(s) {bad}; known: {', '.join(ALL_METHODS)}")
        absent = [m for m in config.fusion_members if m not in config.methods]
        if absent:
            raise FitError(
                f"fusion member(s) {absent} are not among the fitted methods {list(config.methods)}"
            )
    if config.fusion_combination not in COMBINATIONS:
        raise FitError(
            f"unknown fusion combination {config.fusion_combination!r}; known: {', '.join(COMBINATIONS)}"
        )
    if not 0.0 < config.fusion_reference_fraction < 1.0:
        raise FitError(f"fusion reference fraction must be in (0, 1), got {config.fusion_reference_fraction}")
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
