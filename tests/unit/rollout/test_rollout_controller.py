"""The controller's pure step (verdict → patch, Events, next wake-up) and its scheduler."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guardedmodel_operator.kube import ApiError
from guardedmodel_operator.rollout.controller import RolloutController, StepResult, plan_step
from guardedmodel_operator.rollout.types import MetricSamples, RolloutSpec
from guardedmodel_operator.scheduler import ModelScheduler

T0 = dt.datetime(2025, 1, 1, 12, 0, 0, tzinfo=dt.UTC)


def body(version: str, status: dict[str, Any], generation: int = 2) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "ml", "name": "clf", "generation": generation},
        "spec": {"model": {"version": version}, "rollout": {"interval": "30s", "minRequests": 10}},
        "status": {
            "observedGeneration": generation,
            "conditions": [{"type": "Ready", "status": "True", "reason": "RolloutComplete"}],
            **status,
        },
    }


def step(model: dict[str, Any], samples: MetricSamples | None, now: dt.datetime) -> StepResult:
    return plan_step(RolloutSpec.from_body(model), model.get("status"), samples, now)


def test_a_version_edit_starts_a_canary_and_looks_again_at_once() -> None:
    result = step(body("2", {"stableVersion": "1"}), None, T0)
    assert result.patch is not None
    assert (result.patch["canaryVersion"], result.patch["canaryWeight"]) == ("2", 10)
    assert [(e.type, e.reason) for e in result.events] == [("Normal", "CanaryStarted")]
    assert result.next_in_s == 0.0


def test_rollback_writes_routing_and_posts_a_warning() -> None:
    status = {
        "stableVersion": "1",
        "canaryVersion": "2",
        "canaryWeight": 10,
        "rollout": {"phase": "Progressing", "since": "2025-01-01T11:59:00Z"},
    }
    samples = MetricSamples("2", 30, requests=50, ood_rate=0.6, error_rate=0.0)
    result = step(body("2", status), samples, T0)
    assert result.patch is not None and result.patch["canaryVersion"] is None
    assert result.patch["rollout"]["phase"] == "RolledBack"
    assert result.events[0].type == "Warning" and result.events[0].reason == "RolledBack"
    assert "oodRate 0.600 > maxOodRate 0.25" in result.events[0].message


def test_held_event_only_when_the_reason_changes() -> None:
    status = {"stableVersion": "1", "rollout": {"phase": "Ready"}}
    first = step(body("1", status), MetricSamples("1", 30, requests=2), T0)
    assert [e.reason for e in first.events] == ["Held"] and "2 of 10 requests" in first.events[0].message
    assert first.patch is not None
    again = step(body("1", {**status, **first.patch}), MetricSamples("1", 30, requests=3), T0)
    assert again.events == [] and again.patch is None
    assert again.next_in_s == 30  # no data: look again after one interval


def test_waiting_for_the_deployment_sleeps_until_an_event() -> None:
    waiting = body("2", {"stableVersion": "1"})
    waiting["status"]["conditions"][0]["reason"] = "ServingPreviousRevision"
    result = step(waiting, None, T0)
    assert result.next_in_s is None and result.verdict.reason == "WaitingForDeployment"


async def test_scheduler_runs_each_model_and_wakes_on_touch() -> None:
    runs: list[tuple[str, str]] = []
    woken = asyncio.Event()

    async def run(key: tuple[str, str]) -> float | None:
        runs.append(key)
        if len(runs) >= 2:
            woken.set()
        return None  # sleep until touched

    scheduler = ModelScheduler(run)
    scheduler.touch(("ml", "a"))
    await asyncio.sleep(0.05)
    assert runs == [("ml", "a")]
    scheduler.touch(("ml", "a"))
    await asyncio.wait_for(woken.wait(), timeout=2)
    assert runs == [("ml", "a"), ("ml", "a")]
    scheduler.forget(("ml", "a"))
    assert not scheduler.tasks
    await scheduler.close()


async def test_scheduler_survives_a_failing_step() -> None:
    calls = 0
    done = asyncio.Event()

    async def run(key: tuple[str, str]) -> float | None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("Prometheus went away")
        done.set()
        return None

    scheduler = ModelScheduler(run, retry_after_s=0.01)
    scheduler.touch(("ml", "b"))
    await asyncio.wait_for(done.wait(), timeout=2)
    assert calls == 2
    await scheduler.close()


class StatusWrites:
    """A patch_status that records what it was asked and answers as the API server would: 409 when
    the object changed since the version the write names."""

    def __init__(self, current_version: str) -> None:
        self.current_version = current_version
        self.calls: list[tuple[dict[str, Any], str | None]] = []

    async def __call__(
        self, namespace: str, name: str, patch: Mapping[str, Any], *, resource_version: str | None = None
    ) -> dict[str, Any]:
        self.calls.append((dict(patch), resource_version))
        if resource_version != self.current_version:
            raise ApiError(409, "PATCH", f"/{namespace}/{name}/status", '{"message": "object modified"}')
        return {"metadata": {"resourceVersion": str(int(resource_version) + 1)}, "status": dict(patch)}


@pytest.mark.parametrize(("seen", "current"), [("7", "7"), ("7", "9")])
async def test_a_decision_is_written_only_onto_the_copy_it_was_taken_on(seen: str, current: str) -> None:
    """A version edit starts a canary; when the object changed since the operator's copy (a watch that
    was down or behind), the API server refuses the write and nothing of the decision goes out."""
    model = body("2", {"stableVersion": "1"})
    model["metadata"]["resourceVersion"] = seen
    writes, events = StatusWrites(current), []
    controller = RolloutController(None, writes, lambda _body, event: events.append(event), now=lambda: T0)
    controller.last_checks[("ml", "clf")] = T0 - dt.timedelta(seconds=5)
    result, written = await controller.step(model)
    assert writes.calls == [(writes.calls[0][0], seen)]
    assert writes.calls[0][0]["canaryVersion"] == "2"
    if seen == current:
        assert written is not None and result.patch is not None
        assert [e.reason for e in events] == ["CanaryStarted"]
    else:
        assert written is None and result.patch is None and events == []
        assert result.next_in_s == 30.0  # the watch brings the newer copy sooner; this is the backstop
        assert ("ml", "clf") not in controller.last_checks  # the next step decides afresh


# -- status.metrics: rewritten when a figure moves past noise or the status is written anyway --

STABLE = {
    "stableVersion": "1",
    "rollout": {"phase": "Ready", "reason": "ChecksPassed", "since": "2025-01-01T11:00:00Z"},
}
FIGURES = ("ood_rate", "review_rate", "estimated_accuracy", "drift_score")


def stable_samples(version: str = "1", requests: float = 1200.0, **figures: float) -> MetricSamples:
    base = {"ood_rate": 0.02, "review_rate": 0.05, "estimated_accuracy": 0.9, "drift_score": 0.05}
    return MetricSamples(version, 30, requests=requests, error_rate=0.0, **{**base, **figures})


def checked_once(samples: MetricSamples) -> dict[str, Any]:
    """The status after one passing check of the stable version."""
    first = step(body("1", STABLE), samples, T0)
    assert first.patch is not None and first.patch["metrics"]["version"] == "1"
    return {**STABLE, **first.patch}


@given(
    figure=st.sampled_from(FIGURES),
    noise=st.floats(-0.04, 0.04),
    rate=st.floats(0.7, 1.4),
)
def test_a_steady_model_whose_figures_only_wobble_writes_nothing(
    figure: str, noise: float, rate: float
) -> None:
    status = checked_once(stable_samples())
    wobbled = stable_samples(requests=1200.0 * rate, **{figure: getattr(stable_samples(), figure) + noise})
    later = step(body("1", status), wobbled, T0 + dt.timedelta(minutes=5))
    assert later.verdict.reason == "ChecksPassed" and later.patch is None


@given(figure=st.sampled_from(FIGURES), move=st.sampled_from([-0.06, 0.06, 0.1]))
def test_a_figure_that_moves_past_the_noise_is_written(figure: str, move: float) -> None:
    status = checked_once(stable_samples())
    value = getattr(stable_samples(), figure) + move
    moved = stable_samples(**{figure: value})
    later = step(body("1", status), moved, T0 + dt.timedelta(minutes=5))
    assert later.patch is not None and later.patch["metrics"]["version"] == "1"
    written = {k: later.patch["metrics"][k] for k in later.patch["metrics"] if k != "version"}
    assert round(value, 2) in written.values()


@pytest.mark.parametrize(("rate", "written"), [(1.5, 60.0), (0.66, 26.4)])
def test_the_request_rate_is_written_when_it_grows_or_falls_by_half(rate: float, written: float) -> None:
    status = checked_once(stable_samples())
    later = step(body("1", status), stable_samples(requests=1200.0 * rate), T0 + dt.timedelta(minutes=5))
    assert later.patch is not None and later.patch["metrics"]["requestsPerSecond"] == written


def test_a_write_for_another_reason_carries_the_fresh_figures() -> None:
    # A canary's step moves routing: the status is written, so its figures are the check's own,
    # however little they moved.
    canary = {
        "stableVersion": "1",
        "canaryVersion": "2",
        "canaryWeight": 10,
        "metrics": {
            "version": "2",
            "oodRate": 0.02,
            "reviewRate": 0.05,
            "estimatedAccuracy": 0.9,
            "driftScore": 0.05,
            "requestsPerSecond": 40.0,
        },
        "rollout": {"phase": "Progressing", "since": "2025-01-01T11:00:00Z"},
    }
    result = step(body("2", canary), stable_samples("2", estimated_accuracy=0.91), T0)
    assert result.patch is not None and result.patch["canaryWeight"] == 50
    assert result.patch["metrics"]["estimatedAccuracy"] == 0.91
