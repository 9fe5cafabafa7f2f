from __future__ import annotations

import pytest

from guardedmodel_sidecar.triton_metrics import TritonCounters, parse_triton_counters

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
    counters = parse_triton_counters(TRITON_METRICS, "fashion-mnist")
    assert counters == {
        "1": TritonCounters(queue_seconds=pytest.approx(2.46), requests=124.0),
        "2": TritonCounters(queue_seconds=pytest.approx(0.0015), requests=30.0),
    }


def test_other_models_and_an_empty_server_give_nothing() -> None:
    assert parse_triton_counters(TRITON_METRICS, "absent") == {}
    assert parse_triton_counters("", "fashion-mnist") == {}


# Read from a CPU tritonserver 2.51 (the test ground's) after six batch-1 requests to the toy model,
# trimmed to the nv_inference families.
REAL_TRITON_METRICS = """\
# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="toy",version="2"} 6
# HELP nv_inference_request_failure Number of failed inference requests, all batch sizes
# TYPE nv_inference_request_failure counter
nv_inference_request_failure{model="toy",reason="OTHER",version="2"} 0
nv_inference_request_failure{model="toy",reason="BACKEND",version="2"} 0
nv_inference_request_failure{model="toy",reason="CANCELED",version="2"} 0
nv_inference_request_failure{model="toy",reason="REJECTED",version="2"} 0
# HELP nv_inference_count Number of inferences performed (does not include cached requests)
# TYPE nv_inference_count counter
nv_inference_count{model="toy",version="2"} 6
# HELP nv_inference_exec_count Number of model executions performed (does not include cached requests)
# TYPE nv_inference_exec_count counter
nv_inference_exec_count{model="toy",version="2"} 6
# HELP nv_inference_request_duration_us Cumulative inference request duration in microseconds (includes cached requests)
# TYPE nv_inference_request_duration_us counter
nv_inference_request_duration_us{model="toy",version="2"} 30305
# HELP nv_inference_queue_duration_us Cumulative inference queuing duration in microseconds (includes cached requests)
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{model="toy",version="2"} 112
# HELP nv_inference_compute_input_duration_us Cumulative compute input duration in microseconds (does not include cached requests)
# TYPE nv_inference_compute_input_duration_us counter
nv_inference_compute_input_duration_us{model="toy",version="2"} 213
# HELP nv_inference_compute_infer_duration_us Cumulative compute inference duration in microseconds (does not include cached requests)
# TYPE nv_inference_compute_infer_duration_us counter
nv_inference_compute_infer_duration_us{model="toy",version="2"} 29519
# HELP nv_inference_compute_output_duration_us Cumulative inference compute output duration in microseconds (does not include cached requests)
# TYPE nv_inference_compute_output_duration_us counter
nv_inference_compute_output_duration_us{model="toy",version="2"} 443
# HELP nv_inference_pending_request_count Instantaneous number of pending requests awaiting execution per-model.
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="toy",version="2"} 0
"""


def test_compute_time_is_input_plus_infer_plus_output_of_real_triton_text() -> None:
    counters = parse_triton_counters(REAL_TRITON_METRICS, "toy")
    assert counters == {
        "2": TritonCounters(
            queue_seconds=pytest.approx(112e-6),
            requests=6.0,
            compute_seconds=pytest.approx((213 + 29519 + 443) * 1e-6),
            executions=6.0,
        )
    }


def test_compute_and_executions_add_up_per_version_and_ignore_other_models() -> None:
    text = (
        TRITON_METRICS
        + """\
# TYPE nv_inference_compute_input_duration_us counter
nv_inference_compute_input_duration_us{model="fashion-mnist",version="1"} 1000000
nv_inference_compute_input_duration_us{model="other",version="1"} 5
# TYPE nv_inference_compute_infer_duration_us counter
nv_inference_compute_infer_duration_us{model="fashion-mnist",version="1"} 2500000
nv_inference_compute_infer_duration_us{model="fashion-mnist",version="2"} 40
# TYPE nv_inference_compute_output_duration_us counter
nv_inference_compute_output_duration_us{model="fashion-mnist",version="1"} 500000
# TYPE nv_inference_exec_count counter
nv_inference_exec_count{model="fashion-mnist",version="1"} 31
"""
    )
    counters = parse_triton_counters(text, "fashion-mnist")
    assert counters["1"].compute_seconds == pytest.approx(4.0)
    assert counters["1"].executions == 31.0
    assert counters["2"].compute_seconds == pytest.approx(40e-6)
    assert counters["2"].executions == 0.0  # absent series: nothing counted yet, not an error
