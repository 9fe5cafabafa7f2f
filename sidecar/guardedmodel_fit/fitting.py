"""Fitting a guard artifact from extracted logits/features, and measuring how good it is.

Data use, so that nothing is evaluated on what it was fitted on:
- detector statistics (class means, covariance, KNN bank, ViM subspace) come from the *fit*
  part: ``fit_set`` when given (e.g. the training set), else ``holdout_fraction`` of ``val_set``
  is held out and the rest is used;
- the held-out part is split in two halves: *calibration* (temperature, thresholds, drift and
  input references) and *evaluation* (every number in the report: ECE, NLL, achieved acceptance,
  AUROC and FPR@95TPR against the OOD sets).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from guardedmodel_sidecar.guard.artifact import (
    FEATURE_METHODS,
    FORMAT_VERSION,
    DetectorParams,
    EnergyParams,
    GuardArtifact,
    MspParams,
)
from guardedmodel_sidecar.guard.scoring import calibrated_confidence, make_ood_scorer

from . import metrics
from .calibration import fit_temperature
from .data import DataError, stratified_split
from .detectors import fit_knn, fit_mahalanobis, fit_vim, recover_linear_head
from .extract import Extracted, ModelSpec
from .reference import drift_reference, input_reference

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


@dataclass(frozen=True, eq=False)
class FitResult:
    artifact: GuardArtifact
    report: dict[str, Any]  # JSON-able; what report.json holds
    # evaluation scores per method: {"in-distribution": (n,), "<ood set>": (m,)}, for plots
    eval_scores: dict[str, dict[str, np.ndarray]]
    # reliability before/after temperature scaling, for plots
    reliability: dict[str, metrics.ReliabilityBins]


def fit_guard(
    spec: ModelSpec,
    val_set: Extracted,
    *,
    fit_set: Extracted | None = None,
    ood_sets: Sequence[Extracted] = (),
    config: FitConfig | None = None,
) -> FitResult:
    config = config or FitConfig()
    _check_sets(spec, val_set, fit_set, ood_sets, config)
    num_classes = val_set.logits.shape[1]
    has_features = val_set.features is not None
    methods = tuple(m for m in config.methods if has_features or m not in FEATURE_METHODS)
    notes: list[str] = []
    assert val_set.labels is not None

    # ------------------------------------------------------------------ splits
    if fit_set is None:
        fit_idx, held_idx = stratified_split(
            val_set.labels, len(val_set.logits), config.holdout_fraction, config.seed
        )
        fit_part = _take(val_set, fit_idx, "fit")
        held = _take(val_set, held_idx, "holdout")
    else:
        fit_part, held = fit_set, val_set
    calib_idx, eval_idx = stratified_split(held.labels, len(held.logits), 0.5, config.seed + 1)
    calib, evaluation = _take(held, calib_idx, "calibration"), _take(held, eval_idx, "evaluation")
    for part in (fit_part, calib, evaluation):
        if len(part.logits) < 2 * num_classes:
            raise FitError(
                f"the {part.name} split has only {len(part.logits)} samples for {num_classes} classes; "
                "give more in-distribution data"
            )

    steps = tqdm(total=len(methods) + 3, desc="fitting guard", unit="step", disable=not config.progress)

    # ------------------------------------------------------------- calibration
    assert calib.labels is not None and evaluation.labels is not None
    temperature = fit_temperature(calib.logits, calib.labels)
    steps.update(1)

    # --------------------------------------------------------------- detectors
    detectors: dict[str, DetectorParams] = {}
    vim_info: dict[str, Any] = {}
    for method in methods:
        steps.set_postfix_str(method)
        if method == "mahalanobis":
            assert fit_part.features is not None and fit_part.labels is not None
            detectors[method] = fit_mahalanobis(
                fit_part.features, fit_part.labels, num_classes, normalise=config.mahalanobis_normalise
            )
        elif method == "knn":
            assert fit_part.features is not None
            detectors[method] = fit_knn(
                fit_part.features, k=config.knn_k, bank_size=config.knn_bank_size, seed=config.seed
            )
        elif method == "energy":
            detectors[method] = EnergyParams(temperature=1.0)
        elif method == "msp":
            detectors[method] = MspParams(temperature=temperature)
        elif method == "vim":
            assert fit_part.features is not None
            head = recover_linear_head(fit_part.features, fit_part.logits)
            vim_info["head_relative_error"] = head.relative_error
            if head.relative_error > 1e-3:
                notes.append(
                    f"ViM skipped: the logits are not an affine function of the features "
                    f"(relative error {head.relative_error:.2g}); export the input of the last linear layer"
                )
            else:
                params = fit_vim(
                    fit_part.features, fit_part.logits, head, principal_dim=config.vim_principal_dim
                )
                vim_info["principal_dim"] = int(params.origin.shape[0] - params.residual_basis.shape[1])
                detectors[method] = params
        else:
            raise FitError(f"unknown method {method!r}; known: {', '.join(ALL_METHODS)}")
        steps.update(1)

    # --------------------------------------------------- thresholds, references
    calib_conf, calib_pred = calibrated_confidence(calib.logits, temperature)
    reference = drift_reference(
        calib.features,
        calib_conf,
        calib_pred,
        num_classes,
        feature_bins=config.feature_bins,
        confidence_bins=config.confidence_bins,
    )
    draft = GuardArtifact(
        format_version=FORMAT_VERSION,
        model_name=spec.name,
        model_version=spec.version,
        num_classes=num_classes,
        feature_dim=0 if calib.features is None else int(calib.features.shape[1]),
        temperature=temperature,
        detectors=detectors,
        thresholds={},
        target_acceptance=config.target_acceptance,
        reference=reference,
        input_reference=input_reference(calib.inputs, spec.input_name),
        logits_output=spec.logits_output,
        features_output=spec.features_output if has_features else None,
    )
    scorers = {m: make_ood_scorer(m, draft) for m in detectors}
    thresholds = {
        m: metrics.threshold_at_acceptance(s.score(calib.logits, calib.features), config.target_acceptance)
        for m, s in scorers.items()
    }
    steps.update(1)

    # --------------------------------------------------------------- evaluation
    eval_scores: dict[str, dict[str, np.ndarray]] = {}
    detector_report: dict[str, Any] = {}
    for m, scorer in scorers.items():
        sets = {"in-distribution": scorer.score(evaluation.logits, evaluation.features)}
        for ood in ood_sets:
            sets[ood.name] = scorer.score(ood.logits, ood.features)
        eval_scores[m] = sets
        id_scores = sets["in-distribution"]
        entry: dict[str, Any] = {
            "threshold": thresholds[m],
            "acceptance_calibration": float(
                np.mean(scorer.score(calib.logits, calib.features) <= thresholds[m])
            ),
            "acceptance_evaluation": float(np.mean(id_scores <= thresholds[m])),
            "ood": {},
        }
        for ood in ood_sets:
            o = sets[ood.name]
            entry["ood"][ood.name] = {
                "auroc": metrics.auroc(id_scores, o),
                "fpr_at_95_tpr": metrics.fpr_at_tpr(id_scores, o, 0.95),
                "flagged_at_threshold": float(np.mean(o > thresholds[m])),
                "samples": len(o),
            }
        entry["cost_us"] = _scoring_cost(scorer, evaluation)
        detector_report[m] = entry
    if "vim" in detector_report:
        detector_report["vim"].update(vim_info)

    conf_before, pred = calibrated_confidence(evaluation.logits, 1.0)
    conf_after, _ = calibrated_confidence(evaluation.logits, temperature)
    correct = pred == evaluation.labels
    reliability = {
        "before": metrics.reliability(conf_before, correct, config.ece_bins),
        "after": metrics.reliability(conf_after, correct, config.ece_bins),
    }
    calibration = {
        "temperature": temperature,
        "accuracy": float(np.mean(correct)),
        "mean_confidence_before": float(np.mean(conf_before)),
        "mean_confidence_after": float(np.mean(conf_after)),
        "ece_before": metrics.expected_calibration_error(conf_before, correct, config.ece_bins),
        "ece_after": metrics.expected_calibration_error(conf_after, correct, config.ece_bins),
        "nll_before": metrics.negative_log_likelihood(evaluation.logits, evaluation.labels, 1.0),
        "nll_after": metrics.negative_log_likelihood(evaluation.logits, evaluation.labels, temperature),
        "ece_bins": config.ece_bins,
    }
    steps.update(1)
    steps.close()

    ranking = _rank(detector_report, ood_sets)
    report: dict[str, Any] = {
        "model": {"name": spec.name, "version": spec.version, "num_classes": num_classes},
        "samples": {
            "fit": len(fit_part.logits),
            "calibration": len(calib.logits),
            "evaluation": len(evaluation.logits),
            **{f"ood:{o.name}": len(o.logits) for o in ood_sets},
        },
        "target_acceptance": config.target_acceptance,
        "calibration": calibration,
        "detectors": detector_report,
        "best_detector": ranking,
        "notes": notes,
    }
    summary = {
        "temperature": temperature,
        "ece_before": calibration["ece_before"],
        "ece_after": calibration["ece_after"],
        "accuracy": calibration["accuracy"],
        "thresholds": thresholds,
        "acceptance_evaluation": {m: d["acceptance_evaluation"] for m, d in detector_report.items()},
        "auroc": {m: {k: v["auroc"] for k, v in d["ood"].items()} for m, d in detector_report.items()},
        "best_detector": ranking,
    }
    metadata = {
        "report": summary,
        "input_name": spec.input_name,
        "fit": {
            "seed": config.seed,
            "methods": list(methods),
            "sources": {"val": val_set.name, "fit": fit_set.name if fit_set else None},
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
        **dict(config.metadata),
    }
    artifact = GuardArtifact(
        **{
            **{f: getattr(draft, f) for f in draft.__dataclass_fields__},
            "thresholds": thresholds,
            "metadata": metadata,
        }
    )
    return FitResult(artifact, report, eval_scores, reliability)


def _rank(detector_report: dict[str, Any], ood_sets: Sequence[Extracted]) -> dict[str, Any]:
    """Best detector by mean AUROC over the OOD sets (None without OOD data)."""
    if not ood_sets:
        return {"method": None, "reason": "no OOD sets given"}
    means = {m: float(np.mean([v["auroc"] for v in d["ood"].values()])) for m, d in detector_report.items()}
    best = max(means, key=lambda m: means[m])
    return {"method": best, "mean_auroc": means[best], "mean_auroc_by_method": means}


def _scoring_cost(scorer: Any, data: Extracted, repeats: int = 200) -> dict[str, float]:
    """Median microseconds per call at batch 1 and 32 (what a request costs the sidecar)."""
    out: dict[str, float] = {}
    for batch in (1, 32):
        logits = np.ascontiguousarray(data.logits[:batch], dtype=np.float32)
        feats = (
            None if data.features is None else np.ascontiguousarray(data.features[:batch], dtype=np.float32)
        )
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            scorer.score(logits, feats)
            times.append(time.perf_counter() - t0)
        out[f"batch_{batch}"] = float(np.median(times) * 1e6)
    return out


def _take(data: Extracted, index: np.ndarray, part: str) -> Extracted:
    return Extracted(
        name=f"{data.name}[{part}]",
        logits=data.logits[index],
        features=None if data.features is None else data.features[index],
        labels=None if data.labels is None else data.labels[index],
        inputs=data.inputs[index],
    )


def _check_sets(
    spec: ModelSpec,
    val_set: Extracted,
    fit_set: Extracted | None,
    ood_sets: Sequence[Extracted],
    config: FitConfig,
) -> None:
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
