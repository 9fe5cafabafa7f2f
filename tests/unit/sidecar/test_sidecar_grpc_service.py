"""The gRPC endpoint's own mechanics, with a guard the test controls: the bytes, metadata and deadline
Triton receives for a forwarded call, a bug inside the decoder or the guard, deadlines and cancellation
reaching the work behind a call, ModelStreamInfer's ordering and window, and the server's limits.

The sidecar's real server and a real grpcio server standing in for Triton's gRPC endpoint run on
loopback; a stand-in pipeline takes the guard's place, so each case can make the guard fail, stall or
finish out of order on demand, and count what reached it. Real Triton cannot show these: it does not
report the metadata and deadline it received, and its model cannot be told to stall per call.

Everything a caller sees from the real guard in front of real Triton is tested there:
tests/integration/sidecar/test_sidecar_grpc_triton.py (guarded infer, streams, every method of the
allow-list, deadlines), test_sidecar_grpc_errors_triton.py (each refusal's code, message, trailers and
audit record) and test_sidecar_attacks.py (malformed and oversized metadata written byte by byte).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from guardedmodel_sidecar import grpc_server
from guardedmodel_sidecar.endpoints import GRPC_FORWARDED, GRPC_GUARDED, GRPC_LOCAL, GRPC_REFUSED
from guardedmodel_sidecar.errors import GuardError, InputRefused
from guardedmodel_sidecar.grpc_listener import SERVICE, server_options, start_grpc_server
from guardedmodel_sidecar.grpc_server import DENIED, FORWARDED, GrpcService
from guardedmodel_sidecar.limits import Limits
from guardedmodel_sidecar.pipeline import GuardedResult
from guardedmodel_sidecar.protocol.budget import DecodeBudget
from guardedmodel_sidecar.protocol.model import InferRequest, InferResponse, OutputTensor

RESTRICTED = ("guardedmodel-sidecar-key", "s3cret")
ALL_METHODS = [m.name for m in service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods]


# ------------------------------------------------------------------------------------------ fixtures


@dataclass
class TritonStandIn:
    """A real grpcio server answering every method of Triton's service with ``b"triton:" + method``."""

    calls: list[tuple[str, bytes, dict[str, str], float | None]] = field(default_factory=list)
    fail_with: grpc.StatusCode | None = None
    server: Any = None
    port: int = 0

    async def start(self) -> TritonStandIn:
        stand_in = self

        class Handler(grpc.GenericRpcHandler):
            def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
                method = str(details.method).rsplit("/", 1)[-1]

                async def answer(body: bytes, context: grpc.aio.ServicerContext) -> bytes:
                    metadata = {k: v for k, v in (context.invocation_metadata() or ())}
                    stand_in.calls.append((method, body, metadata, context.time_remaining()))
                    if stand_in.fail_with is not None:
                        await context.abort(stand_in.fail_with, f"Triton says no to {method}")
                    return b"triton:" + method.encode()

                return grpc.unary_unary_rpc_method_handler(answer)

        self.server = grpc.aio.server()
        self.server.add_generic_rpc_handlers((Handler(),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        return self

    async def stop(self) -> None:
        await self.server.stop(None)


Behaviour = Callable[[InferRequest], Awaitable[GuardedResult]]


class StandInPipeline:
    """What ``GrpcService`` uses of ``Pipeline``: ``infer``, ``record_undecodable`` and the config."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.config = SimpleNamespace(triton_restricted_header=RESTRICTED)
        self.decode_budget = DecodeBudget(max_elements=1 << 20)
        self.requests: list[InferRequest] = []
        self.undecodable: list[tuple[str, str, GuardError, bytes]] = []
        self.running = 0
        self.most_running = 0
        self.cancelled = 0

    async def infer(self, request: InferRequest) -> GuardedResult:
        self.requests.append(request)
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            return await self.behaviour(request)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1

    def record_undecodable(self, model: str, version: str, exc: GuardError, body: bytes | memoryview) -> None:
        self.undecodable.append((model, version, exc, bytes(body)))


async def echo(request: InferRequest) -> GuardedResult:
    """Answers y = 2x with the guard's parameters, as the pipeline would."""
    tensor = request.inputs[0]
    assert tensor.array is not None
    y = (2 * tensor.array).astype(np.float32)
    response = InferResponse(
        request.model_name, "1", request.id, {}, [OutputTensor("Y", "FP32", y.shape, y.tobytes())]
    )
    return GuardedResult(response, "1", None, {"guard_decision": "accept"}, {})  # type: ignore[arg-type]


async def never_answers(request: InferRequest) -> GuardedResult:
    """Holds the call until the caller or the server gives up on it."""
    await asyncio.sleep(30)
    raise AssertionError("not reached")


@dataclass
class Sidecar:
    pipeline: StandInPipeline
    triton: TritonStandIn
    channel: grpc.aio.Channel
    port: int

    def call(self, method: str) -> Any:
        return self.channel.unary_unary(f"/{SERVICE}/{method}")

    def stream(self) -> Any:
        return self.channel.stream_stream(f"/{SERVICE}/ModelStreamInfer")()


@pytest.fixture
async def start_sidecar() -> AsyncIterator[Callable[..., Awaitable[Sidecar]]]:
    started: list[tuple[Any, GrpcService, grpc.aio.Channel, TritonStandIn]] = []

    async def start(behaviour: Behaviour = echo, **limits: Any) -> Sidecar:
        triton = await TritonStandIn().start()
        pipeline = StandInPipeline(behaviour)
        bounds = Limits(**limits)
        service = GrpcService(pipeline, f"127.0.0.1:{triton.port}", lambda: True, limits=bounds)  # type: ignore[arg-type]
        server, port = await start_grpc_server(service, "127.0.0.1", 0, bounds)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        started.append((server, service, channel, triton))
        return Sidecar(pipeline, triton, channel, port)

    yield start
    for server, service, channel, triton in started:
        await channel.close()
        await server.stop(None)
        await service.close()
        await triton.stop()


def infer_request(rows: int = 1, rid: str = "", model: str = "m") -> service_pb2.ModelInferRequest:
    x = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
    msg = service_pb2.ModelInferRequest(model_name=model, id=rid)
    tensor = msg.inputs.add()
    tensor.name, tensor.datatype = "X", "FP32"
    tensor.shape.extend(x.shape)
    msg.raw_input_contents.append(x.tobytes())
    return msg


async def rpc_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


# ------------------------------------------------------------------------------------------ allow-list


def test_the_grpc_allow_list_is_the_http_sides() -> None:
    # What each method gets is checked against real Triton, method by method, in
    # tests/integration/sidecar/test_sidecar_grpc_triton.py; here: one allow-list for both protocols.
    assert set(FORWARDED) == GRPC_FORWARDED and DENIED == GRPC_REFUSED
    assert GRPC_LOCAL | GRPC_GUARDED | GRPC_FORWARDED | set(GRPC_REFUSED) <= set(ALL_METHODS)


async def test_forwarded_calls_carry_bytes_unchanged_and_the_callers_deadline(start_sidecar) -> None:
    sidecar = await start_sidecar(request_timeout_s=7.0)
    body = service_pb2.ModelMetadataRequest(name="m", version="1").SerializeToString()
    assert await sidecar.call("ModelMetadata")(body, timeout=2.0) == b"triton:ModelMetadata"
    assert await sidecar.call("ModelConfig")(body) == b"triton:ModelConfig"  # no deadline of its own
    index = service_pb2.RepositoryIndexRequest(ready=True).SerializeToString()
    assert await sidecar.call("RepositoryIndex")(index, timeout=5) == b"triton:RepositoryIndex"
    (_, sent, metadata, remaining), (_, _, config_metadata, capped), (_, _, index_metadata, _) = (
        sidecar.triton.calls
    )
    assert sent == body
    assert remaining is not None and 1.0 < remaining <= 2.1
    assert capped is not None and 6.0 < capped <= 7.1  # limits.request_timeout_s caps a call without one
    # Only the call in Triton's restricted model-repository group carries the sidecar's key.
    key = "triton-grpc-protocol-" + RESTRICTED[0]  # the metadata name Triton's gRPC endpoint reads
    assert index_metadata.get(key) == RESTRICTED[1]
    assert key not in metadata and key not in config_metadata


async def test_server_ready_answers_from_the_sidecars_view() -> None:
    ready = False
    triton = await TritonStandIn().start()
    service = GrpcService(StandInPipeline(echo), f"127.0.0.1:{triton.port}", lambda: ready, limits=Limits())  # type: ignore[arg-type]
    server, port = await start_grpc_server(service, "127.0.0.1", 0, Limits())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            ask = channel.unary_unary(f"/{SERVICE}/ServerReady")
            assert not service_pb2.ServerReadyResponse.FromString(await ask(b"", timeout=5)).ready
            ready = True
            assert service_pb2.ServerReadyResponse.FromString(await ask(b"", timeout=5)).ready
    finally:
        await server.stop(None)
        await service.close()
        await triton.stop()
    assert not triton.calls


# ------------------------------------------------------------------------------------------ errors


async def test_a_decoder_gap_is_still_the_callers_invalid_argument(
    start_sidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    def gap(msg: Any, budget: Any) -> InferRequest:
        raise OverflowError("a case the decoder did not foresee")

    monkeypatch.setattr(grpc_server, "request_from_proto", gap)
    sidecar = await start_sidecar()
    error = await rpc_error(sidecar.call("ModelInfer")(infer_request().SerializeToString(), timeout=5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "ModelInferRequest cannot be decoded (OverflowError)"
    assert len(sidecar.pipeline.undecodable) == 1


async def test_an_unexpected_error_is_internal_without_client_bytes_in_reply_or_log(
    start_sidecar, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "client-secret-7f3a"

    async def broken(request: InferRequest) -> GuardedResult:
        raise ValueError(f"something about {request.model_name}")

    sidecar = await start_sidecar(broken)
    with caplog.at_level(logging.ERROR, logger="guardedmodel_sidecar.grpc_server"):
        error = await rpc_error(
            sidecar.call("ModelInfer")(infer_request(model=secret).SerializeToString(), timeout=5)
        )
    assert error.code() == grpc.StatusCode.INTERNAL
    assert secret not in (error.details() or "")
    assert "ValueError" in caplog.text and secret not in caplog.text


# ------------------------------------------------------------------------------------------ deadlines


async def test_the_callers_deadline_becomes_the_requests_deadline(start_sidecar) -> None:
    sidecar = await start_sidecar()
    before = asyncio.get_running_loop().time()
    await sidecar.call("ModelInfer")(infer_request().SerializeToString(), timeout=3.0)
    await sidecar.call("ModelInfer")(infer_request().SerializeToString())
    with_deadline, without = sidecar.pipeline.requests
    assert with_deadline.deadline is not None and before + 2.0 < with_deadline.deadline <= before + 3.1
    assert without.deadline is None


async def test_a_cancelled_or_expired_call_cancels_the_work_behind_it(start_sidecar) -> None:
    sidecar = await start_sidecar(never_answers)
    started = time.monotonic()
    error = await rpc_error(sidecar.call("ModelInfer")(infer_request().SerializeToString(), timeout=0.3))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - started < 2
    call = sidecar.call("ModelInfer")(infer_request().SerializeToString())
    while len(sidecar.pipeline.requests) < 2:
        await asyncio.sleep(0.01)
    call.cancel()
    deadline = time.monotonic() + 5
    while sidecar.pipeline.cancelled < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert sidecar.pipeline.cancelled == 2 and sidecar.pipeline.running == 0


# ------------------------------------------------------------------------------------------ streaming


def stream_answers(replies: list[bytes]) -> list[service_pb2.ModelStreamInferResponse]:
    return [service_pb2.ModelStreamInferResponse.FromString(r) for r in replies]


async def test_stream_answers_in_order_and_a_refusal_carries_the_requests_id(start_sidecar) -> None:
    async def nan_refused(request: InferRequest) -> GuardedResult:
        await asyncio.sleep(0.02 if request.id.endswith("0") else 0.0)  # the first one finishes last
        if request.id == "r-bad":
            raise InputRefused("input 'X': 1 value(s) are NaN")
        return await echo(request)

    sidecar = await start_sidecar(nan_refused)
    ids = ["r-0", "r-1", "r-bad", "r-3"]
    call = sidecar.stream()
    for rid in ids:
        await call.write(infer_request(rid=rid).SerializeToString())
    await call.done_writing()
    answers = stream_answers([reply async for reply in call])
    assert [a.infer_response.id for a in answers] == ids
    assert [a.error_message for a in answers if a.error_message] == [
        "[request id: r-bad] input 'X': 1 value(s) are NaN"
    ]
    refused = answers[2].infer_response
    assert (refused.model_name, refused.id, len(refused.outputs)) == ("m", "r-bad", 0)
    assert all(a.infer_response.outputs[0].name == "Y" for i, a in enumerate(answers) if i != 2)


async def test_a_stream_reads_no_further_ahead_than_its_window(start_sidecar) -> None:
    release = asyncio.Event()

    async def held(request: InferRequest) -> GuardedResult:
        await release.wait()
        return await echo(request)

    sidecar = await start_sidecar(held, max_pipelined_requests=4)
    call = sidecar.stream()
    for i in range(40):
        await call.write(infer_request(rid=str(i)).SerializeToString())
    deadline = time.monotonic() + 5
    while len(sidecar.pipeline.requests) < 4 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    assert len(sidecar.pipeline.requests) == 4  # the other 36 are still with the client / in grpc's windows
    release.set()
    await call.done_writing()
    answers = stream_answers([reply async for reply in call])
    assert [a.infer_response.id for a in answers] == [str(i) for i in range(40)]
    assert sidecar.pipeline.most_running <= 4


async def test_a_cancelled_stream_cancels_its_requests_in_flight(start_sidecar) -> None:
    sidecar = await start_sidecar(never_answers)
    call = sidecar.stream()
    for i in range(3):
        await call.write(infer_request(rid=str(i)).SerializeToString())
    while len(sidecar.pipeline.requests) < 3:
        await asyncio.sleep(0.01)
    call.cancel()
    deadline = time.monotonic() + 5
    while sidecar.pipeline.running and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert sidecar.pipeline.cancelled == 3 and sidecar.pipeline.running == 0


# ------------------------------------------------------------------------------------------ limits


async def test_connections_and_calls_past_their_limits_are_refused_before_any_work(start_sidecar) -> None:
    async def slow(request: InferRequest) -> GuardedResult:
        await asyncio.sleep(0.5)
        return await echo(request)

    sidecar = await start_sidecar(slow, max_connections=2, max_inflight_requests=1)
    # Connections: grpc-core closes the third one (each channel here gets its own connection).
    await sidecar.call("ServerLive")(b"", timeout=5)
    channels = [
        grpc.aio.insecure_channel(
            f"127.0.0.1:{sidecar.port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        for _ in range(2)
    ]
    try:
        await channels[0].unary_unary(f"/{SERVICE}/ServerLive")(b"", timeout=5)
        error = await rpc_error(channels[1].unary_unary(f"/{SERVICE}/ServerLive")(b"", timeout=2))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        for channel in channels:
            await channel.close()
    # Calls: past max_concurrent_rpcs (4 x maxInflightRequests) grpcio answers before any handler runs.
    body = infer_request().SerializeToString()
    results = await asyncio.gather(
        *(sidecar.call("ModelInfer")(body, timeout=5) for _ in range(6)), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert [r.code() for r in refused] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
    assert len(sidecar.pipeline.requests) == 4


def test_server_options_come_from_the_limits() -> None:
    limits = Limits(
        max_grpc_message_bytes=1 << 20, max_concurrent_streams=7, max_header_bytes=4096, idle_timeout_s=9.0
    )
    options = dict(server_options(limits, reuse_port=True))
    assert options["grpc.max_receive_message_length"] == 1 << 20
    assert options["grpc.max_concurrent_streams"] == 7
    assert options["grpc.max_metadata_size"] == options["grpc.absolute_max_metadata_size"] == 4096
    assert options["grpc.max_connection_idle_ms"] == 9000
    assert options["grpc.so_reuseport"] == 1
    assert options["grpc.http2.max_ping_strikes"] == 2
