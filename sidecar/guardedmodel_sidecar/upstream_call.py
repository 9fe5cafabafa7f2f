"""The model call as the pipeline sees it: request in, ``UpstreamResult`` out.

The plain call goes to Triton over HTTP (``TritonCall``); the micro-batcher wraps it when enabled.
Either is handed to the pipeline when it is built. Scores the micro-batcher computed for a stacked
batch travel next to the response, in ``UpstreamResult``, not inside the protocol model.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from guardedmodel_sidecar.errors import DeadlineExceeded
from guardedmodel_sidecar.protocol.model import InferRequest, InferResponse
from guardedmodel_sidecar.response_scoring import Scores
from guardedmodel_sidecar.upstream import TritonHttp


@dataclass(slots=True)
class UpstreamResult:
    response: InferResponse
    # This response's rows of the guard scores of a stacked batch (scored once by the micro-batcher);
    # None: the pipeline scores the response itself.
    scores: Scores | None = None


# (model, version, request, outputs to ask for; None = all) -> the model's answer
UpstreamCall = Callable[[str, str, InferRequest, "list[str] | None"], Awaitable[UpstreamResult]]


class TritonCall:
    """One request's Triton call, bounded by the caller's deadline (gRPC) where it has one."""

    def __init__(self, triton: TritonHttp, timeout_s: float) -> None:
        self.triton = triton
        self.timeout_s = timeout_s

    async def __call__(
        self, model: str, version: str, request: InferRequest, outputs: list[str] | None
    ) -> InferResponse:
        if request.deadline is None:
            return await self.triton.infer_request(model, version, request, outputs)
        # Once the caller's deadline has passed, Triton is not asked.
        remaining = request.deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise DeadlineExceeded("the call's deadline passed before the model was called")
        return await self.triton.infer_request(
            model, version, request, outputs, timeout_s=min(remaining, self.timeout_s)
        )

    async def result(
        self, model: str, version: str, request: InferRequest, outputs: list[str] | None
    ) -> UpstreamResult:
        """The call as an ``UpstreamCall`` (no micro-batching)."""
        return UpstreamResult(await self(model, version, request, outputs))
