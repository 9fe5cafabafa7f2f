"""How the rollout's phase folds into the Deployment's phase and conditions."""

from __future__ import annotations

from guardedmodel_operator.rollout.phase import overlay

OK = ("False", "AsExpected", "")
DONE = ("False", "RolloutComplete", "version 2 rolled out")


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
