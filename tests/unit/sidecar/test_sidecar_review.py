"""Review items: durable, bounded, private spool first, delivered to a real webhook with retries, capped by
maxFraction; every item the bounds refuse is counted."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from pathlib import Path

import orjson
import pytest
from aiohttp import web
from prometheus_client import generate_latest

from guardedmodel_sidecar.audit import AuditLog
from guardedmodel_sidecar.config import ConfigError, parse_config
from guardedmodel_sidecar.metrics import SidecarMetrics
from guardedmodel_sidecar.pipeline import Pipeline
from guardedmodel_sidecar.review import ReviewSink
from guardedmodel_sidecar.review_spool import item_key
from guardedmodel_sidecar.routing import Router
from guardedmodel_sidecar.upstream import TritonHttp
from guardedmodel_testground.small_disk import SmallDisk


class Receiver:
    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.attempts = 0
        self.items: list[dict] = []
        self.keys: list[str | None] = []  # the Idempotency-Key of every attempt

    async def handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        self.keys.append(request.headers.get("Idempotency-Key"))
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


async def cancelled(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` (a sink's sender) and wait until it has stopped."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


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
            assert sink.offer({"id": f"r{i}", "decision": "review"}) == "spooled"
        await wait_for(lambda: sink.sent == 3)
        assert [item["id"] for item in receiver.items] == ["r0", "r1", "r2"]
        assert sink.send_failures == 2 and sink.spool_depth() == 0
    finally:
        await cancelled(sender)
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
    await cancelled(sender)
    assert down.spool_depth() == 1

    runner, url = await serve(receiver)
    later = ReviewSink(url, tmp_path, max_fraction=1.0)
    sender = asyncio.create_task(later.run_sender())
    try:
        await wait_for(lambda: later.sent == 1)
        assert receiver.items == [{"id": "survivor"}] and later.spool_depth() == 0
    finally:
        await cancelled(sender)
        await runner.cleanup()


def test_max_fraction_caps_what_is_sent_but_counts_the_rest(tmp_path: Path) -> None:
    sink = ReviewSink("http://127.0.0.1:9/unused", tmp_path, max_fraction=0.1)
    sent = 0
    for i in range(200):
        sink.note_request()
        sent += sink.offer({"id": i}) == "spooled"
    assert sent <= 1 + 0.1 * 200 and sent >= 0.1 * 200 - 1
    assert sink.capped == 200 - sent and sink.spool_depth() == sent


def test_without_a_webhook_nothing_is_spooled(tmp_path: Path) -> None:
    sink = ReviewSink(None, tmp_path / "spool", max_fraction=1.0)
    sink.note_request()
    assert sink.offer({"id": 1}) == "no_webhook"
    assert sink.offered == 1 and not (tmp_path / "spool").exists()


def offer(sink: ReviewSink, item: dict) -> str:
    sink.note_request()
    return sink.offer(item)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def spooled_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix == ".json" and not p.name.startswith("."))


def test_spool_files_are_0600_in_a_0700_directory_whatever_the_umask(tmp_path: Path) -> None:
    spool = tmp_path / "state" / "spool"
    old = os.umask(0)
    try:
        sink = ReviewSink("http://127.0.0.1:9/unused", spool, max_fraction=1.0)
        for i in range(3):
            assert offer(sink, {"id": i}) == "spooled"
        sink.close()  # what the spool task would write
    finally:
        os.umask(old)
    assert mode(spool) == 0o700
    files = spooled_files(spool)
    assert len(files) == 3 and all(mode(p) == 0o600 for p in files)
    assert sink.spooled == 3 and sink.spool_depth() == 3


def test_the_spool_on_disk_is_bounded_and_refusals_are_counted(tmp_path: Path) -> None:
    sink = ReviewSink("http://127.0.0.1:9/unused", tmp_path, max_fraction=1.0, max_spool_items=3)
    outcomes = [offer(sink, {"id": i}) for i in range(5)]
    assert outcomes == ["spooled"] * 3 + ["spool_full"] * 2
    assert sink.counts()["spool_full"] == 2
    sink.close()
    assert len(spooled_files(tmp_path)) == 3

    by_bytes = ReviewSink("http://127.0.0.1:9/unused", tmp_path / "b", max_fraction=1.0, max_spool_bytes=100)
    assert offer(by_bytes, {"id": 1, "pad": "x" * 40}) == "spooled"
    assert offer(by_bytes, {"id": 2, "pad": "x" * 40}) == "spool_full"
    assert by_bytes.counts()["spool_full"] == 1


def test_the_memory_queue_ahead_of_the_disk_is_bounded(tmp_path: Path) -> None:
    sink = ReviewSink("http://127.0.0.1:9/unused", tmp_path, max_fraction=1.0, max_queue_bytes=100)
    assert offer(sink, {"id": 1, "pad": "x" * 60}) == "spooled"
    assert offer(sink, {"id": 2, "pad": "x" * 60}) == "queue_full"
    assert sink.counts()["queue_full"] == 1 and sink.spool_depth() == 1


def test_a_refused_item_does_not_spend_the_fraction_budget(tmp_path: Path) -> None:
    sink = ReviewSink("http://127.0.0.1:9/unused", tmp_path, max_fraction=0.5, max_spool_items=1)
    assert sink.offer({"id": 1}) == "spooled"
    sink.note_request()
    sink.note_request()
    assert sink.offer({"id": 2}) == "spool_full"
    sink.close()
    (spooled_files(tmp_path)[0]).unlink()
    sink._disk_items = 0  # as the sender's next listing would find it
    assert sink.offer({"id": 3}) == "spooled"  # the budget was not spent on the refused item


async def test_a_failing_disk_keeps_items_in_memory_then_spools_and_delivers_them(tmp_path: Path) -> None:
    receiver = Receiver()
    runner, url = await serve(receiver)
    spool = tmp_path / "spool"
    spool.write_text("a file where the spool directory should be")
    sink = ReviewSink(url, spool, max_fraction=1.0, backoff_s=0.01, slow_retry_s=0.2)
    sender = asyncio.create_task(sink.run_sender())
    try:
        assert offer(sink, {"id": "waiting"}) == "spooled"
        await wait_for(lambda: sink.write_failures >= 1)
        assert sink.spool_depth() == 1 and sink.spooled == 0
        spool.unlink()  # the disk recovers
        await wait_for(lambda: sink.sent == 1)
        assert receiver.items == [{"id": "waiting"}] and sink.spool_depth() == 0
        assert sink.counts()["write_failed"] >= 1
    finally:
        await cancelled(sender)
        await runner.cleanup()


async def test_items_queued_when_the_sender_stops_are_written_to_the_spool(tmp_path: Path) -> None:
    receiver = Receiver(fail_first=1000)
    runner, url = await serve(receiver)
    sink = ReviewSink(url, tmp_path, max_fraction=1.0, retries=1, backoff_s=0.01, slow_retry_s=60)
    sender = asyncio.create_task(sink.run_sender())
    try:
        await asyncio.sleep(0.05)
        for i in range(20):
            assert offer(sink, {"id": i}) == "spooled"
        await cancelled(sender)
    finally:
        await runner.cleanup()
    assert len(spooled_files(tmp_path)) == 20 and sink.spooled == 20 and sink.lost == 0


async def test_every_attempt_carries_the_items_id_as_its_idempotency_key(tmp_path: Path) -> None:
    receiver = Receiver(fail_first=3)
    runner, url = await serve(receiver)
    sink = ReviewSink(url, tmp_path, max_fraction=1.0, retries=10, backoff_s=0.01)
    sender = asyncio.create_task(sink.run_sender())
    try:
        for item_id in ("a1b2-5f00-1", "a1b2-5f00-2"):
            assert offer(sink, {"id": item_id}) == "spooled"
        await wait_for(lambda: sink.sent == 2)
        # Three failed attempts of the first item, then one each: every one keyed by the body's id.
        assert receiver.keys == ["a1b2-5f00-1"] * 4 + ["a1b2-5f00-2"]
        assert [item["id"] for item in receiver.items] == ["a1b2-5f00-1", "a1b2-5f00-2"]
    finally:
        await cancelled(sender)
        await runner.cleanup()


@pytest.mark.parametrize("item_id", [None, 17, "", "two\r\nlines", "x" * 300])
async def test_an_item_without_a_usable_id_is_keyed_by_its_stable_spool_name(
    tmp_path: Path, item_id: object
) -> None:
    receiver = Receiver(fail_first=1)
    runner, url = await serve(receiver)
    sink = ReviewSink(url, tmp_path, max_fraction=1.0, backoff_s=0.01)
    assert offer(sink, {"id": item_id}) == "spooled"
    sink.close()  # written to the spool now, as a stopped sidecar leaves it
    (spooled,) = spooled_files(tmp_path)
    sender = asyncio.create_task(sink.run_sender())
    try:
        await wait_for(lambda: sink.sent == 1)
        assert receiver.keys == [spooled.stem, spooled.stem]  # the failed attempt and the retry
    finally:
        await cancelled(sender)
        await runner.cleanup()


def test_the_fill_ratio_follows_the_nearer_bound(tmp_path: Path) -> None:
    by_items = ReviewSink("http://127.0.0.1:9/unused", tmp_path / "i", max_fraction=1.0, max_spool_items=10)
    ratios = []
    for i in range(12):
        offer(by_items, {"id": i})
        ratios.append(by_items.fill_ratio())
    assert ratios == [pytest.approx(min(i + 1, 10) / 10) for i in range(12)]
    assert by_items.counts()["spool_full"] == 2  # refused exactly when the ratio is 1

    by_bytes = ReviewSink("http://127.0.0.1:9/unused", tmp_path / "b", max_fraction=1.0, max_spool_bytes=1000)
    offer(by_bytes, {"id": 1, "pad": "x" * 383})  # 400 bytes of JSON
    assert by_bytes.fill_ratio() == pytest.approx(0.4)
    offer(by_bytes, {"id": 2, "pad": "x" * 383})
    assert by_bytes.fill_ratio() == pytest.approx(0.8)
    by_bytes.close()  # on disk now: the ratio counts the spool, not only the queue
    assert by_bytes.fill_ratio() == pytest.approx(0.8)


async def test_a_full_spool_volume_is_flagged_items_wait_in_memory_and_land_when_space_returns(
    small_disk: SmallDisk,
) -> None:
    receiver = Receiver()
    runner, url = await serve(receiver)
    await runner.cleanup()  # the webhook is down: items stay in the spool
    spool = small_disk.root / "spool"
    sink = ReviewSink(url, spool, max_fraction=1.0, retries=1, backoff_s=0.01, slow_retry_s=0.2)
    metrics = SidecarMetrics("m")
    metrics.volumes_full = lambda: {"review_spool": sink.no_space}
    sender = asyncio.create_task(sink.run_sender())
    try:
        assert offer(sink, {"id": "before"}) == "spooled"
        await wait_for(lambda: sink.spooled == 1)
        small_disk.fill()
        for i in range(5):
            assert offer(sink, {"id": f"full-{i}"}) == "spooled"
        await wait_for(lambda: sink.no_space)
        assert (
            'guardedmodel_volume_full{model="m",volume="review_spool"} 1.0'
            in generate_latest(metrics.registry).decode()
        )
        assert sink.spooled == 1 and sink.spool_depth() == 6 and sink.write_failures >= 1

        small_disk.free()
        await wait_for(lambda: sink.spooled == 6)
        assert not sink.no_space
        ids = sorted(orjson.loads(p.read_bytes())["id"] for p in spooled_files(spool))
        assert ids == sorted(["before", *(f"full-{i}" for i in range(5))])
        assert sink.lost == 0 and sink.counts()["queue_full"] == 0
    finally:
        await cancelled(sender)


async def test_an_unreadable_spool_entry_is_counted_and_holds_back_no_other(tmp_path: Path) -> None:
    receiver = Receiver()
    runner, url = await serve(receiver)
    unreadable = tmp_path / "00000000000000000000-1-00000000.json"
    unreadable.mkdir()  # sorts first; reading it fails (EISDIR)
    sink = ReviewSink(url, tmp_path, max_fraction=1.0, backoff_s=0.01, slow_retry_s=0.1)
    sender = asyncio.create_task(sink.run_sender())
    try:
        assert offer(sink, {"id": "next"}) == "spooled"
        await wait_for(lambda: sink.sent == 1)
        assert [item["id"] for item in receiver.items] == ["next"]
        await wait_for(lambda: sink.counts()["io_failed"] >= 2)  # tried again each round
        assert not sender.done()  # the sender does not die on a disk error
        unreadable.rmdir()
        (tmp_path / unreadable.name).write_bytes(b'{"id": "late"}')  # readable now
        await wait_for(lambda: sink.sent == 2)
        assert [item["id"] for item in receiver.items] == ["next", "late"]
    finally:
        await cancelled(sender)
        await runner.cleanup()


def test_the_retry_cadence_is_configurable_under_tuning_and_checked() -> None:
    base = {"spec": {"model": {"name": "m"}}}
    defaults = parse_config(base).tuning
    assert (defaults.review_retries, defaults.review_retry_interval_s, defaults.review_timeout_s) == (
        5,
        30.0,
        5.0,
    )
    tuning = {"reviewRetries": 2, "reviewRetryInterval": "500ms", "reviewTimeout": "2s"}
    parsed = parse_config({**base, "tuning": tuning}).tuning
    assert (parsed.review_retries, parsed.review_retry_interval_s, parsed.review_timeout_s) == (2, 0.5, 2.0)
    for key, value in [("reviewRetries", 0), ("reviewRetryInterval", "0s"), ("reviewTimeout", "soon")]:
        with pytest.raises(ConfigError, match=rf"tuning\.{key}"):
            parse_config({**base, "tuning": {key: value}})


async def test_a_failing_webhook_is_retried_at_the_interval_however_many_items_arrive(tmp_path: Path) -> None:
    receiver = Receiver(fail_first=10**6)
    runner, url = await serve(receiver)
    sink = ReviewSink(url, tmp_path, max_fraction=1.0, retries=2, backoff_s=0.01, slow_retry_s=0.5)
    sender = asyncio.create_task(sink.run_sender())
    try:
        for i in range(40):  # an item every 25 ms for a second: each would wake an eager sender
            assert offer(sink, {"id": f"i{i}"}) == "spooled"
            await asyncio.sleep(0.025)
        # Rounds of 2 attempts, 0.5 s apart: at most 3 rounds in a second, not one per new item.
        assert 2 <= receiver.attempts <= 6
    finally:
        await cancelled(sender)
        await runner.cleanup()


def test_record_ids_differ_between_sidecars_started_alike_and_serve_as_keys(tmp_path: Path) -> None:
    # Two pods (pid 1 each) started in the same second: the same process here stands for both.
    config = parse_config({"spec": {"model": {"name": "m"}}, "auditDir": str(tmp_path / "audit")})

    def ids_of_a_new_sidecar(n: int) -> list[str]:
        pipeline = Pipeline(
            config,
            TritonHttp("127.0.0.1:9"),
            Router(config.routing),
            SidecarMetrics("m"),
            AuditLog(config.audit_dir),
            ReviewSink(None, tmp_path / "spool", max_fraction=0.1),
        )
        return [pipeline.next_id() for _ in range(n)]

    first, second = ids_of_a_new_sidecar(1000), ids_of_a_new_sidecar(1000)
    assert len(set(first)) == 1000 and not set(first) & set(second)
    spool_name = tmp_path / "0-1-1.json"
    assert all(item_key(orjson.dumps({"id": i}), spool_name) == i for i in first + second)
