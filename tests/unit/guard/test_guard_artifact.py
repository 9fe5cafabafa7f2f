from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from guard_synthetic import C, D, make_artifact

from guardedmodel_sidecar.guard.artifact import (
    ARRAYS_FILE,
    FORMAT_VERSION,
    MANIFEST_FILE,
    ArtifactError,
    FusedParams,
    GuardArtifact,
    KnnParams,
    load_artifact,
    save_artifact,
)
from guardedmodel_sidecar.guard.scoring import METHODS, make_ood_scorer


def test_round_trip_keeps_every_value_and_every_score(
    artifact: GuardArtifact, tmp_path: Path, rng: np.random.Generator
) -> None:
    manifest = save_artifact(artifact, tmp_path / "guard")
    assert manifest == tmp_path / "guard" / MANIFEST_FILE
    loaded = load_artifact(tmp_path / "guard")
    for f in dataclasses.fields(GuardArtifact):
        if f.name in ("detectors", "reference", "created_at", "calibration_scores"):
            continue
        assert getattr(loaded, f.name) == getattr(artifact, f.name), f.name
    assert loaded.created_at is not None
    for name in ("feature_edges", "feature_fractions", "confidence_edges", "confidence_fractions"):
        assert np.array_equal(getattr(loaded.reference, name), getattr(artifact.reference, name))
    assert loaded.calibration_scores.keys() == artifact.calibration_scores.keys()
    for method, scores in artifact.calibration_scores.items():
        assert loaded.calibration_scores[method].dtype == np.float64
        assert np.array_equal(loaded.calibration_scores[method], scores), method
    fused = loaded.detectors["fused"]
    assert isinstance(fused, FusedParams) and fused.members == ("mahalanobis", "energy")
    assert loaded.auto_method == "fused"
    assert isinstance(loaded.detectors["knn"], KnnParams)
    assert loaded.detectors["knn"].bank.dtype == np.float32
    logits, features = rng.normal(size=(8, C)), rng.normal(size=(8, D))
    for method in METHODS:
        before = make_ood_scorer(method, artifact).score(logits, features)
        after = make_ood_scorer(method, loaded).score(logits, features)
        assert np.array_equal(before, after), method


def test_manifest_is_readable_json_with_checksum(artifact: GuardArtifact, tmp_path: Path) -> None:
    save_artifact(artifact, tmp_path)
    manifest = json.loads((tmp_path / MANIFEST_FILE).read_text())
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["model"] == {
        "name": "synthetic",
        "version": "3",
        "num_classes": C,
        "feature_dim": D,
        "logits_output": "LOGITS",
        "features_output": "FEATURES",
    }
    assert manifest["thresholds"]["knn"] == 0.5
    assert len(manifest["arrays"]["sha256"]) == 64
    assert manifest["metadata"]["report"] == {"note": "synthetic"}
    assert manifest["detectors"]["mahalanobis"]["precision_shape"] == [D, D]


def test_corrupted_arrays_are_refused_by_checksum(artifact: GuardArtifact, tmp_path: Path) -> None:
    save_artifact(artifact, tmp_path)
    data = bytearray((tmp_path / ARRAYS_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / ARRAYS_FILE).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"guard\.npz: checksum mismatch"):
        load_artifact(tmp_path)


