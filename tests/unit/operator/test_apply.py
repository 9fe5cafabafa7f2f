from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from guardedmodel_operator.apply import Action, is_subset, parse_quantity, plan_write


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("1", 1),
        (1, 1),
        ("1000m", 1),
        ("2Gi", 2 * 1024**3),
        ("1.5k", 1500),
        ("1e3", 1000),
        ("500m", Decimal("0.5")),
    ],
)
def test_quantities(raw: Any, value: Any) -> None:
    assert parse_quantity(raw) == Decimal(value)


@pytest.mark.parametrize("raw", ["abc", True, None, "1x", ""])
def test_non_quantities(raw: Any) -> None:
    assert parse_quantity(raw) is None


def test_subset_ignores_server_additions_but_not_changes() -> None:
    desired = {"spec": {"containers": [{"name": "a", "resources": {"limits": {"cpu": "1000m"}}}]}}
    live = {
        "spec": {
            "containers": [{"name": "a", "imagePullPolicy": "Always", "resources": {"limits": {"cpu": "1"}}}]
        }
    }
    assert is_subset(desired, live)
    live["spec"]["containers"][0]["resources"]["limits"]["cpu"] = "2"
    assert not is_subset(desired, live)
    # an extra list element (a container added by hand) is drift
    live["spec"]["containers"] = [desired["spec"]["containers"][0], {"name": "extra"}]
    assert not is_subset(desired, live)
    assert not is_subset({"a": True}, {"a": 1})


def manifest(hash_: str, image: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "m", "namespace": "ns", "annotations": {"guardedmodel.io/spec-hash": hash_}},
        "spec": {"image": image},
    }


def test_plan_write_actions() -> None:
    desired = manifest("h2", "x:2")
    live_same = manifest("h2", "x:2") | {"status": {"ready": 1}}
    live_same["metadata"] |= {"resourceVersion": "42", "managedFields": [{"manager": "kubectl"}]}
    assert plan_write(desired, live_same, reconciled_before=True) is None
    assert plan_write(desired, None, reconciled_before=False).action is Action.CREATE  # type: ignore[union-attr]
    assert plan_write(desired, None, reconciled_before=True).action is Action.RESTORE  # type: ignore[union-attr]
    hand_edited = manifest("h2", "x:hacked")
    assert plan_write(desired, hand_edited, reconciled_before=True).action is Action.RESTORE  # type: ignore[union-attr]
    old_spec = manifest("h1", "x:1")
    assert plan_write(desired, old_spec, reconciled_before=True).action is Action.UPDATE  # type: ignore[union-attr]
