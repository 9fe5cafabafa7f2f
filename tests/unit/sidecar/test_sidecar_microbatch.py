"""Micro-batching: concurrent requests share upstream calls and each caller gets exactly its rows."""

from __future__ import annotations

import asyncio

import numpy as np

from guardedmodel_sidecar.microbatch import MicroBatcher, split_response, stack_requests
from guardedmodel_sidecar.protocol.model import InferRequest, InferResponse, OutputTensor, Tensor


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
        np.testing.assert_array_equal(result.outputs[0].as_numpy(), 2 * x + 1)
        assert result.id == f"r{i}"
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
