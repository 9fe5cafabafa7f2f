"""Parts of the review-outage and disk-full scenarios: a review webhook that can be down, slow, failing
or fine; steady traffic against the real sidecar; its metrics read as numbers; and what its audit log
says became of each review item."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.http as httpclient
from aiohttp import web
from conftest import SidecarProcess, WebhookReceiver, sidecar_config
from prometheus_client.parser import text_string_to_metric_families
from sidecar_toy import MODEL, toy_data
from tritonclient.utils import InferenceServerException

from guardedmodel_sidecar.audit_file import iter_records
from guardedmodel_testground.prometheus import Prometheus, ScrapeJob
from guardedmodel_testground.triton import TritonServer

MODES = ("ok", "error", "slow", "down")
ALERTS = Path(__file__).resolve().parents[3] / "charts" / "guardedmodel" / "files" / "alerts.yaml"
# The labels the chart's ServiceMonitor puts on a pod's series, which the alerts group by.
LABELS = {"namespace": "ml", "guardedmodel_io_name": "toy"}


@dataclass(frozen=True)
class Delivery:
    id: str
    key: str | None  # the Idempotency-Key header
    mode: str  # "ok", or "slow": kept, but answered after the sender's timeout


@dataclass
class FlakyWebhook(WebhookReceiver):
    """The real review webhook on loopback, whose mode the test switches: ``ok`` keeps and answers 204,
    ``error`` answers 500 and keeps nothing, ``slow`` keeps the item but answers after ``slow_s`` (past
    the sender's timeout, so it sends again), ``down`` closes the port (connection refused)."""

    slow_s: float = 1.0
    mode: str = "ok"
    deliveries: list[Delivery] = field(default_factory=list)
    refused: int = 0  # attempts answered 500

    async def _handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        mode = self.mode
        if mode == "down" and request.transport is not None:
            # A keep-alive connection opened before the port closed: cut it like a dead host would.
            request.transport.abort()
            return web.Response(status=503)  # never sent: the connection is gone
        if mode == "error":
            self.refused += 1
            return web.Response(status=500, text="review store unavailable")
        body = await request.json()
        self.received.append(body)
        self.deliveries.append(Delivery(str(body.get("id")), request.headers.get("Idempotency-Key"), mode))
        if mode == "slow":
            await asyncio.sleep(self.slow_s)
        return web.Response(status=204)

    async def _close(self) -> None:
        if self._site is not None:
            await self._site.stop()
            self._site = None

    def set_mode(self, mode: str) -> None:
        assert mode in MODES and self._loop is not None
        was_down, self.mode = self.mode == "down", mode
        if mode == "down":
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        elif was_down:
            asyncio.run_coroutine_threadsafe(self._open(), self._loop).result(10)

    def start(self) -> FlakyWebhook:
        super().start()
        return self

    def kept(self) -> Counter[str]:
        """Deliveries the webhook kept, by item id (more than one: a duplicate)."""
        return Counter(d.id for d in self.deliveries)


class Traffic:
    """Steady requests to the sidecar from background threads: ``accept_threads`` threads of
    in-distribution rows (answered accept, ~``accept_rps`` each) and one thread of ambiguous rows
    at ``review_rps`` (each answered review, so each makes one review item). Every answer is counted
    by decision; ``pause()`` holds the threads between requests (a restart), ``resume()`` lets them go."""

    def __init__(
        self, url: str, *, review_rps: float, accept_threads: int = 2, accept_rps: float = 40.0
    ) -> None:
        self.url = url
        self.review_rps = review_rps
        self.accept_threads = accept_threads
        self.accept_rps = accept_rps
        self.decisions: Counter[str] = Counter()
        self.failures: list[str] = []
        self._go = threading.Event()
        self._stop = threading.Event()
        self._busy = 0
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        data = toy_data()
        self._accept_rows = data.sample(64, seed=3, spread=0.02)[0]
        self._review_rows = data.ambiguous(64, seed=4)

    def start(self) -> Traffic:
        self._go.set()
        rows = [(self._review_rows, self.review_rps)] + [(self._accept_rows, self.accept_rps)] * (
            self.accept_threads
        )
        for i, (pool, rps) in enumerate(rows):
            thread = threading.Thread(target=self._run, args=(pool, rps), name=f"traffic-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _run(self, pool: np.ndarray, rps: float) -> None:
        client = httpclient.InferenceServerClient(self.url, connection_timeout=10, network_timeout=10)
        period = 1.0 / rps
        next_at = time.monotonic()
        n = 0
        while not self._stop.is_set():
            self._go.wait()
            if self._stop.is_set():
                break
            with self._lock:
                self._busy += 1
            try:
                x = pool[n % len(pool) : n % len(pool) + 1]
                inp = httpclient.InferInput("INPUT", list(x.shape), "FP32")
                inp.set_data_from_numpy(x)
                try:
                    result = client.infer(MODEL, [inp])
                    decision = str(result.get_response()["parameters"]["guard_decision"])
                except (InferenceServerException, OSError) as exc:
                    decision = "failed"
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                self.decisions[decision] += 1
            finally:
                with self._lock:
                    self._busy -= 1
            n += 1
            next_at = max(next_at + period, time.monotonic() - period)
            time.sleep(max(0.0, next_at - time.monotonic()))
        client.close()

    def pause(self) -> None:
        """Hold every thread before its next request and wait for those in flight to finish."""
        self._go.clear()
        deadline = time.monotonic() + 15
        while self._busy and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not self._busy, "requests still in flight after 15 s"

    def resume(self) -> None:
        self._go.set()

    def stop(self) -> None:
        self._stop.set()
        self._go.set()
        for thread in self._threads:
            thread.join(15)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of sample ``name`` with ``labels`` (a subset) in a scrape; 0 when absent."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def review_outcomes(audit_dir: Path) -> dict[str, list[str]]:
    """Request ids by what became of their review item (the audit record's ``review``: spooled,
    spool_full, queue_full, ...), from every record in the audit log."""
    outcomes: dict[str, list[str]] = {}
    for record in iter_records(audit_dir):
        if "review" in record:
            outcomes.setdefault(record["review"], []).append(record["id"])
    return outcomes


@dataclass
class Sampler:
    """Calls ``probe`` every ``every_s`` in a thread and keeps each result with its time."""

    probe: Callable[[], dict[str, Any]]
    every_s: float = 0.1
    samples: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        def run() -> None:
            while not self._stop.is_set():
                with contextlib.suppress(OSError):  # the sidecar restarting: no sample this time
                    self.samples.append((time.monotonic(), self.probe()))
                self._stop.wait(self.every_s)

        self._thread = threading.Thread(target=run, name="sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def first(self, predicate: Callable[[dict[str, Any]], bool]) -> float | None:
        """When a sample first met ``predicate`` (monotonic time), or None."""
        return next((at for at, sample in list(self.samples) if predicate(sample)), None)

    def values(self, key: str) -> Iterator[Any]:
        return (sample[key] for _, sample in list(self.samples) if key in sample)


def watching_prometheus(factory: Callable[..., Prometheus], sidecar: SidecarProcess) -> Prometheus:
    """A real Prometheus scraping ``sidecar`` every second and evaluating the chart's alert rules."""
    target = sidecar.metrics_url.removeprefix("http://").removesuffix("/metrics")
    return factory([ScrapeJob("sidecar", [target], labels=LABELS)], rule_files=[ALERTS])


def alert_states(prometheus: Prometheus, name: str, by: str = "") -> dict[str, str]:
    """Active alerts ``name`` by their label ``by`` ("" for all in one) -> pending or firing."""
    states: dict[str, str] = {}
    for alert in prometheus.query(f'ALERTS{{alertname="{name}"}}'):
        key = alert["metric"].get(by, "") if by else ""
        if states.get(key) != "firing":
            states[key] = alert["metric"]["alertstate"]
    return states


def review_sidecar_config(
    triton: TritonServer, repository: Path, workdir: Path, webhook: str, tuning: dict[str, Any]
) -> dict[str, Any]:
    """The toy model's sidecar sending every low-confidence request to ``webhook`` (maxFraction 1),
    auditing every decision without payload samples."""
    return sidecar_config(
        triton,
        repository,
        workdir,
        spec={
            "confidence": {"reviewBelow": 0.8, "review": {"webhook": webhook, "maxFraction": 1.0}},
            "audit": {"enabled": True, "sampleRate": 0.0},
        },
        tuning=tuning,
    )
