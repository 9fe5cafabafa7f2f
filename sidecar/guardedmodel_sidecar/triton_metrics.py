"""Triton's queue time, republished with the sidecar's metrics for the operator's scaler.

In the pod Triton binds every port, metrics included, to loopback: the sidecar is the pod's only
door. The operator scales on how long requests wait in Triton's queue, so the sidecar reads Triton's
cumulative queue time and request counters for the guarded model every few seconds and republishes
them per version as ``guardedmodel_triton_queue_seconds_total`` and
``guardedmodel_triton_requests_total``. They stay counters (a Triton restart resets them, which
Prometheus' ``rate`` handles), so the mean queue time over any window is one division in PromQL.
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


@dataclass(frozen=True)
class QueueCounters:
    """Cumulative figures of one model version since Triton started."""

    queue_seconds: float
    requests: float


def parse_queue_counters(text: str, model: str) -> dict[str, QueueCounters]:
    """Per version of ``model``: queue time and requests (successful + failed) from Triton's
    Prometheus exposition. Pure; versions without a queue-time series are left out."""
    queue: dict[str, float] = {}
    requests: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in (QUEUE_US, REQUEST_SUCCESS, REQUEST_FAILURE):
            continue
        # The parser names counter samples <family>_total (and may add <family>_created).
        wanted = (family.name, f"{family.name}_total")
        for sample in family.samples:
            if sample.name not in wanted or sample.labels.get("model") != model:
                continue
            version = sample.labels.get("version", "")
            if family.name == QUEUE_US:
                queue[version] = queue.get(version, 0.0) + sample.value / 1e6
            else:
                requests[version] = requests.get(version, 0.0) + sample.value
    return {v: QueueCounters(seconds, requests.get(v, 0.0)) for v, seconds in queue.items()}


async def follow_triton_queue(
    url: str, model: str, interval_s: float, publish: Callable[[dict[str, QueueCounters]], None]
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
                publish(parse_queue_counters(bytes(response.body).decode("utf-8", "replace"), model))
                failing = False
            except (Unavailable, ValueError) as exc:
                if not failing:
                    log.warning("cannot read Triton's queue time (scaling holds meanwhile): %s", exc)
                failing = True
            await asyncio.sleep(interval_s)
    finally:
        client.close()
