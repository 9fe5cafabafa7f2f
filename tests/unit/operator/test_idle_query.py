"""The idle watch's PromQL, evaluated by Prometheus's own engine (`promtool test rules`) on the
series shapes a model's sidecars leave behind: the count must be 0 exactly when no request came."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from guardedmodel_operator.prometheus import PrometheusSettings
from guardedmodel_operator.scaling.idle_controller import requests_query

WINDOW_S = 600  # ten one-minute scrapes
EVAL = "30m"


def series(name: str, pod: str, values: str, version: str = "1", decision: str = "accept") -> dict[str, str]:
    labels = (
        f'namespace="ml",guardedmodel_io_name="{name}",pod="{pod}",version="{version}",decision="{decision}"'
    )
    return {"series": f"guardedmodel_requests_total{{{labels}}}", "values": values}


# model → its series over 31 one-minute scrapes, and the requests its last 10 minutes hold
CASES: dict[str, tuple[list[dict[str, str]], float | None]] = {
    # served until minute 15, nothing since: idle
    "quiet": ([series("quiet", "a", "0+10x15 150x15")], 0.0),
    # serves 10 a minute throughout
    "busy": ([series("busy", "a", "0+10x30")], 100.0),
    # one pod, a second pod born at minute 25 that has served 10 since (increase() alone misses its first value)
    "new_pod": ([series("new_pod", "a", "40x30"), series("new_pod", "b", "_x25 5 6 7 8 9 10")], 10.0),
    # the pod was replaced at minute 22; the new one never served
    "replaced": ([series("replaced", "a", "0+10x20 _x10"), series("replaced", "b", "_x22 0x8")], 0.0),
    # a canary version and a decision seen for the first time count like any other
    "canary": (
        [
            series("canary", "a", "70x30"),
            series("canary", "a", "_x28 1 2 3", version="2", decision="review"),
        ],
        3.0,
    ),
    # no series at all: an empty answer, not 0
    "never": ([], None),
}


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool not found; install Debian's prometheus package (make setup does this)"
    return path


def test_the_requests_query_counts_exactly_the_requests_of_the_window(tmp_path: Path) -> None:
    settings = PrometheusSettings(url="http://p:9090")
    (tmp_path / "no_rules.yaml").write_text("groups: []\n")
    cases = {
        "rule_files": ["no_rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [s for shape, _ in CASES.values() for s in shape],
                "promql_expr_test": [
                    {
                        "expr": requests_query(settings, "ml", name, WINDOW_S),
                        "eval_time": EVAL,
                        "exp_samples": [] if expected is None else [{"labels": "{}", "value": expected}],
                    }
                    for name, (_, expected) in CASES.items()
                ],
            }
        ],
    }
    test_file = tmp_path / "idle_query_test.yaml"
    test_file.write_text(yaml.safe_dump(cases, sort_keys=False))
    result = subprocess.run(
        [promtool(), "test", "rules", str(test_file)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
