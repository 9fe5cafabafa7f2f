"""PromQL text and the pure reading of query results."""

from __future__ import annotations

from typing import Any

from guardedmodel_operator.prometheus import PrometheusSettings
from guardedmodel_operator.rollout.metrics_source import queries, samples_from_results


def vec(*items: tuple[dict[str, str], float]) -> list[dict[str, Any]]:
    return [{"metric": labels, "value": [0, str(value)]} for labels, value in items]


def test_queries_are_scoped_to_the_model_and_grouped_by_version() -> None:
    q = queries(PrometheusSettings("http://p", name_label="gm"), 'n"s', "clf", 29.5)
    assert q["requests"] == (
        'sum by (version, decision) (increase(guardedmodel_requests_total{namespace="n\\"s",gm="clf"}[30s]))'
    )
    assert 'statistic="score"' in q["drift"] and "max_over_time" in q["drift"]
    assert q["p99"].startswith("histogram_quantile(0.99, sum by (version, le)")
    assert all('gm="clf"' in text for text in q.values())
    assert q["loaded"] == 'min by (version) (guardedmodel_version_loaded{namespace="n\\"s",gm="clf"})'


def test_reading_results() -> None:
    results = {
        "requests": vec(
            ({"version": "1", "decision": "accept"}, 90),
            ({"version": "1", "decision": "review"}, 10),
            ({"version": "2", "decision": "reject"}, 5),
            ({"version": "2", "decision": "accept"}, 15),
        ),
        "samples": vec(({"version": "1"}, 100), ({"version": "2"}, 20)),
        "ood_samples": vec(({"version": "1"}, 1), ({"version": "2"}, 5)),
        "confidence_sum": vec(({"version": "1"}, 90), ({"version": "2"}, 12)),
        "confidence_count": vec(({"version": "1"}, 100), ({"version": "2"}, 20)),
        "drift": vec(({"version": "1"}, float("nan")), ({"version": "2"}, 0.4)),
        "errors": vec(({"version": "2"}, 20)),
        "p99": vec(({"version": ""}, 0.25)),
        "loaded": vec(({"version": "1"}, 1), ({"version": "2"}, 0)),
    }
    one = samples_from_results(results, "1", 30)
    assert (one.requests, one.review_rate, one.ood_rate, one.estimated_accuracy) == (100, 0.1, 0.01, 0.9)
    assert one.drift_score is None  # NaN: no drift window had samples
    assert one.error_rate == 0.0  # version 2 has error series, version 1 none
    assert one.p99_latency_ms == 250.0 and one.model_wide == ("p99_latency_ms",)
    two = samples_from_results(results, "2", 30)
    assert (two.reject_rate, two.error_rate, two.drift_score) == (0.25, 0.5, 0.4)
    assert (one.loaded, two.loaded, samples_from_results(results, "3", 30).loaded) == (1.0, 0.0, None)
    assert samples_from_results(results, "3", 30).requests is None
    assert samples_from_results(results, "3", 30).p99_latency_ms is None


def test_drift_decision_queries_and_reading() -> None:
    q = queries(PrometheusSettings("http://p"), "ml", "clf", 60)
    assert q["drift_detected"] == (
        'max by (version) (max_over_time(guardedmodel_drift_detected{namespace="ml",guardedmodel_io_name="clf"}[60s]))'
    )
    assert q["drift_p_value"].startswith("min by (version) (min_over_time(guardedmodel_drift_p_value{")
    # PSI only of the scrapes where the same target's window was called drifted, at a 1 s resolution
    assert "and ignoring(statistic) guardedmodel_drift_detected{" in q["drifted_score"]
    assert q["drifted_score"].endswith("== 1)[60s:1s]))")
    assert queries(PrometheusSettings("http://p"), "ml", "clf", 3600)["drifted_score"].endswith(
        "[3600s:6s]))"
    )
    results = {
        "requests": vec(
            ({"version": "1", "decision": "accept"}, 50), ({"version": "2", "decision": "accept"}, 50)
        ),
        "drift": vec(({"version": "1"}, 0.9), ({"version": "2"}, 0.3)),
        "drift_detected": vec(({"version": "1"}, float("nan")), ({"version": "2"}, 1.0)),
        "drift_p_value": vec(({"version": "2"}, 1e-9)),
        "drifted_score": vec(({"version": "2"}, 0.25)),
    }
    one, two = samples_from_results(results, "1", 60), samples_from_results(results, "2", 60)
    assert one.drift_decision is None and one.drift_score == 0.9  # all windows too small to test
    assert two.drift_decision == "drifted"
    assert (two.drift_p_value, two.drifted_score, two.drift_score) == (1e-9, 0.25, 0.3)
