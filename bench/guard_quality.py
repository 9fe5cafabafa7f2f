"""Quality of the guard on the worked Fashion-MNIST example: detectors, error rates, drift alarms.

    .venv/bin/python bench/guard_quality.py [--out ~/.cache/guardedmodel/examples] [--version 1]
                                            [--skip-live] [--drift-requests 10000]

Builds (or reuses) the example, fits its guard the same way the example does, and reports:
- per detector, the single ones and the fused one: AUROC and FPR@95TPR per OOD set (near-OOD =
  held-out classes; far-OOD = another data set and corruptions), on the evaluation split the guard
  was neither fitted nor calibrated on, and the scoring cost (median µs per call, batch 1 and 32);
- the in-distribution rejection rate at alpha 0.01 / 0.05 / 0.1: offline on the evaluation split for
  every detector, and measured through running sidecars (real Triton, real traffic, per-row
  decisions read from GUARD_DECISION) for the detector ``auto`` picks and the fused one;
- drift: false alarms on 10,000 in-distribution requests at 1, 10 and 100 requests/s, and the
  detection delay (requests) after a grey-level shift, a blur and a class-prior shift, through the
  sidecar's own drift code with a simulated clock (guard_bench_drift.py);
- ECE and NLL before/after temperature scaling.

Targets: far-OOD AUROC >= 0.98 (best detector), best detector beats MSP on near-OOD, ECE after
calibration <= 2 %, measured rejection rates within their intervals, no false drift alarm, delay
<= 500 requests for the grey-level shift and blur (row-count window). A benchmark, not a test: it
writes bench/results/guard_quality.json and .png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from guard_bench_drift import Rows, detection_delays, false_alarms
from guard_bench_live import measure_rejection

from guardedmodel_fit.evaluation import detector_quality
from guardedmodel_fit.example import DEFAULT_OUT, build_example, example_fit_config
from guardedmodel_fit.example_data import FAR_OOD_SETS, NEAR_OOD_SET
from guardedmodel_fit.extract import Extracted, extract, open_model
from guardedmodel_fit.fit_config import REPORT_ALPHAS
from guardedmodel_fit.fitting import fit_guard
from guardedmodel_sidecar.config_spec import DriftSpec
from guardedmodel_sidecar.guard.artifact import GuardArtifact, load_artifact
from guardedmodel_sidecar.guard.scoring import OodScorer, calibrated_confidence, make_ood_scorer

RESULTS = Path(__file__).parent / "results"
RATES = (1.0, 10.0, 100.0)
DRIFT_WINDOWS = {
    "200 rows": DriftSpec(window_s=None, window_rows=200),
    "1m": DriftSpec(window_s=60.0, window_rows=None),
    "5m (default)": DriftSpec(window_s=300.0, window_rows=None),
}


class ConfidenceOnly:
    """Calibrated confidence timed like a scorer (the sidecar computes it for every request)."""

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature

    def score(self, logits: np.ndarray, features: np.ndarray | None) -> np.ndarray:
        return calibrated_confidence(logits, self.temperature)[0]


def scoring_cost_us(
    scorer: OodScorer | ConfidenceOnly,
    logits: np.ndarray,
    features: np.ndarray,
    batch: int,
    seconds: float = 0.5,
) -> float:
    """Median wall time of one call over ``seconds`` of repeated calls."""
    lg = np.ascontiguousarray(logits[:batch], dtype=np.float32)
    ft = np.ascontiguousarray(features[:batch], dtype=np.float32)
    for _ in range(20):
        scorer.score(lg, ft)
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        scorer.score(lg, ft)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e6)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the example is built/cached")
    parser.add_argument("--version", default="1")
    parser.add_argument("--skip-live", action="store_true", help="no sidecars: offline figures only")
    parser.add_argument("--drift-requests", type=int, default=10_000)
    args = parser.parse_args()

    build = build_example(args.out, versions=[args.version], progress=False)
    extractor = open_model(build.model_dir, version=args.version)
    sets = {name: extract(extractor, build.dataset(name), progress=False) for name in ("validation", "fit")}
    oods = [extract(extractor, build.dataset(n), progress=False) for n in (NEAR_OOD_SET, *FAR_OOD_SETS)]
    config = example_fit_config(progress=False)
    result = fit_guard(extractor.spec, sets["validation"], fit_set=sets["fit"], ood_sets=oods, config=config)
    artifact, evaluation, report = result.artifact, result.evaluation, result.report
    served = load_artifact(build.model_dir / args.version / "guard")
    _check_same_guard(artifact, served)

    quality = detector_quality(artifact, evaluation, oods)
    assert evaluation.features is not None, "the example model exposes FEATURES"
    detectors = {m: _detector_row(m, q, artifact, evaluation) for m, q in quality.items()}
    auto = artifact.auto_method or "mahalanobis"
    live: list[dict[str, Any]] = []
    if not args.skip_live:
        for method in dict.fromkeys((auto, "fused")):
            live += measure_rejection(
                build.repository,
                extractor.spec.name,
                args.version,
                evaluation.inputs,
                REPORT_ALPHAS,
                method,
                int(artifact.calibration_scores[method].size),
            )
    started = time.perf_counter()
    drift = drift_figures(artifact, evaluation, {o.name: o for o in oods}, args.drift_requests)
    drift["seconds"] = time.perf_counter() - started

    confidence = ConfidenceOnly(artifact.temperature)
    conf_cost = {b: scoring_cost_us(confidence, evaluation.logits, evaluation.features, b) for b in (1, 32)}
    cal = report["calibration"]
    results = {
        "benchmark": "guard_quality",
        "model": f"{report['model']['name']} v{report['model']['version']}",
        "samples": report["samples"],
        "calibration": {
            k: cal[k]
            for k in ("temperature", "accuracy", "ece_before", "ece_after", "nll_before", "nll_after")
        },
        "auto": report.get("auto", {"method": auto}),
        "detectors": detectors,
        "rejection_live": live,
        "drift": drift,
        "calibrated_confidence_cost_us": {"batch_1": conf_cost[1], "batch_32": conf_cost[32]},
        "targets": targets(detectors, cal, live, drift),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "numpy": np.__version__},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "guard_quality.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, RESULTS / "guard_quality.png")
    print(table(results))
    return 0


def _check_same_guard(fitted: GuardArtifact, served: GuardArtifact) -> None:
    """The sidecars serve the repository's artifact; the offline figures and the choice of rows
    to send come from the fit made here. They must be the same fit, or the evaluation rows might
    be the served guard's calibration rows."""
    for method, scores in fitted.calibration_scores.items():
        other = served.calibration_scores.get(method)
        if (
            other is None
            or other.shape != scores.shape
            or not np.allclose(other, scores, rtol=1e-6, atol=1e-9)
        ):
            raise SystemExit(
                f"the example's guard ({method}) differs from the fit made here; rebuild it: "
                "python -m guardedmodel_fit.example --force"
            )


