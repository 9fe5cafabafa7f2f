"""Quality of the guard on the worked Fashion-MNIST example, per OOD detector.

    .venv/bin/python bench/guard_quality.py [--out ~/.cache/guardedmodel/examples] [--version 1]

Builds (or reuses) the example, fits its guard the same way the example does, and reports:
- per detector: near-OOD (held-out classes) and far-OOD (another data set and corruptions)
  AUROC and FPR@95TPR, on the evaluation split the guard was not fitted on;
- ECE and NLL before/after temperature scaling;
- the per-request scoring cost in the sidecar (median µs per call, batch 1 and 32, numpy).

Targets: far-OOD AUROC >= 0.98 (best detector), best detector beats MSP on near-OOD, ECE after
calibration <= 2%. A benchmark, not a test: it writes bench/results/guard_quality.json and .png.
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

from guardedmodel_fit.example import DEFAULT_OUT, build_example, example_fit_config
from guardedmodel_fit.example_data import FAR_OOD_SETS, NEAR_OOD_SET
from guardedmodel_fit.extract import extract, open_model
from guardedmodel_fit.fitting import fit_guard
from guardedmodel_sidecar.guard.scoring import OodScorer, calibrated_confidence, make_ood_scorer

RESULTS = Path(__file__).parent / "results"


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
    args = parser.parse_args()

    build = build_example(args.out, versions=[args.version], progress=False)
    extractor = open_model(build.model_dir, version=args.version)
    sets = {name: extract(extractor, build.dataset(name), progress=False) for name in ("validation", "fit")}
    oods = [extract(extractor, build.dataset(n), progress=False) for n in (NEAR_OOD_SET, *FAR_OOD_SETS)]
    config = example_fit_config(progress=False)
    result = fit_guard(extractor.spec, sets["validation"], fit_set=sets["fit"], ood_sets=oods, config=config)
    report = result.report

    detectors = {}
    val = sets["validation"]
    assert val.features is not None, "the example model exposes FEATURES"
    for method, d in report["detectors"].items():
        scorer = make_ood_scorer(method, result.artifact)
        far = {n: d["ood"][n] for n in FAR_OOD_SETS}
        detectors[method] = {
            "near_auroc": d["ood"][NEAR_OOD_SET]["auroc"],
            "near_fpr_at_95_tpr": d["ood"][NEAR_OOD_SET]["fpr_at_95_tpr"],
            "far_auroc_mean": float(np.mean([v["auroc"] for v in far.values()])),
            "far_auroc_min": float(np.min([v["auroc"] for v in far.values()])),
            "far_fpr_at_95_tpr_mean": float(np.mean([v["fpr_at_95_tpr"] for v in far.values()])),
            "far_by_set": {
                n: {"auroc": v["auroc"], "fpr_at_95_tpr": v["fpr_at_95_tpr"]} for n, v in far.items()
            },
            "threshold": d["threshold"],
            "acceptance_evaluation": d["acceptance_evaluation"],
            "cost_us_batch_1": scoring_cost_us(scorer, val.logits, val.features, 1),
            "cost_us_batch_32": scoring_cost_us(scorer, val.logits, val.features, 32),
        }
    confidence = ConfidenceOnly(result.artifact.temperature)
    conf_cost = {b: scoring_cost_us(confidence, val.logits, val.features, b) for b in (1, 32)}
    cal = report["calibration"]
    best_near = max(detectors, key=lambda m: detectors[m]["near_auroc"])
    best_far = max(detectors, key=lambda m: detectors[m]["far_auroc_mean"])
    results = {
        "benchmark": "guard_quality",
        "model": f"{report['model']['name']} v{report['model']['version']}",
        "samples": report["samples"],
        "calibration": {
            k: cal[k]
            for k in ("temperature", "accuracy", "ece_before", "ece_after", "nll_before", "nll_after")
        },
        "detectors": detectors,
        "calibrated_confidence_cost_us": {"batch_1": conf_cost[1], "batch_32": conf_cost[32]},
        "targets": {
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
        },
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "numpy": np.__version__},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "guard_quality.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, RESULTS / "guard_quality.png")
    print(table(results))
    return 0


def table(results: dict[str, Any]) -> str:
    lines = [
        f"{'method':<12} {'near AUROC':>10} {'near FPR95':>10} {'far AUROC':>9} {'far min':>8} {'far FPR95':>9} "
        f"{'µs b=1':>7} {'µs b=32':>8}"
    ]
    for m, d in results["detectors"].items():
        lines.append(
            f"{m:<12} {d['near_auroc']:>10.4f} {d['near_fpr_at_95_tpr']:>10.3f} {d['far_auroc_mean']:>9.4f} "
            f"{d['far_auroc_min']:>8.4f} {d['far_fpr_at_95_tpr_mean']:>9.3f} {d['cost_us_batch_1']:>7.0f} "
            f"{d['cost_us_batch_32']:>8.0f}"
        )
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
    x = np.arange(len(methods))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    ax.bar(x - 0.2, [det[m]["near_auroc"] for m in methods], 0.4, label="near (held-out classes)")
    ax.bar(x + 0.2, [det[m]["far_auroc_mean"] for m in methods], 0.4, label="far (mean of 6 sets)")
    ax.errorbar(
        x + 0.2,
        [det[m]["far_auroc_mean"] for m in methods],
        yerr=[[det[m]["far_auroc_mean"] - det[m]["far_auroc_min"] for m in methods], [0] * len(methods)],
        fmt="none",
        ecolor="black",
        capsize=3,
        lw=0.8,
    )
    ax.axhline(0.98, color="grey", ls="--", lw=0.8)
    ax.set(xticks=x, xticklabels=methods, ylim=(0.5, 1.0), title="AUROC (whisker: worst far set)")
    ax.legend(fontsize=8, loc="lower right")
    ax = axes[1]
    ax.bar(x - 0.2, [det[m]["near_fpr_at_95_tpr"] for m in methods], 0.4, label="near")
    ax.bar(x + 0.2, [det[m]["far_fpr_at_95_tpr_mean"] for m in methods], 0.4, label="far (mean)")
    ax.set(xticks=x, xticklabels=methods, title="FPR at 95% TPR (lower is better)")
    ax.legend(fontsize=8)
    ax = axes[2]
    ax.bar(x - 0.2, [det[m]["cost_us_batch_1"] for m in methods], 0.4, label="batch 1")
    ax.bar(x + 0.2, [det[m]["cost_us_batch_32"] for m in methods], 0.4, label="batch 32")
    cal = results["calibration"]
    ax.set(
        xticks=x,
        xticklabels=methods,
        ylabel="µs per call",
        title=f"scoring cost; ECE {cal['ece_before']:.3f} → {cal['ece_after']:.3f} (T={cal['temperature']:.2f})",
    )
    ax.legend(fontsize=8)
    fig.suptitle(f"guard quality: {results['model']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
