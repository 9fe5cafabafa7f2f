"""ModelScheduler.ensure: a task starts once per model and a sleeping one is not woken early."""

from __future__ import annotations

import asyncio

from guardedmodel_operator.scheduler import ModelScheduler

KEY = ("ml", "clf")


async def test_ensure_starts_a_task_once_and_does_not_cut_its_interval_short() -> None:
    runs = 0
    ran = asyncio.Event()

    async def run(key: tuple[str, str]) -> float | None:
        nonlocal runs
        runs += 1
        ran.set()
        return 60.0  # the next check is a minute away

    scheduler = ModelScheduler(run)
    scheduler.ensure(KEY)
    await asyncio.wait_for(ran.wait(), timeout=2)
    for _ in range(5):  # status echoes
        scheduler.ensure(KEY)
        await asyncio.sleep(0.01)
    assert runs == 1
    scheduler.touch(KEY)  # a real change still wakes it
    await asyncio.sleep(0.05)
    assert runs == 2
    await scheduler.close()


async def test_ensure_restarts_a_task_that_ended() -> None:
    runs = 0

    async def run(key: tuple[str, str]) -> float | None:
        nonlocal runs
        runs += 1
        return 60.0

    scheduler = ModelScheduler(run)
    scheduler.ensure(KEY)
    await asyncio.sleep(0.02)
    scheduler.tasks[KEY].cancel()
    await asyncio.sleep(0.02)
    scheduler.ensure(KEY)
    await asyncio.sleep(0.02)
    assert runs == 2
    await scheduler.close()