def _detector_row(
    method: str, q: dict[str, Any], artifact: GuardArtifact, evaluation: Extracted
) -> dict[str, Any]:
    scorer = make_ood_scorer(method, artifact)
    far = {n: q["ood"][n] for n in FAR_OOD_SETS}
    assert evaluation.features is not None
    return {
        "near_auroc": q["ood"][NEAR_OOD_SET]["auroc"],
        "near_fpr_at_95_tpr": q["ood"][NEAR_OOD_SET]["fpr_at_95_tpr"],
        "far_auroc_mean": float(np.mean([v["auroc"] for v in far.values()])),
        "far_auroc_min": float(np.min([v["auroc"] for v in far.values()])),
        "far_fpr_at_95_tpr_mean": float(np.mean([v["fpr_at_95_tpr"] for v in far.values()])),
        "by_set": {
            n: {"auroc": v["auroc"], "fpr_at_95_tpr": v["fpr_at_95_tpr"]} for n, v in q["ood"].items()
        },
        "rejection_offline": {f"{a:g}": q["conformal"][f"{a:g}"] for a in REPORT_ALPHAS},
        "calibration_samples": q["calibration_samples"],
        "cost_us_batch_1": scoring_cost_us(scorer, evaluation.logits, evaluation.features, 1),
        "cost_us_batch_32": scoring_cost_us(scorer, evaluation.logits, evaluation.features, 32),
    }


