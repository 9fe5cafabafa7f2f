"""A graceful stop waits for the requests already in the guard pipeline before closing the audit log
and the Triton client, and gives up after its grace period."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from guardedmodel_sidecar.app import SidecarApp
from guardedmodel_sidecar.config import parse_config


def app(tmp_path: Path) -> SidecarApp:
    config = parse_config(
        {
            "spec": {"model": {"name": "m"}},
            "auditDir": str(tmp_path / "audit"),
            "spoolDir": str(tmp_path / "s"),
        }
    )
    return SidecarApp(config)


async def test_stop_waits_for_requests_in_flight(tmp_path: Path) -> None:
    sidecar = app(tmp_path)
    sidecar.pipeline._inflight = 1
    stopping = asyncio.ensure_future(sidecar.stop(grace_s=5.0))
    await asyncio.sleep(0.2)
    assert not stopping.done()  # still draining
    sidecar.pipeline._inflight = 0
    await asyncio.wait_for(stopping, 1.0)


async def test_stop_gives_up_after_its_grace_period(tmp_path: Path) -> None:
    sidecar = app(tmp_path)
    sidecar.pipeline._inflight = 1
    started = time.monotonic()
    await sidecar.stop(grace_s=0.3)
    assert 0.25 < time.monotonic() - started < 2.0
