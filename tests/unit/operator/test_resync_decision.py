"""The resync's pure decision: which listed models to reconcile, and why."""

from __future__ import annotations

from typing import Any

import pytest

from guardedmodel_operator.config import ConfigError, OperatorConfig
from guardedmodel_operator.resync import (
    NOT_CONVERGED,
    ROLLING_OUT,
    WATCH_BEHIND,
    models_behind,
    rolling_out_with_fetch,
    unreconciled_generation,
)


def model(name: str, generation: int, observed: int | None, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": "ml", "name": name, "generation": generation}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-02T00:00:00Z"
    status = {} if observed is None else {"observedGeneration": observed}
    return {"metadata": meta, "status": status}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (model("a", 3, 3), None),  # reconciled
        (model("a", 3, 4), None),  # status ahead (a newer reconcile raced the listing)
        (model("a", 3, 2), 3),  # an edit not reconciled
        (model("a", 1, None), 1),  # never reconciled
        (model("a", 3, 2, deleting=True), None),  # the garbage collector's
        ({"metadata": {"namespace": "ml", "name": "a"}}, 0),  # no generation, no status: behind
    ],
)
def test_unreconciled_generation(body: dict[str, Any], expected: int | None) -> None:
    assert unreconciled_generation(body) == expected


def test_a_model_behind_at_one_listing_only_is_left_to_the_reconcile_under_way() -> None:
    act, behind = models_behind([model("a", 2, 1)], {("ml", "a"): 2}, {})
    assert act == [] and behind == {("ml", "a"): 2}


def test_a_model_behind_at_two_listings_with_the_same_generation_is_reconciled() -> None:
    listed = [model("a", 2, 1), model("b", 5, 4)]
    act, behind = models_behind(listed, {("ml", "a"): 2, ("ml", "b"): 4}, {("ml", "a"): 2, ("ml", "b"): 5})
    assert [(b.key, b.generation, b.reason) for b in act] == [
        (("ml", "a"), 2, NOT_CONVERGED),  # the watch delivered it; its reconciles failed
        (("ml", "b"), 5, WATCH_BEHIND),  # the watch never delivered generation 5
    ]
    assert act[0].body is listed[0]
    assert behind == {("ml", "a"): 2, ("ml", "b"): 5}


def test_a_model_missing_from_the_index_is_behind_the_watch() -> None:
    act, _ = models_behind([model("a", 2, 1)], {}, {("ml", "a"): 2})
    assert [b.reason for b in act] == [WATCH_BEHIND]


def test_a_newer_edit_between_listings_waits_one_more_interval() -> None:
    act, behind = models_behind([model("a", 3, 1)], {("ml", "a"): 3}, {("ml", "a"): 2})
    assert act == [] and behind == {("ml", "a"): 3}


def test_reconciled_models_leave_the_list_and_cost_nothing() -> None:
    act, behind = models_behind([model("a", 2, 2), model("b", 1, 1)], {}, {("ml", "a"): 2})
    assert act == [] and behind == {}


def test_the_interval_is_validated() -> None:
    assert OperatorConfig().resync_interval_s > 0  # on by default
    assert OperatorConfig(resync_interval_s=0).resync_interval_s == 0  # off
    with pytest.raises(ConfigError, match="resync interval"):
        OperatorConfig(resync_interval_s=-1)


def rolling(repository: str, ready_reason: str | None, *, deleting: bool = False) -> dict[str, Any]:
    body = model("r", 2, 2, deleting=deleting)
    body["spec"] = {"model": {"repository": repository}}
    if ready_reason is not None:
        body["status"]["conditions"] = [{"type": "Ready", "status": "False", "reason": ready_reason}]
    return body


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (rolling("s3://models/prod", "NoReadyReplicas"), True),  # the init container may be failing
        (rolling("gs://models/prod", "ServingPreviousRevision"), True),
        (rolling("https://models.example/prod", "DeploymentMissing"), True),
        (rolling("s3://models/prod", "RolloutComplete"), False),  # past its fetch
        (rolling("pvc://models/prod", "NoReadyReplicas"), False),  # no init container
        (rolling("file:///models", "NoReadyReplicas"), False),
        (rolling("s3://models/prod", None), False),  # never reconciled: the generation rule's
        (rolling("s3://models/prod", "NoReadyReplicas", deleting=True), False),
    ],
)
def test_models_rolling_out_with_a_fetch_are_looked_at_every_listing(
    body: dict[str, Any], expected: bool
) -> None:
    assert rolling_out_with_fetch(body) is expected
    act, behind = models_behind([body], {("ml", "r"): 2}, {})
    assert [b.reason for b in act] == ([ROLLING_OUT] if expected else [])
    assert behind == {}  # not behind: nothing for the next listing to compare


def test_a_rolling_out_model_behind_is_reconciled_once_for_its_generation() -> None:
    body = rolling("s3://models/prod", "NoReadyReplicas")
    body["metadata"]["generation"] = 3
    act, _ = models_behind([body], {("ml", "r"): 3}, {("ml", "r"): 3})
    assert [b.reason for b in act] == [NOT_CONVERGED]
