"""How the rollout's phase folds into the Deployment's phase and conditions."""

from __future__ import annotations

from guardedmodel_operator.readiness import DeploymentState, next_status
from guardedmodel_operator.rollout.phase import overlay

OK = ("False", "AsExpected", "")
DONE = ("False", "RolloutComplete", "the pods of this spec are rolled out")


def test_infrastructure_comes_first() -> None:
    status = {"rollout": {"phase": "RolledBack"}}
    stuck = ("True", "ProgressDeadlineExceeded", "no progress")
    assert overlay("Degraded", DONE, stuck, status) == ("Degraded", DONE, stuck)
    assert overlay("Progressing", DONE, OK, status)[0] == "Progressing"


def test_ready_deployment_takes_the_rollout_phase() -> None:
    canary = {
        "canaryVersion": "2",
        "canaryWeight": 10,
        "rollout": {"phase": "Progressing", "message": "checks pass"},
    }
    assert overlay("Ready", DONE, OK, canary) == (
        "Progressing",
        ("True", "Canary", "canary 2 at 10%: checks pass"),
        OK,
    )

    rolled = {
        "rollout": {"phase": "RolledBack", "reason": "ChecksPassed", "message": "stable version 1 passes"},
        "history": [{"version": "2", "outcome": "RolledBack", "reason": "oodRate 0.5 > maxOodRate 0.25"}],
    }
    phase, progressing, degraded = overlay("Ready", DONE, OK, rolled)
    assert (phase, progressing) == ("RolledBack", DONE)
    assert degraded == ("True", "RolledBack", "oodRate 0.5 > maxOodRate 0.25")

    sick = {
        "rollout": {"phase": "Degraded", "reason": "Degraded", "message": "stable version 1 is unhealthy"}
    }
    assert overlay("Ready", DONE, OK, sick)[2] == ("True", "Degraded", "stable version 1 is unhealthy")


def test_ready_rollout_or_none_changes_nothing() -> None:
    assert overlay("Ready", DONE, OK, {"rollout": {"phase": "Ready"}}) == ("Ready", DONE, OK)
    assert overlay("Ready", DONE, OK, {}) == ("Ready", DONE, OK)


def test_the_core_status_keeps_a_rollback_and_the_routing() -> None:
    rolled_out = DeploymentState(
        exists=True,
        pod_hash="h",
        generation=3,
        observed_generation=3,
        desired=1,
        replicas=1,
        updated=1,
        ready=1,
        available=1,
    )
    current = {
        "stableVersion": "1",
        "lastGoodVersion": "1",
        "canaryWeight": 0,
        "rollout": {
            "phase": "RolledBack",
            "reason": "RolledBack",
            "message": "oodRate 0.5 > maxOodRate 0.25",
        },
        "history": [
            {"version": "2", "outcome": "RolledBack", "at": "t", "reason": "oodRate 0.5 > maxOodRate 0.25"}
        ],
    }
    status = next_status(current, rolled_out, generation=3, pod_hash="h", spec_version="2", now="t2")
    assert status["phase"] == "RolledBack"
    assert status["stableVersion"] == "1"  # the core does not promote version 2 behind the rollout's back
    assert status["history"] == current["history"]
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "RolledBack")
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"  # still serving, version 1
