from __future__ import annotations

from typing import Any

import pytest

from guardedmodel_operator.prometheus import PrometheusSettings, model_range
from guardedmodel_operator.rollout.cost import (
    COST_RATIO,
    cost_moved,
    cost_patch,
    cost_queries,
    cost_status,
    prices_of,
)

PRICES = {"currency": "EUR", "gpuHourPrice": 3.6, "reviewPrice": 0.5}


def _vector(values: dict[str, float]) -> list[dict[str, Any]]:
    return [{"metric": {"version": v}, "value": [0, str(x)]} for v, x in values.items()]


def _results(
    compute: dict[str, float], reviews: dict[str, float], predictions: dict[str, float]
) -> dict[str, Any]:
    return {
        "compute": _vector(compute),
        "reviews": _vector(reviews),
        "predictions": _vector(predictions),
    }


def test_prices_default_the_currency_and_absent_cost_means_none() -> None:
    assert prices_of({}) is None
    assert prices_of({"cost": {"gpuHourPrice": 2}}) == {
        "currency": "USD",
        "gpuHourPrice": 2.0,
        "reviewPrice": 0.0,
    }


def test_queries_pick_the_model_and_group_by_version() -> None:
    sel, window = model_range(PrometheusSettings("http://p"), "ml", "fashion", 59.2)
    promql = cost_queries(sel, window)
    assert promql["compute"] == (
        'sum by (version) (increase(guardedmodel_triton_compute_seconds_total{namespace="ml",'
        'guardedmodel_io_name="fashion"}[60s]))'
    )
    for figure, metric in (
        ("reviews", "guardedmodel_reviews_total"),
        ("predictions", "guardedmodel_samples_total"),
    ):
        assert promql[figure].startswith(f"sum by (version) (increase({metric}{{")


def test_cost_per_thousand_is_compute_at_the_hourly_price_plus_reviews_at_the_item_price() -> None:
    # version 1: 2 s of compute for 1000 predictions, 30 reviews; version 2 (canary): 0.5 s for 100, none
    status = cost_status(_results({"1": 2.0, "2": 0.5}, {"1": 30.0}, {"1": 1000.0, "2": 100.0}), PRICES, 60.0)
    assert status == {
        "currency": "EUR",
        "window": "60s",
        "versions": [
            {
                "version": "1",
                "gpuSecondsPerPrediction": 0.002,
                "reviewsPerThousand": 30.0,
                "costPerThousand": pytest.approx(2.0 / 3600 * 3.6 + 30 * 0.5, rel=1e-3),
            },
            {
                "version": "2",
                "gpuSecondsPerPrediction": 0.005,
                "reviewsPerThousand": 0.0,
                "costPerThousand": pytest.approx(1000 * 0.005 / 3600 * 3.6, rel=1e-3),
            },
        ],
    }


def test_a_version_without_predictions_has_no_figures_and_none_at_all_gives_none() -> None:
    shadow_only = _results({"1": 1.0, "3": 4.0}, {}, {"1": 10.0, "3": 0.0})
    versions = cost_status(shadow_only, PRICES, 60.0)["versions"]  # type: ignore[index]
    assert [v["version"] for v in versions] == ["1"]
    assert cost_status(_results({"1": 1.0}, {}, {}), PRICES, 60.0) is None


def _cost(per_prediction: float, reviews: float, versions: tuple[str, ...] = ("1",)) -> dict[str, Any]:
    predictions = {v: 1000.0 for v in versions}
    return cost_status(  # type: ignore[return-value]
        _results({v: per_prediction * 1000 for v in versions}, {v: reviews for v in versions}, predictions),
        PRICES,
        60.0,
    )


def test_noise_writes_nothing_and_a_material_move_or_a_new_version_does() -> None:
    stored = _cost(0.002, 30.0)
    assert not cost_moved(stored, _cost(0.002 * (COST_RATIO - 0.1), 30.0 * 1.2))
    assert cost_moved(stored, _cost(0.002 * COST_RATIO, 30.0))
    assert cost_moved(stored, _cost(0.002, 30.0 * COST_RATIO))
    assert cost_moved(stored, _cost(0.002, 30.0, versions=("1", "2")))
    # below the floors (here: under a microsecond per prediction, a ten-thousandth per thousand) a
    # change is noise
    assert not cost_moved(_cost(1e-7, 0.0), _cost(9e-7, 0.0))


def test_the_patch_writes_on_a_move_keeps_on_no_data_and_removes_without_prices() -> None:
    stored = _cost(0.002, 30.0)
    status = {"cost": stored, "phase": "Ready"}
    assert cost_patch({}, PRICES, stored) == {"cost": stored}
    assert cost_patch(status, PRICES, _cost(0.0021, 31.0)) is None  # steady: no write
    assert cost_patch(status, PRICES, None) is None  # no data: the stored figures stay
    assert cost_patch(status, None, None) == {"cost": None}
    assert cost_patch({"phase": "Ready"}, None, None) is None


def test_a_price_edit_is_written_at_the_next_check_even_when_figures_are_steady() -> None:
    stored = _cost(0.002, 30.0)
    cheaper = {**PRICES, "reviewPrice": 0.4}
    fresh = cost_status(_results({"1": 2.0}, {"1": 30.0}, {"1": 1000.0}), cheaper, 60.0)
    patch = cost_patch({"cost": stored}, cheaper, fresh)
    assert patch is not None and patch["cost"]["versions"][0]["costPerThousand"] == pytest.approx(
        2.0 / 3600 * 3.6 + 30 * 0.4, rel=1e-3
    )
    dollars = {**PRICES, "currency": "USD"}
    fresh = cost_status(_results({"1": 2.0}, {"1": 30.0}, {"1": 1000.0}), dollars, 60.0)
    assert cost_patch({"cost": stored}, dollars, fresh) == {"cost": fresh}


def test_a_version_without_compute_series_waits_instead_of_reading_zero() -> None:
    """Predictions counted before the sidecar's first read of Triton's counters: no figures yet for
    that version (a written zero would stand until a 1.5x move), the others are reported."""
    status = cost_status(_results({"1": 2.0}, {}, {"1": 1000.0, "2": 100.0}), PRICES, 60.0)
    assert status is not None and [v["version"] for v in status["versions"]] == ["1"]
    assert cost_status(_results({}, {"1": 3.0}, {"1": 1000.0}), PRICES, 60.0) is None
