"""Triton's liveness watch against a stand-in Triton on loopback that answers, answers not-live, hangs
(accepts and never answers) or is gone.

A hung Triton's calls in flight, and those waiting for a connection, are abandoned with a 503 that says
why; a Triton that answers not-live keeps its calls in flight (it still answers them); a Triton that is
gone refuses at once; while down every new call fails at once, and one good check ends it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from guardedmodel_sidecar.errors import Unavailable
from guardedmodel_sidecar.triton_watch import TritonWatch, check_liveness
from guardedmodel_sidecar.upstream import TritonHttp

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
NOT_LIVE = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"


class StandIn(asyncio.Protocol):
    """Answers every request (one per write, as the clients here send them) with ``answer`` once
    ``gate`` is open; with the gate shut it holds every request, as a stopped process does."""

    answer = OK
    gate: asyncio.Event
    connections = 0
    held: set[int] = set()  # connections (by number, from 1) that never answer, as if their thread were busy

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        StandIn.connections += 1
        self.number = StandIn.connections

    def data_received(self, data: bytes) -> None:
        asyncio.get_running_loop().create_task(self._reply())

    async def _reply(self) -> None:
        await StandIn.gate.wait()
        if self.number in StandIn.held:
            return
        if not self.transport.is_closing():
            self.transport.write(StandIn.answer)  # type: ignore[attr-defined]


@pytest.fixture
async def url() -> AsyncIterator[str]:
    StandIn.answer = OK
    StandIn.connections = 0
    StandIn.held = set()
    StandIn.gate = asyncio.Event()
    StandIn.gate.set()
    server = await asyncio.get_running_loop().create_server(StandIn, "127.0.0.1", 0)
    yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    StandIn.gate.set()
    server.close()


def watch_of(pool: TritonHttp) -> tuple[TritonWatch, list[bool]]:
    changes: list[bool] = []
    return TritonWatch(pool, changes.append, timeout_s=0.2), changes


async def test_a_hung_triton_abandons_calls_in_flight_and_waiting_then_recovers(url: str) -> None:
    pool = TritonHttp(url, max_connections=2, timeout_s=60)
    health = TritonHttp(url, max_connections=1)
    watch, changes = watch_of(pool)
    watch.apply(await check_liveness(health, 0.2))
    assert changes == [True] and pool.down is None

    StandIn.gate.clear()  # hung: connections are accepted, nothing is answered
    calls = [asyncio.ensure_future(pool.request("GET", "/v2/models/m")) for _ in range(4)]
    await asyncio.sleep(0.05)
    assert not any(c.done() for c in calls)  # 2 in flight, 2 waiting for a connection
    liveness = await check_liveness(health, 0.2)
    assert liveness.hung and "did not answer its liveness check within 0.2 s" in str(liveness.down)
    assert StandIn.connections >= 3  # the check's second try was on a new connection
    watch.apply(liveness)
    assert changes == [True, False]
    results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 1.0)
    assert all(isinstance(r, Unavailable) for r in results), results
    assert sum("abandoned" in r.message for r in results if isinstance(r, Unavailable)) == 2
    assert pool.open_connections == 0  # the abandoned calls' connections are closed
    with pytest.raises(Unavailable, match="liveness check"):
        await pool.request("GET", "/v2/models/m")  # refused at once, not sent

    StandIn.gate.set()
    watch.apply(await check_liveness(health, 1.0))
    assert changes == [True, False, True] and pool.down is None
    assert (await pool.request("GET", "/v2/models/m")).status == 200


async def test_a_triton_answering_not_live_keeps_its_calls_in_flight(url: str) -> None:
    pool = TritonHttp(url, timeout_s=60)
    health = TritonHttp(url, max_connections=1)
    watch, changes = watch_of(pool)
    StandIn.gate.clear()
    call = asyncio.ensure_future(pool.request("GET", "/v2/models/m"))
    await asyncio.sleep(0.05)
    StandIn.answer = NOT_LIVE
    check = asyncio.ensure_future(check_liveness(health, 1.0))
    await asyncio.sleep(0.05)
    StandIn.gate.set()  # both are answered now: the call in flight with 503 too, but it is answered
    liveness = await check
    assert not liveness.hung and "not live (HTTP 503)" in str(liveness.down)
    watch.apply(liveness)
    assert changes == [False]
    assert (await asyncio.wait_for(call, 1.0)).status == 503  # Triton's own answer, not abandoned


async def test_a_triton_that_is_gone_is_down_at_once() -> None:
    server = await asyncio.get_running_loop().create_server(asyncio.Protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    pool = TritonHttp(f"127.0.0.1:{port}")
    watch, changes = watch_of(pool)
    liveness = await check_liveness(TritonHttp(f"127.0.0.1:{port}", max_connections=1), 1.0)
    assert not liveness.hung and "not reachable" in str(liveness.down)
    watch.apply(liveness)
    assert changes == [False] and pool.down == liveness.down
    with pytest.raises(Unavailable, match="not reachable"):
        await pool.request("GET", "/v2/health/ready")


async def test_the_watch_loop_finds_a_hang_within_interval_plus_timeout(url: str) -> None:
    pool = TritonHttp(url)
    changes: list[bool] = []
    watch = TritonWatch(pool, changes.append, interval_s=0.1, timeout_s=0.2)
    task = asyncio.ensure_future(watch.run())
    try:
        while changes != [True]:
            await asyncio.sleep(0.01)
        StandIn.gate.clear()
        await asyncio.wait_for(_until(lambda: changes == [True, False]), 2.0)
        StandIn.gate.set()
        await asyncio.wait_for(_until(lambda: changes == [True, False, True]), 2.0)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def _until(condition) -> None:  # type: ignore[no-untyped-def]
    while not condition():
        await asyncio.sleep(0.01)


async def test_a_check_stuck_behind_a_busy_connection_is_asked_again_on_a_new_one(url: str) -> None:
    """As during a model load: the load's thread holds the check's connection, a new one answers."""
    health = TritonHttp(url, max_connections=1)
    assert (await check_liveness(health, 0.4)).down is None  # connection 1
    StandIn.held = {1}
    liveness = await check_liveness(health, 0.4)
    assert liveness.down is None and StandIn.connections == 2
