"""The controller's pure step (verdict → patch, Events, next wake-up) and its scheduler."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Mapping
from typing import Any

import pytest

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
