"""Opt-in adaptive micro-batching: concurrent requests for one model version share one Triton call.

No timer and no added wait: a request goes upstream at once while fewer than ``max_inflight`` calls
are in flight for its kind; otherwise it queues, and when a call returns, everything queued (up to
``max_batch`` rows) leaves together as one batch. At concurrency 1 nothing changes; under load the
fixed per-call cost (HTTP round trip in the sidecar, request handling and Python-backend IPC in
Triton) is paid once per batch instead of once per request.

Only requests that can be stacked are batched: same version, same input names/datatypes/per-sample
shapes, same requested outputs, no request parameters, numeric tensors. Outputs are split back by
rows, so each caller gets exactly its own rows; the stacked answer is scored once and its scores are
split the same way, so each caller's per-row guard decisions are made on its own rows (and a caller
whose rows are all refused is refused while the others of its batch are answered).

A caller that leaves (its call cancelled, its deadline passed) takes its rows with it: rows of callers
gone while queued are dropped before the batch is stacked (a batch whose callers all left is not sent),
and a batch in flight whose callers have all been cancelled has its Triton call cancelled. A stacked
call waits for Triton as long as its longest-waiting caller.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

from guardedmodel_sidecar.errors import DeadlineExceeded
from guardedmodel_sidecar.protocol.datatypes import BYTES, NUMPY_DTYPES
from guardedmodel_sidecar.protocol.model import InferRequest, InferResponse, OutputTensor, Tensor
from guardedmodel_sidecar.response_scoring import Scores
from guardedmodel_sidecar.upstream_call import UpstreamResult

# The plain model call the batcher wraps: (model, version, request, outputs) -> Triton's answer.
UpstreamInfer = Callable[[str, str, InferRequest, "list[str] | None"], Awaitable[InferResponse]]
_Waiter = tuple[InferRequest, "asyncio.Future[UpstreamResult]"]


@dataclass
class _Lane:
    inflight: int = 0
    queue: deque[_Waiter] = field(default_factory=deque)
    queued_rows: int = 0


class MicroBatcher:
    def __init__(
        self,
        upstream: UpstreamInfer,
        *,
        max_batch: int,
        max_inflight: int,
        score: Callable[[str, InferResponse], Scores | None] | None = None,
    ) -> None:
        self.upstream = upstream
        # Scores a stacked response once (numpy per call costs about the same for 1 row or 64).
        self.score = score
        self.max_batch = max_batch
        self.max_inflight = max(1, max_inflight)
        self._lanes: dict[tuple[object, ...], _Lane] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.calls = 0
        self.requests = 0

    @staticmethod
    def _key(
        model: str, version: str, request: InferRequest, outputs: list[str] | None
    ) -> tuple[object, ...] | None:
        if request.parameters:
            return None
        parts: list[object] = [model, version, None if outputs is None else tuple(outputs)]
        for t in request.inputs:
            if t.datatype == BYTES or not t.shape:
                return None
            parts.append((t.name, t.datatype, t.shape[1:]))
        return tuple(parts)

    async def infer(
        self, model: str, version: str, request: InferRequest, outputs: list[str] | None
    ) -> UpstreamResult:
        """An ``UpstreamCall``: the caller's own rows of the answer, with their scores when the
        batch was scored as a whole."""
        self.requests += 1
        key = self._key(model, version, request, outputs)
        rows = request.batch_size()
        if key is None or rows >= self.max_batch:
            self.calls += 1
            return UpstreamResult(await self.upstream(model, version, request, outputs))
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        if lane.inflight < self.max_inflight and not lane.queue:
            lane.inflight += 1
            try:
                self.calls += 1
                return UpstreamResult(await self.upstream(model, version, request, outputs))
            finally:
                lane.inflight -= 1
                self._dispatch(lane, model, version, outputs)
        future: asyncio.Future[UpstreamResult] = self._running_loop().create_future()
        lane.queue.append((request, future))
        lane.queued_rows += rows
        return await future

    def _dispatch(self, lane: _Lane, model: str, version: str, outputs: list[str] | None) -> None:
        if not lane.queue or lane.inflight >= self.max_inflight:
            return
        queue = lane.queue
        taken: list[_Waiter] = []
        rows = 0
        now: float | None = None
        while queue:
            request, future = queue[0]
            b = request.batch_size()
            if future.done():
                # The caller left while queued (cancelled): its rows are not sent.
                queue.popleft()
                lane.queued_rows -= b
                continue
            if request.deadline is not None:
                if now is None:
                    now = self._running_loop().time()
                if request.deadline <= now:
                    queue.popleft()
                    lane.queued_rows -= b
                    future.set_exception(
                        DeadlineExceeded("the call's deadline passed while it waited for a Triton call")
                    )
                    continue
            if taken and rows + b > self.max_batch:
                break
            taken.append(queue.popleft())
            rows += b
        lane.queued_rows -= rows
        if not taken:
            return
        lane.inflight += 1
        task = self._running_loop().create_task(self._run(lane, model, version, outputs, taken, rows))
        futures = [future for _, future in taken]
        left = partial(_cancel_when_all_left, task, futures)
        for future in futures:
            future.add_done_callback(left)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        # Cached: asyncio.get_running_loop() makes a getpid() system call on every use (Python 3.11).
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    async def _run(
        self,
        lane: _Lane,
        model: str,
        version: str,
        outputs: list[str] | None,
        taken: list[_Waiter],
        rows: int,
    ) -> None:
        try:
            self.calls += 1
            if len(taken) == 1:
                request, future = taken[0]
                try:
                    response = await self.upstream(model, version, request, outputs)
                except BaseException as exc:
                    if not future.done():
                        future.set_exception(exc)
                else:
                    if not future.done():
                        future.set_result(UpstreamResult(response))
                return
            stacked = stack_requests([r for r, _ in taken], rows)
            try:
                response = await self.upstream(model, version, stacked, outputs)
                sizes = [r.batch_size() for r, _ in taken]
                parts = [
                    UpstreamResult(part) for part in split_response(response, sizes, [r.id for r, _ in taken])
                ]
                scores = self.score(version, response) if self.score is not None else None
                if scores is not None:
                    start = 0
                    for part, b in zip(parts, sizes, strict=True):
                        part.scores = scores.rows(start, start + b)
                        start += b
            except BaseException as exc:
                for _, future in taken:
                    if not future.done():
                        future.set_exception(exc)
                return
            for (_, future), part in zip(taken, parts, strict=True):
                if not future.done():
                    future.set_result(part)
        finally:
            lane.inflight -= 1
            self._dispatch(lane, model, version, outputs)


def _cancel_when_all_left(
    task: asyncio.Task[None], futures: list[asyncio.Future[UpstreamResult]], _: object
) -> None:
    """A batch in flight whose callers were all cancelled: nobody waits for Triton's answer."""
    if all(future.cancelled() for future in futures):
        task.cancel()


