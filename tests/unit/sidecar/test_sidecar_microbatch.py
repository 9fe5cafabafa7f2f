"""Micro-batching: concurrent requests share upstream calls and each caller gets exactly its rows."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from guardedmodel_sidecar.errors import DeadlineExceeded
from guardedmodel_sidecar.microbatch import MicroBatcher, split_response, stack_requests
from guardedmodel_sidecar.protocol.model import InferRequest, InferResponse, OutputTensor, Tensor
from guardedmodel_sidecar.upstream_call import UpstreamResult


def request(x: np.ndarray, rid: str, **params) -> InferRequest:
    return InferRequest("m", "", rid, dict(params), [Tensor("X", "FP32", x.shape, x.tobytes(), x)], None)


async def affine_model(
    model: str, version: str, req: InferRequest, outputs: list[str] | None
) -> InferResponse:
    """A real (if tiny) model: y = 2x + 1 over whatever rows arrive, after a short compute time."""
    await asyncio.sleep(0.005)
    t = req.inputs[0]
    x = np.frombuffer(t.raw, dtype=np.float32).reshape(t.shape)
    y = (2 * x + 1).astype(np.float32)
    return InferResponse(model, version, req.id, {}, [OutputTensor("Y", "FP32", y.shape, y.tobytes())])


def test_stack_and_split_round_trip() -> None:
    a, b = np.ones((1, 3), np.float32), np.arange(6, dtype=np.float32).reshape(2, 3)
    stacked = stack_requests([request(a, "a"), request(b, "b")], 3)
    assert stacked.inputs[0].shape == (3, 3)
    y = np.frombuffer(stacked.inputs[0].raw, np.float32).reshape(3, 3)
    response = InferResponse("m", "1", "", {}, [OutputTensor("Y", "FP32", y.shape, y.tobytes())])
    first, second = split_response(response, [1, 2], ["a", "b"])
    np.testing.assert_array_equal(first.outputs[0].as_numpy(), a)
    np.testing.assert_array_equal(second.outputs[0].as_numpy(), b)
    assert (first.id, second.id) == ("a", "b")


async def test_concurrent_requests_share_calls_and_get_their_own_rows() -> None:
    batcher = MicroBatcher(affine_model, max_batch=16, max_inflight=1)
    xs = [np.full((1, 4), i, np.float32) for i in range(40)]
    results = await asyncio.gather(
        *(batcher.infer("m", "1", request(x, f"r{i}"), None) for i, x in enumerate(xs))
    )
    for i, (x, result) in enumerate(zip(xs, results, strict=True)):
        np.testing.assert_array_equal(result.response.outputs[0].as_numpy(), 2 * x + 1)
        assert result.response.id == f"r{i}"
    assert batcher.requests == 40
    assert batcher.calls <= 5  # 1 alone, then batches of up to 16


async def test_requests_with_parameters_or_at_the_size_limit_go_alone() -> None:
    batcher = MicroBatcher(affine_model, max_batch=4, max_inflight=1)
    xs = [np.zeros((4, 2), np.float32), np.zeros((1, 2), np.float32)]
    await asyncio.gather(
        batcher.infer("m", "1", request(xs[0], "big"), None),
        batcher.infer("m", "1", request(xs[1], "p", priority=1), None),
    )
    assert batcher.calls == 2


async def test_an_upstream_error_reaches_every_caller_of_the_batch() -> None:
    async def failing(
        model: str, version: str, req: InferRequest, outputs: list[str] | None
    ) -> InferResponse:
        await asyncio.sleep(0.005)
        raise ConnectionError("Triton went away")

    batcher = MicroBatcher(failing, max_batch=8, max_inflight=1)
    results = await asyncio.gather(
        *(batcher.infer("m", "1", request(np.zeros((1, 2), np.float32), str(i)), None) for i in range(5)),
        return_exceptions=True,
    )
    assert all(isinstance(r, ConnectionError) for r in results)


class CountingModel:
    """The affine model behind a gate the test opens: records every call's rows and its cancellation."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.calls: list[list[str]] = []
        self.cancelled = 0

    async def __call__(
        self, model: str, version: str, req: InferRequest, outputs: list[str] | None
    ) -> InferResponse:
        t = req.inputs[0]
        self.calls.append([str(v) for v in np.frombuffer(t.raw, np.float32).reshape(t.shape)[:, 0]])
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return await affine_model(model, version, req, outputs)


