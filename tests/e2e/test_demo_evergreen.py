"""One turn of the data loop end to end: `guardedmodel demo --evergreen` as a user runs it, judged by
what it recorded and by what the bucket holds afterwards.

Everything is real: MinIO, the control plane, the operator, Triton, the sidecar, Prometheus, the review
webhook, `fetch-model`, `fit` and `publish` as processes. The assertions are about the product's behaviour
(reviews arrive for the hard inputs, the published version is fetched and promoted by the canary without a
new pod), not the demo's printing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REQUESTS = 20  # per out-of-distribution kind; four times as many in-distribution rows


def test_one_turn_reviews_fits_publishes_and_promotes_a_new_guard(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "guardedmodel_cli.main",
            "demo",
            "--evergreen",
            "--state-dir",
            str(tmp_path),
            "--requests",
            str(REQUESTS),
            "--timeout",
            "150",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert result.returncode == 0, f"demo failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    summary = json.loads((tmp_path / "summary.json").read_text())
    turn = summary["evergreen"]

    # The hard inputs went to people: nearly every out-of-distribution request, a few in-distribution
    # ones (low confidence). One item per request (batch 1), labelled by the reviewer row by row.
    first = turn["first_traffic"]
    for kind in ("held-out classes (near-OOD)", "digits (far-OOD)"):
        assert first[kind].get("review", 0) >= 0.6 * REQUESTS, first
    reviews = sum(counts.get("review", 0) for counts in first.values())
    assert turn["review_items"] == reviews, turn
    assert turn["labels"]["ood"] >= 2 * 0.6 * REQUESTS and turn["labels"].get("class", 0) >= 1, turn
    labels = [json.loads(line) for line in (tmp_path / "labels.jsonl").read_text().splitlines()]
    assert len({(label["id"], label["row"]) for label in labels}) == len(labels) == reviews
    assert all((label["label"] is None) == label["ood"] for label in labels)
    assert turn["dataset"], turn
    # every reviewed row made it through export, labels and the join into the fit
    assert summary["fit"]["samples"]["ood:reviewed"] == turn["labels"]["ood"], summary["fit"]

    # Version 2 came out of the bucket and the canary promoted it, in the same pod.
    canary = summary["canary"]
    status = canary["status"]
    assert status["stableVersion"] == "2", status
    assert any(h["version"] == "2" and h["outcome"] == "Promoted" for h in status["history"]), status
    assert canary["comparison"]["decision"] == "passed"
    assert canary["comparison"]["agreement"] == pytest.approx(1.0)  # the same weights: the same classes
    assert canary["pods_before"] == canary["pods_after"]
    assert canary["weights"] and canary["weights"][-1] == 100

    # Both guards measured on the same rows; each served its own version (nothing refused by routing).
    for version, outcomes in turn["guards"].items():
        for kind, counts in outcomes.items():
            assert set(counts) <= {"accept", "review", "rejected as OOD"}, (version, kind, counts)
        in_distribution = outcomes["in-distribution"]
        assert in_distribution.get("accept", 0) >= 0.7 * sum(in_distribution.values()), (version, outcomes)
