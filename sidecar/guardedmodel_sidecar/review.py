"""Human-review routing: review items go to a webhook through a durable, bounded local spool.

``offer`` encodes the item into a bounded in-memory queue and returns at once. A spool task writes
queued items to ``spool_dir`` (0600 files in a 0700 directory, fsync, atomic rename), and a sender
POSTs spooled items as JSON, deleting each only after a 2xx. A spooled item survives a crash and an
unreachable webhook: failed sends are retried with backoff (``retries`` quick attempts, then every
``slow_retry_s``, ``tuning.reviewRetryInterval``, however many new items arrive meanwhile) and the item
stays in the spool. Every file operation (write, list, read, delete)
runs on one writer thread, so neither fsync nor a slow disk blocks the event loop.

Delivery is at least once, across restarts: an item leaves the spool only after a 2xx, so a webhook
that took an item but answered late (a timeout), or a sidecar stopped between the 2xx and the delete,
sends it again. Each item carries its audit record's ``id`` (unique across pods and restarts) in the
body and as the ``Idempotency-Key`` header, the same on every attempt: the receiver de-duplicates on it.

``guardedmodel_review_spool_fill_ratio`` is how full the spool is against the nearer of its two bounds
(0..1); GuardedModelReviewSpoolFilling fires at 0.8, before items are refused. A spool volume out of
space (ENOSPC, EDQUOT) keeps the items in memory (the queue bound below), retries, and shows as
``guardedmodel_volume_full{volume="review_spool"}`` 1 until a write succeeds (GuardedModelVolumeFull).

Bounds; hitting one is counted in ``guardedmodel_review_items_total{outcome}`` and logged, never
silent, and the request's audit record says what became of its item (``review``: the outcome):

- the spool on disk: ``max_spool_items`` files and ``max_spool_bytes`` (``tuning.reviewSpoolMaxItems``,
  ``reviewSpoolMaxBytes``: 10k, 512 MiB): ``spool_full`` (a webhook down for long fills it; the alert
  GuardedModelReviewItemsDropped fires). A refused item does not spend the ``maxFraction`` budget;
- the queue in memory ahead of the disk: ``max_queue_bytes`` (16 MiB): ``queue_full``;
- items still queued when the sidecar stops and the disk refuses them: ``lost``.

``maxFraction`` caps the share of requests sent to people: a credit grows by ``max_fraction`` per
request and each spooled item spends one, so at most ``1 + max_fraction * requests`` items are sent.
It counts requests, not rows: a batch with rows to review makes one item (naming those rows and
carrying only their inputs), whatever its number of rows, and a request refused as a whole makes none.
Capped items are still answered ``review`` to the caller and counted, just not sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import orjson

from guardedmodel_sidecar.private_files import is_no_space
from guardedmodel_sidecar.review_spool import SpoolBatch, item_key, list_spool, write_items

log = logging.getLogger(__name__)

MIB = 1024 * 1024
DEFAULT_MAX_SPOOL_ITEMS = 10_000
DEFAULT_MAX_SPOOL_BYTES = 512 * MIB
DEFAULT_MAX_QUEUE_BYTES = 16 * MIB
# What ``offer`` answers; the audit record's ``review`` field.
SPOOLED = "spooled"  # the item goes to people
OUTCOMES = (SPOOLED, "capped", "spool_full", "queue_full", "no_webhook")
_WARN_INTERVAL_S = 10.0
_T = TypeVar("_T")


class ReviewSink:
    def __init__(
        self,
        webhook: str | None,
        spool_dir: Path,
        *,
        max_fraction: float,
        retries: int = 5,
        timeout_s: float = 5.0,
        backoff_s: float = 0.2,
        slow_retry_s: float = 30.0,
        max_spool_items: int = DEFAULT_MAX_SPOOL_ITEMS,
        max_spool_bytes: int = DEFAULT_MAX_SPOOL_BYTES,
        max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
    ) -> None:
        self.webhook = webhook
        self.spool_dir = spool_dir
        self.max_fraction = max_fraction
        self.retries = retries
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.slow_retry_s = slow_retry_s
        self.max_spool_items = max_spool_items
        self.max_spool_bytes = max_spool_bytes
        self.max_queue_bytes = max_queue_bytes
        self._credit = 1.0
        self._seq = 0
        self._wake = asyncio.Event()  # the sender: something was spooled
        self._spool_wake = asyncio.Event()  # the spool task: something was queued
        # Queued in memory (waiting, plus the batch being written); bytes cover both.
        self._queue: list[tuple[str, bytes]] = []
        self._inflight: SpoolBatch | None = None
        self._queued_bytes = 0
        # The spool on disk as last known: set by each listing, then own writes and deliveries.
        self._disk_items = 0
        self._disk_bytes = 0
        self._io: ThreadPoolExecutor | None = None
        self._warned_at = -math.inf
        self.offered = 0
        self.spooled = 0
        self.capped = 0
        self.sent = 0
        self.send_failures = 0
        self.spool_full = 0
        self.queue_full = 0
        self.write_failures = 0
        self.lost = 0
        self.io_failures = 0  # spool reads, listings or deletes that failed (the item stays)
        self.no_space = False  # the latest spool write failed for lack of space

    def note_request(self) -> None:
        """Called once per request: the cap is a fraction of all requests, not of reviews."""
        if self._credit < 1.0:
            self._credit += self.max_fraction

    def offer(self, item: dict[str, Any]) -> str:
        """Queue ``item`` for the spool unless a cap or bound says no; returns the outcome (OUTCOMES)."""
        self.offered += 1
        if self.webhook is None:
            return "no_webhook"
        if self._credit < 1.0 - 1e-9:  # tolerate float accumulation
            self.capped += 1
            return "capped"
        body = orjson.dumps(item, option=orjson.OPT_SERIALIZE_NUMPY)
        queued = len(self._queue) + (len(self._inflight.items) if self._inflight is not None else 0)
        if (
            self._disk_items + queued >= self.max_spool_items
            or self._disk_bytes + self._queued_bytes + len(body) > self.max_spool_bytes
        ):
            self.spool_full += 1
            self._warn("the spool is full", "spool_full")
            return "spool_full"
        if self._queued_bytes and self._queued_bytes + len(body) > self.max_queue_bytes:
            self.queue_full += 1
            self._warn("the disk does not keep up with the queue", "queue_full")
            return "queue_full"
        self._credit -= 1.0
        self._seq += 1
        self._queue.append((f"{time.time_ns():020d}-{os.getpid()}-{self._seq:08d}.json", body))
        self._queued_bytes += len(body)
        self._spool_wake.set()
        return SPOOLED

    def _warn(self, why: str, outcome: str) -> None:
        now = time.monotonic()
        if now - self._warned_at >= _WARN_INTERVAL_S:
            self._warned_at = now
            log.error(
                "review item not spooled: %s (%d items, %d bytes in %s; %d bytes queued); "
                "guardedmodel_review_items_total{outcome=%r} counts them; check the webhook %s",
                why,
                self._disk_items,
                self._disk_bytes,
                self.spool_dir,
                self._queued_bytes,
                outcome,
                self.webhook,
            )

    def spool_depth(self) -> int:
        """Items waiting: in the spool on disk and queued for it."""
        queued = len(self._queue) + (len(self._inflight.items) if self._inflight is not None else 0)
        return self._disk_items + queued

    def fill_ratio(self) -> float:
        """How full the spool is (queued items included), against the nearer of its two bounds."""
        return max(
            self.spool_depth() / self.max_spool_items,
            (self._disk_bytes + self._queued_bytes) / self.max_spool_bytes,
        )

    def counts(self) -> dict[str, int]:
        """guardedmodel_review_items_total by outcome (send_failed, write_failed and io_failed count attempts)."""
        return {
            "spooled": self.spooled,
            "capped": self.capped,
            "sent": self.sent,
            "send_failed": self.send_failures,
            "spool_full": self.spool_full,
            "queue_full": self.queue_full,
            "write_failed": self.write_failures,
            "io_failed": self.io_failures,
            "lost": self.lost,
        }

    # ------------------------------------------------------------------------------ background

    async def run_sender(self) -> None:
        """Spool and deliver items forever (including those left by an earlier run)."""
        if self.webhook is None:
            return
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="review-spool")
        spooler = asyncio.get_running_loop().create_task(self._run_spooler(), name="review-spooler")
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                while True:
                    self._wake.clear()  # before listing: an item spooled meanwhile wakes the next round
                    if await self._drain(session):
                        await self._wake.wait()
                    else:
                        # New items do not bring a failing webhook back: try it again only this late.
                        await asyncio.sleep(self.slow_retry_s)
        finally:
            spooler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await spooler
            self._io.shutdown(wait=True)  # the batch in flight lands (or fails) before the rest is written
            self._io = None
            self.close()

    def close(self) -> None:
        """Write what is still queued, on this thread (at stop, with no write in flight on the writer
        thread); what the disk refuses is counted lost."""
        batch = self._inflight
        if batch is not None:
            if not batch.finished:
                # Its write was cancelled with the spool task before the writer thread started it.
                batch.finished = True
                self._settle(batch)
                self._queue[:0] = batch.items[batch.written :]
            else:
                self._settle(batch)
        if not self._queue:
            return
        batch = SpoolBatch(self._queue)
        self._queue = []
        self._inflight = batch
        write_items(self.spool_dir, batch)
        self._settle(batch)
        if self._queue:
            self.lost += len(self._queue)
            log.error(
                "%d review items lost at stop: %s could not be written", len(self._queue), self.spool_dir
            )
            self._queue, self._queued_bytes = [], 0

    async def _io_call(self, fn: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    async def _run_spooler(self) -> None:
        delay = self.backoff_s
        while True:
            await self._spool_wake.wait()
            self._spool_wake.clear()
            while self._queue:
                batch = SpoolBatch(self._queue)
                self._queue = []
                self._inflight = batch
                try:
                    await self._io_call(write_items, self.spool_dir, batch)
                finally:
                    self._settle(batch)  # when cancelled mid-write, run_sender settles it after shutdown
                if batch.error is None:
                    delay = self.backoff_s
                else:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.slow_retry_s)

    def _settle(self, batch: SpoolBatch) -> None:
        if self._inflight is not batch or not batch.finished:
            return
        self._inflight = None
        landed = batch.items[: batch.written]
        landed_bytes = sum(len(body) for _, body in landed)
        self.spooled += len(landed)
        self._disk_items += len(landed)
        self._disk_bytes += landed_bytes
        self._queued_bytes -= landed_bytes
        if landed:
            self._wake.set()
        self.no_space = is_no_space(batch.error)
        if batch.error is not None:
            self.write_failures += 1
            self._queue[:0] = batch.items[batch.written :]
            log.error(
                "cannot spool review items to %s: %s; %d items kept in memory",
                self.spool_dir,
                batch.error,
                len(self._queue),
            )

    async def _drain(self, session: aiohttp.ClientSession) -> bool:
        """Send the spool oldest first; False when an item was left behind (unsent, unreadable or
        undeletable): the next round comes after ``slow_retry_s``."""
        try:
            spool = await self._io_call(list_spool, self.spool_dir)
        except OSError as exc:
            return self._io_failed("list", self.spool_dir, exc)
        self._disk_items, self._disk_bytes = len(spool), sum(size for _, size in spool)
        all_sent = True
        for path, size in spool:
            try:
                body = await self._io_call(path.read_bytes)
            except FileNotFoundError:
                continue
            except OSError as exc:
                # One unreadable item must not hold back the others: it is tried again next round.
                all_sent = self._io_failed("read", path, exc)
                continue
            if not await self._send(session, body, item_key(body, path)):
                return False
            try:
                await self._io_call(path.unlink, True)
            except OSError as exc:
                # Delivered but still on disk: the next round sends it again (at least once).
                return self._io_failed("delete", path, exc)
            self.sent += 1
            self._disk_items -= 1
            self._disk_bytes -= size
        return all_sent

    def _io_failed(self, what: str, path: Path, exc: OSError) -> bool:
        self.io_failures += 1
        log.error("cannot %s %s: %s; review delivery retries in %.1f s", what, path, exc, self.slow_retry_s)
        return False

    async def _send(self, session: aiohttp.ClientSession, body: bytes, key: str) -> bool:
        assert self.webhook is not None
        delay = self.backoff_s
        headers = {"Content-Type": "application/json", "Idempotency-Key": key}
        for attempt in range(1, self.retries + 1):
            try:
                async with session.post(self.webhook, data=body, headers=headers) as resp:
                    if 200 <= resp.status < 300:
                        return True
                    reason = f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            self.send_failures += 1
            log.warning(
                "review item %s not delivered to %s (attempt %d/%d): %s",
                key,
                self.webhook,
                attempt,
                self.retries,
                reason,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.slow_retry_s)
        return False
