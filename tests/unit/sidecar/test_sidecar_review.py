"""Review items: durable spool first, delivered to a real webhook with retries, capped by maxFraction."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import orjson
from aiohttp import web

from guardedmodel_sidecar.review import ReviewSink


class Receiver:
    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.attempts = 0
        self.items: list[dict] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        if self.attempts <= self.fail_first:
            return web.Response(status=500)
        self.items.append(orjson.loads(await request.read()))
        return web.Response(status=200)


async def serve(receiver: Receiver) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/hook"


async def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_items_are_spooled_then_delivered_after_retries(tmp_path: Path) -> None:
    receiver = Receiver(fail_first=2)
    runner, url = await serve(receiver)
    sink = ReviewSink(url, tmp_path, max_fraction=1.0, retries=5, backoff_s=0.01)
    sender = asyncio.create_task(sink.run_sender())
    try:
        for i in range(3):
            sink.note_request()
            assert sink.offer({"id": f"r{i}", "decision": "review"})
        await wait_for(lambda: sink.sent == 3)
        assert [item["id"] for item in receiver.items] == ["r0", "r1", "r2"]
        assert sink.send_failures == 2 and sink.spool_depth() == 0
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        await runner.cleanup()


async def test_an_unreachable_webhook_keeps_items_in_the_spool_for_a_later_run(tmp_path: Path) -> None:
    receiver = Receiver()
    runner, url = await serve(receiver)
    await runner.cleanup()  # nothing listens there any more
    down = ReviewSink(url, tmp_path, max_fraction=1.0, retries=2, backoff_s=0.01, slow_retry_s=60)
    sender = asyncio.create_task(down.run_sender())
    down.note_request()
    down.offer({"id": "survivor"})
    await wait_for(lambda: down.send_failures >= 2)
    sender.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sender
    assert down.spool_depth() == 1

    runner, url = await serve(receiver)
    later = ReviewSink(url, tmp_path, max_fraction=1.0)
    sender = asyncio.create_task(later.run_sender())
    try:
        await wait_for(lambda: later.sent == 1)
        assert receiver.items == [{"id": "survivor"}] and later.spool_depth() == 0
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        await runner.cleanup()


def test_max_fraction_caps_what_is_sent_but_counts_the_rest(tmp_path: Path) -> None:
    sink = ReviewSink("http://127.0.0.1:9/unused", tmp_path, max_fraction=0.1)
    sent = 0
    for i in range(200):
        sink.note_request()
        sent += sink.offer({"id": i})
    assert sent <= 1 + 0.1 * 200 and sent >= 0.1 * 200 - 1
    assert sink.capped == 200 - sent and sink.spool_depth() == sent


def test_without_a_webhook_nothing_is_spooled(tmp_path: Path) -> None:
    sink = ReviewSink(None, tmp_path / "spool", max_fraction=1.0)
    sink.note_request()
    assert not sink.offer({"id": 1})
    assert sink.offered == 1 and not (tmp_path / "spool").exists()
