"""One asyncio task per GuardedModel for the background controllers (rollout, scaling).

Each task runs one step, then sleeps until the step's next check is due — or until a
watch event for the model wakes it (`touch`). A step that returns None sleeps until the
next event, so an idle model costs nothing.

Why not a kopf timer: kopf timers put a finalizer on every object and have one fixed
interval per handler, while the intervals here differ per model. The operator otherwise
needs no finalizer (owner references clean up), so a model can be deleted even when the
operator is not running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .keys import Key

log = logging.getLogger(__name__)


@dataclass
class ModelScheduler:
    """One task per GuardedModel; `touch` on each watch event, `forget` on deletion."""

    run: Callable[[Key], Awaitable[float | None]]  # one step; seconds until the next or None
    retry_after_s: float = 10.0
    label: str = "model"  # what the tasks do, for task names and logs
    tasks: dict[Key, asyncio.Task[None]] = field(default_factory=dict)
    wakers: dict[Key, asyncio.Event] = field(default_factory=dict)

    def touch(self, key: Key) -> None:
        waker = self.wakers.setdefault(key, asyncio.Event())
        waker.set()
        task = self.tasks.get(key)
        if task is None or task.done():
            self.tasks[key] = asyncio.create_task(self._loop(key), name=f"{self.label} {key[0]}/{key[1]}")

    def ensure(self, key: Key) -> None:
        """Start the model's task if none runs, without waking one that sleeps until its next
        check: for controllers whose watch events are mostly status echoes, which must not cut
        the interval short."""
        task = self.tasks.get(key)
        if task is None or task.done():
            self.touch(key)

    def forget(self, key: Key) -> None:
        task = self.tasks.pop(key, None)
        self.wakers.pop(key, None)
        if task is not None:
            task.cancel()

    async def close(self) -> None:
        tasks = list(self.tasks.values())
        self.tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self, key: Key) -> None:
        waker = self.wakers[key]
        while True:
            waker.clear()
            try:
                delay = await self.run(key)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # one model's failure must not end its loop
                log.warning(
                    "%s step of %s/%s failed (%s); retrying in %ss",
                    self.label,
                    *key,
                    error,
                    self.retry_after_s,
                )
                delay = self.retry_after_s
            if delay is not None and delay <= 0:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waker.wait(), timeout=delay)
