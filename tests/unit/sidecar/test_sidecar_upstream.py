"""The keep-alive client to Triton against a stand-in HTTP server on loopback: connections are reused,
and a call its caller gives up on (a gRPC deadline, a cancel) closes its connection instead of leaving
it open with Triton's answer still to come."""

from __future__ import annotations

import asyncio

from guardedmodel_sidecar.upstream import TritonHttp


class _SlowTriton(asyncio.Protocol):
    """Answers each request after ``delay`` seconds; counts connections and closes."""

    opened = 0
    closed = 0
    delay = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        type(self).opened += 1
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        type(self).closed += 1

    def data_received(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            asyncio.get_running_loop().call_later(type(self).delay, self._answer)

    def _answer(self) -> None:
        if not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")  # type: ignore[attr-defined]


async def test_connections_are_reused_and_an_abandoned_call_closes_its_own() -> None:
    _SlowTriton.opened = _SlowTriton.closed = 0
    _SlowTriton.delay = 0.0
    server = await asyncio.get_running_loop().create_server(_SlowTriton, "127.0.0.1", 0)
    client = TritonHttp(f"127.0.0.1:{server.sockets[0].getsockname()[1]}")
    try:
        for _ in range(5):
            assert (await client.get_json("/v2/health/ready")) == (200, {})
        assert _SlowTriton.opened == 1
        _SlowTriton.delay = 0.5
        call = asyncio.ensure_future(client.get_json("/v2/health/ready"))
        await asyncio.sleep(0.1)
        call.cancel()
        await asyncio.sleep(0.1)
        assert _SlowTriton.closed == 1  # closed at once, not when the late answer arrives
        _SlowTriton.delay = 0.0
        assert (await client.get_json("/v2/health/ready")) == (200, {})
        assert _SlowTriton.opened == 2
    finally:
        client.close()
        server.close()
        await server.wait_closed()
