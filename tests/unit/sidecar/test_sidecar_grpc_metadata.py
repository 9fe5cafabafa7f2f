"""Call metadata over ``limits.maxHeaderBytes`` is refused when the call starts, whether or not
grpc-core has begun enforcing its own header-list limit (it does only after the SETTINGS ACK)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from guardedmodel_sidecar.grpc_listener import MetadataBudget


class Details:
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.method = "/inference.GRPCInferenceService/ModelInfer"
        self.invocation_metadata = metadata


async def test_metadata_over_the_budget_gets_the_refusal_handler_without_the_real_one() -> None:
    budget = MetadataBudget(1024)
    called: list[Any] = []

    async def continuation(details: Any) -> str:
        called.append(details)
        return "real handler"

    small = Details((("x-a", "b" * 100),))
    assert await budget.intercept_service(continuation, small) == "real handler"  # type: ignore[arg-type]
    big = Details((("x-a", "b" * 600), ("x-b", "c" * 600)))  # 1200 + 2 * 32 bytes
    refusal = await budget.intercept_service(continuation, big)  # type: ignore[arg-type]
    assert called == [small]
    assert refusal.request_streaming and refusal.response_streaming  # runs before any message is read


async def test_a_real_call_with_oversized_metadata_is_resource_exhausted() -> None:
    server = grpc.aio.server(interceptors=[MetadataBudget(1024)])

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("t.S", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/t.S/Echo")
            assert await call(b"hi", timeout=5) == b"hi"
            try:
                await call(b"hi", metadata=(("x-big", "v" * 2000),), timeout=5)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            else:
                raise AssertionError("oversized metadata was accepted")
    finally:
        await server.stop(None)
        await asyncio.sleep(0)
