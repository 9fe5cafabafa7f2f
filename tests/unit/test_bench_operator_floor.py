"""The pure side of the operator's scale floor: when a Deployment counts as rolled out."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from operator_floor import rolled_out

# generation, observedGeneration, spec.replicas, replicas, updated, ready, available
DONE = ["1", "1", "1", "1", "1", "1", "1"]


def test_a_deployment_whose_pods_are_all_updated_ready_and_available_is_rolled_out() -> None:
    assert rolled_out(DONE)
    assert rolled_out(["2", "2", "3", "3", "3", "3", "3"])


@pytest.mark.parametrize(
    ("column", "value"),
    [
        (1, "0"),  # its controller has not seen this generation yet
        (3, "2"),  # an old pod is still there beside the new one
        (4, "0"),  # not updated
        (5, "0"),  # not ready
        (6, "0"),  # not available
        (1, ""),  # a status not written yet reads as 0
    ],
)
def test_any_step_short_of_the_end_is_not_rolled_out(column: int, value: str) -> None:
    columns = list(DONE)
    columns[column] = value
    assert not rolled_out(columns)


def test_a_deployment_with_no_status_yet_is_not_rolled_out() -> None:
    assert not rolled_out(["1", "", "1"])
