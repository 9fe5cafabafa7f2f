"""Measuring a fitted guard on data it was not fitted on: per detector its acceptance, AUROC and
FPR@95TPR against each OOD set and its cost per request; calibration before and after
temperature scaling; and the best detector."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from guardedmodel_sidecar.guard.scoring import OodScorer, calibrated_confidence

from . import metrics
from .extract import Extracted


def evaluate_detectors(
    scorers: dict[str, OodScorer],
    thresholds: dict[str, float],
    calib: Extracted,
    evaluation: Extracted,
    ood_sets: Sequence[Extracted],
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """(scores per method and set, for plots; the report entry per method)."""
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
        entry["cost_us"] = scoring_cost(scorer, evaluation)
        detector_report[m] = entry
    return eval_scores, detector_report


def calibration_report(
    evaluation: Extracted, temperature: float, ece_bins: int
) -> tuple[dict[str, metrics.ReliabilityBins], dict[str, Any]]:
    """(reliability before/after temperature scaling, for plots; the calibration report)."""
    assert evaluation.labels is not None
    conf_before, pred = calibrated_confidence(evaluation.logits, 1.0)
    conf_after, _ = calibrated_confidence(evaluation.logits, temperature)
    correct = pred == evaluation.labels
    reliability = {
        "before": metrics.reliability(conf_before, correct, ece_bins),
        "after": metrics.reliability(conf_after, correct, ece_bins),
    }
    calibration = {
        "temperature": temperature,
        "accuracy": float(np.mean(correct)),
        "mean_confidence_before": float(np.mean(conf_before)),
        "mean_confidence_after": float(np.mean(conf_after)),
        "ece_before": metrics.expected_calibration_error(conf_before, correct, ece_bins),
        "ece_after": metrics.expected_calibration_error(conf_after, correct, ece_bins),
        "nll_before": metrics.negative_log_likelihood(evaluation.logits, evaluation.labels, 1.0),
        "nll_after": metrics.negative_log_likelihood(evaluation.logits, evaluation.labels, temperature),
        "ece_bins": ece_bins,
    }
    return reliability, calibration


def rank_detectors(detector_report: dict[str, Any], ood_sets: Sequence[Extracted]) -> dict[str, Any]:
    """Best detector by mean AUROC over the OOD sets (None without OOD data)."""
    if not ood_sets:
        return {"method": None, "reason": "no OOD sets given"}
    means = {m: float(np.mean([v["auroc"] for v in d["ood"].values()])) for m, d in detector_report.items()}
    best = max(means, key=lambda m: means[m])
    return {"method": best, "mean_auroc": means[best], "mean_auroc_by_method": means}


def scoring_cost(scorer: Any, data: Extracted, repeats: int = 200) -> dict[str, float]:
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
