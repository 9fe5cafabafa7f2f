"""The SRE alert rules pass `promtool check rules` and their `promtool test rules` cases."""

from __future__ import annotations

from pathlib import Path

import yaml
from promtool_rules import check_rules, run_rule_tests

REPO = Path(__file__).resolve().parents[3]
ALERTS = REPO / "charts" / "guardedmodel" / "files" / "alerts.yaml"
CASES = Path(__file__).with_name("alerts_test.yaml")


def test_rules_are_valid() -> None:
    assert "13 rules found" in check_rules(ALERTS)


def test_alerts_fire_and_resolve_as_specified(tmp_path: Path) -> None:
    run_rule_tests(CASES, ALERTS, tmp_path)


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
        "GuardedModelAuditExportFailing",
        "GuardedModelReviewItemsDropped",
        "GuardedModelReviewSpoolFilling",
        "GuardedModelVolumeFull",
        "GuardedModelRoutingNotFollowed",
    }
    tested = {t["alertname"] for t in yaml.safe_load(CASES.read_text())["tests"][0]["alert_rule_test"]}
    assert tested == {r["alert"] for r in rules}
