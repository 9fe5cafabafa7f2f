"""The cost recording rules pass `promtool check rules` and their `promtool test rules` cases."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[3]
RULES = REPO / "charts" / "guardedmodel" / "files" / "cost-rules.yaml"
CASES = Path(__file__).with_name("cost_rules_test.yaml")


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool not found; install Debian's prometheus package (make setup does this)"
    return path


def test_cost_rules_are_valid() -> None:
    result = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 rules found" in result.stdout


def test_cost_rules_compute_per_prediction_figures(tmp_path: Path) -> None:
    cases = yaml.safe_load(CASES.read_text())
    cases["rule_files"] = [str(RULES)]
    test_file = tmp_path / "cost_rules_test.yaml"
    test_file.write_text(yaml.safe_dump(cases, sort_keys=False))
    result = subprocess.run(
        [promtool(), "test", "rules", str(test_file)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
