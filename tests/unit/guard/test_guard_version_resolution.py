"""How a version's guard resolves its OOD method and threshold from the spec and its artifact:
a raw threshold, an alpha, neither (alpha = 1 - target acceptance), ``auto``, and artifacts
written before calibration scores were stored."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from guard_synthetic import draw_inputs, make_artifact

from guardedmodel_sidecar.config import SidecarConfig, parse_config
from guardedmodel_sidecar.guard.artifact import GuardArtifact, save_artifact
from guardedmodel_sidecar.guard.conformal import ConformalReference
from guardedmodel_sidecar.version_guard import VersionGuard, build_guard


def _config(tmp_path: Path, ood: dict[str, Any]) -> SidecarConfig:
    config = parse_config({"spec": {"model": {"name": "synthetic", "version": "3"}, "gate": {"ood": ood}}})
    return config.with_overrides(model_repository=tmp_path)


def _guard(tmp_path: Path, artifact: GuardArtifact, **ood: Any) -> VersionGuard:
    save_artifact(artifact, tmp_path / "synthetic" / "3" / "guard")
    return build_guard(_config(tmp_path, ood), "3", None)


def test_a_raw_threshold_is_used_as_given_and_p_values_are_still_reported(
    tmp_path: Path, artifact: GuardArtifact
) -> None:
    guard = _guard(tmp_path, artifact, method="mahalanobis", threshold=7.5, action="reject")
    assert guard.policy.ood_threshold == 7.5 and guard.policy.ood_alpha is None
    assert guard.conformal is not None
    assert np.array_equal(guard.conformal.sorted_scores, artifact.calibration_scores["mahalanobis"])
    assert any("raw threshold 7.5" in w for w in guard.warnings)


@pytest.mark.parametrize("method", ["mahalanobis", "energy", "fused"])
def test_alpha_becomes_the_conformal_threshold(
    tmp_path: Path, artifact: GuardArtifact, rng: np.random.Generator, method: str
) -> None:
    guard = _guard(tmp_path, artifact, method=method, alpha=0.1, action="reject")
    reference = ConformalReference(artifact.calibration_scores[method])
    assert guard.policy.ood_method == method and guard.policy.ood_alpha == 0.1
    assert guard.policy.ood_threshold == reference.threshold(0.1)
    assert guard.policy.ood_threshold != artifact.thresholds[method]
    # the one comparison the decision makes is the p-value test
    assert guard.scorer is not None and guard.conformal is not None
    logits, features = draw_inputs(rng, 500)
    scores = guard.scorer.score(logits, features)
    assert np.array_equal(scores > guard.policy.ood_threshold, guard.conformal.p_values(scores) <= 0.1)
    assert 0.03 < np.mean(scores > guard.policy.ood_threshold) < 0.2  # fresh in-distribution draws
    assert any("alpha 0.1 from spec.gate.ood.alpha" in w for w in guard.warnings)


def test_neither_means_alpha_from_the_target_acceptance(tmp_path: Path, artifact: GuardArtifact) -> None:
    guard = _guard(tmp_path, artifact, method="knn")
    alpha = 1.0 - artifact.target_acceptance
    assert guard.policy.ood_alpha == pytest.approx(alpha)
    assert guard.policy.ood_threshold == ConformalReference(artifact.calibration_scores["knn"]).threshold(
        alpha
    )
    assert any("1 - the artifact's target acceptance 0.95" in w for w in guard.warnings)


def test_auto_is_the_fit_s_choice(tmp_path: Path, artifact: GuardArtifact) -> None:
    chosen = dataclasses.replace(artifact, auto_method="vim")
    guard = _guard(tmp_path, chosen, method="auto", alpha=0.05)
    assert guard.policy.ood_method == "vim" and guard.metrics.method == "vim"
    assert guard.scorer is not None and guard.scorer.method == "vim"
    assert guard.policy.ood_threshold == ConformalReference(artifact.calibration_scores["vim"]).threshold(
        0.05
    )
    assert any("method auto: 'vim', the fit's choice" in w for w in guard.warnings)


def test_an_artifact_without_calibration_scores_falls_back_to_its_stored_threshold(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    old = dataclasses.replace(make_artifact(rng, calibration_samples=0), format_version=1)
    guard = _guard(tmp_path, old, method="mahalanobis")
    assert guard.policy.ood_threshold == old.thresholds["mahalanobis"] and guard.policy.ood_alpha is None
    assert guard.conformal is None
    assert any("stored threshold 10, no stated error rate" in w for w in guard.warnings)
    guard = _guard(tmp_path, old, method="energy", alpha=0.05)
    assert guard.policy.ood_threshold == old.thresholds["energy"] and guard.policy.ood_alpha is None
    assert any("cannot honour alpha 0.05" in w for w in guard.warnings)
    guard = _guard(tmp_path, old, method="auto")
    assert guard.policy.ood_method == "mahalanobis"
    assert any("records no choice" in w for w in guard.warnings)
    guard = _guard(tmp_path, old, method="fused")
    assert guard.policy.ood_method == "none" and guard.scorer is None
    assert any("no 'fused' detector" in w for w in guard.warnings)


def test_an_alpha_too_small_for_the_calibration_set_rejects_nothing(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    small = make_artifact(rng, calibration_samples=30)
    guard = _guard(tmp_path, small, method="energy", alpha=0.01)
    assert guard.policy.ood_threshold == float("inf")
    assert any("no row can be rejected" in w for w in guard.warnings)


def test_no_artifact_means_no_ood_scoring(tmp_path: Path) -> None:
    guard = build_guard(_config(tmp_path, {"method": "fused", "alpha": 0.05}), "3", None)
    assert guard.scorer is None and guard.policy.ood_method == "none" and guard.conformal is None
    assert any("needs a guard artifact" in w for w in guard.warnings)
