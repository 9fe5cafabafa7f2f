"""Human-review routing: review items go to a webhook through a durable local spool.

``offer`` writes the item to ``spool_dir`` (atomic rename) before anything is sent, so an item
survives a crash or an unreachable webhook; a background sender POSTs spooled items as JSON and
deletes each only after a 2xx. Failed sends are retried with exponential backoff (``retries`` quick
attempts, then every ``slow_retry_s``) and left in the spool, never dropped.

``maxFraction`` caps the share of requests sent to people: a credit grows by ``max_fraction`` per
request and each sent item spends one, so at most ``1 + max_fraction * requests`` items are sent.
Capped items are still answered ``review`` to the caller and counted, just not sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

log = logging.getLogger(__name__)


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
    ) -> None:
        self.webhook = webhook
        self.spool_dir = spool_dir
        self.max_fraction = max_fraction
        self.retries = retries
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.slow_retry_s = slow_retry_s
        self._credit = 1.0
        self._seq = 0
        self._wake = asyncio.Event()
        self.offered = 0
        self.spooled = 0
        self.capped = 0
        self.sent = 0
        self.send_failures = 0

    def note_request(self) -> None:
        """Called once per request: the cap is a fraction of all requests, not of reviews."""
        if self._credit < 1.0:
            self._credit += self.max_fraction

    def offer(self, item: dict[str, Any]) -> bool:
        """Spool ``item`` for sending unless the cap is reached; True when it will be sent."""
        self.offered += 1
        if self.webhook is None:
            return False
        if self._credit < 1.0 - 1e-9:  # tolerate float accumulation
            self.capped += 1
            return False
        self._credit -= 1.0
        self._seq += 1
        name = f"{time.time_ns():020d}-{os.getpid()}-{self._seq:08d}.json"
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.spool_dir / f".{name}.tmp"
        with tmp.open("wb") as fh:
            fh.write(orjson.dumps(item, option=orjson.OPT_SERIALIZE_NUMPY))
            fh.flush()
            os.fsync(fh.fileno())
        tmp.rename(self.spool_dir / name)
        self.spooled += 1
        self._wake.set()
        return True

    def spool_depth(self) -> int:
        if not self.spool_dir.is_dir():
            return 0
        return sum(1 for p in self.spool_dir.iterdir() if p.suffix == ".json" and not p.name.startswith("."))

    def _pending(self) -> list[Path]:
        if not self.spool_dir.is_dir():
            return []
        return sorted(
            p for p in self.spool_dir.iterdir() if p.suffix == ".json" and not p.name.startswith(".")
        )

    async def run_sender(self) -> None:
        """Deliver spooled items forever (including those left by an earlier run)."""
        if self.webhook is None:
            return
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                delivered_all = await self._drain(session)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), None if delivered_all else self.slow_retry_s)

    async def _drain(self, session: aiohttp.ClientSession) -> bool:
        for path in self._pending():
            try:
                body = path.read_bytes()
            except FileNotFoundError:
                continue
            if not await self._send(session, body, path.name):
                return False
            path.unlink(missing_ok=True)
            self.sent += 1
        return True

    async def _send(self, session: aiohttp.ClientSession, body: bytes, name: str) -> bool:
        assert self.webhook is not None
        delay = self.backoff_s
        for attempt in range(1, self.retries + 1):
            try:
                async with session.post(
                    self.webhook, data=body, headers={"Content-Type": "application/json"}
                ) as resp:
                    if 200 <= resp.status < 300:
                        return True
                    reason = f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            self.send_failures += 1
            log.warning(
                "review item %s not delivered to %s (attempt %d/%d): %s",
                name,
                self.webhook,
                attempt,
                self.retries,
                reason,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.slow_retry_s)
        return False
