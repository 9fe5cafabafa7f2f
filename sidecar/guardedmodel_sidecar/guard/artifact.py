"""The guard artifact: everything the sidecar needs to gate and score one model version.

An artifact lives next to the model version it was fitted for (``<repo>/<model>/<version>/guard/``)
so that rolling a model back also rolls its guard back. On disk it is two files:

- ``guard.npz``  every array (class means, precision, feature bank, reference bins), no pickles;
- ``guard.json`` a manifest a person can read: format version, model, temperature, thresholds,
  detector scalars, the sha256 of ``guard.npz``, creation time and the fit report summary.

The manifest is written last (atomically), so a directory with a manifest is a complete artifact.

Score convention everywhere: HIGHER score = MORE out-of-distribution. ``thresholds[method]`` is
chosen so that ``target_acceptance`` of the in-distribution validation inputs score <= threshold;
an input whose score is above the threshold is out-of-distribution for that method.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np

FORMAT_VERSION = 1
ARRAYS_FILE = "guard.npz"
MANIFEST_FILE = "guard.json"
MANIFEST_KIND = "guardedmodel.io/guard-artifact"


class ArtifactError(Exception):
    """A guard artifact cannot be written or read; the message names the file and the problem."""


@dataclass(frozen=True, eq=False)
class MahalanobisParams:
    """Class-conditional Gaussians with one shared covariance (Lee et al., 2018).

    With ``normalise`` the features are L2-normalised before the distance (means and precision
    were fitted on normalised features too); this usually separates far-OOD inputs better.
    """

    class_means: np.ndarray  # (C, D) float64
    precision: np.ndarray  # (D, D) float64, inverse of the shared (tied) covariance
    normalise: bool = False


@dataclass(frozen=True, eq=False)
class KnnParams:
    """k-th nearest neighbour distance among L2-normalised in-distribution features (Sun et al., 2022)."""

    bank: np.ndarray  # (N, D) float32, each row has unit L2 norm
    k: int


@dataclass(frozen=True, eq=False)
class EnergyParams:
    """Free energy of the logits, -T * logsumexp(logits / T) (Liu et al., 2020)."""

    temperature: float = 1.0


@dataclass(frozen=True, eq=False)
class MspParams:
    """The baseline: 1 - maximum softmax probability (Hendrycks & Gimpel, 2017)."""

    temperature: float = 1.0


@dataclass(frozen=True, eq=False)
class VimParams:
    """Virtual-logit matching (Wang et al., 2022): feature residual off the principal subspace.

    score = alpha * ||(features - origin) @ residual_basis|| - logsumexp(logits)
    """

    origin: np.ndarray  # (D,) float64, -pinv(W) @ b of the affine logit head
    residual_basis: np.ndarray  # (D, D - r) float64, orthonormal complement of the principal subspace
    alpha: float


DetectorParams: TypeAlias = MahalanobisParams | KnnParams | EnergyParams | MspParams | VimParams

DETECTOR_TYPES: dict[str, type] = {
    "mahalanobis": MahalanobisParams,
    "knn": KnnParams,
    "energy": EnergyParams,
    "msp": MspParams,
    "vim": VimParams,
}

# Methods whose scores need the model's penultimate features (the others use the logits only).
FEATURE_METHODS = frozenset({"mahalanobis", "knn", "vim"})


@dataclass(frozen=True, eq=False)
class DriftReference:
    """What in-distribution traffic looked like at fit time, binned for PSI/KS drift statistics.

    Bin edges are quantiles of the validation data, so each reference bin holds about the same
    share; when binning live data the outermost edges are treated as open (-inf, +inf).
    ``feature_edges`` has zero rows when the model exposes no feature output.
    """

    feature_edges: np.ndarray  # (D, B+1) float64, non-decreasing along axis 1
    feature_fractions: np.ndarray  # (D, B) float64, rows sum to 1
    confidence_edges: np.ndarray  # (Bc+1,) float64, calibrated max-probability bins
    confidence_fractions: np.ndarray  # (Bc,) float64
    class_fractions: np.ndarray  # (C,) float64, share of each predicted class


@dataclass(frozen=True)
class InputReference:
    """Raw-input statistics of the validation set, so the gate can flag range and grey-level shift.

    ``sample_mean_range`` and ``sample_std_range`` bound the per-sample mean and standard
    deviation seen in validation (a low and a high quantile, widened by a margin).
    """

    name: str
    shape: tuple[int, ...]  # per-sample shape, without the batch dimension
    minimum: float
    maximum: float
    mean: float
    std: float
    sample_mean_range: tuple[float, float]
    sample_std_range: tuple[float, float]


@dataclass(frozen=True, eq=False)
class GuardArtifact:
    format_version: int
    model_name: str
    model_version: str
    num_classes: int
    feature_dim: int  # 0 when the model has no feature output (only logit methods then)
    temperature: float  # calibrated softmax temperature
    detectors: dict[str, DetectorParams]
    thresholds: dict[str, float]  # per method; higher score = more OOD; accept when score <= threshold
    target_acceptance: float
    reference: DriftReference
    input_reference: InputReference | None = None
    logits_output: str = "LOGITS"
    features_output: str | None = "FEATURES"
    metadata: dict[str, Any] = field(default_factory=dict)  # JSON-able; "report" holds the fit summary
    created_at: str | None = None  # set by save_artifact / read by load_artifact (ISO 8601, UTC)

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(self.detectors)


# --------------------------------------------------------------------------------------------- save


def save_artifact(artifact: GuardArtifact, directory: Path) -> Path:
    """Write ``guard.npz`` and ``guard.json`` into ``directory``; returns the manifest path."""
    directory = Path(directory)
    validate_artifact(artifact, source=str(directory))
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArtifactError(f"{directory}: cannot create the artifact directory: {exc}") from exc

    arrays: dict[str, np.ndarray] = {}
    detectors_json: dict[str, dict[str, Any]] = {}
    for method, params in artifact.detectors.items():
        detectors_json[method] = _params_to_json(params, f"detectors/{method}", arrays)
    reference_json = _params_to_json(artifact.reference, "reference", arrays)

    npz_path = directory / ARRAYS_FILE
    _atomic_write(npz_path, lambda fh: np.savez(fh, **arrays))
    digest = _sha256(npz_path)
    created_at = _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()

    manifest = {
        "kind": MANIFEST_KIND,
        "format_version": artifact.format_version,
        "created_at": created_at,
        "model": {
            "name": artifact.model_name,
            "version": artifact.model_version,
            "num_classes": artifact.num_classes,
            "feature_dim": artifact.feature_dim,
            "logits_output": artifact.logits_output,
            "features_output": artifact.features_output,
        },
        "temperature": artifact.temperature,
        "target_acceptance": artifact.target_acceptance,
        "thresholds": dict(artifact.thresholds),
        "detectors": detectors_json,
        "reference": reference_json,
        "input_reference": None
        if artifact.input_reference is None
        else dataclasses.asdict(artifact.input_reference),
        "arrays": {"file": ARRAYS_FILE, "sha256": digest},
        "metadata": artifact.metadata,
    }
    try:
        text = json.dumps(manifest, indent=2, sort_keys=False, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"{directory / MANIFEST_FILE}: metadata is not plain JSON: {exc}") from exc
    manifest_path = directory / MANIFEST_FILE
    _atomic_write(manifest_path, lambda fh: fh.write(text.encode()))
    return manifest_path


# --------------------------------------------------------------------------------------------- load


def load_artifact(directory: Path) -> GuardArtifact:
    """Read and verify an artifact; raises ArtifactError naming the file and what is wrong."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.is_file():
        raise ArtifactError(f"{manifest_path}: no guard manifest here (run `guardedmodel fit` first)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{manifest_path}: unreadable manifest: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("kind") != MANIFEST_KIND:
        raise ArtifactError(f"{manifest_path}: not a guard manifest (kind must be {MANIFEST_KIND!r})")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"{manifest_path}: format_version {version!r} is not supported by this sidecar "
            f"(it reads {FORMAT_VERSION}); refit the guard with a matching `guardedmodel fit`"
        )

    try:
        arrays_info = manifest["arrays"]
        npz_path = directory / arrays_info["file"]
        expected_digest = arrays_info["sha256"]
    except (KeyError, TypeError) as exc:
        raise ArtifactError(f"{manifest_path}: manifest lacks the arrays file/sha256 entry") from exc
    if not npz_path.is_file():
        raise ArtifactError(f"{npz_path}: arrays file named by {manifest_path.name} is missing")
    actual_digest = _sha256(npz_path)
    if actual_digest != expected_digest:
        raise ArtifactError(
            f"{npz_path}: checksum mismatch (manifest says sha256 {expected_digest}, file has "
            f"{actual_digest}); the artifact is corrupt or was partly overwritten"
        )
    try:
        with np.load(npz_path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{npz_path}: cannot read arrays: {exc}") from exc

    try:
        model = manifest["model"]
        detectors: dict[str, DetectorParams] = {}
        for method, params_json in manifest["detectors"].items():
            if method not in DETECTOR_TYPES:
                raise ArtifactError(
                    f"{manifest_path}: unknown detector {method!r} (known: {sorted(DETECTOR_TYPES)})"
                )
            detectors[method] = _params_from_json(DETECTOR_TYPES[method], params_json, arrays, npz_path)
        reference = _params_from_json(DriftReference, manifest["reference"], arrays, npz_path)
        input_ref_json = manifest.get("input_reference")
        input_reference = None
        if input_ref_json is not None:
            input_reference = InputReference(
                name=str(input_ref_json["name"]),
                shape=tuple(int(s) for s in input_ref_json["shape"]),
                minimum=float(input_ref_json["minimum"]),
                maximum=float(input_ref_json["maximum"]),
                mean=float(input_ref_json["mean"]),
                std=float(input_ref_json["std"]),
                sample_mean_range=_pair(input_ref_json["sample_mean_range"]),
                sample_std_range=_pair(input_ref_json["sample_std_range"]),
            )
        artifact = GuardArtifact(
            format_version=int(version),
            model_name=str(model["name"]),
            model_version=str(model["version"]),
            num_classes=int(model["num_classes"]),
            feature_dim=int(model["feature_dim"]),
            temperature=float(manifest["temperature"]),
            detectors=detectors,
            thresholds={str(k): float(v) for k, v in manifest["thresholds"].items()},
            target_acceptance=float(manifest["target_acceptance"]),
            reference=reference,
            input_reference=input_reference,
            logits_output=str(model.get("logits_output", "LOGITS")),
            features_output=model.get("features_output"),
            metadata=dict(manifest.get("metadata") or {}),
            created_at=manifest.get("created_at"),
        )
    except ArtifactError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{manifest_path}: malformed manifest ({type(exc).__name__}: {exc})") from exc
    validate_artifact(artifact, source=str(manifest_path))
    return artifact


# ----------------------------------------------------------------------------------------- validate


def validate_artifact(artifact: GuardArtifact, *, source: str = "guard artifact") -> None:
    """Check that shapes and values agree with each other; raises ArtifactError."""
    problems: list[str] = []
    c, d = artifact.num_classes, artifact.feature_dim
    if c < 2:
        problems.append(f"num_classes must be >= 2, got {c}")
    if d < 0:
        problems.append(f"feature_dim must be >= 0, got {d}")
    if not (np.isfinite(artifact.temperature) and artifact.temperature > 0):
        problems.append(f"temperature must be a positive finite number, got {artifact.temperature}")
    if not 0.0 < artifact.target_acceptance <= 1.0:
        problems.append(f"target_acceptance must be in (0, 1], got {artifact.target_acceptance}")
    for method in artifact.thresholds:
        if method not in artifact.detectors:
            problems.append(f"threshold for {method!r} but no such detector")
    for method, value in artifact.thresholds.items():
        if not np.isfinite(value):
            problems.append(f"threshold for {method!r} is not finite ({value})")
    for method, params in artifact.detectors.items():
        expected_type = DETECTOR_TYPES.get(method)
        if expected_type is None or not isinstance(params, expected_type):
            problems.append(f"detector {method!r} has parameters of type {type(params).__name__}")
            continue
        if method in FEATURE_METHODS and d == 0:
            problems.append(f"detector {method!r} needs features but feature_dim is 0")
            continue
        problems.extend(_check_detector(method, params, c, d))
    problems.extend(_check_reference(artifact.reference, c, d))
    if problems:
        raise ArtifactError(f"{source}: invalid guard artifact: " + "; ".join(problems))


def _check_detector(method: str, params: DetectorParams, c: int, d: int) -> list[str]:
    out: list[str] = []
    if isinstance(params, MahalanobisParams):
        if params.class_means.shape != (c, d):
            out.append(f"mahalanobis class_means shape {params.class_means.shape} != {(c, d)}")
        if params.precision.shape != (d, d):
            out.append(f"mahalanobis precision shape {params.precision.shape} != {(d, d)}")
    elif isinstance(params, KnnParams):
        if params.bank.ndim != 2 or params.bank.shape[1] != d or params.bank.shape[0] < 1:
            out.append(f"knn bank shape {params.bank.shape} is not (N>=1, {d})")
        elif not 1 <= params.k <= params.bank.shape[0]:
            out.append(f"knn k={params.k} is not within 1..{params.bank.shape[0]}")
    elif isinstance(params, EnergyParams | MspParams):
        if not (np.isfinite(params.temperature) and params.temperature > 0):
            out.append(f"{method} temperature must be positive, got {params.temperature}")
    elif isinstance(params, VimParams):
        if params.origin.shape != (d,):
            out.append(f"vim origin shape {params.origin.shape} != {(d,)}")
        if params.residual_basis.ndim != 2 or params.residual_basis.shape[0] != d:
            out.append(f"vim residual_basis shape {params.residual_basis.shape} is not ({d}, k)")
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        if isinstance(value, np.ndarray) and not np.all(np.isfinite(value)):
            out.append(f"{method} {f.name} holds NaN or infinity")
    return out


def _check_reference(ref: DriftReference, c: int, d: int) -> list[str]:
    out: list[str] = []
    fe, ff = ref.feature_edges, ref.feature_fractions
    if fe.ndim != 2 or fe.shape[0] != d or ff.shape != (d, fe.shape[1] - 1):
        out.append(f"reference feature_edges {fe.shape} / feature_fractions {ff.shape} disagree with D={d}")
    elif d and np.any(np.diff(fe, axis=1) < 0):
        out.append("reference feature_edges are not non-decreasing")
    ce, cf = ref.confidence_edges, ref.confidence_fractions
    if ce.ndim != 1 or cf.shape != (ce.shape[0] - 1,):
        out.append(f"reference confidence_edges {ce.shape} / confidence_fractions {cf.shape} disagree")
    if ref.class_fractions.shape != (c,):
        out.append(f"reference class_fractions shape {ref.class_fractions.shape} != {(c,)}")
    return out


# ------------------------------------------------------------------------------------------ helpers


def _params_to_json(params: Any, prefix: str, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    array_keys: dict[str, str] = {}
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        if isinstance(value, np.ndarray):
            key = f"{prefix}/{f.name}"
            arrays[key] = value
            array_keys[f.name] = key
            out[f"{f.name}_shape"] = list(value.shape)  # for the human reader; not used on load
        else:
            out[f.name] = value
    out["arrays"] = array_keys
    return out


def _params_from_json(
    cls: type, params_json: dict[str, Any], arrays: dict[str, np.ndarray], npz: Path
) -> Any:
    kwargs: dict[str, Any] = {}
    array_keys: dict[str, str] = params_json.get("arrays", {})
    for f in dataclasses.fields(cls):
        if f.name in array_keys:
            key = array_keys[f.name]
            if key not in arrays:
                raise ArtifactError(f"{npz}: array {key!r} named by the manifest is missing")
            kwargs[f.name] = arrays[key]
        elif f.name in params_json:
            kwargs[f.name] = params_json[f.name]
    return cls(**kwargs)


def _pair(value: Any) -> tuple[float, float]:
    lo, hi = value
    return float(lo), float(hi)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write(path: Path, write: Any) -> None:
    # Write to a temporary sibling then rename, so a reader never sees half a file.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the sidecar may run as another user
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise ArtifactError(f"{path}: cannot write: {exc}") from exc
