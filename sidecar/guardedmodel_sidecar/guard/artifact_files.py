"""Writing and reading a guard artifact directory (``guard.npz`` + ``guard.json``, manifest last).

Both directions validate the artifact (``artifact_checks``), so a bad one is refused on write
and on load with the file and the problem named.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .artifact_checks import validate_artifact
from .artifact_model import (
    ARRAYS_FILE,
    DETECTOR_TYPES,
    MANIFEST_FILE,
    MANIFEST_KIND,
    SUPPORTED_FORMAT_VERSIONS,
    ArtifactError,
    DetectorParams,
    DriftReference,
    GuardArtifact,
    InputReference,
)

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
    calibration_json: dict[str, dict[str, Any]] = {}
    for method, scores in artifact.calibration_scores.items():
        key = f"calibration/{method}"
        arrays[key] = scores
        calibration_json[method] = {"array": key, "samples": int(scores.size)}

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
        "auto_method": artifact.auto_method,
        "detectors": detectors_json,
        "calibration_scores": calibration_json,
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
    if version not in SUPPORTED_FORMAT_VERSIONS:
        readable = ", ".join(str(v) for v in SUPPORTED_FORMAT_VERSIONS)
        raise ArtifactError(
            f"{manifest_path}: format_version {version!r} is not supported by this sidecar "
            f"(it reads {readable}); refit the guard with a matching `guardedmodel fit`"
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
        calibration_scores = _calibration_from_json(
            manifest.get("calibration_scores") or {}, arrays, npz_path
        )
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
            calibration_scores=calibration_scores,
            auto_method=None if manifest.get("auto_method") is None else str(manifest["auto_method"]),
        )
    except ArtifactError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{manifest_path}: malformed manifest ({type(exc).__name__}: {exc})") from exc
    validate_artifact(artifact, source=str(manifest_path))
    return artifact


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
            value = params_json[f.name]
            # JSON has no tuples: a list field (e.g. the fused members) comes back as a tuple
            kwargs[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**kwargs)


def _calibration_from_json(
    calibration_json: dict[str, Any], arrays: dict[str, np.ndarray], npz: Path
) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for method, entry in calibration_json.items():
        key = entry["array"]
        if key not in arrays:
            raise ArtifactError(f"{npz}: calibration array {key!r} named by the manifest is missing")
        out[str(method)] = arrays[key]
    return out


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