def drift_figures(
    artifact: GuardArtifact, evaluation: Extracted, oods: dict[str, Extracted], requests: int
) -> dict[str, Any]:
    def rows(data: Extracted) -> Rows:
        assert data.features is not None
        confidence, predicted = calibrated_confidence(data.logits, artifact.temperature)
        return Rows(confidence, predicted, np.asarray(data.features, dtype=np.float32))

    in_dist = rows(evaluation)
    assert evaluation.labels is not None
    # A class-prior shift: the same kind of images, but only four of the eight classes arrive.
    few_classes = np.flatnonzero(evaluation.labels < 4)

    def resample(source: Rows) -> Any:
        return lambda rng, n: source.take(rng.integers(0, len(source), n))

    shifts = {
        "grey-level shift": resample(rows(oods["grey-shift"])),
        "blur": resample(rows(oods["blur"])),
        "class prior (4 of 8 classes)": resample(in_dist.take(few_classes)),
    }
    return {
        "windows": {
            name: {
                "window_s": d.window_s,
                "window_rows": d.window_rows,
                "alpha": d.alpha,
                "min_samples": d.min_samples,
            }
            for name, d in DRIFT_WINDOWS.items()
        },
        "false_alarms": false_alarms(artifact, in_dist, DRIFT_WINDOWS, RATES, requests, seed=1),
        "delays": detection_delays(
            artifact, in_dist, shifts, DRIFT_WINDOWS, RATES, shift_at=2100, after_shift=40_000, seed=2
        ),
    }


def targets(
    detectors: dict[str, Any], cal: dict[str, Any], live: list[dict[str, Any]], drift: dict[str, Any]
) -> dict[str, Any]:
    best_near = max(detectors, key=lambda m: detectors[m]["near_auroc"])
    best_far = max(detectors, key=lambda m: detectors[m]["far_auroc_mean"])
    fast_delays = [
        d for d in drift["delays"] if d["window"] == "200 rows" and d["shift"] in ("grey-level shift", "blur")
    ]
    return {
        "far_auroc_best >= 0.98": {
            "method": best_far,
            "value": detectors[best_far]["far_auroc_mean"],
            "met": detectors[best_far]["far_auroc_mean"] >= 0.98,
        },
        "best_near_beats_msp": {
            "method": best_near,
            "value": detectors[best_near]["near_auroc"],
            "msp": detectors["msp"]["near_auroc"],
            "met": detectors[best_near]["near_auroc"] > detectors["msp"]["near_auroc"],
        },
        "ece_after <= 0.02": {"value": cal["ece_after"], "met": cal["ece_after"] <= 0.02},
        "live rejection rate within its 95 % predictive interval": {
            "cells": len(live),
            "met": all(c["within_predictive"] for c in live) if live else None,
        },
        "no false drift alarm on in-distribution traffic": {
            "false_alarms_all_runs": sum(sum(c["false_alarms_per_run"]) for c in drift["false_alarms"]),
            "met": all(c["false_alarms"] == 0 for c in drift["false_alarms"]),
        },
        "delay <= 500 requests (grey-level shift, blur; 200-row window)": {
            "delays": [d["delay_requests"] for d in fast_delays],
            "met": all(d["detected"] and d["delay_requests"] <= 500 for d in fast_delays),
        },
    }


