from __future__ import annotations

from typing import Any

import pytest

from guardedmodel_operator.readiness import DeploymentState, judge, next_status
from guardedmodel_operator.reconcile import desired_status
from guardedmodel_operator.status import ROLLOUT_FIELDS, invalid_spec_status, merge_conditions, merge_patch

HASH = "abc"


def deployment(
    *, ready: int, updated: int, replicas: int, desired: int = 1, hash_: str = HASH, **status: Any
) -> dict:
    return {
        "metadata": {"generation": 2},
        "spec": {
            "replicas": desired,
            "template": {"metadata": {"annotations": {"guardedmodel.io/pod-hash": hash_}}},
        },
        "status": {
            "observedGeneration": 2,
            "replicas": replicas,
            "updatedReplicas": updated,
            "readyReplicas": ready,
            "availableReplicas": ready,
            **status,
        },
    }


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def step(
    current: dict[str, Any] | None,
    dep: dict | None,
    *,
    version: str = "1",
    now: str = "T1",
    generation: int = 5,
) -> dict[str, Any]:
    return desired_status(
        current or {},
        DeploymentState.observe(dep),
        generation=generation,
        pod_hash=HASH,
        spec_version=version,
        now=now,
    )


def test_no_deployment_is_pending_and_not_ready() -> None:
    status = step(None, None)
    assert status["phase"] == "Pending"
    assert conditions(status)["Ready"] == ("False", "DeploymentMissing")
    assert "stableVersion" not in status


def test_not_ready_before_the_pods_are() -> None:
    status = step(None, deployment(ready=0, updated=1, replicas=1))
    assert status["phase"] == "Pending"
    assert conditions(status)["Ready"][0] == "False"
    assert conditions(status)["Progressing"] == ("True", "RollingOut")


def test_rolled_out_is_ready_and_promotes_the_version() -> None:
    status = step(None, deployment(ready=1, updated=1, replicas=1))
    assert status["phase"] == "Ready"
    assert conditions(status) == {
        "Ready": ("True", "RolloutComplete"),
        "Progressing": ("False", "RolloutComplete"),
        "Degraded": ("False", "AsExpected"),
    }
    assert status["stableVersion"] == "1"
    assert status["observedGeneration"] == 5
    assert [h["version"] for h in status["history"]] == ["1"]
    assert "lastGoodVersion" not in status


def test_stale_deployment_template_is_not_ready_yet() -> None:
    # The Deployment is healthy but built from an older spec: not "Ready" for this one.
    status = step(
        {"stableVersion": "1"}, deployment(ready=1, updated=1, replicas=1, hash_="old"), version="2"
    )
    assert status["phase"] == "Progressing"
    assert conditions(status)["Ready"] == ("True", "ServingPreviousRevision")
    assert status["stableVersion"] == "1"


def test_a_new_version_rolled_out_is_left_to_the_rollout_controller() -> None:
    rolling = step({"stableVersion": "1"}, deployment(ready=1, updated=1, replicas=2), version="2")
    assert rolling["phase"] == "Progressing" and rolling["stableVersion"] == "1"
    done = step(rolling, deployment(ready=1, updated=1, replicas=1), version="2", now="T2")
    assert done["phase"] == "Ready"
    assert done["stableVersion"] == "1" and "lastGoodVersion" not in done


