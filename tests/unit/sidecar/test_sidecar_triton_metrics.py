from __future__ import annotations

import pytest

from guardedmodel_sidecar.triton_metrics import QueueCounters, parse_queue_counters

# The shape of Triton's own exposition (2.x): counters without a _total suffix, one series per
# model version, other models on the same server mixed in.
TRITON_METRICS = """\
# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="fashion-mnist",version="1"} 120
nv_inference_request_success{model="fashion-mnist",version="2"} 30
nv_inference_request_success{model="other",version="1"} 999
# HELP nv_inference_request_failure Number of failed inference requests, all batch sizes
# TYPE nv_inference_request_failure counter
nv_inference_request_failure{model="fashion-mnist",reason="REJECTED",version="1"} 3
nv_inference_request_failure{model="fashion-mnist",reason="BACKEND",version="1"} 1
# HELP nv_inference_queue_duration_us Cumulative inference queuing duration in microseconds
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{model="fashion-mnist",version="1"} 2460000
nv_inference_queue_duration_us{model="fashion-mnist",version="2"} 1500
nv_inference_queue_duration_us{model="other",version="1"} 77
# HELP nv_cpu_utilization CPU utilization rate [0.0 - 1.0]
# TYPE nv_cpu_utilization gauge
nv_cpu_utilization 0.25
"""


def test_queue_time_and_requests_of_the_guarded_model_per_version() -> None:
    counters = parse_queue_counters(TRITON_METRICS, "fashion-mnist")
    assert counters == {
        "1": QueueCounters(queue_seconds=pytest.approx(2.46), requests=124.0),
        "2": QueueCounters(queue_seconds=pytest.approx(0.0015), requests=30.0),
    }


def test_other_models_and_an_empty_server_give_nothing() -> None:
    assert parse_queue_counters(TRITON_METRICS, "absent") == {}
    assert parse_queue_counters("", "fashion-mnist") == {}
