"""Fitting a guard artifact from extracted logits/features, and measuring how good it is.

Data use, so that nothing is evaluated on what it was fitted on:
- detector statistics (class means, covariance, KNN bank, ViM subspace) come from the *fit*
  part: ``fit_set`` when given (e.g. the training set), else ``holdout_fraction`` of ``val_set``
  is held out and the rest is used;
- the held-out part is split in two halves: *calibration* (temperature, thresholds, drift and
  input references, and each detector's calibration scores for conformal p-values) and
  *evaluation* (every number in the report: ECE, NLL, achieved acceptance, conformal rejection
  rates, AUROC and FPR@95TPR against the OOD sets);
- the fused detector cuts the calibration split once more (``fusion``): part A for its members'
  p-value references, part B for its own calibration scores;
- the OOD sets are used for the report and for the ``auto`` choice only, never for fitting.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from dataclasses import dataclass
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
from guardedmodel_sidecar.guard.conformal import ConformalReference
from guardedmodel_sidecar.guard.scoring import OodScorer, calibrated_confidence, make_ood_scorer

from . import metrics
from .calibration import fit_temperature
from .data import stratified_split
from .detectors import fit_knn, fit_mahalanobis, fit_vim, recover_linear_head
from .evaluation import calibration_report, choose_auto, evaluate_detectors, rank_detectors
from .extract import Extracted, ModelSpec
from .fit_config import ALL_METHODS, DEFAULT_FUSION_MEMBERS, FitConfig, FitError, check_sets
from .fusion import fused_params, fusion_members, split_calibration
from .reference import drift_reference, input_reference


@dataclass(frozen=True, eq=False)
class FitResult:
    artifact: GuardArtifact
    report: dict[str, Any]  # JSON-able; what report.json holds
    # evaluation scores per method: {"in-distribution": (n,), "<ood set>": (m,)}, for plots
    eval_scores: dict[str, dict[str, np.ndarray]]
    # reliability before/after temperature scaling, for plots
    reliability: dict[str, metrics.ReliabilityBins]
    # the in-distribution evaluation split (not fitted or calibrated on): for measuring the guard
    # afterwards, e.g. ``evaluation.detector_quality(result.artifact, result.evaluation, ood_sets)``
    evaluation: Extracted | None = None


def fit_guard(
    spec: ModelSpec,
    val_set: Extracted,
    *,
    fit_set: Extracted | None = None,
    ood_sets: Sequence[Extracted] = (),
    config: FitConfig | None = None,
) -> FitResult:
    config = config or FitConfig()
    check_sets(spec, val_set, fit_set, ood_sets, config)
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
    scorers: dict[str, OodScorer] = {m: make_ood_scorer(m, draft) for m in detectors}
    calib_scores = {m: scorer.score(calib.logits, calib.features) for m, scorer in scorers.items()}
    for m, values in calib_scores.items():
        if not np.all(np.isfinite(values)):
            raise FitError(
                f"the {m} OOD score is NaN or infinite on {int(np.sum(~np.isfinite(values)))} calibration "
                "samples; check the model's outputs on the validation data"
            )
    calibration_scores = {m: np.sort(v.astype(np.float64)) for m, v in calib_scores.items()}
    if "msp" in detectors:
        notes.append(
            "msp's temperature was fitted on the calibration split its calibration scores come from: "
            "one scalar on thousands of rows, so its stated error rate holds up to a negligible bias"
        )
    fusion = _fit_fusion(config, detectors, draft, calib, calib_scores, calibration_scores, notes)
    if fusion is not None:
        scorers["fused"] = make_ood_scorer("fused", draft)
    thresholds = {m: _threshold(calibration_scores[m], config.target_acceptance) for m in scorers}
    steps.update(1)

    # --------------------------------------------------------------- evaluation
    eval_scores, detector_report = evaluate_detectors(
        scorers, thresholds, calibration_scores, evaluation, ood_sets
    )
    if "vim" in detector_report:
        detector_report["vim"].update(vim_info)
    if fusion is not None:
        detector_report["fused"]["fusion"] = fusion
    reliability, calibration = calibration_report(evaluation, temperature, config.ece_bins)
    steps.update(1)
    steps.close()

    ranking = rank_detectors(detector_report, ood_sets)
    auto = choose_auto(detector_report, [o.name for o in ood_sets], config.scorer_budget_us)
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
        "auto": auto,
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
        "auto": {"method": auto["method"], "chosen_by": auto["chosen_by"]},
        "conformal": {m: _conformal_summary(d["conformal"]) for m, d in detector_report.items()},
        "cost_us_batch_1": {m: d["cost_us"]["batch_1"] for m, d in detector_report.items()},
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
            "calibration_scores": calibration_scores,
            "auto_method": auto["method"],
        }
    )
    return FitResult(artifact, report, eval_scores, reliability, evaluation)


def _fit_fusion(
    config: FitConfig,
    detectors: dict[str, DetectorParams],
    draft: GuardArtifact,
    calib: Extracted,
    calib_scores: dict[str, np.ndarray],
    calibration_scores: dict[str, np.ndarray],
    notes: list[str],
) -> dict[str, Any] | None:
    """Add the fused detector (to ``detectors`` and ``calibration_scores``) when two or more members
    were fitted; returns what the report says about it, or None with a note why there is none."""
    members = fusion_members(config, detectors)
    if len(members) < 2:
        if config.fusion_members != ():
            wanted = config.fusion_members or DEFAULT_FUSION_MEMBERS
            notes.append(f"no fused detector: fewer than two of {', '.join(wanted)} were fitted")
        return None
    part_a, part_b = split_calibration(len(calib.logits), config.fusion_reference_fraction, config.seed + 2)
    detectors["fused"] = fused_params(calib_scores, members, config.fusion_combination, part_a)
    fused = make_ood_scorer("fused", draft)
    features_b = None if calib.features is None else calib.features[part_b]
    calibration_scores["fused"] = np.sort(fused.score(calib.logits[part_b], features_b))
    return {
        "members": list(members),
        "combination": config.fusion_combination,
        "reference_samples": len(part_a),
        "calibration_samples": len(part_b),
    }


def _threshold(sorted_scores: np.ndarray, target_acceptance: float) -> float:
    """The stored raw threshold: the conformal one at alpha = 1 - target acceptance (what the sidecar
    uses when the spec sets neither), or the plain quantile when the calibration set is too small
    for that alpha (then no score would ever be rejected)."""
    threshold = ConformalReference(sorted_scores).threshold(1.0 - target_acceptance)
    if np.isfinite(threshold):
        return threshold
    return metrics.threshold_at_acceptance(sorted_scores, target_acceptance)


def _conformal_summary(figures: dict[str, Any]) -> dict[str, Any]:
    """Expected and measured in-distribution rejection rate per alpha (for the artifact summary)."""
    return {
        key: {"expected": value["expected"], "measured": value["measured"]}
        for key, value in figures.items()
        if isinstance(value, dict)
    }


def _take(data: Extracted, index: np.ndarray, part: str) -> Extracted:
    return Extracted(
        name=f"{data.name}[{part}]",
        logits=data.logits[index],
        features=None if data.features is None else data.features[index],
        labels=None if data.labels is None else data.labels[index],
        inputs=data.inputs[index],
    )
