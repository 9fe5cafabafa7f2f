"""What guards one model version: its gate, calibration, OOD scorer, decision policy and metrics.

Each version routing serves gets a ``VersionGuard`` built from its own guard artifact (temperature,
OOD detector and threshold, drift reference, input statistics), so a canary is scored by its own
guard and a rollback rolls the guard back with the model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guardedmodel_sidecar.config import InputSpec, SidecarConfig
from guardedmodel_sidecar.decision import DecisionPolicy
from guardedmodel_sidecar.gate import InputGate
from guardedmodel_sidecar.guard.artifact import ArtifactError, GuardArtifact, load_artifact
from guardedmodel_sidecar.guard.conformal import ConformalReference
from guardedmodel_sidecar.guard.drift import DriftAccumulator
from guardedmodel_sidecar.guard.scoring import OodScorer, ScorerError, make_ood_scorer
from guardedmodel_sidecar.metrics import VersionMetrics
from guardedmodel_sidecar.protocol.model import InferRequest

log = logging.getLogger(__name__)

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
    method = spec.ood.method
    scorer: OodScorer | None = None
    threshold = spec.ood.threshold
    if method != "none":
        if artifact is None:
            warnings.append(f"OOD method {method!r} needs a guard artifact; OOD scoring is off for {version}")
            method = "none"
        else:
            try:
                scorer = make_ood_scorer(method, artifact)
            except ScorerError as exc:
                warnings.append(f"version {version}: {exc}; OOD scoring is off")
                method = "none"
            if threshold is None and scorer is not None:
                threshold = artifact.thresholds.get(method)
                if threshold is None:
                    warnings.append(
                        f"artifact has no threshold for {method!r}: scores are reported, not acted on"
                    )
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
        ood_threshold=threshold,
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
        policy=DecisionPolicy(spec.review_below, method, threshold if scorer else None, spec.ood.action),
        logits_output=logits,
        features_output=features if needs_features else None,
        needs_features=needs_features,
        metrics=vm,
        artifact=artifact,
        warnings=warnings,
    )
