"""Several sidecar processes in one pod, supervised by a parent that serves the pod's metrics.

``tuning.workers: N > 1`` starts N worker processes (each its own GIL and event loop) that share
the HTTP and gRPC ports through ``SO_REUSEPORT``; the kernel spreads connections over them.
Worker 0 alone loads model versions into Triton; the others join the ports once Triton serves the
routed versions. Each worker writes its own audit directory (``auditDir/worker-i``) and review
spool (``spoolDir/worker-i``), so no two processes write or send the same file.

The parent does three things:
  * serves the pod's metrics port: on each scrape it reads every worker's metrics over a private
    unix socket and merges them (``metrics_aggregate``), so Prometheus sees one process's numbers;
  * restarts a worker that dies, after a backoff (0.5 s doubling to 30 s, reset once a worker has
    run for a minute), and logs why it ended. A worker that cannot stay up (5 exits in a row, each
    within a minute of its start) stops the whole sidecar with exit status 1, so Kubernetes restarts
    the container and shows the crash loop, rather than a pod silently short of workers;
  * on SIGTERM or SIGINT passes SIGTERM on to every worker and waits for them to finish the
    requests in flight; a worker still running after the grace period is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from guardedmodel_sidecar.config import Listen, SidecarConfig
from guardedmodel_sidecar.metrics_aggregate import Aggregator

log = logging.getLogger("guardedmodel.sidecar.workers")

# (config, kubeconfig, metrics socket path, parent pid, log level) -> None; runs in a spawned process.
WorkerTarget = Callable[[SidecarConfig, str | None, str, int, int], None]


def worker_config(config: SidecarConfig, index: int) -> SidecarConfig:
    """Worker ``index`` of several: its own audit and spool directories; only worker 0 loads models.
    The metrics port is the parent's: workers serve their metrics on a unix socket instead."""
    listen = config.listen
    return config.with_overrides(
        listen=Listen(listen.host, listen.http, listen.grpc, 0),
        audit_dir=config.audit_dir / f"worker-{index}",
        spool_dir=config.spool_dir / f"worker-{index}",
        tuning=replace(
            config.tuning,
            load_versions=config.tuning.load_versions and index == 0,
            listen_when_ready=index > 0,
            worker_index=index,
        ),
    )


def adopt_spool(spool_dir: Path, workers: int) -> int:
    """Move review items no running worker would send (spooled by a single-process sidecar, or by
    a worker beyond today's count) to worker 0's spool. Runs before any worker starts."""
    target = spool_dir / "worker-0"
    sources = [spool_dir]
    if spool_dir.is_dir():
        for child in spool_dir.iterdir():
            suffix = child.name.removeprefix("worker-")
            if child.is_dir() and suffix != child.name and suffix.isdigit() and int(suffix) >= workers:
                sources.append(child)
    moved = 0
    for source in sources:
        if not source.is_dir():
            continue
        for item in source.iterdir():
            if item.is_file() and item.suffix == ".json" and not item.name.startswith("."):
                target.mkdir(parents=True, exist_ok=True)
                item.rename(target / item.name)
                moved += 1
    return moved


@dataclass
class _Worker:
    index: int
    config: SidecarConfig
    socket: Path
    process: BaseProcess | None = None
    incarnation: int = 0
    started_at: float = 0.0