def stack_requests(requests: list[InferRequest], rows: int) -> InferRequest:
    first = requests[0]
    inputs = []
    for index, tensor in enumerate(first.inputs):
        raw = b"".join(r.inputs[index].raw for r in requests)
        shape = (rows, *tensor.shape[1:])
        inputs.append(Tensor(tensor.name, tensor.datatype, shape, raw, None))
    deadlines = [r.deadline for r in requests]
    # The stacked call waits as long as its most patient caller; one without a deadline: no deadline.
    deadline = None if None in deadlines else max(d for d in deadlines if d is not None)
    return InferRequest(
        first.model_name, first.model_version, "", {}, inputs, first.outputs, deadline=deadline
    )


def split_response(response: InferResponse, batch_sizes: list[int], ids: list[str]) -> list[InferResponse]:
    total = sum(batch_sizes)
    parts: list[list[OutputTensor]] = [[] for _ in batch_sizes]
    for out in response.outputs:
        if not out.shape or out.shape[0] != total or out.datatype not in NUMPY_DTYPES:
            raise ValueError(
                f"output '{out.name}' of shape {list(out.shape)} cannot be split into {batch_sizes}"
            )
        row_bytes = len(out.raw) // total
        view = memoryview(out.raw)
        offset = 0
        for index, b in enumerate(batch_sizes):
            parts[index].append(
                OutputTensor(
                    out.name, out.datatype, (b, *out.shape[1:]), view[offset : offset + b * row_bytes]
                )
            )
            offset += b * row_bytes
    return [
        InferResponse(response.model_name, response.model_version, rid, dict(response.parameters), outs)
        for rid, outs in zip(ids, parts, strict=True)
    ]
