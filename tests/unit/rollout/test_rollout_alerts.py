"""The SRE alert rules pass `promtool check rules` and their `promtool test rules` cases."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[3]
ALERTS = REPO / "charts" / "guardedmodel" / "files" / "alerts.yaml"
CASES = Path(__file__).with_name("alerts_test.yaml")


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool not found; install Debian's prometheus package (make setup does this)"
    return path


def test_rules_are_valid() -> None:
    result = subprocess.run(
        [promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "11 rules found" in result.stdout


def test_alerts_fire_and_resolve_as_specified(tmp_path: Path) -> None:
    # promtool resolves rule_files relative to the test file: run a copy next to the rules.
    cases = yaml.safe_load(CASES.read_text())
    cases["rule_files"] = [str(ALERTS)]
    test_file = tmp_path / "alerts_test.yaml"
    test_file.write_text(yaml.safe_dump(cases, sort_keys=False))
    result = subprocess.run(
        [promtool(), "test", "rules", str(test_file)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_named_in_the_design_is_there() -> None:
    rules = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    assert {r["alert"] for r in rules} == {
        "GuardedModelRolledBack",
        "GuardedModelDriftHigh",
        "GuardedModelOodRateHigh",
        "GuardedModelLowEstimatedAccuracy",
        "GuardedModelScalingSaturated",
        "GuardedModelIdle",
        "GuardedModelAuditWriteFailing",
        "GuardedModelAuditDropping",
        "GuardedModelReviewItemsDropped",
        "GuardedModelReviewSpoolFilling",
        "GuardedModelVolumeFull",
    }
    tested = {t["alertname"] for t in yaml.safe_load(CASES.read_text())["tests"][0]["alert_rule_test"]}
    assert tested == {r["alert"] for r in rules}
