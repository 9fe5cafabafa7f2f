"""Triton's liveness, watched on a connection of its own, and what the sidecar does when it goes.

Every ``interval_s`` the watch asks Triton's ``/v2/health/live`` on a dedicated one-connection client,
so that a pool full of slow inference calls cannot delay the check. Triton is taken for down when:

- it refuses the connection (killed, restarting): nothing is in flight any more, the kernel closed it;
- it answers not live (shutting down): calls in flight are left to finish, Triton still answers them;
- it does not answer within ``timeout_s`` (hung: SIGSTOP, a frozen cgroup, a stuck process). It still
  accepts connections, so calls would wait out their whole deadline (``limits.requestTimeout``, 60 s):
  the calls in flight are abandoned with 503 / UNAVAILABLE instead.

While Triton is down every call to it fails at once with the reason (``TritonHttp.mark_down``) and
the sidecar is not ready; one check that passes ends it. The worst time from a fault to the sidecar
refusing is ``interval_s + timeout_s`` (1.25 s; the requirement is 2 s). A live Triton answers this check in about a millisecond on
loopback, even at full load (its HTTP front end runs on threads of its own), so ``timeout_s`` is far
above a busy Triton's answer time and far below a caller's patience.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from guardedmodel_sidecar.errors import Unavailable
from guardedmodel_sidecar.upstream import TritonHttp, UpstreamTimeout

log = logging.getLogger(__name__)

LIVE_PATH = "/v2/health/live"


@dataclass(frozen=True)
class Liveness:
    down: str | None  # why Triton is taken for down; None: it answered live
    hung: bool = False  # it accepted the check and did not answer in time


async def check_liveness(health: TritonHttp, timeout_s: float) -> Liveness:
    """Triton's liveness, asked twice at most, ``timeout_s / 2`` each, the second time on a new
    connection. Triton's HTTP server runs a repository load on the thread of the connection that asked
    for it, and the other connections on that thread wait for the load too: measured with the toy
    model, ``/v2/health/live`` took as long as the load (1.7-3.3 s) on connections opened before it,
    and 13 ms on one opened during it. A new connection goes to a free thread; a hung Triton answers
    neither, so a load is not taken for a hang."""
    for _ in range(2):
        try:
            response = await health.request("GET", LIVE_PATH, timeout_s=timeout_s / 2)
        except UpstreamTimeout:
            continue  # the connection is closed; the next try opens a new one
        except Unavailable as exc:
            return Liveness(f"Triton is down: {exc.message}")
        if response.status != 200:
            return Liveness(f"Triton at {health.url} answers that it is not live (HTTP {response.status})")
        return Liveness(None)
    return Liveness(
        f"Triton at {health.url} did not answer its liveness check within {timeout_s:g} s (hung?)", hung=True
    )


class TritonWatch:
    """Marks ``pool`` down or up after each check and tells ``on_change`` when that flips."""

    def __init__(
        self,
        pool: TritonHttp,
        on_change: Callable[[bool], None],
        *,
        interval_s: float = 0.25,
        timeout_s: float = 1.0,
    ) -> None:
        self.pool = pool
        self.on_change = on_change
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.live: bool | None = None  # None until the first check

    async def run(self) -> None:
        health = TritonHttp(self.pool.url, timeout_s=self.timeout_s, max_connections=1)
        try:
            while True:
                self.apply(await check_liveness(health, self.timeout_s))
                await asyncio.sleep(self.interval_s)
        finally:
            health.close()

    def apply(self, liveness: Liveness) -> None:
        if liveness.down is None:
            self.pool.mark_up()
        else:
            # Again after each failed check: a call that slipped past a hung Triton's first check is
            # abandoned by the next.
            self.pool.mark_down(liveness.down, abandon=liveness.hung)
        live = liveness.down is None
        if live == self.live:
            return
        if live:
            again = "" if self.live is None else " again"
            log.info("Triton at %s answers its liveness check%s", self.pool.url, again)
        elif self.live is not None:
            log.warning("%s; refusing requests until it answers again", liveness.down)
        self.live = live
        self.on_change(live)
