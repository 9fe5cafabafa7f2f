"""The cost recording rules pass `promtool check rules` and their `promtool test rules` cases."""

from __future__ import annotations

from pathlib import Path

from promtool_rules import check_rules, run_rule_tests

REPO = Path(__file__).resolve().parents[3]
RULES = REPO / "charts" / "guardedmodel" / "files" / "cost-rules.yaml"
CASES = Path(__file__).with_name("cost_rules_test.yaml")


def test_cost_rules_are_valid() -> None:
    assert "4 rules found" in check_rules(RULES)


def test_cost_rules_compute_per_prediction_figures(tmp_path: Path) -> None:
    run_rule_tests(CASES, RULES, tmp_path)
