"""A graceful stop of the v2 HTTP server over real loopback sockets: idle keep-alive connections close
at once, requests already read are answered (the last one with Connection: close) and then the
connection closes, nothing more is read, and what is still open after the grace period is cut."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_sidecar_http_server import closed_by_server, make_server, read_response

from guardedmodel_sidecar.http_connection import LINGER_S
from guardedmodel_sidecar.upstream import TritonHttp

CONFIG = b"GET /v2/models/m/config HTTP/1.1\r\nHost: s\r\n\r\n"
LIVE = b"GET /v2/health/live HTTP/1.1\r\nHost: s\r\n\r\n"


class HeldTriton(asyncio.Protocol):
    """A Triton stand-in that answers each request once ``gate`` opens."""

    gate: asyncio.Event

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        asyncio.get_running_loop().create_task(self._reply())

    async def _reply(self) -> None:
        await HeldTriton.gate.wait()
        if not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")  # type: ignore[attr-defined]


@pytest.fixture
async def sidecar(tmp_path: Path) -> AsyncIterator[tuple[int, object, asyncio.Server]]:
    HeldTriton.gate = asyncio.Event()
    triton = await asyncio.get_running_loop().create_server(HeldTriton, "127.0.0.1", 0)
    v2, _ = make_server(tmp_path)
    v2.triton = TritonHttp(f"127.0.0.1:{triton.sockets[0].getsockname()[1]}")
    listener = await v2.start("127.0.0.1", 0)
    yield listener.sockets[0].getsockname()[1], v2, listener
    HeldTriton.gate.set()
    listener.close()
    triton.close()


async def test_drain_answers_what_was_read_and_closes_every_connection(sidecar) -> None:
    port, v2, listener = sidecar
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
    idle_writer.write(LIVE)
    assert (await read_response(idle_reader))[0] == 200  # type: ignore[index]
    busy_reader, busy_writer = await asyncio.open_connection("127.0.0.1", port)
    busy_writer.write(CONFIG + LIVE)  # the first waits on Triton, the second is read behind it
    await asyncio.sleep(0.1)

    listener.close()
    v2.drain()
    assert await closed_by_server(idle_reader)  # idle: closed at once
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
    busy_writer.write(LIVE)  # sent after the stop began: never read
    await asyncio.sleep(0.05)
    assert v2.connections == 1

    HeldTriton.gate.set()
    first = await asyncio.wait_for(read_response(busy_reader), 5)
    second = await asyncio.wait_for(read_response(busy_reader), 5)
    assert first is not None and first[0] == 200 and "connection" not in first[1]
    assert second is not None and second[0] == 200 and second[1]["connection"] == "close"
    assert await closed_by_server(busy_reader)  # a FIN, not a reset: both answers arrived whole
    await asyncio.sleep(0.05)
    assert v2.connections == 1  # lingering: reading what the client still sends, until it closes
    busy_writer.close()
    await asyncio.sleep(0.05)
    assert v2.connections == 0
    idle_writer.close()


async def test_a_client_that_never_closes_is_closed_after_the_linger(sidecar) -> None:
    port, v2, listener = sidecar
    HeldTriton.gate.set()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(CONFIG)
    await asyncio.sleep(0.05)  # answered, idle now... one more, held:
    HeldTriton.gate.clear()
    writer.write(CONFIG)
    await asyncio.sleep(0.05)
    listener.close()
    v2.drain()
    HeldTriton.gate.set()
    assert (await read_response(reader))[0] == 200  # type: ignore[index]
    second = await asyncio.wait_for(read_response(reader), 5)
    assert second is not None and second[1]["connection"] == "close"
    assert await closed_by_server(reader)
    await asyncio.sleep(LINGER_S + 0.3)
    assert v2.connections == 0  # the client kept its side open; the linger ended it
    writer.close()


async def test_abort_cuts_what_the_grace_period_did_not_finish(sidecar) -> None:
    port, v2, listener = sidecar
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(CONFIG)
    await asyncio.sleep(0.1)
    listener.close()
    v2.drain()
    await asyncio.sleep(0.1)
    assert v2.connections == 1  # still waiting on Triton
    v2.abort()
    assert await closed_by_server(reader)  # cut, unanswered
    await asyncio.sleep(0.05)
    assert v2.connections == 0
    writer.close()


async def test_a_client_that_sent_all_it_will_send_is_closed_at_once(sidecar) -> None:
    port, v2, listener = sidecar
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(CONFIG)
    writer.write_eof()  # half-closed: nothing more will come, no linger needed
    await asyncio.sleep(0.05)
    listener.close()
    v2.drain()
    HeldTriton.gate.set()
    assert (await asyncio.wait_for(read_response(reader), 5))[0] == 200  # type: ignore[index]
    assert await closed_by_server(reader)
    await asyncio.sleep(0.05)
    assert v2.connections == 0  # well before LINGER_S
    writer.close()
