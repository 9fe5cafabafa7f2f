"""What guards one model version: its gate, calibration, OOD scorer, decision policy and metrics.

Each version routing serves gets a ``VersionGuard`` built from its own guard artifact (temperature,
OOD detector and threshold, drift reference, input statistics), so a canary is scored by its own
guard and a rollback rolls the guard back with the model.

The OOD threshold (``resolve_ood``): ``spec.gate.ood.threshold`` is a raw score threshold;
``spec.gate.ood.alpha`` is an error rate, turned into the score threshold above which a row's
conformal p-value is <= alpha (so the decision stays one comparison per row); with neither,
alpha = 1 - the artifact's target acceptance. Artifacts fitted before calibration scores were
stored (format 1) fall back to their stored threshold, with a warning. ``method: auto`` is the
detector the fit chose.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guardedmodel_sidecar.config import InputSpec, SidecarConfig
from guardedmodel_sidecar.config_spec import OodSpec
from guardedmodel_sidecar.decision import DecisionPolicy
from guardedmodel_sidecar.gate import InputGate
from guardedmodel_sidecar.guard.artifact import ArtifactError, GuardArtifact, load_artifact
from guardedmodel_sidecar.guard.conformal import ConformalReference, guaranteed_rejection_rate
from guardedmodel_sidecar.guard.drift import DriftAccumulator
from guardedmodel_sidecar.guard.scoring import OodScorer, ScorerError, make_ood_scorer
from guardedmodel_sidecar.metrics import VersionMetrics
from guardedmodel_sidecar.protocol.model import InferRequest

log = logging.getLogger(__name__)

# ``method: auto`` on an artifact that records no choice (fitted before auto existed): the first of
# these it has, by quality on the worked example.
AUTO_FALLBACK_ORDER = ("mahalanobis", "knn", "vim", "energy", "msp")

_TRITON_TO_V2 = {
    "TYPE_BOOL": "BOOL",
    "TYPE_UINT8": "UINT8",
    "TYPE_UINT16": "UINT16",
    "TYPE_UINT32": "UINT32",
    "TYPE_UINT64": "UINT64",
    "TYPE_INT8": "INT8",
    "TYPE_INT16": "INT16",
    "TYPE_INT32": "INT32",
    "TYPE_INT64": "INT64",
    "TYPE_FP16": "FP16",
    "TYPE_FP32": "FP32",
    "TYPE_FP64": "FP64",
    "TYPE_STRING": "BYTES",
}


@dataclass
class VersionGuard:
    """What scores the traffic of one model version."""

    version: str
    gate: InputGate
    temperature: float
    scorer: OodScorer | None
    policy: DecisionPolicy
    logits_output: str
    features_output: str | None
    needs_features: bool
    metrics: VersionMetrics
    artifact: GuardArtifact | None = None
    # In-distribution calibration scores of the scorer's method: turns scores into p-values.
    conformal: ConformalReference | None = None
    warnings: list[str] = field(default_factory=list)

    def upstream_outputs(self, request: InferRequest) -> list[str] | None:
        """Outputs to ask Triton for: the caller's plus what scoring needs; None = all outputs."""
        if request.outputs is None:
            return None
        names = [o.name for o in request.outputs]
        if self.logits_output not in names:
            names.append(self.logits_output)
        if self.needs_features and self.features_output and self.features_output not in names:
            names.append(self.features_output)
        return names


def inputs_from_triton_config(config: dict[str, Any]) -> tuple[InputSpec, ...]:
    """Gate inputs when the spec names none: Triton's own config (batch dimension excluded)."""
    specs = []
    for entry in config.get("input", []):
        datatype = _TRITON_TO_V2.get(entry.get("data_type", ""), "")
        if not datatype:
            continue
        dims = tuple(int(d) for d in entry.get("dims", []))
        specs.append(InputSpec(entry["name"], datatype, dims))
    return tuple(specs)


@dataclass(frozen=True)
class OodChoice:
    """How a version scores and decides OOD: the resolved method ("none" = off), its scorer, the
    score threshold (None = scores are reported, not acted on), the alpha it came from, the
    conformal reference that turns scores into p-values, and what was chosen and why."""

    method: str
    scorer: OodScorer | None = None
    threshold: float | None = None
    alpha: float | None = None
    conformal: ConformalReference | None = None
    notes: tuple[str, ...] = ()


