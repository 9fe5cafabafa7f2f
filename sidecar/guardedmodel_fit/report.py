"""The fit report: report.json, report.png (ROC curves, reliability diagram, score histograms) and
report.html, a page a person can read that embeds the figure and tabulates the numbers."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics
from .fitting import FitResult

REPORT_JSON = "report.json"
REPORT_PNG = "report.png"
REPORT_HTML = "report.html"


def write_report(result: FitResult, directory: Path) -> dict[str, Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"json": directory / REPORT_JSON, "png": directory / REPORT_PNG, "html": directory / REPORT_HTML}
    paths["json"].write_text(json.dumps(_jsonable(result.report), indent=2) + "\n")
    render_figure(result, paths["png"])
    paths["html"].write_text(render_html(result.report, REPORT_PNG))
    return paths


def render_figure(result: FitResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ood_names = [k for k in next(iter(result.eval_scores.values()), {}) if k != "in-distribution"]
    panels = len(ood_names) + 2
    cols = min(4, panels)
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.9 * rows), squeeze=False)
    flat = list(axes.ravel())
    detectors = result.report["detectors"]
    for ax, name in zip(flat, ood_names, strict=False):
        for method, sets in result.eval_scores.items():
            fpr, tpr = metrics.roc_curve(sets["in-distribution"], sets[name])
            auc = detectors[method]["ood"][name]["auroc"]
            ax.plot(fpr, tpr, label=f"{method} {auc:.3f}", lw=1.4)
        ax.plot([0, 1], [0, 1], color="grey", lw=0.6, ls=":")
        ax.set(title=f"ROC: {name}", xlabel="in-distribution flagged (FPR)", ylabel="OOD flagged (TPR)")
        ax.legend(fontsize=7, loc="lower right", title="AUROC", title_fontsize=7)
    ax = flat[len(ood_names)]
    cal = result.report["calibration"]
    for key, style in (("before", "o--"), ("after", "s-")):
        r = result.reliability[key]
        filled = r.counts > 0
        ece = cal[f"ece_{key}"]
        ax.plot(
            r.confidence[filled], r.accuracy[filled], style, ms=3, label=f"{key} T-scaling, ECE {ece:.3f}"
        )
    ax.plot([0, 1], [0, 1], color="grey", lw=0.6, ls=":")
    ax.set(title=f"Reliability (T = {cal['temperature']:.2f})", xlabel="confidence", ylabel="accuracy")
    ax.legend(fontsize=7, loc="upper left")
    ax = flat[len(ood_names) + 1]
    best = result.report["best_detector"].get("method") or next(iter(result.eval_scores), None)
    if best is not None:
        sets = result.eval_scores[best]
        lo, hi = np.percentile(np.concatenate(list(sets.values())), [0.5, 99.5])
        bins = np.linspace(lo, hi, 60)
        for name, scores in sets.items():
            ax.hist(scores, bins=bins, histtype="step", density=True, label=name, lw=1.2)
        ax.axvline(detectors[best]["threshold"], color="black", ls="--", lw=1, label="threshold")
        ax.set(title=f"{best} scores (higher = more OOD)", xlabel="score", ylabel="density")
        ax.legend(fontsize=6)
    for extra in flat[panels:]:
        extra.axis("off")
    model = result.report["model"]
    fig.suptitle(f"guard for {model['name']} version {model['version']}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render_html(report: dict[str, Any], png_name: str) -> str:
    esc = html.escape
    model = report["model"]
    cal = report["calibration"]
    detectors = report["detectors"]
    ood_names = list(dict.fromkeys(name for d in detectors.values() for name in d["ood"]))  # given order
    head = "".join(f"<th>{esc(n)}<br>AUROC / FPR@95</th>" for n in ood_names)
    candidates = (report.get("auto") or {}).get("candidates", {})

    def over_budget(method: str) -> str:
        return "" if candidates.get(method, {}).get("within_budget", True) else " (over the auto budget)"

    rows = []
    for method, d in detectors.items():
        cells = "".join(
            f"<td>{d['ood'][n]['auroc']:.4f} / {d['ood'][n]['fpr_at_95_tpr']:.3f}</td>"
            if n in d["ood"]
            else "<td></td>"
            for n in ood_names
        )
        rows.append(
            f"<tr><td><b>{esc(method)}</b></td><td>{d['threshold']:.4g}</td>"
            f"<td>{d['acceptance_calibration']:.3f}</td><td>{d['acceptance_evaluation']:.3f}</td>{cells}"
            f"<td>{d['cost_us']['batch_1']:.1f} / {d['cost_us']['batch_32']:.0f}{over_budget(method)}</td></tr>"
        )
    notes = "".join(f"<li>{esc(n)}</li>" for n in report.get("notes", []))
    conformal = _conformal_html(detectors)
    auto = report.get("auto") or {}
    auto_line = (
        f"<p><code>method: auto</code> uses <b>{esc(str(auto['method']))}</b>: {esc(auto['rule'])}. "
        f"Chosen by {esc(auto['chosen_by'])}.</p>"
        if auto.get("method")
        else ""
    )
    fusion = detectors.get("fused", {}).get("fusion")
    fusion_line = (
        f"<p>The fused detector combines {esc(', '.join(fusion['members']))} by "
        f"{esc(fusion['combination'])} of their conformal p-values, fitted on in-distribution data only: "
        f"the members' p-values are taken against {fusion['reference_samples']} calibration samples (part A), "
        f"and the combined statistic is itself calibrated on the other {fusion['calibration_samples']} (part B), "
        "so its p-value is valid whatever the dependence between the members. It costs "
        f"{detectors['fused']['cost_us']['batch_1']:.1f} µs per request at batch 1.</p>"
        if fusion
        else ""
    )
    best = report["best_detector"]
    best_line = (
        f"Best detector by mean AUROC: <b>{esc(str(best['method']))}</b> ({best['mean_auroc']:.4f})."
        if best.get("method")
        else "No OOD sets were given, so detectors were not compared."
    )
    samples = ", ".join(f"{esc(k)}: {v}" for k, v in report["samples"].items())
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>guard report: {esc(model["name"])} v{esc(model["version"])}</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
th{{background:#f4f4f4}}td:first-child{{text-align:left}}</style></head><body>
<h1>Guard report: {esc(model["name"])} version {esc(model["version"])}</h1>
<p>Samples: {samples}. Score convention: higher = more out-of-distribution; an input is accepted when its
score is at or below the threshold. Thresholds were set on the calibration split to accept
{report["target_acceptance"]:.0%} of in-distribution inputs; the evaluation split shows what they achieve on
data they were not fitted on.</p>
<h2>Calibration</h2>
<table><tr><th>temperature</th><th>accuracy</th><th>ECE before</th><th>ECE after</th><th>NLL before</th>
<th>NLL after</th><th>mean confidence before / after</th></tr>
<tr><td>{cal["temperature"]:.4f}</td><td>{cal["accuracy"]:.4f}</td><td>{cal["ece_before"]:.4f}</td>
<td>{cal["ece_after"]:.4f}</td><td>{cal["nll_before"]:.4f}</td><td>{cal["nll_after"]:.4f}</td>
<td>{cal["mean_confidence_before"]:.4f} / {cal["mean_confidence_after"]:.4f}</td></tr></table>
<h2>OOD detectors</h2>
<p>{best_line}</p>
{auto_line}
{fusion_line}
<table><tr><th>method</th><th>threshold</th><th>acceptance (calibration)</th><th>acceptance (evaluation)</th>
{head}<th>cost µs (batch 1 / 32)</th></tr>
{"".join(rows)}</table>
<h2>In-distribution rejection rate at an error rate alpha (conformal)</h2>
<p>With <code>gate.ood.alpha</code> a row is out-of-distribution when its conformal p-value against the
detector's calibration scores is at most alpha. Expected: the rate over draws of the calibration set,
floor(alpha (n + 1)) / (n + 1) &le; alpha. Band: the 90 % range of the rate for one calibration set of this
size, Beta(l, n + 1 - l). Measured: the share of the evaluation split rejected, with a 95 % Clopper-Pearson
interval.</p>
{conformal}
{f"<h2>Notes</h2><ul>{notes}</ul>" if notes else ""}
<img src="{esc(png_name)}" alt="ROC curves, reliability diagram and score histograms" style="max-width:100%">
</body></html>
"""


def _conformal_html(detectors: dict[str, Any]) -> str:
    esc = html.escape
    alphas = list(
        dict.fromkeys(
            k for d in detectors.values() for k, v in d.get("conformal", {}).items() if isinstance(v, dict)
        )
    )
    if not alphas:
        return ""
    head = "".join(f"<th>alpha {esc(a)}<br>expected / band 90 %<br>measured [95 % CI]</th>" for a in alphas)
    rows = []
    for method, d in detectors.items():
        figures = d.get("conformal", {})
        cells = []
        for a in alphas:
            f = figures.get(a)
            if f is None:
                cells.append("<td></td>")
                continue
            lo, hi = f["band_90"]
            clo, chi = f["measured_ci_95"]
            cells.append(
                f"<td>{f['expected']:.4f} / {lo:.4f}&ndash;{hi:.4f}<br>{f['measured']:.4f} [{clo:.4f}, {chi:.4f}]</td>"
            )
        rows.append(
            f"<tr><td><b>{esc(method)}</b></td><td>{figures.get('calibration_samples', '')}</td>{''.join(cells)}</tr>"
        )
    return f"<table><tr><th>method</th><th>calibration n</th>{head}</tr>{''.join(rows)}</table>"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
