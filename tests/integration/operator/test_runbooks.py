"""Every alert the chart ships links a runbook that exists, says what to do, and whose PromQL parses.

The alerts are read from the PrometheusRule as the real helm renders it; the runbooks' PromQL is
sent to a real Prometheus (the test ground's), which answers a query it cannot parse with an
error; and every metric a runbook names must be one the operator or the sidecar exports.
"""

from __future__ import annotations

import re
import subprocess
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from gm_operator_helpers import REPO

from guardedmodel_testground.k8s_binaries import ensure_k8s_binaries
from guardedmodel_testground.prometheus import Prometheus

pytestmark = pytest.mark.integration

CHART = REPO / "charts" / "guardedmodel"
RUNBOOKS = REPO / "docs" / "runbooks"
SECTIONS = ("## What it means", "## How to confirm", "## What to do")
DEFAULT_BASE = yaml.safe_load((CHART / "values.yaml").read_text())["metrics"]["prometheusRule"][
    "runbookBaseUrl"
]
PROMQL_BLOCK = re.compile(r"```promql\n(.*?)```", re.DOTALL)
METRIC = re.compile(r"\bguardedmodel_[a-z_]+")
SERIES_SUFFIXES = ("_total", "_sum", "_count", "_bucket")


def alerts(*sets: str) -> dict[str, dict[str, Any]]:
    args = [
        "template",
        "gm",
        str(CHART),
        "--namespace",
        "ops",
        "--show-only",
        "templates/prometheusrule.yaml",
    ]
    for value in ("metrics.prometheusRule.enabled=true", *sets):
        args += ["--set", value]
    out = subprocess.run(
        [str(ensure_k8s_binaries().helm), *args], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    rule = yaml.safe_load(out)
    return {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"] if "alert" in r}


def runbook_files() -> dict[str, Path]:
    return {p.stem: p for p in sorted(RUNBOOKS.glob("*.md")) if p.name != "README.md"}


def promql_blocks(path: Path) -> list[str]:
    return [block.strip() for block in PROMQL_BLOCK.findall(path.read_text())]


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    server = Prometheus(tmp_path_factory.mktemp("prometheus")).start()
    yield server
    server.stop()


def test_every_alert_links_a_runbook_with_the_three_sections() -> None:
    shipped = alerts()
    assert len(shipped) >= 15
    for name, rule in shipped.items():
        assert rule["annotations"]["runbook_url"] == f"{DEFAULT_BASE}/{name}.md", name
        path = RUNBOOKS / f"{name}.md"
        assert path.is_file(), f"{name} links {path.relative_to(REPO)}, which does not exist"
        text = path.read_text()
        assert text.startswith(f"# {name}\n"), f"{path.name} must open with its alert's name"
        positions = [text.find(f"\n{section}\n") for section in SECTIONS]
        assert all(p >= 0 for p in positions), f"{path.name} lacks one of {SECTIONS}"
        assert positions == sorted(positions), f"{path.name}: sections out of order"
        assert promql_blocks(path), f"{path.name} has no PromQL to confirm the alert with"
    # ... and no runbook is left for an alert the chart no longer ships; the index lists them all
    assert set(runbook_files()) == set(shipped)
    index = (RUNBOOKS / "README.md").read_text()
    assert all(f"]({name}.md)" in index for name in shipped)


def test_the_runbook_base_url_is_configurable() -> None:
    base = "https://wiki.example.com/sre/guardedmodel"
    for name, rule in alerts(f"metrics.prometheusRule.runbookBaseUrl={base}").items():
        assert rule["annotations"]["runbook_url"] == f"{base}/{name}.md"


def test_a_runbook_url_base_with_a_trailing_slash_is_refused() -> None:
    result = subprocess.run(
        [str(ensure_k8s_binaries().helm), "template", "gm", str(CHART),
         "--set", "metrics.prometheusRule.runbookBaseUrl=https://wiki.example.com/"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0 and "runbookBaseUrl" in result.stderr, result.stderr


def test_every_runbook_promql_parses_on_a_real_prometheus(prometheus: Prometheus) -> None:
    checked = 0
    for path in runbook_files().values():
        for expr in promql_blocks(path):
            try:
                prometheus.query(expr)
            except (urllib.error.HTTPError, RuntimeError) as error:
                detail = error.read().decode() if isinstance(error, urllib.error.HTTPError) else str(error)
                pytest.fail(f"{path.name}: Prometheus refuses\n{expr}\n{detail}")
            checked += 1
    assert checked >= 2 * len(runbook_files())
    # the check can fail: a query Prometheus cannot parse is refused
    with pytest.raises(urllib.error.HTTPError):
        prometheus.query("sum by (version (rate(guardedmodel_requests_total[5m]))")


def test_every_metric_a_runbook_names_is_exported() -> None:
    sources = "".join(p.read_text() for root in ("operator", "sidecar") for p in (REPO / root).rglob("*.py"))
    for path in [*runbook_files().values(), RUNBOOKS / "README.md"]:
        for expr in promql_blocks(path):
            for metric in METRIC.findall(expr):
                family = next((metric.removesuffix(s) for s in SERIES_SUFFIXES if metric.endswith(s)), metric)
                assert f'"{family}' in sources, f"{path.name} names {metric}, which nothing exports"
