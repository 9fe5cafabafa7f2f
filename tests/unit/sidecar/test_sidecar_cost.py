from __future__ import annotations

import math

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from guardedmodel_sidecar.config_values import ConfigError
from guardedmodel_sidecar.cost import COMPUTE, REVIEW, CostLedger, Prices, parse_cost
from guardedmodel_sidecar.metrics import SidecarMetrics
from guardedmodel_sidecar.metrics_aggregate import Aggregator


def test_no_cost_section_means_no_prices_and_defaults_fill_a_partial_one() -> None:
    assert parse_cost(None) is None
    assert parse_cost({}) == Prices("USD", 0.0, 0.0)
    assert parse_cost({"currency": "EUR", "gpuHourPrice": 2, "reviewPrice": 0.08}) == Prices("EUR", 2.0, 0.08)


@pytest.mark.parametrize(
    ("value", "names"),
    [
        ({"gpuHourPrice": -1}, "spec.cost.gpuHourPrice"),
        ({"reviewPrice": "cheap"}, "spec.cost.reviewPrice"),
        ({"reviewPrice": True}, "spec.cost.reviewPrice"),
        ({"gpuHourPrice": math.inf}, "spec.cost.gpuHourPrice"),
        ({"gpuHourPrice": math.nan}, "spec.cost.gpuHourPrice"),
        ({"currency": ""}, "spec.cost.currency"),
        ({"currency": 3}, "spec.cost.currency"),
        ([1, 2], "spec.cost"),
    ],
)
def test_a_price_that_is_not_a_non_negative_number_is_refused_naming_the_field(
    value: object, names: str
) -> None:
    with pytest.raises(ConfigError, match=names.replace(".", r"\.")):
        parse_cost(value)


def test_compute_is_charged_per_hour_of_triton_compute_time_and_reviews_per_item() -> None:
    ledger = CostLedger(Prices("USD", gpu_hour=3.6, review=0.5))
    ledger.observe_compute({"1": 100.0, "2": 10.0})  # first read: Triton's work since it started
    ledger.observe_compute({"1": 160.0, "2": 10.0})
    for _ in range(3):
        ledger.count_review("2")
    assert ledger.money == {
        ("1", COMPUTE): pytest.approx(160.0 / 3600 * 3.6),
        ("1", REVIEW): 0.0,
        ("2", COMPUTE): pytest.approx(10.0 / 3600 * 3.6),
        ("2", REVIEW): pytest.approx(1.5),
    }
    assert ledger.reviews == {"2": 3}


def test_a_new_price_applies_to_work_after_it_and_a_triton_restart_never_lowers_the_cost() -> None:
    ledger = CostLedger(Prices(gpu_hour=1.0))
    ledger.observe_compute({"1": 3600.0})  # 1 hour at 1.0
    ledger.set_prices(Prices(gpu_hour=10.0))
    ledger.observe_compute({"1": 7200.0})  # +1 hour at 10.0
    ledger.observe_compute({"1": 360.0})  # Triton restarted: 0.1 hour since, at 10.0
    assert ledger.money[("1", COMPUTE)] == pytest.approx(1.0 + 10.0 + 1.0)


def test_without_prices_nothing_is_charged_but_reviews_are_counted_and_work_seen_is_not_charged_later() -> (
    None
):
    ledger = CostLedger()
    ledger.observe_compute({"1": 3600.0})
    ledger.count_review("1")
    assert ledger.money == {}
    assert ledger.reviews == {"1": 1}
    ledger.set_prices(Prices(gpu_hour=2.0))
    ledger.observe_compute({"1": 5400.0})  # only the half hour after the price was set
    assert ledger.money[("1", COMPUTE)] == pytest.approx(1.0)


def _samples(metrics: SidecarMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_the_cost_families_appear_only_with_prices() -> None:
    metrics = SidecarMetrics("m")
    metrics.triton_compute = {"1": (7.2, 3.0)}
    metrics.cost.observe_compute({"1": 7.2})
    metrics.cost.count_review("1")
    got = _samples(metrics)
    assert got[("guardedmodel_triton_compute_seconds_total", (("model", "m"), ("version", "1")))] == 7.2
    assert got[("guardedmodel_triton_executions_total", (("model", "m"), ("version", "1")))] == 3.0
    assert got[("guardedmodel_reviews_total", (("model", "m"), ("version", "1")))] == 1.0
    assert not [key for key in got if key[0].startswith("guardedmodel_cost")]

    metrics.cost.set_prices(Prices("USD", gpu_hour=2.0, review=0.1))
    metrics.cost.observe_compute({"1": 9.0})
    metrics.cost.count_review("1")
    got = _samples(metrics)
    assert got[("guardedmodel_cost_price", (("model", "m"), ("source", "gpu_hour")))] == 2.0
    assert got[("guardedmodel_cost_price", (("model", "m"), ("source", "review")))] == 0.1
    compute = ("guardedmodel_cost_total", (("model", "m"), ("source", "compute"), ("version", "1")))
    review = ("guardedmodel_cost_total", (("model", "m"), ("source", "review"), ("version", "1")))
    assert got[compute] == pytest.approx(1.8 / 3600 * 2.0)
    assert got[review] == pytest.approx(0.1)


def test_a_restarted_worker_keeps_its_review_cost_and_the_compute_cost_is_not_doubled() -> None:
    prices = Prices(gpu_hour=3600.0, review=1.0)  # 1 per compute second, 1 per review

    def worker(compute: float, reviews: int) -> str:
        metrics = SidecarMetrics("m")
        metrics.cost.set_prices(prices)
        metrics.cost.observe_compute({"1": compute})
        for _ in range(reviews):
            metrics.cost.count_review("1")
        return generate_latest(metrics.registry).decode()

    pod = Aggregator(2)
    first = [pod.started(0), pod.started(1)]
    pod.observe(0, first[0], worker(10.0, 2))
    pod.observe(1, first[1], worker(10.0, 3))
    pod.exited(0)
    pod.observe(0, pod.started(0), worker(12.0, 1))  # the successor reads Triton's counter again
    money = {
        s.labels["source"]: s.value
        for f in text_string_to_metric_families(pod.render().decode())
        for s in f.samples
        if s.name == "guardedmodel_cost_total"
    }
    assert money == {"compute": 12.0, "review": 6.0}
