"""The guard pipeline bounds the requests it holds: past ``limits.maxInflightRequests`` a request is
refused at once with a retryable 503 / UNAVAILABLE, counted, and never queued without bound."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from guardedmodel_sidecar.audit import AuditLog
from guardedmodel_sidecar.config import parse_config
from guardedmodel_sidecar.errors import Overloaded
from guardedmodel_sidecar.metrics import SidecarMetrics
from guardedmodel_sidecar.pipeline import Pipeline
from guardedmodel_sidecar.protocol.model import InferRequest, InferResponse, Tensor
from guardedmodel_sidecar.review import ReviewSink
from guardedmodel_sidecar.routing import Router
from guardedmodel_sidecar.upstream import TritonHttp


def request() -> InferRequest:
    x = np.zeros((1, 4), np.float32)
    return InferRequest("m", "", "", {}, [Tensor("INPUT", "FP32", (1, 4), x.tobytes(), x)], None)


async def test_requests_past_the_inflight_limit_are_refused_not_queued(tmp_path: Path) -> None:
    config = parse_config(
        {
            "spec": {"model": {"name": "m"}},
            "auditDir": str(tmp_path / "audit"),
            "limits": {"maxInflightRequests": 3},
        }
    )
    metrics = SidecarMetrics("m")
    pipeline = Pipeline(
        config,
        TritonHttp("127.0.0.1:9"),
        Router(config.routing),
        metrics,
        AuditLog(config.audit_dir),
        ReviewSink(None, tmp_path / "spool", max_fraction=0.1),
    )
    release = asyncio.Event()
    entered = 0

    async def held(_: InferRequest) -> InferResponse:
        nonlocal entered
        entered += 1
        await release.wait()
        raise asyncio.CancelledError

    pipeline._infer = held  # type: ignore[method-assign]  # the bound is all this test is about
    holders = [asyncio.ensure_future(pipeline.infer(request())) for _ in range(3)]
    await asyncio.sleep(0)
    assert entered == 3
    with pytest.raises(Overloaded) as refused:
        await pipeline.infer(request())
    assert refused.value.http_status == 503 and refused.value.headers == {"Retry-After": "1"}
    assert "maxInflightRequests" in refused.value.message
    assert metrics.overload_refusals == 1
    release.set()
    await asyncio.gather(*holders, return_exceptions=True)
    assert pipeline._inflight == 0  # the slots come back however a request ends
