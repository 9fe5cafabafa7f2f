from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fit_synthetic import SPEC, extracted, gaussian_classes, linear_logits, synthetic_sets

from guardedmodel_fit.data import DataError
from guardedmodel_fit.fit_config import FitConfig, FitError
from guardedmodel_fit.fitting import fit_guard
from guardedmodel_fit.report import write_report
from guardedmodel_sidecar.guard.artifact import load_artifact, save_artifact
from guardedmodel_sidecar.guard.drift import DriftAccumulator
from guardedmodel_sidecar.guard.scoring import calibrated_confidence, make_ood_scorer

QUIET = FitConfig(progress=False)


@pytest.fixture(scope="module")
def sets() -> tuple:
    return synthetic_sets(np.random.default_rng(21))


@pytest.fixture(scope="module")
def result(sets: tuple):  # type: ignore[no-untyped-def]
    val, fit, oods = sets
    return fit_guard(SPEC, val, fit_set=fit, ood_sets=oods, config=QUIET)


def test_fit_on_known_gaussians(result) -> None:  # type: ignore[no-untyped-def]
    report = result.report
    # the logits are the Bayes classifier's: already calibrated, so T stays near 1
    assert report["calibration"]["temperature"] == pytest.approx(1.0, abs=0.1)
    assert report["calibration"]["ece_after"] < 0.03
    assert set(report["detectors"]) == {"mahalanobis", "energy", "knn", "msp", "vim", "fused"}
    far = {m: d["ood"]["far"]["auroc"] for m, d in report["detectors"].items()}
    assert far["mahalanobis"] > 0.99 and far["vim"] > 0.99
    assert far["knn"] > 0.95  # on the unit sphere the far set is only partly off the in-distribution caps
    near = {m: d["ood"]["near"]["auroc"] for m, d in report["detectors"].items()}
    assert near["mahalanobis"] > near["msp"]
    for method, d in report["detectors"].items():
        assert d["acceptance_calibration"] >= 0.95
        assert d["acceptance_evaluation"] == pytest.approx(0.95, abs=0.03), method
    assert report["detectors"]["vim"]["head_relative_error"] < 1e-8
    assert report["best_detector"]["method"] in ("mahalanobis", "knn", "vim", "fused")
    assert report["samples"]["fit"] == 3000 and report["samples"]["calibration"] == 1500


def test_artifact_round_trip_gives_the_fit_scores(result, sets: tuple, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    save_artifact(result.artifact, tmp_path / "guard")
    loaded = load_artifact(tmp_path / "guard")
    assert loaded.thresholds == result.artifact.thresholds
    assert loaded.temperature == result.artifact.temperature
    _, _, oods = sets
    for method, scores in result.eval_scores.items():
        scorer = make_ood_scorer(method, loaded)
        for ood in oods:
            assert np.array_equal(scorer.score(ood.logits, ood.features), scores[ood.name]), method


def test_reference_fits_in_distribution_traffic(result, sets: tuple) -> None:  # type: ignore[no-untyped-def]
    val, _, oods = sets
    acc = DriftAccumulator(result.artifact.reference)
    conf, pred = calibrated_confidence(val.logits, result.artifact.temperature)
    calm = acc.score(acc.count(val.features, conf, pred))
    assert calm.score < 0.05
    far = oods[1]
    conf, pred = calibrated_confidence(far.logits, result.artifact.temperature)
    assert acc.score(acc.count(far.features, conf, pred)).drifted


def test_report_files(result, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    paths = write_report(result, tmp_path)
    report = json.loads(paths["json"].read_text())
    assert report["calibration"]["ece_before"] >= 0
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    page = paths["html"].read_text()
    assert "Calibration" in page and "report.png" in page and "mahalanobis" in page


def test_logit_only_model_fits_logit_methods(sets: tuple) -> None:
    val, _, _ = sets
    no_features = replace(val, features=None)
    config = FitConfig(methods=("energy", "msp"), progress=False)
    result = fit_guard(replace(SPEC, features_output=None), no_features, config=config)
    assert result.artifact.feature_dim == 0 and set(result.artifact.detectors) == {"energy", "msp"}
    with pytest.raises(FitError, match="has no feature output, but mahalanobis, knn, vim need"):
        fit_guard(SPEC, no_features, config=QUIET)


def test_vim_is_skipped_with_a_note_when_the_head_is_not_linear() -> None:
    rng = np.random.default_rng(3)
    f, y, means = gaussian_classes(rng, 2000)
    logits = np.tanh(linear_logits(f, means) / 10.0) * 10.0
    result = fit_guard(SPEC, extracted("validation", f, logits, y), config=QUIET)
    assert "vim" not in result.artifact.detectors
    assert any("ViM skipped" in n for n in result.report["notes"])


def test_clear_errors_for_bad_sets(sets: tuple) -> None:
    val, _, oods = sets
    with pytest.raises(DataError, match="needs labels"):
        fit_guard(SPEC, replace(val, labels=None), config=QUIET)
    wrong_dim = replace(oods[0], features=oods[0].features[:, :5])
    with pytest.raises(DataError, match="near: feature dimension 5 differs from 8"):
        fit_guard(SPEC, val, ood_sets=[wrong_dim], config=QUIET)
    with pytest.raises(FitError, match="unknown method"):
        fit_guard(SPEC, val, config=FitConfig(methods=("odin",), progress=False))
    tiny = extracted("validation", val.features[:10], val.logits[:10], val.labels[:10])
    with pytest.raises(FitError, match="split has only"):
        fit_guard(SPEC, tiny, config=QUIET)
    bad_labels = replace(val, labels=val.labels + 5)
    with pytest.raises(DataError, match="out of range for 3 classes"):
        fit_guard(SPEC, bad_labels, config=QUIET)
