"""The GuardedModel spec as the sidecar reads it (``spec:`` of ``sidecar.yaml``): model, gate, review,
audit and drift settings, with the API's defaults applied."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from guardedmodel_sidecar.config_values import ConfigError, fraction, optional_float, parse_duration, section
from guardedmodel_sidecar.cost import Prices, parse_cost
from guardedmodel_sidecar.protocol.datatypes import KNOWN_DATATYPES

OOD_METHODS = ("mahalanobis", "energy", "knn", "msp", "vim", "fused", "auto", "none")
OOD_ACTIONS = ("reject", "review", "flag")
BATCH_POLICIES = ("perRow", "wholeRequest")


@dataclass(frozen=True)
class InputSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # without the batch dimension; -1 = any size
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class OodSpec:
    method: str = "none"
    threshold: float | None = None  # a raw score threshold (accept when score <= threshold)
    alpha: float | None = None  # conformal error rate (OOD when p-value <= alpha); excludes threshold
    action: str = "flag"


@dataclass(frozen=True)
class ReviewSpec:
    webhook: str | None = None
    max_fraction: float = 0.05


@dataclass(frozen=True)
class ModelSpec:
    name: str
    repository: str = ""
    version: str = "1"


@dataclass(frozen=True)
class DriftSpec:
    """The drift window is a duration (``window_s``) or a row count (``window_rows``), never both."""

    window_s: float | None = 60.0
    window_rows: int | None = None
    alpha: float = 0.001  # false-alarm rate of the drift test per window
    min_samples: int = 100  # below this a window is "insufficient data"


@dataclass(frozen=True)
class ExportSpec:
    """spec.audit.export: where the audit files go as Parquet (audit_export.py), and with which
    settings; the credentials are a Secret the operator mounts (sidecar.yaml auditExportCredentialsDir)."""

    url: str  # s3://<bucket>/<prefix> or gs://<bucket>/<prefix>
    interval_s: float = 60.0
    endpoint: str | None = None  # s3:// only, as spec.model.storage
    region: str | None = None
    virtual_hosted_style: bool | None = None


@dataclass(frozen=True)
class GuardSpec:
    model: ModelSpec
    inputs: tuple[InputSpec, ...] = ()
    ood: OodSpec = field(default_factory=OodSpec)
    review_below: float | None = None
    review: ReviewSpec = field(default_factory=ReviewSpec)
    audit_enabled: bool = True
    sample_rate: float = 0.0
    batch_policy: str = "perRow"
    drift: DriftSpec = field(default_factory=DriftSpec)
    cost: Prices | None = None  # spec.cost; the sidecar then follows it live (status_watch)
    export: ExportSpec | None = None  # spec.audit.export


def parse_input(entry: Any, index: int) -> InputSpec:
    where = f"spec.gate.inputs[{index}]."
    if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
        raise ConfigError(f"{where}name: every gate input needs a name")
    datatype = str(entry.get("datatype", "FP32")).upper()
    if datatype not in KNOWN_DATATYPES:
        raise ConfigError(
            f"{where}datatype: {datatype!r} is not a v2 datatype ({', '.join(sorted(KNOWN_DATATYPES))})"
        )
    shape = entry.get("shape", [])
    if not isinstance(shape, list) or not all(isinstance(d, int) and (d >= 0 or d == -1) for d in shape):
        raise ConfigError(f"{where}shape: {shape!r} must be a list of sizes (-1 = variable), without batch")
    lo, hi = optional_float(entry, "min", where), optional_float(entry, "max", where)
    if lo is not None and hi is not None and lo > hi:
        raise ConfigError(f"{where}min {lo} is above max {hi}")
    return InputSpec(entry["name"], datatype, tuple(shape), lo, hi)


def parse_spec(spec: Mapping[str, Any]) -> GuardSpec:
    model = section(spec, "model", "spec.")
    if not model.get("name"):
        raise ConfigError("spec.model.name: the model name is required")
    gate = section(spec, "gate", "spec.")
    raw_inputs = gate.get("inputs") or []
    if not isinstance(raw_inputs, list):
        raise ConfigError("spec.gate.inputs: must be a list")
    ood = section(gate, "ood", "spec.gate.")
    method = str(ood.get("method", "none")).lower()
    if method not in OOD_METHODS:
        raise ConfigError(f"spec.gate.ood.method: {method!r} is not one of {', '.join(OOD_METHODS)}")
    action = str(ood.get("action", "flag")).lower()
    if action not in OOD_ACTIONS:
        raise ConfigError(f"spec.gate.ood.action: {action!r} is not one of {', '.join(OOD_ACTIONS)}")
    threshold = optional_float(ood, "threshold", "spec.gate.ood.")
    alpha = optional_float(ood, "alpha", "spec.gate.ood.")
    if alpha is not None and threshold is not None:
        raise ConfigError(
            "spec.gate.ood: set either alpha (an error rate) or threshold (a raw score), not both"
        )
    if alpha is not None and not 0.0 < alpha <= 0.5:
        raise ConfigError(f"spec.gate.ood.alpha: {alpha} must be in (0, 0.5], for example 0.05")
    batch_policy = str(gate.get("batchPolicy", "perRow"))
    if batch_policy not in BATCH_POLICIES:
        raise ConfigError(
            f"spec.gate.batchPolicy: {batch_policy!r} is not one of {', '.join(BATCH_POLICIES)}"
        )
    confidence = section(spec, "confidence", "spec.")
    review = section(confidence, "review", "spec.confidence.")
    review_below = optional_float(confidence, "reviewBelow", "spec.confidence.")
    if review_below is not None:
        review_below = fraction(review_below, "spec.confidence.reviewBelow")
    audit = section(spec, "audit", "spec.")
    drift = section(spec, "drift", "spec.")
    return GuardSpec(
        model=ModelSpec(str(model["name"]), str(model.get("repository", "")), str(model.get("version", "1"))),
        inputs=tuple(parse_input(e, i) for i, e in enumerate(raw_inputs)),
        ood=OodSpec(method, threshold, alpha, action),
        review_below=review_below,
        review=ReviewSpec(
            webhook=review.get("webhook") or None,
            max_fraction=fraction(review.get("maxFraction", 0.05), "spec.confidence.review.maxFraction"),
        ),
        audit_enabled=bool(audit.get("enabled", True)),
        sample_rate=fraction(audit.get("sampleRate", 0.0), "spec.audit.sampleRate"),
        batch_policy=batch_policy,
        drift=parse_drift(drift),
        cost=parse_cost(spec.get("cost")),
        export=parse_export(audit.get("export")),
    )


def parse_export(export: Any) -> ExportSpec | None:
    if export is None:
        return None
    where = "spec.audit.export"
    if not isinstance(export, Mapping):
        raise ConfigError(f"{where}: must be a mapping {{url, storage, intervalSeconds}}")
    url = str(export.get("url") or "")
    scheme, _, rest = url.partition("://")
    if scheme not in ("s3", "gs") or not rest.split("/", 1)[0]:
        raise ConfigError(f"{where}.url: {url!r} must be s3://<bucket>/<prefix> or gs://<bucket>/<prefix>")
    interval = export.get("intervalSeconds", 60)
    if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
        raise ConfigError(f"{where}.intervalSeconds: {interval!r} must be a number of seconds above 0")
    storage = section(export, "storage", f"{where}.")
    if scheme == "gs" and any(key in storage for key in ("endpoint", "region", "virtualHostedStyle")):
        raise ConfigError(
            f"{where}.storage.endpoint, region and virtualHostedStyle are for s3:// URLs; a gs:// bucket "
            "needs only secretName (a Secret with key.json) or workload identity"
        )
    hosted = storage.get("virtualHostedStyle")
    return ExportSpec(
        url=url,
        interval_s=float(interval),
        endpoint=str(storage["endpoint"]) if storage.get("endpoint") else None,
        region=str(storage["region"]) if storage.get("region") else None,
        virtual_hosted_style=None if hosted is None else bool(hosted),
    )


def parse_drift(drift: Mapping[str, Any]) -> DriftSpec:
    """``window`` is an int-or-string like a Kubernetes port: an int (or a string of digits) counts
    rows, any other string is a duration."""
    window = drift.get("window", "60s")
    window_s: float | None = None
    window_rows: int | None = None
    if isinstance(window, bool):
        raise ConfigError("spec.drift.window: give a duration such as 5m or a row count such as 500")
    if isinstance(window, int) or (isinstance(window, str) and window.strip().isdigit()):
        window_rows = int(window)
        if window_rows <= 0:
            raise ConfigError(f"spec.drift.window: {window} rows; give a positive count such as 500")
    else:
        window_s = parse_duration(window, "spec.drift.window")
    alpha = optional_float(drift, "alpha", "spec.drift.")
    alpha = 0.001 if alpha is None else alpha
    if not 0.0 < alpha <= 0.5:
        raise ConfigError(f"spec.drift.alpha: {alpha} must be in (0, 0.5], for example 0.001")
    min_samples = drift.get("minSamples", 100)
    if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 1:
        raise ConfigError(f"spec.drift.minSamples: {min_samples!r} must be a positive integer such as 100")
    return DriftSpec(window_s, window_rows, alpha, min_samples)
