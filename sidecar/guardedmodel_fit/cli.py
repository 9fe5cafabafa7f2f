"""`guardedmodel fit`: fit a guard artifact (input gate + calibration) for one model version.

    guardedmodel fit --model models/fashion-mnist --version 1 --data val.npz \\
        --ood near=heldout.npz --ood noise=noise.npz
    guardedmodel fit --model models/fashion-mnist --data val.npz --data s3://loop/sets/reviewed.parquet \\
        --ood reviewed=s3://loop/sets/reviewed.parquet

writes ``<model>/<version>/guard/`` (guard.json + guard.npz) and a report in ``guard/report/``
(report.json, report.png, report.html).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from guardedmodel_sidecar.guard.artifact import COMBINATIONS, ArtifactError, save_artifact

from .data import DataError, Dataset, check_compatible, concatenate, load_dataset
from .extract import Extracted, Extractor, ModelError, TorchScriptExtractor, extract, open_model
from .fit_config import ALL_METHODS, FitConfig, FitError
from .fitting import FitResult, fit_guard
from .report import write_report

REPORT_DIR = "report"


@dataclass(frozen=True)
class FitOutcome:
    result: FitResult
    artifact_dir: Path
    manifest: Path
    report: dict[str, Path]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, type=Path, help="TorchScript file or Triton model directory"
    )
    parser.add_argument("--version", help="model version folder (default: the highest)")
    parser.add_argument("--triton-url", help="run the model on this Triton server (host:port, HTTP)")
    parser.add_argument(
        "--data",
        required=True,
        action="append",
        help="in-distribution validation set with labels (npz, folder, mod:fn, or a data set file of "
        "`guardedmodel dataset`: .parquet, s3://, gs://, whose labelled rows it takes); repeatable: "
        "the sets are concatenated",
    )
    parser.add_argument(
        "--fit-data", help="separate in-distribution set for detector statistics (e.g. training set)"
    )
    parser.add_argument(
        "--ood",
        action="append",
        default=[],
        metavar="NAME=SPEC",
        help="held-out OOD set to evaluate on (repeatable); a data set file gives its ood rows",
    )
    parser.add_argument("--out", type=Path, help="artifact directory (default: <model>/<version>/guard)")
    parser.add_argument("--methods", default=",".join(ALL_METHODS), help="comma-separated OOD methods to fit")
    parser.add_argument(
        "--target-acceptance", type=float, default=0.95, help="in-distribution acceptance rate"
    )
    parser.add_argument(
        "--holdout-fraction", type=float, default=0.5, help="share of --data held out of fitting"
    )
    parser.add_argument("--knn-k", type=int, default=5)
    parser.add_argument("--knn-bank-size", type=int, default=4096)
    parser.add_argument(
        "--mahalanobis-normalise",
        action="store_true",
        help="L2-normalise features for Mahalanobis (often better on deep features; blind to feature norm)",
    )
    parser.add_argument(
        "--fusion-members",
        help="detectors the fused one combines (comma-separated; default mahalanobis,energy where fitted; '' = none)",
    )
    parser.add_argument(
        "--fusion-combination", default="fisher", choices=COMBINATIONS, help="how p-values are combined"
    )
    parser.add_argument(
        "--scorer-budget-us",
        type=float,
        default=FitConfig.scorer_budget_us,
        help="method auto considers detectors whose score costs at most this at batch 1 (µs)",
    )
    parser.add_argument("--logits-output", default="LOGITS")
    parser.add_argument("--features-output", default="FEATURES", help="'' if the model has none")
    parser.add_argument("--class-names", help="comma-separated class names (image folders)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    try:
        outcome = fit_from_specs(
            model=args.model,
            version=args.version,
            triton_url=args.triton_url,
            data=args.data,
            fit_data=args.fit_data,
            ood=args.ood,
            out=args.out,
            config=FitConfig(
                methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()),
                target_acceptance=args.target_acceptance,
                holdout_fraction=args.holdout_fraction,
                knn_k=args.knn_k,
                knn_bank_size=args.knn_bank_size,
                mahalanobis_normalise=args.mahalanobis_normalise,
                fusion_members=None
                if args.fusion_members is None
                else tuple(m.strip() for m in args.fusion_members.split(",") if m.strip()),
                fusion_combination=args.fusion_combination,
                scorer_budget_us=args.scorer_budget_us,
                seed=args.seed,
                progress=not args.no_progress,
            ),
            logits_output=args.logits_output,
            features_output=args.features_output or None,
            class_names=args.class_names.split(",") if args.class_names else None,
            batch_size=args.batch_size,
        )
    except (DataError, ModelError, FitError, ArtifactError) as exc:
        print(f"guardedmodel fit: error: {exc}", file=sys.stderr)
        return 2
    print(summary_text(outcome))
    return 0


def fit_from_specs(
    *,
    model: Path,
    data: str | Sequence[str],
    version: str | None = None,
    triton_url: str | None = None,
    fit_data: str | None = None,
    ood: Sequence[str] = (),
    out: Path | None = None,
    config: FitConfig | None = None,
    logits_output: str = "LOGITS",
    features_output: str | None = "FEATURES",
    class_names: Sequence[str] | None = None,
    batch_size: int = 256,
) -> FitOutcome:
    """Load data, open the model, fit, write the artifact and its report. ``data``: one set, or several
    to concatenate."""
    extractor = open_model(
        model,
        version=version,
        triton_url=triton_url,
        logits_output=logits_output,
        features_output=features_output,
    )
    specs = [data] if isinstance(data, str) else list(data)
    named = len(specs) > 1
    val = concatenate(
        [
            load_dataset(spec, name=f"validation {spec}" if named else "validation", class_names=class_names)
            for spec in specs
        ],
        "validation",
    )
    fit_set = load_dataset(fit_data, name="fit", class_names=class_names) if fit_data else None
    oods = []
    for item in ood:
        name, sep, spec = item.partition("=")
        if not sep or not name or not spec:
            raise DataError(f"--ood {item!r}: expected NAME=SPEC, e.g. near=heldout.npz")
        oods.append(load_dataset(spec, name=name, ood_rows=True))
    if out is None:
        if not (Path(model) / "config.pbtxt").is_file():
            raise FitError("--out is required when --model is a TorchScript file")
        out = Path(model) / extractor.spec.version / "guard"
    return fit_to_directory(
        extractor, val, out, fit_set=fit_set, ood_sets=oods, config=config, batch_size=batch_size
    )


def fit_to_directory(
    extractor: Extractor,
    val: Dataset,
    out: Path,
    *,
    fit_set: Dataset | None = None,
    ood_sets: Sequence[Dataset] = (),
    config: FitConfig | None = None,
    batch_size: int = 256,
) -> FitOutcome:
    config = config or FitConfig()
    shape = extractor.spec.input_shape
    # A TorchScript module's input has no name to compare with the one the requests were sent as.
    input_name = None if isinstance(extractor, TorchScriptExtractor) else extractor.spec.input_name
    for ds in [val, *([fit_set] if fit_set else []), *ood_sets]:
        check_compatible(
            ds, sample_shape=shape, input_name=input_name, input_datatype=extractor.spec.input_datatype
        )

    def run_model(ds: Dataset) -> Extracted:
        return extract(extractor, ds, batch_size=batch_size, progress=config.progress)

    result = fit_guard(
        extractor.spec,
        run_model(val),
        fit_set=run_model(fit_set) if fit_set else None,
        ood_sets=[run_model(o) for o in ood_sets],
        config=config,
    )
    manifest = save_artifact(result.artifact, out)
    report = write_report(result, out / REPORT_DIR)
    return FitOutcome(result, Path(out), manifest, report)


def summary_text(outcome: FitOutcome) -> str:
    report = outcome.result.report
    cal = report["calibration"]
    model = report["model"]
    lines = [
        f"guard for {model['name']} v{model['version']} written to {outcome.artifact_dir}",
        f"  temperature {cal['temperature']:.3f}  accuracy {cal['accuracy']:.4f}  "
        f"ECE {cal['ece_before']:.4f} -> {cal['ece_after']:.4f}  "
        f"NLL {cal['nll_before']:.4f} -> {cal['nll_after']:.4f}",
    ]
    candidates = (report.get("auto") or {}).get("candidates", {})
    for method, d in report["detectors"].items():
        aurocs = "  ".join(f"{k} {v['auroc']:.4f}/{v['fpr_at_95_tpr']:.3f}" for k, v in d["ood"].items())
        over = not candidates.get(method, {}).get("within_budget", True)
        lines.append(
            f"  {method:<12} threshold {d['threshold']:<10.4g} accepts {d['acceptance_evaluation']:.3f}"
            f"  {d['cost_us']['batch_1']:.1f} µs/request"
            + (" (over the auto budget)" if over else "")
            + (f"  AUROC/FPR@95: {aurocs}" if aurocs else "")
        )
        rates = [
            f"alpha {a}: {f['measured']:.4f} [{f['measured_ci_95'][0]:.4f}, {f['measured_ci_95'][1]:.4f}]"
            f" (expected {f['expected']:.4f}, band {f['band_90'][0]:.4f}-{f['band_90'][1]:.4f})"
            for a, f in d.get("conformal", {}).items()
            if isinstance(f, dict)
        ]
        if rates:
            lines.append(f"  {'':<12} in-distribution rejected at " + "; ".join(rates))
    fusion = report["detectors"].get("fused", {}).get("fusion")
    if fusion:
        lines.append(
            f"  fused = {fusion['combination']} of {', '.join(fusion['members'])} p-values "
            f"(references on {fusion['reference_samples']} calibration samples, calibrated on "
            f"{fusion['calibration_samples']})"
        )
    auto = report.get("auto") or {}
    if auto.get("method"):
        lines.append(f"  method auto -> {auto['method']}: {auto['rule']}; chosen by {auto['chosen_by']}")
    lines += [f"  note: {n}" for n in report.get("notes", [])]
    lines.append(f"  report: {outcome.report['html']}")
    return "\n".join(lines)
