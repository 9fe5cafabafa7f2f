"""Debian's Prometheus scrapes a target started by the test, answers PromQL and fires alerts."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, start_http_server

from guardedmodel_testground.procs import free_port
from guardedmodel_testground.prometheus import ScrapeJob

pytestmark = pytest.mark.integration


def test_scrape_query_and_alert(tmp_path: Path, prometheus_factory, alertmanager_factory) -> None:
    registry = CollectorRegistry()
    requests = Counter("demo_requests", "requests served", ["decision"], registry=registry)
    requests.labels(decision="reject").inc(7)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        rules = tmp_path / "rules.yml"
        rules.write_text(
            "groups:\n"
            "- name: demo\n"
            "  rules:\n"
            "  - alert: DemoRejecting\n"
            '    expr: demo_requests_total{decision="reject"} > 5\n'
            "    labels: {severity: warning}\n"
        )
        alertmanager = alertmanager_factory()
        prometheus = prometheus_factory(
            [ScrapeJob("demo", [f"127.0.0.1:{port}"])], rule_files=[rules], alertmanager_url=alertmanager.url
        )
        result = prometheus.wait_for('demo_requests_total{decision="reject"}')
        assert float(result[0]["value"][1]) == 7.0
        assert result[0]["metric"]["job"] == "demo"

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            names = [alert["labels"]["alertname"] for alert in alertmanager.alerts()]
            if "DemoRejecting" in names:
                break
            time.sleep(0.5)
        else:
            pytest.fail(
                f"DemoRejecting never reached Alertmanager; Prometheus targets: {prometheus.targets()}"
            )
    finally:
        server.shutdown()
        thread.join(timeout=5)