def resolve_ood(ood: OodSpec, artifact: GuardArtifact | None, version: str) -> OodChoice:
    """The OOD method, scorer and threshold of ``version`` from the spec and its artifact."""
    method = ood.method
    if method == "none":
        return OodChoice("none")
    if artifact is None:
        return OodChoice(
            "none", notes=(f"OOD method {method!r} needs a guard artifact; OOD scoring is off for {version}",)
        )
    notes: list[str] = []
    if method == "auto":
        method, note = _auto_method(artifact)
        notes.append(note)
    try:
        scorer = make_ood_scorer(method, artifact)
    except ScorerError as exc:
        return OodChoice("none", notes=(*notes, f"version {version}: {exc}; OOD scoring is off"))
    calibration = artifact.calibration_scores.get(method)
    conformal = ConformalReference(calibration) if calibration is not None else None
    if ood.threshold is not None:
        notes.append(f"{method}: raw threshold {ood.threshold:g} from spec.gate.ood.threshold")
        return OodChoice(method, scorer, ood.threshold, None, conformal, tuple(notes))
    if conformal is None:
        stored = artifact.thresholds.get(method)
        why = "it was fitted before conformal calibration scores were stored; refit it for p-values"
        if ood.alpha is not None:
            notes.append(
                f"{method}: cannot honour alpha {ood.alpha:g}: the artifact has no calibration scores ({why})"
            )
        if stored is None:
            notes.append(f"artifact has no threshold for {method!r}: scores are reported, not acted on")
        else:
            notes.append(
                f"{method}: the artifact's stored threshold {stored:g}, no stated error rate ({why})"
            )
        return OodChoice(method, scorer, stored, None, None, tuple(notes))
    if ood.alpha is not None:
        alpha, source = ood.alpha, f"alpha {ood.alpha:g} from spec.gate.ood.alpha"
    else:
        alpha = 1.0 - artifact.target_acceptance
        source = f"alpha {alpha:g} = 1 - the artifact's target acceptance {artifact.target_acceptance:g}"
    threshold = conformal.threshold(alpha)
    notes.append(
        f"{method}: {source}: OOD when the conformal p-value <= alpha, i.e. score > {threshold:g} "
        f"({conformal.n} calibration scores; in-distribution rejection rate "
        f"{guaranteed_rejection_rate(alpha, conformal.n):.4g})"
    )
    if math.isinf(threshold):
        notes.append(f"{method}: alpha {alpha:g} is below 1 / {conformal.n + 1}: no row can be rejected")
    return OodChoice(method, scorer, threshold, alpha, conformal, tuple(notes))


def _auto_method(artifact: GuardArtifact) -> tuple[str, str]:
    chosen = artifact.auto_method
    if chosen is not None:
        report = artifact.metadata.get("report", {})
        why = report.get("auto", {}).get("chosen_by", "") if isinstance(report, dict) else ""
        return chosen, f"method auto: {chosen!r}, the fit's choice" + (f" ({why})" if why else "")
    fallback = next(
        (m for m in AUTO_FALLBACK_ORDER if m in artifact.detectors), next(iter(artifact.detectors), "none")
    )
    return fallback, (
        f"method auto: the artifact records no choice (fitted before auto existed); using {fallback!r}, "
        "refit the guard to let the fit choose"
    )


def build_guard(config: SidecarConfig, version: str, triton_config: dict[str, Any] | None) -> VersionGuard:
    """The guard of ``version``; what is missing (no artifact, no threshold) is a warning, not an error:
    the version is then served with less guarding, and the warnings say how much less."""
    spec = config.spec
    model = spec.model.name
    warnings: list[str] = []
    artifact: GuardArtifact | None = None
    if config.model_repository is not None:
        directory = Path(config.model_repository) / model / version / "guard"
        try:
            artifact = load_artifact(directory)
        except ArtifactError as exc:
            warnings.append(f"no usable guard artifact for version {version}: {exc}")
    else:
        warnings.append("no modelRepository configured: confidence uses temperature 1 and OOD scoring is off")
    ood = resolve_ood(spec.ood, artifact, version)
    warnings.extend(ood.notes)
    method, scorer, threshold = ood.method, ood.scorer, ood.threshold
    inputs = spec.inputs or (inputs_from_triton_config(triton_config) if triton_config else ())
    references = [artifact.input_reference] if artifact and artifact.input_reference else []
    gate = InputGate(inputs, max_batch=config.tuning.max_batch, references=references)
    logits = config.tuning.logits_output or (artifact.logits_output if artifact else "LOGITS")
    features = config.tuning.features_output or (artifact.features_output if artifact else None)
    drift = DriftAccumulator(artifact.reference) if artifact is not None else None
    uses_feature_drift = (
        drift is not None and artifact is not None and artifact.reference.feature_edges.shape[0] > 0
    )
    needs_features = bool(features) and (
        (scorer is not None and scorer.requires_features) or uses_feature_drift
    )
    vm = VersionMetrics(
        model=model,
        version=version,
        method=method,
        # an alpha below 1 / (n + 1) gives an infinite threshold (never reject): the histogram's
        # buckets then sit around the largest calibration score instead
        ood_threshold=threshold
        if threshold is None or math.isfinite(threshold) or ood.conformal is None
        else float(ood.conformal.sorted_scores[-1]),
        drift=drift,
        feature_dim=artifact.feature_dim if artifact else 0,
    )
    for warning in warnings:
        log.warning("%s: %s", model, warning)
    return VersionGuard(
        version=version,
        gate=gate,
        temperature=artifact.temperature if artifact else 1.0,
        scorer=scorer,
        policy=DecisionPolicy(
            spec.review_below,
            method,
            threshold if scorer else None,
            spec.ood.action,
            ood_alpha=ood.alpha,
            batch_policy=spec.batch_policy,
        ),
        logits_output=logits,
        features_output=features if needs_features else None,
        needs_features=needs_features,
        metrics=vm,
        artifact=artifact,
        conformal=ood.conformal,
        warnings=warnings,
    )