def test_deadline_exceeded_is_degraded_while_old_pods_serve_and_failed_without() -> None:
    stuck = {"conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]}
    serving = step({"stableVersion": "1"}, deployment(ready=1, updated=1, replicas=2, **stuck), version="2")
    assert serving["phase"] == "Degraded"
    assert conditions(serving)["Degraded"] == ("True", "ProgressDeadlineExceeded")
    dead = step(None, deployment(ready=0, updated=1, replicas=1, **stuck))
    assert dead["phase"] == "Failed"


def test_lost_pods_after_rollout_is_degraded() -> None:
    ready = step(None, deployment(ready=2, updated=2, replicas=2, desired=2))
    lost = step(ready, deployment(ready=1, updated=2, replicas=2, desired=2), now="T2")
    assert lost["phase"] == "Degraded"
    assert conditions(lost)["Degraded"] == ("True", "ReplicasUnavailable")
    assert conditions(lost)["Ready"][0] == "True"


def test_transition_time_moves_only_when_a_condition_flips_and_steady_state_writes_nothing() -> None:
    first = step(None, deployment(ready=1, updated=1, replicas=1), now="T1")
    again = step(first, deployment(ready=1, updated=1, replicas=1), now="T2")
    assert again == first
    assert merge_patch(first, again) is None
    lost = step(first, deployment(ready=0, updated=1, replicas=1), now="T3")
    times = {c["type"]: c["lastTransitionTime"] for c in lost["conditions"]}
    assert times == {"Ready": "T3", "Progressing": "T1", "Degraded": "T3"}


def test_status_keeps_fields_owned_elsewhere() -> None:
    status = step({"metrics": {"oodRate": 0.1}}, deployment(ready=1, updated=1, replicas=1))
    assert status["metrics"] == {"oodRate": 0.1}


def test_status_patch_deletes_with_null() -> None:
    assert merge_patch({"a": 1, "b": 2}, {"a": 1}) == {"b": None}
    assert merge_patch({"a": 1}, {"a": 2, "c": 3}) == {"a": 2, "c": 3}


def test_judge_without_deployment_is_pending_and_not_ready() -> None:
    verdict = judge(DeploymentState(exists=False), pod_hash=HASH, spec_version="1", stable_version=None)
    assert verdict.phase == "Pending" and verdict.ready[0] == "False"


def test_a_version_edit_alone_finds_the_pods_rolled_out() -> None:
    """The pod hash leaves the model version out: editing it leaves the same pods Ready, so the
    rollout controller can route to the new version in them at once."""
    ready = deployment(ready=1, updated=1, replicas=1)
    first = step({}, ready, generation=1)
    edited = step(first, ready, version="2", now="T2", generation=2)
    assert edited["phase"] == "Ready" and edited["observedGeneration"] == 2
    assert conditions(edited)["Ready"] == ("True", "RolloutComplete")
    assert edited["stableVersion"] == "1"  # routing to version 2 is the rollout controller's


def test_later_versions_can_be_left_to_a_rollout_policy() -> None:
    ready = deployment(ready=1, updated=1, replicas=1)
    first = step({}, ready, generation=1)
    assert first["stableVersion"] == "1"  # the first version is always promoted
    second = step(first, ready, version="2", now="T2", generation=2)
    assert second["stableVersion"] == "1" and second["phase"] == "Ready"


def test_the_core_writes_no_rollout_field() -> None:
    ready = DeploymentState.observe(deployment(ready=1, updated=1, replicas=1))
    status = next_status({}, ready, generation=1, pod_hash=HASH, spec_version="1", now="T1")
    assert not set(status) & set(ROLLOUT_FIELDS)


IDLE = {"type": "Idle", "status": "True", "reason": "NoTraffic", "message": "m", "lastTransitionTime": "T0"}


def test_the_core_keeps_conditions_it_does_not_own_and_writes_nothing_for_them() -> None:
    ready = deployment(ready=1, updated=1, replicas=1)
    first = step(None, ready, now="T1")
    with_idle = {**first, "conditions": [*first["conditions"], IDLE]}
    again = step(with_idle, ready, now="T2")
    assert merge_patch(with_idle, again) is None  # steady state: no write, Idle untouched
    lost = step(with_idle, deployment(ready=0, updated=1, replicas=1), now="T3")
    assert [c["type"] for c in lost["conditions"]] == ["Ready", "Progressing", "Degraded", "Idle"]
    assert conditions(lost)["Ready"] == ("False", "NoReadyReplicas")
    assert lost["conditions"][-1] == IDLE


def test_the_core_adds_its_conditions_next_to_ones_written_before_it() -> None:
    status = step({"conditions": [IDLE]}, deployment(ready=1, updated=1, replicas=1))
    assert [c["type"] for c in status["conditions"]] == ["Idle", "Ready", "Progressing", "Degraded"]
    assert status["conditions"][0] == IDLE


def test_an_invalid_spec_keeps_other_writers_conditions() -> None:
    first = step(None, deployment(ready=1, updated=1, replicas=1), now="T1")
    before = {**first, "conditions": [*first["conditions"], IDLE]}
    failed = invalid_spec_status(before, 6, "spec.model.version must be a positive integer", "T2")
    assert [c["type"] for c in failed["conditions"]] == ["Ready", "Degraded", "Idle"]
    assert failed["conditions"][-1] == IDLE and failed["phase"] == "Failed"


@pytest.mark.parametrize(
    ("current", "owned", "drop", "types"),
    [
        ([], ["A"], (), ["A"]),
        (["A", "B"], ["B"], (), ["A", "B"]),  # replaced where it stands
        (["A", "B"], ["C"], (), ["A", "B", "C"]),  # new ones at the end
        (["A", "B", "C"], ["A"], ["B"], ["A", "C"]),  # dropped
        (["A"], ["A"], ["A"], ["A"]),  # a condition being written is never dropped
        (["A"], [], ["Z"], ["A"]),  # dropping an absent one changes nothing
    ],
)
def test_merge_conditions_replaces_adds_and_drops_only_what_it_is_told(
    current: list[str], owned: list[str], drop: list[str], types: list[str]
) -> None:
    merged = merge_conditions(
        [{"type": t, "status": "False"} for t in current],
        [{"type": t, "status": "True"} for t in owned],
        drop,
    )
    assert [c["type"] for c in merged] == types
    assert all(c["status"] == ("True" if c["type"] in owned else "False") for c in merged)