def table(results: dict[str, Any]) -> str:
    lines = [
        f"{'method':<12} {'near AUROC':>10} {'near FPR95':>10} {'far AUROC':>9} {'far min':>8} {'far FPR95':>9} "
        f"{'µs b=1':>7} {'µs b=32':>8}  rejected at alpha .01/.05/.1 (evaluation split)"
    ]
    for m, d in results["detectors"].items():
        rates = "/".join(f"{r['measured']:.4f}" for r in d["rejection_offline"].values())
        lines.append(
            f"{m:<12} {d['near_auroc']:>10.4f} {d['near_fpr_at_95_tpr']:>10.3f} {d['far_auroc_mean']:>9.4f} "
            f"{d['far_auroc_min']:>8.4f} {d['far_fpr_at_95_tpr_mean']:>9.3f} {d['cost_us_batch_1']:>7.1f} "
            f"{d['cost_us_batch_32']:>8.1f}  {rates}"
        )
    lines.append(f"auto: {results['auto']}")
    for c in results["rejection_live"]:
        lo, hi = c["rate_ci95"]
        lines.append(
            f"live {c['method']:<12} alpha {c['alpha']:<5g} rejected {c['rejected']}/{c['rows']} = {c['rate']:.4f} "
            f"[{lo:.4f}, {hi:.4f}] expected {c['expected']:.4f}, 95 % predictive "
            f"{c['predictive_95'][0]:.4f}-{c['predictive_95'][1]:.4f}"
        )
    for c in results["drift"]["false_alarms"]:
        lines.append(
            f"drift {c['window']:<13} {c['rate_per_s']:>5g}/s: {c['false_alarms_per_run']} false alarms in "
            f"{c['windows']:g} windows ({c['insufficient']:g} insufficient) per {c['requests']} requests"
        )
    for d in results["drift"]["delays"]:
        delay = d["delay_requests"] if d["detected"] else "not detected"
        lines.append(f"delay {d['shift']:<28} {d['window']:<13} {d['rate_per_s']:>5g}/s: {delay}")
    cal = results["calibration"]
    lines.append(
        f"calibration: T={cal['temperature']:.3f} accuracy {cal['accuracy']:.4f} "
        f"ECE {cal['ece_before']:.4f} -> {cal['ece_after']:.4f}  NLL {cal['nll_before']:.4f} -> {cal['nll_after']:.4f}"
    )
    for name, t in results["targets"].items():
        lines.append(f"target {name}: {'MET' if t['met'] else 'NOT MET'} ({t})")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    det = results["detectors"]
    methods = list(det)
    sets = list(next(iter(det.values()))["by_set"])
    fig, axes = plt.subplots(2, 2, figsize=(15, 9))

    ax = axes[0][0]
    grid = np.array([[det[m]["by_set"][s]["auroc"] for s in sets] for m in methods])
    image = ax.imshow(grid, vmin=0.5, vmax=1.0, cmap="viridis", aspect="auto")
    for i in range(len(methods)):
        for j in range(len(sets)):
            fpr = det[methods[i]]["by_set"][sets[j]]["fpr_at_95_tpr"]
            colour = "black" if grid[i, j] > 0.8 else "white"
            ax.text(j, i, f"{grid[i, j]:.3f}\n{fpr:.2f}", ha="center", va="center", fontsize=7, color=colour)
    ax.set(
        xticks=range(len(sets)),
        yticks=range(len(methods)),
        yticklabels=methods,
        title="AUROC (top) and FPR@95TPR (bottom) per OOD set",
    )
    ax.set_xticklabels(sets, rotation=20, fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.03)

    ax = axes[0][1]
    alphas = np.array(REPORT_ALPHAS)
    ax.plot(
        [0, alphas.max() * 1.1], [0, alphas.max() * 1.1], color="grey", ls="--", lw=0.8, label="rate = alpha"
    )
    for m in methods:
        measured = [det[m]["rejection_offline"][f"{a:g}"]["measured"] for a in REPORT_ALPHAS]
        ax.plot(alphas, measured, marker=".", lw=0.8, alpha=0.6, label=f"{m} (evaluation split)")
    for method in dict.fromkeys(c["method"] for c in results["rejection_live"]):
        cells = [c for c in results["rejection_live"] if c["method"] == method]
        x = np.array([c["alpha"] for c in cells])
        y = np.array([c["rate"] for c in cells])
        err = np.array(
            [[c["rate"] - c["rate_ci95"][0] for c in cells], [c["rate_ci95"][1] - c["rate"] for c in cells]]
        )
        ax.errorbar(
            x, y, yerr=err, fmt="o", capsize=4, lw=1.5, label=f"{method} through the sidecar (95 % CI)"
        )
    ax.set(xlabel="alpha", ylabel="in-distribution rows rejected", title="rejection rate vs alpha")
    ax.legend(fontsize=7)

    ax = axes[1][0]
    cells = results["drift"]["false_alarms"]
    labels = [f"{c['window']}\n{c['rate_per_s']:g}/s" for c in cells]
    ax.bar(range(len(cells)), [c["false_alarms"] for c in cells], color="tab:red", label="false alarms")
    ax.bar(
        range(len(cells)), [c["windows"] for c in cells], color="tab:grey", alpha=0.3, label="windows tested"
    )
    ax.set(
        xticks=range(len(cells)),
        title=f"drift: false alarms on {cells[0]['requests']} in-distribution requests",
    )
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_yscale("symlog")
    ax.legend(fontsize=8)

    ax = axes[1][1]
    delays = results["drift"]["delays"]
    shifts = list(dict.fromkeys(d["shift"] for d in delays))
    combos = list(dict.fromkeys((d["window"], d["rate_per_s"]) for d in delays))
    width = 0.8 / len(combos)
    for k, (window, rate) in enumerate(combos):
        values = [
            next(
                (d["delay_requests"] or 0)
                for d in delays
                if d["shift"] == s and (d["window"], d["rate_per_s"]) == (window, rate)
            )
            for s in shifts
        ]
        ax.bar(np.arange(len(shifts)) + k * width, values, width, label=f"{window}, {rate:g}/s")
    ax.axhline(500, color="grey", ls="--", lw=0.8)
    ax.set(
        xticks=np.arange(len(shifts)) + 0.4 - width / 2,
        yscale="log",
        ylabel="requests after the shift",
        title="drift: detection delay (0 = not detected)",
    )
    ax.set_xticklabels(shifts, fontsize=8)
    ax.legend(fontsize=7)

    fig.suptitle(f"guard quality: {results['model']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
