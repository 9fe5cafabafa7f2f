"""The sidecar's HTTP/2 gRPC server against grpcio's own client (C-core, as tritonclient.grpc uses):
unary and streaming calls, status codes with messages and trailing metadata, flow control in both
directions with messages far above the windows, compression, size limits, deadlines, cancellation,
and clients that do not speak HTTP/2. A stand-in service replaces the guard pipeline; the Triton-backed
tests in tests/integration/sidecar cover the real one."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import grpc
import pytest

from guardedmodel_sidecar.grpc_http2 import Http2GrpcServer, request_header_problem
from guardedmodel_sidecar.grpc_server import SERVICE, GrpcStatus, start_grpcio_server
from guardedmodel_sidecar.protocol.grpc_wire import parse_timeout

MAX_MESSAGE = 8 * 1024 * 1024


class StandInService:
    """Echoes, or fails, sleeps or answers big depending on the request's first bytes."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.calls: list[str] = []
        self.open_streams = 0

    async def unary(self, method: str, body: bytes) -> bytes:
        self.calls.append(method)
        if body.startswith(b"fail"):
            raise GrpcStatus(
                grpc.StatusCode.INVALID_ARGUMENT,
                "input 'INPUT': 3 value(s) are NaN — 100% refused",
                (("guard-decision", "reject"),),
            )
        if body.startswith(b"sleep"):
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        if body.startswith(b"nap"):
            await asyncio.sleep(0.5)
        if body.startswith(b"big"):
            return bytes(range(256)) * (3 * 1024 * 1024 // 256)
        if body.startswith(b"boom"):
            raise RuntimeError("a bug")
        return b"echo:" + body

    async def stream(self, method: str, messages: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        self.open_streams += 1
        try:
            async for message in messages:
                if message == b"stop":
                    raise GrpcStatus(grpc.StatusCode.FAILED_PRECONDITION, "told to stop")
                yield b"echo:" + message
        finally:
            self.open_streams -= 1


@pytest.fixture(params=["http2", "grpcio"])
async def served(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, StandInService]]:
    """Both servers the sidecar can run (tuning.grpcServer) must behave the same to a client."""
    service = StandInService()
    if request.param == "http2":
        server = Http2GrpcServer(service, max_message=MAX_MESSAGE)  # type: ignore[arg-type]
        port = await server.start("127.0.0.1", 0)
        yield f"127.0.0.1:{port}", service
        await server.stop(grace=0.5)
    else:
        grpcio, port = await start_grpcio_server(service, "127.0.0.1", 0, MAX_MESSAGE)  # type: ignore[arg-type]
        yield f"127.0.0.1:{port}", service
        await grpcio.stop(grace=0.5)


def unary(channel: grpc.aio.Channel, method: str = "ModelInfer") -> grpc.aio.UnaryUnaryMultiCallable:
    return channel.unary_unary(f"/{SERVICE}/{method}")


async def test_unary_calls_round_trip_also_concurrently(served) -> None:
    target, service = served
    async with grpc.aio.insecure_channel(target) as channel:
        call = unary(channel)
        assert await call(b"hello") == b"echo:hello"
        replies = await asyncio.gather(*(call(f"n{i}".encode()) for i in range(200)))
    assert replies == [f"echo:n{i}".encode() for i in range(200)]
    assert len(service.calls) == 201


async def test_messages_far_above_the_flow_control_windows_pass_both_ways(served) -> None:
    target, _ = served
    request = b"x" * (5 * 1024 * 1024)
    async with grpc.aio.insecure_channel(
        target, options=[("grpc.max_receive_message_length", -1)]
    ) as channel:
        assert await unary(channel)(request) == b"echo:" + request
        big = await unary(channel)(b"big")
        again = await unary(channel)(b"hello")
    assert big == bytes(range(256)) * (3 * 1024 * 1024 // 256)
    assert again == b"echo:hello"


async def test_a_failed_call_carries_code_message_and_trailing_metadata(served) -> None:
    target, _ = served
    async with grpc.aio.insecure_channel(target) as channel:
        call = unary(channel)(b"fail")
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await call
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.value.details() == "input 'INPUT': 3 value(s) are NaN — 100% refused"
    assert ("guard-decision", "reject") in tuple(failure.value.trailing_metadata() or ())


async def test_a_bug_in_the_service_is_an_internal_error_and_the_connection_lives_on(served) -> None:
    target, _ = served
    async with grpc.aio.insecure_channel(target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await unary(channel)(b"boom")
        assert failure.value.code() == grpc.StatusCode.INTERNAL
        assert "a bug" in (failure.value.details() or "")
        assert await unary(channel)(b"after") == b"echo:after"


@pytest.mark.parametrize("path", [f"/{SERVICE}/NoSuchCall", "/other.Service/ModelInfer"])
async def test_unknown_methods_are_unimplemented(served, path: str) -> None:
    target, _ = served
    async with grpc.aio.insecure_channel(target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await channel.unary_unary(path)(b"x")
    assert failure.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_a_request_above_the_size_limit_is_refused(served) -> None:
    target, _ = served
    async with grpc.aio.insecure_channel(target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await unary(channel)(b"x" * (MAX_MESSAGE + 1))
        assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert str(MAX_MESSAGE) in (failure.value.details() or "")
        assert await unary(channel)(b"small") == b"echo:small"


async def test_gzip_compressed_requests_are_read(served) -> None:
    target, _ = served
    payload = b"compress me " * 10000
    async with grpc.aio.insecure_channel(target, compression=grpc.Compression.Gzip) as channel:
        assert await unary(channel)(payload) == b"echo:" + payload


async def test_deadline_and_cancellation_reach_the_service(served) -> None:
    target, service = served
    async with grpc.aio.insecure_channel(target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await unary(channel)(b"sleep", timeout=0.3)
        assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await asyncio.wait_for(service.cancelled.wait(), 5)
        service.cancelled.clear()
        call = unary(channel)(b"sleep")
        await asyncio.sleep(0.2)
        call.cancel()
        await asyncio.wait_for(service.cancelled.wait(), 5)
        assert await unary(channel)(b"still here") == b"echo:still here"


async def test_streaming_answers_each_message_in_order_and_ends_with_a_status(served) -> None:
    target, _ = served
    async with grpc.aio.insecure_channel(target) as channel:
        stream = channel.stream_stream(f"/{SERVICE}/ModelStreamInfer")

        async def requests(items: list[bytes]) -> AsyncIterator[bytes]:
            for item in items:
                yield item

        replies = [r async for r in stream(requests([b"a", b"b" * 200_000, b"c"]))]
        assert replies == [b"echo:a", b"echo:" + b"b" * 200_000, b"echo:c"]
        # Nothing after "stop": grpc.aio reports a write that loses the race with the server's
        # end of the call as INTERNAL on its side, whichever server ended it.
        call = stream(requests([b"a", b"stop"]))
        got = []
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            async for reply in call:
                got.append(reply)
    assert got == [b"echo:a"]
    assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_an_oversized_stream_message_ends_the_call_and_its_handler(served) -> None:
    target, service = served

    async def requests() -> AsyncIterator[bytes]:
        yield b"fine"
        await asyncio.sleep(0.2)
        yield b"x" * (MAX_MESSAGE + 1)

    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.stream_stream(f"/{SERVICE}/ModelStreamInfer")(requests())
        got = []
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            async for reply in call:
                got.append(reply)
    assert got == [b"echo:fine"]
    assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    for _ in range(100):
        if service.open_streams == 0:
            break
        await asyncio.sleep(0.02)
    assert service.open_streams == 0


async def test_a_client_that_does_not_speak_http2_is_sent_away() -> None:
    server = Http2GrpcServer(StandInService(), max_message=MAX_MESSAGE)  # type: ignore[arg-type]
    target = f"127.0.0.1:{await server.start('127.0.0.1', 0)}"
    host, port = target.rsplit(":", 1)

    def http1() -> bytes:
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            return data

    data = await asyncio.to_thread(http1)
    # Our SETTINGS, then a GOAWAY (type 7) with PROTOCOL_ERROR, then the connection closes.
    frames = []
    pos = 0
    while pos + 9 <= len(data):
        length = int.from_bytes(data[pos : pos + 3], "big")
        frames.append((data[pos + 3], data[pos + 9 : pos + 9 + length]))
        pos += 9 + length
    await server.stop(grace=0.1)
    assert frames[-1][0] == 7
    assert int.from_bytes(frames[-1][1][4:8], "big") == 1


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(b"5S", 5.0), (b"250m", 0.25), (b"2M", 120.0), (b"1H", 3600.0), (b"100u", 1e-4), (b"7n", 7e-9)],
)
def test_grpc_timeout_units(value: bytes, seconds: float) -> None:
    assert parse_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [b"", b"S", b"5", b"5x", b"-1S", b"1.5S"])
def test_malformed_grpc_timeouts_are_ignored(value: bytes) -> None:
    assert parse_timeout(value) is None


GOOD_REQUEST = (
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/inference.GRPCInferenceService/ModelInfer"),
    (b":authority", b"x"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
)


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        (GOOD_REQUEST, None),
        (GOOD_REQUEST[1:], "missing b':method'"),
        ((*GOOD_REQUEST, (b":path", b"/x")), "after a regular header"),
        ((GOOD_REQUEST[0], *GOOD_REQUEST), "given twice"),
        (((b":status", b"200"), *GOOD_REQUEST), "response pseudo-header"),
        ((*GOOD_REQUEST, (b"Content-Type", b"x")), "not lower case"),
        ((*GOOD_REQUEST, (b"connection", b"keep-alive")), "connection-specific"),
        ((*GOOD_REQUEST[:5], (b"te", b"gzip")), "te header"),
        ((GOOD_REQUEST[0], GOOD_REQUEST[1], (b":path", b"")), "empty :path"),
    ],
)
def test_malformed_request_headers_are_named(headers, problem: str | None) -> None:
    found = request_header_problem(headers)
    assert found is None if problem is None else problem in (found or "")


async def test_stopping_lets_calls_in_flight_finish_then_refuses_new_ones() -> None:
    service = StandInService()
    server = Http2GrpcServer(service, max_message=MAX_MESSAGE)  # type: ignore[arg-type]
    port = await server.start("127.0.0.1", 0)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        in_flight = asyncio.ensure_future(unary(channel)(b"nap"))
        await asyncio.sleep(0.1)
        await server.stop(grace=5)  # GOAWAY, then wait for the call in flight
        assert in_flight.done() and in_flight.result() == b"echo:nap"
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await unary(channel)(b"after", timeout=2)
    assert failure.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
