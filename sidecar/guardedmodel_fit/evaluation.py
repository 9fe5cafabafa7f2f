"""Measuring a fitted guard on data it was not fitted on: per detector its acceptance, conformal
rejection rates, AUROC and FPR@95TPR against each OOD set and its cost per request; calibration
before and after temperature scaling; the best detector and the ``auto`` choice."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from guardedmodel_sidecar.guard.artifact import GuardArtifact
from guardedmodel_sidecar.guard.scoring import OodScorer, calibrated_confidence, make_ood_scorer

from . import metrics
from .conformal_report import rejection_figures
from .extract import Extracted
from .fit_config import REPORT_ALPHAS

# Mean AUROCs this close count as a tie in the ``auto`` choice, which then goes to the cheaper
# detector: a difference this small is within the noise of a few thousand evaluation samples.
AUTO_TIE_AUROC = 0.002


def evaluate_detectors(
    scorers: dict[str, OodScorer],
    thresholds: dict[str, float],
    calibration_scores: dict[str, np.ndarray],
    evaluation: Extracted,
    ood_sets: Sequence[Extracted],
    alphas: Sequence[float] = REPORT_ALPHAS,
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """(scores per method and set, for plots; the report entry per method).

    ``calibration_scores`` are each method's in-distribution scores on the calibration data it
    was not fitted on (for the fused detector: part B only)."""
    eval_scores: dict[str, dict[str, np.ndarray]] = {}
    detector_report: dict[str, Any] = {}
    for m, scorer in scorers.items():
        eval_scores[m], entry = _quality(scorer, calibration_scores[m], evaluation, ood_sets, alphas)
        entry = {
            "threshold": thresholds[m],
            "acceptance_calibration": float(np.mean(calibration_scores[m] <= thresholds[m])),
            "acceptance_evaluation": float(np.mean(eval_scores[m]["in-distribution"] <= thresholds[m])),
            **entry,
        }
        for name, figures in entry["ood"].items():
            figures["flagged_at_threshold"] = float(np.mean(eval_scores[m][name] > thresholds[m]))
        entry["cost_us"] = scoring_cost(scorer, evaluation)
        detector_report[m] = entry
    return eval_scores, detector_report


def detector_quality(
    artifact: GuardArtifact,
    evaluation: Extracted,
    ood_sets: Sequence[Extracted],
    alphas: Sequence[float] = REPORT_ALPHAS,
) -> dict[str, Any]:
    """Per detector of a fitted artifact (singles and fused): AUROC and FPR@95TPR per OOD set,
    and the in-distribution rejection rate on ``evaluation`` at each alpha (expected, 90 % band,
    measured with a 95 % interval). ``evaluation`` must be in-distribution data the artifact was
    not fitted or calibrated on (e.g. the fit's evaluation split)."""
    out: dict[str, Any] = {}
    for method, calibration in artifact.calibration_scores.items():
        scorer = make_ood_scorer(method, artifact)
        _, entry = _quality(scorer, calibration, evaluation, ood_sets, alphas)
        out[method] = entry
    return out


def _quality(
    scorer: OodScorer,
    calibration_scores: np.ndarray,
    evaluation: Extracted,
    ood_sets: Sequence[Extracted],
    alphas: Sequence[float],
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    sets = {"in-distribution": scorer.score(evaluation.logits, evaluation.features)}
    for ood in ood_sets:
        sets[ood.name] = scorer.score(ood.logits, ood.features)
    id_scores = sets["in-distribution"]
    entry: dict[str, Any] = {
        "calibration_samples": int(np.size(calibration_scores)),
        "conformal": rejection_figures(calibration_scores, id_scores, alphas),
        "ood": {
            ood.name: {
                "auroc": metrics.auroc(id_scores, sets[ood.name]),
                "fpr_at_95_tpr": metrics.fpr_at_tpr(id_scores, sets[ood.name], 0.95),
                "samples": len(ood.logits),
            }
            for ood in ood_sets
        },
    }
    return sets, entry


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


def choose_auto(
    detector_report: dict[str, Any], ood_names: Sequence[str], budget_us: float
) -> dict[str, Any]:
    """The detector ``method: auto`` uses, and why (the report states the rule).

    Candidates: the detectors whose score costs at most ``budget_us`` at batch 1 (the cheapest one
    when none does). With OOD sets: the best mean AUROC over them, a tie (within AUTO_TIE_AUROC)
    going to the cheaper; those sets chose it, so they are no longer an unbiased test of it.
    Without OOD sets: the fused detector, which needs no guess of the kind of shift to come (each
    member catches a different kind, and the fusion keeps the stated error rate); else the
    cheapest candidate.
    """
    costs = {m: float(d["cost_us"]["batch_1"]) for m, d in detector_report.items()}
    within = [m for m in costs if costs[m] <= budget_us] or [min(costs, key=lambda m: costs[m])]
    rule = (
        f"among detectors whose score costs <= {budget_us:g} µs at batch 1 (the guard's maths has "
        "50 µs per request)"
    )
    candidates = {
        m: {"cost_us_batch_1": costs[m], "within_budget": costs[m] <= budget_us} for m in detector_report
    }
    if ood_names:
        means = {
            m: float(np.mean([d["ood"][name]["auroc"] for name in ood_names]))
            for m, d in detector_report.items()
        }
        for m, c in candidates.items():
            c["mean_auroc"] = means[m]
        best = max(means[m] for m in within)
        tied = [m for m in within if means[m] >= best - AUTO_TIE_AUROC]
        method = min(tied, key=lambda m: costs[m])
        names = ", ".join(ood_names)
        return {
            "method": method,
            "rule": f"best mean AUROC over the fit's OOD sets {rule}; within {AUTO_TIE_AUROC} of the best "
            "counts as a tie, won by the cheaper",
            "chosen_by": f"the fit's own OOD sets ({names}); their AUROCs are no longer an unbiased "
            "test of the chosen detector",
            "candidates": candidates,
        }
    if "fused" in within:
        method = "fused"
        why = (
            "no OOD sets were given, so nothing says which kind of shift to expect: the fused "
            "detector combines detectors that each catch a different kind, at the same stated error rate"
        )
    else:
        method = min(within, key=lambda m: costs[m])
        why = "no OOD sets were given and no fused detector within budget: the cheapest detector"
    return {
        "method": method,
        "rule": f"the fused detector {rule}",
        "chosen_by": why,
        "candidates": candidates,
    }


def rank_detectors(detector_report: dict[str, Any], ood_sets: Sequence[Extracted]) -> dict[str, Any]:
    """Best detector by mean AUROC over the OOD sets (None without OOD data)."""
    if not ood_sets:
        return {"method": None, "reason": "no OOD sets given"}
    means = {m: float(np.mean([v["auroc"] for v in d["ood"].values()])) for m, d in detector_report.items()}
    best = max(means, key=lambda m: means[m])
    return {"method": best, "mean_auroc": means[best], "mean_auroc_by_method": means}


def scoring_cost(scorer: Any, data: Extracted, rounds: int = 5, calls: int = 100) -> dict[str, float]:
    """Microseconds per call at batch 1 and 32 (what a request costs the sidecar): the lowest of
    ``rounds`` medians over ``calls`` calls each, so that a busy machine (other processes on the
    same cores) inflates the figure, and the ``auto`` choice that depends on it, less."""
    out: dict[str, float] = {}
    for batch in (1, 32):
        logits = np.ascontiguousarray(data.logits[:batch], dtype=np.float32)
        feats = (
            None if data.features is None else np.ascontiguousarray(data.features[:batch], dtype=np.float32)
        )
        for _ in range(20):  # warm caches and lazy imports before timing
            scorer.score(logits, feats)
        medians = []
        for _ in range(rounds):
            times = []
            for _ in range(calls):
                t0 = time.perf_counter()
                scorer.score(logits, feats)
                times.append(time.perf_counter() - t0)
            medians.append(float(np.median(times)))
        out[f"batch_{batch}"] = min(medians) * 1e6
    return out
