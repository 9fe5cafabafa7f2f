"""The history ledger of the operator-kill scenario finds every kind of damage to status.history
(it runs on data: no cluster needed)."""

from __future__ import annotations

from typing import Any

import pytest
from kill_campaign import HistoryLedger


def entry(n: int) -> dict[str, Any]:
    return {"version": str(n), "outcome": "Promoted", "at": f"2026-01-01T00:00:{n:02d}Z", "reason": f"r{n}"}


def ledger_after(*histories: list[int], limit: int = 5) -> HistoryLedger:
    ledger = HistoryLedger(limit=limit)
    for i, history in enumerate(histories):
        ledger.observe([entry(n) for n in history], f"v{i}")
    return ledger


def test_appends_and_trimming_of_the_oldest_are_what_a_history_does() -> None:
    ledger = ledger_after([], [1], [1, 2, 3], [1, 2, 3], [1, 2, 3, 4, 5], [2, 3, 4, 5, 6], [4, 5, 6, 7, 8])
    assert not ledger.problems
    assert ledger.outcomes_since(6) == [("7", "Promoted"), ("8", "Promoted")]


@pytest.mark.parametrize(
    ("histories", "damage"),
    [
        ([[1, 2], [1]], "entries where"),  # the newest entry lost
        ([[1, 2, 3], [1, 3]], "not the newest"),  # one in the middle lost
        ([[1, 2], [2]], "entries where"),  # the oldest dropped before the limit
        ([[1], [1, 1]], "twice"),  # an entry duplicated
        ([[1, 2], [2, 1]], "not the newest"),  # reordered
        ([[1], [2, 1]], "before an older one"),  # a new entry put first
        (
            [[1, 2, 3, 4, 5], [2, 3, 4, 5, 6], [1, 2, 3, 4, 5]],
            "not the newest",
        ),  # an old history written back
    ],
)
def test_loss_duplication_and_reordering_are_found(histories: list[list[int]], damage: str) -> None:
    problems = ledger_after(*histories).problems
    assert any(damage in problem for problem in problems), problems
