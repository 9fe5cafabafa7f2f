"""The fit's conformal side: calibration scores in the artifact, the fused detector fitted on
in-distribution data only, the report's rejection rates per alpha and the ``auto`` choice."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fit_synthetic import SPEC, synthetic_sets
from scipy import stats

from guardedmodel_fit.conformal_report import calibration_band, clopper_pearson, rejection_figures
from guardedmodel_fit.evaluation import choose_auto, detector_quality
from guardedmodel_fit.fit_config import REPORT_ALPHAS, FitConfig, FitError
from guardedmodel_fit.fitting import FitResult, fit_guard
from guardedmodel_fit.report import render_html
from guardedmodel_sidecar.guard.artifact import FusedParams, load_artifact, save_artifact
from guardedmodel_sidecar.guard.conformal import ConformalReference, guaranteed_rejection_rate
from guardedmodel_sidecar.guard.scoring import make_ood_scorer

QUIET = FitConfig(progress=False)


@pytest.fixture(scope="module")
def sets() -> tuple:
    return synthetic_sets(np.random.default_rng(21))


@pytest.fixture(scope="module")
def result(sets: tuple) -> FitResult:
    val, fit, oods = sets
    return fit_guard(SPEC, val, fit_set=fit, ood_sets=oods, config=QUIET)


def test_every_detector_has_sorted_calibration_scores_and_the_conformal_threshold(result: FitResult) -> None:
    artifact = result.artifact
    calibration_n = result.report["samples"]["calibration"]
    fusion = result.report["detectors"]["fused"]["fusion"]
    assert fusion["reference_samples"] + fusion["calibration_samples"] == calibration_n
    assert set(artifact.calibration_scores) == set(artifact.detectors)
    for method, scores in artifact.calibration_scores.items():
        assert scores.dtype == np.float64 and np.all(np.diff(scores) >= 0)
        expected_n = fusion["calibration_samples"] if method == "fused" else calibration_n
        assert scores.size == expected_n, method
        # the stored raw threshold is the sidecar's default: alpha = 1 - target acceptance
        alpha = 1.0 - artifact.target_acceptance
        assert artifact.thresholds[method] == ConformalReference(scores).threshold(alpha), method


def test_fused_detector_is_fitted_on_part_a_and_calibrated_on_part_b(result: FitResult, sets: tuple) -> None:
    fused = result.artifact.detectors["fused"]
    assert isinstance(fused, FusedParams)
    assert fused.members == ("mahalanobis", "energy") and fused.combination == "fisher"
    fusion = result.report["detectors"]["fused"]["fusion"]
    assert fused.member_calibration.shape == (2, fusion["reference_samples"])
    # part A rows are a subset of each member's calibration scores
    for row, member in zip(fused.member_calibration, fused.members, strict=True):
        assert np.all(np.isin(row, result.artifact.calibration_scores[member]))
    # no OOD data was used: refitting without OOD sets gives the same fused detector
    val, fit, _ = sets
    alone = fit_guard(SPEC, val, fit_set=fit, config=QUIET)
    assert np.array_equal(alone.artifact.detectors["fused"].member_calibration, fused.member_calibration)
    assert np.array_equal(
        alone.artifact.calibration_scores["fused"], result.artifact.calibration_scores["fused"]
    )


def test_report_states_rates_per_alpha_with_intervals(result: FitResult) -> None:
    evaluation_n = result.report["samples"]["evaluation"]
    for method, entry in result.report["detectors"].items():
        figures = entry["conformal"]
        n = figures["calibration_samples"]
        assert figures["evaluation_samples"] == evaluation_n
        for alpha in REPORT_ALPHAS:
            f = figures[f"{alpha:g}"]
            assert f["expected"] == guaranteed_rejection_rate(alpha, n) <= alpha
            lo, hi = f["band_90"]
            assert lo < f["expected"] < hi
            clo, chi = f["measured_ci_95"]
            assert clo <= f["measured"] <= chi
            # the fit's evaluation split is in-distribution: its rate is the stated one
            assert clo - 0.01 <= f["expected"] <= chi + 0.01, (method, alpha, f)
            scores = result.eval_scores[method]["in-distribution"]
            assert f["measured"] == np.mean(scores > f["threshold"])
    summary = result.artifact.metadata["report"]
    for method, entry in result.report["detectors"].items():
        for alpha in REPORT_ALPHAS:
            key = f"{alpha:g}"
            assert summary["conformal"][method][key]["measured"] == entry["conformal"][key]["measured"]
        assert summary["cost_us_batch_1"][method] == entry["cost_us"]["batch_1"]
    assert summary["auto"]["method"] == result.artifact.auto_method == result.report["auto"]["method"]


def test_auto_is_chosen_by_the_ood_sets_within_the_budget(result: FitResult) -> None:
    auto = result.report["auto"]
    assert "the fit's own OOD sets (near, far)" in auto["chosen_by"]
    candidates = auto["candidates"]
    within = {m: c for m, c in candidates.items() if c["within_budget"]}
    best = max(c["mean_auroc"] for c in within.values())
    assert candidates[auto["method"]]["within_budget"]
    assert candidates[auto["method"]]["mean_auroc"] >= best - 0.002


def test_auto_rule_in_isolation() -> None:
    def entry(cost: float, *aurocs: float) -> dict:
        return {"cost_us": {"batch_1": cost}, "ood": {f"s{i}": {"auroc": a} for i, a in enumerate(aurocs)}}

    report = {
        "knn": entry(90.0, 0.99, 0.99),
        "mahalanobis": entry(5.0, 0.95, 0.96),
        "fused": entry(9.0, 0.951, 0.96),
    }
    oods = ["s0", "s1"]
    assert choose_auto(report, oods, 20.0)["method"] == "mahalanobis"  # knn over budget; tie -> cheaper
    assert choose_auto(report, oods, 100.0)["method"] == "knn"
    assert choose_auto({"knn": entry(90.0, 0.9)}, oods[:1], 20.0)["method"] == "knn"  # none within: cheapest
    without = choose_auto(report, [], 20.0)
    assert without["method"] == "fused" and "no OOD sets were given" in without["chosen_by"]


def test_without_ood_sets_auto_picks_the_fused_detector(sets: tuple) -> None:
    val, fit, _ = sets
    result = fit_guard(SPEC, val, fit_set=fit, config=QUIET)
    assert result.artifact.auto_method == "fused"
    assert "no OOD sets were given" in result.report["auto"]["chosen_by"]


def test_fusion_options(sets: tuple) -> None:
    val, fit, oods = sets
    config = replace(QUIET, fusion_members=("mahalanobis", "knn", "vim"), fusion_combination="min")
    result = fit_guard(SPEC, val, fit_set=fit, ood_sets=oods, config=config)
    fused = result.artifact.detectors["fused"]
    assert isinstance(fused, FusedParams) and fused.members == ("mahalanobis", "knn", "vim")
    assert fused.combination == "min"
    assert result.report["detectors"]["fused"]["ood"]["far"]["auroc"] > 0.99
    none = fit_guard(SPEC, val, fit_set=fit, config=replace(QUIET, fusion_members=()))
    assert "fused" not in none.artifact.detectors and not any("fused" in n for n in none.report["notes"])
    logits_only = fit_guard(
        replace(SPEC, features_output=None),
        replace(val, features=None),
        config=replace(QUIET, methods=("energy", "msp")),
    )
    assert "fused" not in logits_only.artifact.detectors
    assert any(
        "no fused detector: fewer than two of mahalanobis, energy" in n for n in logits_only.report["notes"]
    )
    with pytest.raises(FitError, match="unknown fusion member"):
        fit_guard(SPEC, val, config=replace(QUIET, fusion_members=("mahalanobis", "odin")))
    with pytest.raises(FitError, match="not among the fitted methods"):
        fit_guard(SPEC, val, config=replace(QUIET, methods=("energy", "msp"), fusion_members=("knn", "msp")))
    with pytest.raises(FitError, match="unknown fusion combination 'simes'"):
        fit_guard(SPEC, val, config=replace(QUIET, fusion_combination="simes"))


def test_detector_quality_of_a_saved_artifact_repeats_the_report(
    result: FitResult, sets: tuple, tmp_path: Path
) -> None:
    save_artifact(result.artifact, tmp_path)
    loaded = load_artifact(tmp_path)
    _, _, oods = sets
    assert result.evaluation is not None
    quality = detector_quality(loaded, result.evaluation, oods)
    assert set(quality) == set(result.report["detectors"])
    for method, entry in quality.items():
        reported = result.report["detectors"][method]
        assert entry["conformal"] == reported["conformal"], method
        for name, figures in entry["ood"].items():
            assert figures["auroc"] == reported["ood"][name]["auroc"]
            assert figures["fpr_at_95_tpr"] == reported["ood"][name]["fpr_at_95_tpr"]
    assert make_ood_scorer("fused", loaded).requires_features


def test_report_page_shows_the_conformal_table_auto_and_fusion(result: FitResult) -> None:
    page = render_html(result.report, "report.png")
    assert "In-distribution rejection rate at an error rate alpha" in page
    assert "<code>method: auto</code> uses" in page and "fit&#x27;s own OOD sets" in page
    assert "The fused detector combines mahalanobis, energy by fisher" in page


@pytest.mark.parametrize(("k", "n"), [(0, 50), (3, 50), (50, 50), (17, 400)])
def test_clopper_pearson_covers_its_rate_by_its_definition(k: int, n: int) -> None:
    lo, hi = clopper_pearson(k, n)
    # the exact interval: each end is where the binomial tail probability is 2.5 %
    if k > 0:
        assert stats.binom.sf(k - 1, n, lo) == pytest.approx(0.025, abs=1e-9)
    else:
        assert lo == 0.0
    if k < n:
        assert stats.binom.cdf(k, n, hi) == pytest.approx(0.025, abs=1e-9)
    else:
        assert hi == 1.0


def test_calibration_band_matches_simulated_rates() -> None:
    """The rate for one calibration set is Beta(l, n + 1 - l): simulate calibration sets of
    uniform scores (the rate is then 1 - the threshold) and compare quantiles."""
    rng = np.random.default_rng(8)
    n, alpha = 199, 0.05
    rates = np.array([1.0 - ConformalReference(rng.uniform(size=n)).threshold(alpha) for _ in range(4000)])
    lo, hi = calibration_band(alpha, n)
    assert np.quantile(rates, 0.05) == pytest.approx(lo, abs=0.004)
    assert np.quantile(rates, 0.95) == pytest.approx(hi, abs=0.006)
    assert calibration_band(0.001, 99) == (0.0, 0.0)


def test_rejection_figures_count_nan_as_rejected() -> None:
    figures = rejection_figures(np.arange(99.0), np.array([np.nan, 0.0, 98.5, 50.0]), (0.05,))
    f = figures["0.05"]
    assert f["threshold"] == 94.0 and f["measured"] == 0.5
    assert math.isclose(f["expected"], 0.05)