def test_other_format_versions_are_refused(artifact: GuardArtifact, tmp_path: Path) -> None:
    save_artifact(artifact, tmp_path)
    manifest = json.loads((tmp_path / MANIFEST_FILE).read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(
        ArtifactError, match=rf"guard\.json: format_version {FORMAT_VERSION + 1} is not supported"
    ):
        load_artifact(tmp_path)


def test_missing_and_malformed_files_are_named(artifact: GuardArtifact, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="no guard manifest here"):
        load_artifact(tmp_path / "nothing")
    save_artifact(artifact, tmp_path)
    (tmp_path / ARRAYS_FILE).unlink()
    with pytest.raises(ArtifactError, match=r"guard\.npz: arrays file named by guard\.json is missing"):
        load_artifact(tmp_path)
    (tmp_path / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(ArtifactError, match="unreadable manifest"):
        load_artifact(tmp_path)


def test_inconsistent_shapes_are_refused_before_writing(artifact: GuardArtifact, tmp_path: Path) -> None:
    bad = dataclasses.replace(artifact, num_classes=C + 1)
    with pytest.raises(ArtifactError, match=r"mahalanobis class_means shape \(4, 6\) != \(5, 6\)"):
        save_artifact(bad, tmp_path)
    assert not (tmp_path / MANIFEST_FILE).exists()
    bad_threshold = dataclasses.replace(artifact, thresholds={**artifact.thresholds, "odin": 1.0})
    with pytest.raises(ArtifactError, match="threshold for 'odin' but no such detector"):
        save_artifact(bad_threshold, tmp_path)


def test_artifact_without_features_round_trips(tmp_path: Path, rng: np.random.Generator) -> None:
    logits_only = make_artifact(rng, with_features=False)
    save_artifact(logits_only, tmp_path)
    loaded = load_artifact(tmp_path)
    assert loaded.feature_dim == 0 and loaded.features_output is None
    assert loaded.reference.feature_edges.shape == (0, 6)
    assert set(loaded.detectors) == {"energy", "msp"}


def test_a_version_1_artifact_without_calibration_scores_still_loads(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """What an earlier `guardedmodel fit` wrote: format 1, no calibration scores, no fused detector,
    no auto choice, and no manifest keys for them."""
    old = dataclasses.replace(make_artifact(rng, calibration_samples=0), format_version=1)
    save_artifact(old, tmp_path)
    manifest = json.loads((tmp_path / MANIFEST_FILE).read_text())
    del manifest["calibration_scores"], manifest["auto_method"]
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(manifest))
    loaded = load_artifact(tmp_path)
    assert loaded.format_version == 1
    assert loaded.calibration_scores == {} and loaded.auto_method is None
    assert "fused" not in loaded.detectors and loaded.thresholds == old.thresholds


def test_version_1_cannot_carry_what_a_version_1_reader_would_ignore(
    artifact: GuardArtifact, tmp_path: Path
) -> None:
    with pytest.raises(ArtifactError, match="need format_version 2"):
        save_artifact(dataclasses.replace(artifact, format_version=1), tmp_path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda a: {
                "calibration_scores": {**a.calibration_scores, "knn": a.calibration_scores["knn"][::-1]}
            },
            "calibration scores for 'knn' are not sorted ascending",
        ),
        (
            lambda a: {"calibration_scores": {**a.calibration_scores, "msp": np.array([0.1, np.nan])}},
            "calibration scores for 'msp' hold NaN or infinity",
        ),
        (
            lambda a: {"calibration_scores": {**a.calibration_scores, "energy": np.zeros(0)}},
            r"calibration scores for 'energy' have shape \(0,\)",
        ),
        (
            lambda a: {"calibration_scores": {**a.calibration_scores, "msp": np.zeros(3, np.float32)}},
            "calibration scores for 'msp' are float32, not float64",
        ),
        (
            lambda a: {"calibration_scores": {**a.calibration_scores, "odin": np.zeros(3)}},
            "calibration scores for 'odin' but no such detector",
        ),
        (
            lambda a: {"calibration_scores": {k: v for k, v in a.calibration_scores.items() if k != "fused"}},
            "the fused detector has no calibration scores",
        ),
        (lambda a: {"auto_method": "odin"}, "auto_method 'odin' is not a fitted detector"),
        (
            lambda a: {
                "detectors": {
                    **a.detectors,
                    "fused": dataclasses.replace(a.detectors["fused"], members=("mahalanobis", "odin")),
                }
            },
            "fused member 'odin' is not a fitted single detector",
        ),
        (
            lambda a: {
                "detectors": {
                    **a.detectors,
                    "fused": dataclasses.replace(
                        a.detectors["fused"],
                        members=("energy",),
                        member_calibration=a.detectors["fused"].member_calibration[:1],
                    ),
                }
            },
            "must be two or more distinct detectors",
        ),
        (
            lambda a: {
                "detectors": {
                    **a.detectors,
                    "fused": dataclasses.replace(a.detectors["fused"], combination="simes"),
                }
            },
            "fused combination 'simes' is not one of fisher, min",
        ),
        (
            lambda a: {
                "detectors": {
                    **a.detectors,
                    "fused": dataclasses.replace(
                        a.detectors["fused"],
                        member_calibration=a.detectors["fused"].member_calibration[:, ::-1],
                    ),
                }
            },
            "fused member_calibration rows are not sorted ascending",
        ),
    ],
)
def test_inconsistent_calibration_and_fusion_are_refused(
    artifact: GuardArtifact,
    tmp_path: Path,
    change,
    message: str,  # type: ignore[no-untyped-def]
) -> None:
    with pytest.raises(ArtifactError, match=message):
        save_artifact(dataclasses.replace(artifact, **change(artifact)), tmp_path)


def test_a_missing_calibration_array_is_named(artifact: GuardArtifact, tmp_path: Path) -> None:
    save_artifact(artifact, tmp_path)
    manifest = json.loads((tmp_path / MANIFEST_FILE).read_text())
    manifest["calibration_scores"]["knn"]["array"] = "calibration/nothing"
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(
        ArtifactError, match="calibration array 'calibration/nothing' named by the manifest is missing"
    ):
        load_artifact(tmp_path)
