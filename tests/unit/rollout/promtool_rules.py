"""Running promtool on the chart's rule files, as shipped."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool not found; install Debian's prometheus package (make setup does this)"
    return path


def check_rules(rules: Path) -> str:
    """`promtool check rules` output; fails the test on an invalid file."""
    result = subprocess.run(
        [promtool(), "check", "rules", str(rules)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def run_rule_tests(cases: Path, rules: Path, tmp_path: Path) -> None:
    """`promtool test rules` on `cases` against `rules`; fails the test on a failing case."""
    # promtool resolves rule_files relative to the test file: run a copy next to the rules.
    document = yaml.safe_load(cases.read_text())
    document["rule_files"] = [str(rules)]
    test_file = tmp_path / cases.name
    test_file.write_text(yaml.safe_dump(document, sort_keys=False))
    result = subprocess.run(
        [promtool(), "test", "rules", str(test_file)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
