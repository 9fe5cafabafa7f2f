"""Triton's queue and compute time, republished with the sidecar's metrics.

In the pod Triton binds every port, metrics included, to loopback: the sidecar is the pod's only
door. The operator scales on how long requests wait in Triton's queue, and the cost of a prediction
is the time the model computed for it, so the sidecar reads Triton's cumulative counters for the
guarded model every few seconds and republishes them per version:

  guardedmodel_triton_queue_seconds_total     nv_inference_queue_duration_us
  guardedmodel_triton_requests_total          nv_inference_request_success + _failure
  guardedmodel_triton_compute_seconds_total   nv_inference_compute_input_duration_us
                                              + nv_inference_compute_infer_duration_us
                                              + nv_inference_compute_output_duration_us
  guardedmodel_triton_executions_total        nv_inference_exec_count

They stay counters (a Triton restart resets them, which Prometheus' ``rate`` handles), so a mean per
request over any window is one division in PromQL.

What the compute counter means exactly (Triton core, ``InferenceStatsAggregator::UpdateSuccess``):
for every successful request Triton adds the input, execution and output durations of the model
execution that request was part of, truncated to whole microseconds; failed requests and response
cache hits add nothing. Without dynamic batching one execution serves one request (a client batch
of 32 rows is one request), so the counter is the time the model's backend was busy, on a GPU the
GPU-busy time of the model's executions. With dynamic batching one execution serves several requests
and each of them adds the whole execution's time: the counter is then the busy time multiplied by
the requests per execution, i.e. each request is charged the latency of the execution it rode in.
``guardedmodel_triton_executions_total`` gives that factor: busy time ~= compute seconds x
executions / requests over the same window (exact when the executions in the window last alike).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from guardedmodel_sidecar.errors import Unavailable
from guardedmodel_sidecar.upstream import TritonHttp

log = logging.getLogger(__name__)

QUEUE_US = "nv_inference_queue_duration_us"
REQUEST_SUCCESS = "nv_inference_request_success"
REQUEST_FAILURE = "nv_inference_request_failure"
COMPUTE_US = (
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
)
EXECUTIONS = "nv_inference_exec_count"

# Triton family -> (TritonCounters field it adds to, factor to the field's unit)
_FIELDS: dict[str, tuple[str, float]] = {
    QUEUE_US: ("queue_seconds", 1e-6),
    REQUEST_SUCCESS: ("requests", 1.0),
    REQUEST_FAILURE: ("requests", 1.0),
    **{name: ("compute_seconds", 1e-6) for name in COMPUTE_US},
    EXECUTIONS: ("executions", 1.0),
}


@dataclass(frozen=True)
class TritonCounters:
    """Cumulative figures of one model version since Triton started."""

    queue_seconds: float
    requests: float
    compute_seconds: float = 0.0
    executions: float = 0.0


def parse_triton_counters(text: str, model: str) -> dict[str, TritonCounters]:
    """Per version of ``model``: queue time, requests (successful + failed), compute time (input +
    infer + output) and executions from Triton's Prometheus exposition. Pure; versions without a
    queue-time series are left out."""
    totals: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        field = _FIELDS.get(family.name)
        if field is None:
            continue
        name, factor = field
        # The parser names counter samples <family>_total (and may add <family>_created).
        wanted = (family.name, f"{family.name}_total")
        for sample in family.samples:
            if sample.name not in wanted or sample.labels.get("model") != model:
                continue
            version = totals.setdefault(sample.labels.get("version", ""), {})
            version[name] = version.get(name, 0.0) + sample.value * factor
    return {
        v: TritonCounters(
            f["queue_seconds"],
            f.get("requests", 0.0),
            f.get("compute_seconds", 0.0),
            f.get("executions", 0.0),
        )
        for v, f in totals.items()
        if "queue_seconds" in f
    }


async def follow_triton_counters(
    url: str, model: str, interval_s: float, publish: Callable[[dict[str, TritonCounters]], None]
) -> None:
    """Read Triton's metrics every ``interval_s`` and hand the counters to ``publish``.

    A failed read keeps the last figures (counters must not vanish between scrapes); the first
    failure after a success is logged once, so a Triton restart does not flood the log.
    """
    client = TritonHttp(url, timeout_s=max(1.0, interval_s))
    failing = False
    try:
        while True:
            try:
                response = await client.request("GET", "/metrics")
                if response.status != 200:
                    raise Unavailable(f"Triton metrics at {url} answered HTTP {response.status}")
                publish(parse_triton_counters(bytes(response.body).decode("utf-8", "replace"), model))
                failing = False
            except (Unavailable, ValueError) as exc:
                if not failing:
                    log.warning("cannot read Triton's metrics (scaling and cost hold meanwhile): %s", exc)
                failing = True
            await asyncio.sleep(interval_s)
    finally:
        client.close()