async def until(condition, timeout: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.001)


async def test_rows_of_callers_that_left_while_queued_are_not_sent() -> None:
    model = CountingModel()
    batcher = MicroBatcher(model, max_batch=16, max_inflight=1)
    loop = asyncio.get_running_loop()
    first = asyncio.ensure_future(batcher.infer("m", "1", request(np.full((1, 2), 0, np.float32), "0"), None))
    await until(lambda: len(model.calls) == 1)  # the lane is busy: the next ones queue
    queued = {
        i: asyncio.ensure_future(
            batcher.infer("m", "1", request(np.full((1, 2), i, np.float32), str(i)), None)
        )
        for i in range(1, 5)
    }
    expired = request(np.full((1, 2), 9, np.float32), "9")
    expired.deadline = loop.time() + 0.01
    late = asyncio.ensure_future(batcher.infer("m", "1", expired, None))
    await asyncio.sleep(0.02)  # past the expired caller's deadline
    queued[2].cancel()
    queued[4].cancel()
    model.gate.set()
    await first
    assert [r.response.outputs[0].as_numpy()[0, 0] for r in await asyncio.gather(queued[1], queued[3])] == [
        3.0,
        7.0,
    ]
    with pytest.raises(DeadlineExceeded):
        await late
    # One call for the first request, one stacked call with only the callers still there.
    assert model.calls == [["0.0"], ["1.0", "3.0"]]


async def three_queued_behind_a_busy_lane() -> tuple[
    CountingModel, MicroBatcher, asyncio.Future[UpstreamResult], list[asyncio.Future[UpstreamResult]]
]:
    """One lane, held by a first call the model has not answered; three callers queued behind it."""
    model = CountingModel()
    batcher = MicroBatcher(model, max_batch=16, max_inflight=1)
    first = asyncio.ensure_future(batcher.infer("m", "1", request(np.zeros((1, 2), np.float32), "0"), None))
    await until(lambda: len(model.calls) == 1)
    queued = [
        asyncio.ensure_future(batcher.infer("m", "1", request(np.ones((1, 2), np.float32), str(i)), None))
        for i in range(3)
    ]
    await asyncio.sleep(0)
    return model, batcher, first, queued


async def test_a_batch_whose_callers_all_left_is_not_sent() -> None:
    model, batcher, first, queued = await three_queued_behind_a_busy_lane()
    for caller in queued:
        caller.cancel()
    model.gate.set()
    await first
    await asyncio.sleep(0.01)
    assert model.calls == [["0.0"]] and batcher.calls == 1


async def test_a_batch_in_flight_is_cancelled_when_all_its_callers_are() -> None:
    model, batcher, first, queued = await three_queued_behind_a_busy_lane()
    first.cancel()  # the lane frees up; the three queued go out as one stacked call
    await until(lambda: len(model.calls) == 2)
    assert model.calls[1] == ["1.0", "1.0", "1.0"]
    queued[0].cancel()
    queued[1].cancel()
    await asyncio.sleep(0.01)
    assert model.cancelled == 1  # the first caller's own call; the stacked one still has a caller
    queued[2].cancel()
    await until(lambda: model.cancelled == 2)
    await asyncio.sleep(0.01)
    assert not batcher._lanes or all(lane.inflight == 0 for lane in batcher._lanes.values())


def test_a_stacked_call_waits_as_long_as_its_most_patient_caller() -> None:
    a, b = request(np.ones((1, 3), np.float32), "a"), request(np.ones((1, 3), np.float32), "b")
    a.deadline, b.deadline = 10.0, 12.5
    assert stack_requests([a, b], 2).deadline == 12.5
    b.deadline = None
    assert stack_requests([a, b], 2).deadline is None
