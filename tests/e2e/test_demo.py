"""The demo scenario end to end: `guardedmodel demo` as a user runs it, judged by what it recorded.

Everything is real: the control plane, the operator, Triton, the sidecar, Prometheus and
Alertmanager; as local processes, or (--real-pods, root only) with the operator and the model in pods
on a real kubelet. The assertions are about the product's behaviour, not the demo's printing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    "where",
    [
        "local processes",
        # The same story with the operator and the model in real pods: a few minutes more, root only.
        pytest.param("real pods", marks=[pytest.mark.pods, pytest.mark.slow]),
    ],
)
def test_demo_guards_rolls_back_and_alerts(tmp_path: Path, where: str) -> None:
    executable = Path(sys.executable).with_name("guardedmodel")
    flags = ["--real-pods"] if where == "real pods" else []
    result = subprocess.run(
        [
            str(executable),
            "demo",
            "--state-dir",
            str(tmp_path),
            "--requests",
            "40",
            "--timeout",
            "150",
            *flags,
        ],
        capture_output=True,
        text=True,
        timeout=1500,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert result.returncode == 0, f"demo failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    summary = json.loads((tmp_path / "summary.json").read_text())
    traffic = summary["traffic"]

    def share(category: str, decision: str) -> float:
        counts = traffic[category]
        return counts.get(decision, 0) / sum(counts.values())

    # Malformed inputs never reach the model.
    assert share("NaN pixels", "refused by gate") == 1.0
    assert share("out of range (x255)", "refused by gate") == 1.0
    # Good inputs mostly pass; the gate's OOD threshold is set for 95 % acceptance.
    assert share("in-distribution", "accept") + share("in-distribution", "review") >= 0.8
    # Far-OOD inputs are mostly stopped by the scorer.
    assert share("handwritten digits (far-OOD)", "rejected as OOD") >= 0.6
    assert share("inverted images", "rejected as OOD") + share("inverted images", "refused by gate") >= 0.9

    # A batch is answered row by row: refused rows are blanked, the others answered; and the
    # in-distribution rejection rate is the stated alpha (640 rows: a binomial 99.9 % bound at
    # alpha 0.05 plus the calibration set's own spread stays under 0.09).
    per_row = summary["per_row"]
    assert per_row["mixed_batch_blanked"] == per_row["mixed_batch"].count("reject")
    assert per_row["mixed_batch"].count("accept") >= 20
    assert per_row["in_distribution_rows"] == 640
    assert per_row["in_distribution_rejected"] / 640 <= 0.09

    # The weaker version 2 is rolled back by the operator, on the sidecar's metrics.
    canary = summary["canary"]
    assert canary["weights"], "the canary never received traffic"
    assert canary["status"]["stableVersion"] == "1"
    outcomes = [(h["version"], h["outcome"]) for h in canary["status"]["history"]]
    assert ("2", "RolledBack") in outcomes, outcomes
    # Before any user saw it, version 2 was shadowed and replayed against version 1, and passed.
    comparison = canary["comparison"]
    assert comparison["decision"] == "passed" and comparison["rows"] >= 100, comparison
    assert comparison["shadowRows"] > 0 and comparison["replayRows"] > 0, comparison
    assert 0.0 < comparison["agreement"] < 1.0, comparison  # a different model, not a copy
    assert outcomes.index(("2", "ShadowStarted")) < outcomes.index(("2", "CanaryStarted")), outcomes
    # Versions moved through routing: the same pods throughout, never restarted.
    assert canary["pods_before"] and canary["pods_after"] == canary["pods_before"], canary

    # Drifted inputs are seen by the continuous guard and alert the SREs.
    drift = summary["drift"]
    assert drift["drift_score"] is not None and drift["drift_score"] > 0.2
    assert drift["alerts"], "no GuardedModel alert reached Alertmanager"
    degraded = [c for c in drift["status"].get("conditions", []) if c["type"] == "Degraded"]
    assert degraded and degraded[0]["status"] == "True"
