"""The pure side of the rollback-time benchmark: the Flagger-style model and how a run's trace is read."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from rollback_model import (
    QUANTILES,
    Answer,
    FlaggerKnobs,
    first_rise,
    flagger_quantiles,
    rises,
    simulate_flagger,
    summary,
    traffic_on_good_version,
)

KNOBS = [
    FlaggerKnobs(5, 1, 5),
    FlaggerKnobs(30, 1, 30, crossing=0.5, scrape_s=1),
    FlaggerKnobs(5, 3, 60, crossing=0.25, scrape_s=2),
    FlaggerKnobs(10, 2, 10, crossing=1.0, scrape_s=0),
    FlaggerKnobs(5, 1, 5, crossing=0.0, scrape_s=0),
]


@pytest.mark.parametrize("knobs", KNOBS, ids=str)
def test_the_simulated_schedule_agrees_with_the_closed_form(knobs: FlaggerKnobs) -> None:
    simulated = simulate_flagger(knobs, runs=4000, seed=3)
    closed = flagger_quantiles(knobs)
    # The closed form takes the scrape's lag at its mean; the simulation draws it, which spreads
    # the ends by at most half a scrape interval.
    slack = knobs.scrape_s / 2 + 0.05 * knobs.interval_s
    for name, q in QUANTILES.items():
        assert float(np.quantile(simulated, q)) == pytest.approx(closed[name], abs=slack), name
    assert float(simulated.mean()) == pytest.approx(closed["median"], abs=0.05 * knobs.interval_s)


@pytest.mark.parametrize("knobs", KNOBS, ids=str)
def test_rollback_never_comes_before_the_failed_checks_could(knobs: FlaggerKnobs) -> None:
    simulated = simulate_flagger(knobs, runs=2000, seed=4)
    floor = knobs.crossing * knobs.window_s + (knobs.threshold - 1) * knobs.interval_s
    assert simulated.min() >= floor - 1e-9
    assert simulated.max() <= floor + knobs.interval_s + knobs.scrape_s + 1e-9


def test_each_failed_check_more_costs_one_interval() -> None:
    one, three = FlaggerKnobs(5, 1, 5), FlaggerKnobs(5, 3, 5)
    assert flagger_quantiles(three)["median"] - flagger_quantiles(one)["median"] == pytest.approx(10)


@pytest.mark.parametrize(
    "bad",
    [
        dict(interval_s=0, threshold=1, window_s=5),
        dict(interval_s=5, threshold=0, window_s=5),
        dict(interval_s=5, threshold=1, window_s=5, crossing=1.5),
    ],
)
def test_knobs_that_describe_no_schedule_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        FlaggerKnobs(**bad)


def answers(versions: str, drifted_from: int = 0) -> list[Answer]:
    """One answer per character ('1', '2', or '-' for no answer), a tenth of a second apart."""
    return [Answer(float(i) / 10, None if v == "-" else v, i >= drifted_from) for i, v in enumerate(versions)]


def test_a_canary_ends_when_its_share_of_traffic_does() -> None:
    trace = answers("1212121211111", drifted_from=2)
    assert traffic_on_good_version(trace, "2", onset=0.2) == pytest.approx(0.8)


def test_a_promoted_version_ends_at_the_first_answer_of_the_last_good_one() -> None:
    trace = answers("2222222-11111", drifted_from=3)  # a request with no answer is not the end
    assert traffic_on_good_version(trace, "2", onset=0.3) == pytest.approx(0.8)


def test_no_end_while_the_bad_version_still_answers_or_never_did_after_the_onset() -> None:
    assert traffic_on_good_version(answers("12121212"), "2", onset=0.0) is None
    assert traffic_on_good_version(answers("22111111"), "2", onset=0.5) is None
    assert traffic_on_good_version(answers("111"), "2", onset=0.0) is None
    assert traffic_on_good_version(answers("1122--"), "2", onset=0.0) is None


def test_first_rise_of_a_counter() -> None:
    samples = [(0.0, 3.0), (1.0, 3.0), (2.0, 3.0), (3.0, 4.0), (4.0, 5.0)]
    assert first_rise(samples, after=1.5) == 3.0
    assert first_rise(samples, after=3.5) == 4.0
    assert first_rise(samples, after=4.5) is None
    # sampling began after `after`: the first sample is the level, not a rise
    assert first_rise([(1.0, 7.0), (2.0, 7.0), (3.0, 8.0)], after=0.0) == 3.0
    assert first_rise([], after=0.0) is None


def test_every_rise_of_a_counter_is_found_once() -> None:
    samples = [(0.0, 1.0), (1.0, 2.0), (2.0, 2.0), (3.0, 4.0), (4.0, 4.0), (5.0, 5.0)]
    assert rises(samples, after=0.5) == [1.0, 3.0, 5.0]
    assert rises(samples, after=5.0) == []


def test_summary_of_a_sample_and_of_none() -> None:
    figures = summary([4.0, 1.0, 3.0, 2.0, 5.0])
    assert (figures["n"], figures["min"], figures["median"], figures["max"]) == (5, 1.0, 3.0, 5.0)
    assert figures["p90"] == pytest.approx(4.6)
    empty = summary([])
    assert empty["n"] == 0 and empty["median"] is None