class WorkerPool:
    def __init__(
        self,
        config: SidecarConfig,
        kubeconfig: str | None,
        target: WorkerTarget,
        *,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        stable_s: float = 60.0,
        max_fast_exits: int = 5,
        stop_grace_s: float = 25.0,
        scrape_timeout_s: float = 3.0,
    ) -> None:
        self.config = config
        self.kubeconfig = kubeconfig
        self.target = target
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.stable_s = stable_s
        self.max_fast_exits = max_fast_exits
        self.stop_grace_s = stop_grace_s
        self.scrape_timeout_s = scrape_timeout_s
        self.aggregator = Aggregator(config.tuning.workers)
        self.metrics_port = 0
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []
        self._stopping = asyncio.Event()
        self._failed = False
        self._round: asyncio.Future[list[None]] | None = None

    async def run(self) -> int:
        """Run the workers until a signal (0) or a worker that keeps failing (1)."""
        moved = adopt_spool(self.config.spool_dir, self.config.tuning.workers)
        if moved:
            log.info("%d review items left by an earlier layout now wait in worker 0's spool", moved)
        runtime = Path(tempfile.mkdtemp(prefix="guardedmodel-sidecar-"))  # 0700: private sockets
        self._workers = [
            _Worker(i, worker_config(self.config, i), runtime / f"worker-{i}.sock")
            for i in range(self.config.tuning.workers)
        ]
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        runner = await self._serve_metrics()
        supervisors = [
            loop.create_task(self._supervise(w), name=f"supervise-worker-{w.index}") for w in self._workers
        ]
        try:
            await self._stopping.wait()
        finally:
            self._stopping.set()
            await self._stop_workers(supervisors)
            await runner.cleanup()
            shutil.rmtree(runtime, ignore_errors=True)
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        return 1 if self._failed else 0

    # ----------------------------------------------------------------------------- supervision

    def _start(self, worker: _Worker) -> BaseProcess:
        with contextlib.suppress(FileNotFoundError):
            worker.socket.unlink()  # a dead predecessor's socket
        worker.incarnation = self.aggregator.started(worker.index)
        process = self._context.Process(
            target=self.target,
            args=(worker.config, self.kubeconfig, str(worker.socket), os.getpid(), logging.getLogger().level),
            name=f"sidecar-worker-{worker.index}",
        )
        process.start()
        worker.process = process
        worker.started_at = time.monotonic()
        log.info("worker %d started (pid %s)", worker.index, process.pid)
        return process

    async def _supervise(self, worker: _Worker) -> None:
        delay = self.backoff_s
        fast_exits = 0
        while not self._stopping.is_set():
            process = self._start(worker)
            await _exited(process)
            if self._stopping.is_set():
                return
            lived = time.monotonic() - worker.started_at
            self.aggregator.exited(worker.index)
            if lived >= self.stable_s:
                delay, fast_exits = self.backoff_s, 0
            fast_exits += 1
            if fast_exits >= self.max_fast_exits:
                log.critical(
                    "worker %d ended %d times in a row, each within %.0f s of its start (last: pid %s %s); "
                    "stopping the sidecar so that its container is restarted (see the worker's log above)",
                    worker.index,
                    fast_exits,
                    self.stable_s,
                    process.pid,
                    _ended(process.exitcode),
                )
                self._failed = True
                self._stopping.set()
                return
            log.error(
                "worker %d (pid %s) %s after %.1f s; restarting it in %.1f s",
                worker.index,
                process.pid,
                _ended(process.exitcode),
                lived,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            delay = min(delay * 2, self.max_backoff_s)

    async def _stop_workers(self, supervisors: list[asyncio.Task[None]]) -> None:
        """SIGTERM to every worker; each supervisor returns once its worker has ended."""
        running = [w.process for w in self._workers if w.process is not None and w.process.is_alive()]
        if running:
            log.info("stopping %d workers (they finish the requests in flight)", len(running))
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid or 0, signal.SIGTERM)
        _, pending = await asyncio.wait(supervisors, timeout=self.stop_grace_s)
        for process in running:
            if process.is_alive():
                log.error(
                    "worker pid %s still running %.0f s after SIGTERM; killing it",
                    process.pid,
                    self.stop_grace_s,
                )
                process.kill()
        if pending:
            await asyncio.wait(pending, timeout=5.0)
        for task in supervisors:
            task.cancel()
        await asyncio.gather(*supervisors, return_exceptions=True)

    # ----------------------------------------------------------------------------- metrics

    async def _serve_metrics(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics_handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        listen = self.config.listen
        site = web.TCPSite(runner, listen.host, listen.metrics)
        await site.start()
        server: Any = site._server  # aiohttp keeps the asyncio server here; no public bound port
        self.metrics_port = int(server.sockets[0].getsockname()[1]) if server and server.sockets else 0
        log.info("pod metrics on :%d, merged from %d workers", self.metrics_port, len(self._workers))
        return runner

    async def _metrics_handler(self, request: web.Request) -> web.Response:
        # Concurrent scrapes (an HA pair of Prometheus) share one round of reads: two rounds could
        # finish out of order and store a worker's older figures over newer ones, and a counter
        # that steps back reads as a reset, which rate() would count as a burst of new requests.
        if self._round is None or self._round.done():
            self._round = asyncio.ensure_future(asyncio.gather(*(self._scrape(w) for w in self._workers)))
        await asyncio.shield(self._round)
        return web.Response(body=self.aggregator.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _scrape(self, worker: _Worker) -> None:
        incarnation = worker.incarnation
        if worker.process is None or not worker.process.is_alive():
            self.aggregator.missed(worker.index, incarnation)
            return
        try:
            text = await scrape_unix(worker.socket, self.scrape_timeout_s)
            self.aggregator.observe(worker.index, incarnation, text)
        except (OSError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
            # Starting (socket not there yet) or stuck: its previous figures stand.
            log.debug("worker %d metrics not read: %s", worker.index, exc)
            self.aggregator.missed(worker.index, incarnation)


async def scrape_unix(socket: Path, timeout_s: float) -> str:
    connector = aiohttp.UnixConnector(path=str(socket), force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)) as session,
        session.get("http://worker/metrics") as response,
    ):
        if response.status != 200:
            raise ValueError(f"HTTP {response.status}")
        return await response.text()


async def _exited(process: BaseProcess) -> None:
    """Wait, without a thread, until ``process`` ends (its sentinel fd turns readable)."""
    loop = asyncio.get_running_loop()
    ended = loop.create_future()
    fd = process.sentinel

    def on_readable() -> None:
        if not ended.done():
            ended.set_result(None)

    loop.add_reader(fd, on_readable)
    try:
        if process.exitcode is None:
            await ended
    finally:
        loop.remove_reader(fd)
    process.join()


def _ended(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-exitcode).name}"
    return f"exited with status {exitcode}"
