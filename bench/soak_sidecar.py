"""Soak the sidecar: a sustained mix of good, OOD and malformed requests, and whether it stays flat.

    .venv/bin/python bench/soak_sidecar.py [--minutes 30] [--rate 100] [--warmup 120] [--interval 5]

Starts a real CPU Triton with the toy model and one real sidecar process in front of it (OOD action
``reject``, audit on), then:

1. primes it (a few seconds of the same traffic, so lazy start-up work is done), lets it go quiet and
   takes the baseline: the sidecar's open descriptors by kind and its asyncio task count;
2. sends the mix of bench/soak_traffic.py open-loop at ``--rate`` for ``--minutes``, sampling every
   ``--interval`` seconds the sidecar's RSS (/proc/PID/status VmRSS), open descriptors
   (/proc/PID/fd), asyncio tasks (its ``guardedmodel_sidecar_asyncio_tasks`` gauge) and the p50/p99
   latency of the answers of that interval; every answer is checked against its class;
3. stops, lets it go quiet again and takes the same census: client connections must be gone, every
   other descriptor and the task count back to the baseline (Triton connections the pool keeps are
   counted apart and bounded by ``limits.maxTritonConnections``; the one connection following
   Triton's metrics is part of the baseline).

Fits a least-squares slope per hour to RSS, descriptors, tasks and p99 after ``--warmup`` seconds.
Writes bench/results/soak.json and soak.png. tests/integration/sidecar/test_soak.py runs the same
code for about a minute and asserts on it; this file asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "tests" / "integration" / "sidecar"))
sys.path.insert(0, str(ROOT / "bench"))

from conftest import SidecarProcess, launch_sidecar, sidecar_config  # noqa: E402
from proc_stats import fd_census, open_fds, rss_mb, slope_per_hour  # noqa: E402
from sidecar_toy import INPUT_DIM, write_toy_repository  # noqa: E402
from soak_traffic import PLAN, Answer, Traffic  # noqa: E402

from guardedmodel_testground.triton import TritonServer  # noqa: E402

TASKS_GAUGE = "guardedmodel_sidecar_asyncio_tasks"
MAX_TRITON_CONNECTIONS = 16


@dataclass(frozen=True)
class SoakSettings:
    seconds: float = 1800.0  # traffic after priming
    rate: float = 100.0  # requests per second, all kinds together
    warmup_s: float = 120.0  # left out of the slopes
    interval_s: float = 5.0
    prime_s: float = 8.0
    settle_timeout_s: float = 20.0  # how long the quiet census may take to come back to the baseline


@dataclass
class Sample:
    t: float  # seconds since the soak traffic started
    rss_mb: float
    fds: int
    tasks: int
    answers: int
    mismatches: int
    p50_ms: float | None
    p99_ms: float | None


@dataclass
class Census:
    fds: dict[str, int]
    tasks: int

    def without_upstream(self) -> dict[str, int]:
        return {kind: n for kind, n in self.fds.items() if kind != "upstream" and n}


@dataclass
class SoakResult:
    settings: SoakSettings
    sent: int
    answered: int
    not_sent: int
    by_case: dict[str, dict[str, int]]  # "kind/protocol/name" -> {"sent", "ok"}
    first_mismatches: list[str]
    counted: dict[str, float]  # the sidecar's own counters: their rise over the soak traffic
    baseline: Census
    after: Census
    settle_seconds: float
    samples: list[Sample]
    slopes_per_hour: dict[str, float]  # after warm-up
    steady: dict[str, float]  # first and last steady values, maxima
    machine: dict[str, Any] = field(default_factory=dict)

    @property
    def mismatches(self) -> int:
        return sum(c["sent"] - c["ok"] for c in self.by_case.values())

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["mismatches"] = self.mismatches
        return out


@contextlib.contextmanager
def soak_stack(work: Path) -> Iterator[tuple[TritonServer, SidecarProcess]]:
    """CPU Triton (explicit model control) and one sidecar: OOD rows refused, audit on with samples."""
    repository = write_toy_repository(work)
    triton = TritonServer(repository, model_control_mode="explicit", log_dir=work / "logs").start()
    sidecar: SidecarProcess | None = None
    try:
        config = sidecar_config(
            triton,
            repository,
            work,
            spec={
                "gate": {
                    "inputs": [
                        {"name": "INPUT", "datatype": "FP32", "shape": [INPUT_DIM], "min": 0.0, "max": 1.0}
                    ],
                    "ood": {"method": "mahalanobis", "action": "reject"},
                },
                "audit": {"enabled": True, "sampleRate": 0.01},
                "drift": {"window": "10s"},
            },
            tuning={"tritonMetricsInterval": "2s"},
            limits={"maxTritonConnections": MAX_TRITON_CONNECTIONS},
        )
        sidecar = launch_sidecar(config, work, "soaked-sidecar")
        sidecar.wait_ready()
        yield triton, sidecar
    finally:
        if sidecar is not None:
            sidecar.stop()
        triton.stop()


class Soak:
    def __init__(self, triton: TritonServer, sidecar: SidecarProcess, settings: SoakSettings) -> None:
        assert sidecar.popen is not None
        self.pid = sidecar.popen.pid
        self.sidecar = sidecar
        self.settings = settings
        listen = sidecar.config["listen"]
        self.served_ports = {listen["http"], listen["grpc"], listen["metrics"]}
        # The sidecar's Triton pool (HTTP), bounded by maxTritonConnections, and the one connection
        # that follows Triton's queue metrics.
        self.triton_peers = {
            int(triton.http_url.rsplit(":", 1)[1]): "upstream",
            int(triton.grpc_url.rsplit(":", 1)[1]): "upstream_grpc",
            triton.metrics_port: "triton_metrics",
        }
        self.answers: list[Answer] = []
        self.by_case: dict[str, Counter[str]] = {}
        self.first_mismatches: list[str] = []

    def record(self, answer: Answer) -> None:
        self.answers.append(answer)
        counts = self.by_case.setdefault(f"{answer.kind}/{answer.protocol}/{answer.name}", Counter())
        counts["sent"] += 1
        counts["ok"] += answer.ok
        if not answer.ok and len(self.first_mismatches) < 20:
            self.first_mismatches.append(f"{answer.kind}/{answer.protocol}/{answer.name}: {answer.detail}")

    async def scrape(self) -> dict[str, float]:
        """The sidecar's metrics as {sample with labels: value}."""
        # A fresh connection per scrape, closed after it, so the scrape leaves nothing open behind.
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session,
            session.get(self.sidecar.metrics_url) as response,
        ):
            text = await response.text()
        return {
            key: float(value)
            for key, _, value in (line.rpartition(" ") for line in text.splitlines())
            if key and not key.startswith("#")
        }

    async def tasks(self) -> int:
        for key, value in (await self.scrape()).items():
            if key.startswith(TASKS_GAUGE + "{"):
                return int(value)
        raise RuntimeError(f"the sidecar's metrics have no {TASKS_GAUGE}")

    async def census(self) -> Census:
        tasks = await self.tasks()
        await asyncio.sleep(0.2)  # the scrape's connection is closed on both sides
        return Census(dict(fd_census(self.pid, self.served_ports, self.triton_peers)), tasks)

    async def settled_census(self, baseline: Census | None = None) -> tuple[Census, float]:
        """Poll until the census is back at ``baseline`` (without one: until no client connection is
        left and two censuses in a row agree), or the timeout: (last census, seconds it took)."""
        started = time.monotonic()
        previous: Census | None = None
        while True:
            census = await self.census()
            if baseline is not None:
                settled = (
                    census.without_upstream() == baseline.without_upstream()
                    and census.tasks == baseline.tasks
                )
            else:
                settled = census == previous and not census.fds.get("clients")
            if settled or time.monotonic() - started > self.settings.settle_timeout_s:
                return census, time.monotonic() - started
            previous = census
            await asyncio.sleep(0.5)

    def traffic(self) -> Traffic:
        return Traffic(self.sidecar.http_url, self.sidecar.grpc_url, self.settings.rate, self.record)

    async def run(self) -> SoakResult:
        s = self.settings
        await self.traffic().run(s.prime_s)
        self.answers.clear()
        self.by_case.clear()
        self.first_mismatches.clear()
        baseline, _ = await self.settled_census()
        counted_before = await self.scrape()

        traffic = self.traffic()
        started = time.monotonic()
        sender = asyncio.create_task(traffic.run(s.seconds))
        samples: list[Sample] = []
        seen = 0
        while not sender.done():
            await asyncio.wait({sender}, timeout=s.interval_s)
            fresh = self.answers[seen:]
            seen += len(fresh)
            latencies = np.asarray([a.latency_s for a in fresh]) * 1000.0
            samples.append(
                Sample(
                    t=round(time.monotonic() - started, 2),
                    rss_mb=round(rss_mb(self.pid), 2),
                    fds=open_fds(self.pid),
                    tasks=await self.tasks(),
                    answers=len(fresh),
                    mismatches=sum(not a.ok for a in fresh),
                    p50_ms=round(float(np.percentile(latencies, 50)), 3) if len(fresh) else None,
                    p99_ms=round(float(np.percentile(latencies, 99)), 3) if len(fresh) else None,
                )
            )
        await sender  # raises what the sender raised
        after, settle_s = await self.settled_census(baseline)
        counted = counter_rise(counted_before, await self.scrape())
        return SoakResult(
            settings=s,
            sent=traffic.sent,
            answered=len(self.answers),
            not_sent=traffic.not_sent,
            by_case={case: dict(counts) for case, counts in sorted(self.by_case.items())},
            first_mismatches=self.first_mismatches,
            counted=counted,
            baseline=baseline,
            after=after,
            settle_seconds=round(settle_s, 2),
            samples=samples,
            slopes_per_hour=slopes(samples, s),
            steady=steady_figures(samples, s),
            machine={"cpus": len(os.sched_getaffinity(0)), "python": platform.python_version()},
        )


# What the sidecar counted of the soak traffic, to hold against what was sent.
COUNTERS = (
    "guardedmodel_requests_total",
    "guardedmodel_gate_refusals_total",
    "guardedmodel_audit_records_total",
    "guardedmodel_audit_records_dropped_total",
    "guardedmodel_upstream_errors_total",
)


def counter_rise(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {
        key: value - before.get(key, 0.0)
        for key, value in sorted(after.items())
        if key.split("{", 1)[0] in COUNTERS
    }


def _steady(samples: list[Sample], settings: SoakSettings) -> list[Sample]:
    """After the warm-up and before the sender's tail (its connections close there)."""
    return [x for x in samples if settings.warmup_s < x.t < settings.seconds and x.answers]


def slopes(samples: list[Sample], settings: SoakSettings) -> dict[str, float]:
    steady = _steady(samples, settings)
    t = [x.t for x in steady]
    return {
        "rss_mb": round(slope_per_hour(t, [x.rss_mb for x in steady]), 2),
        "fds": round(slope_per_hour(t, [x.fds for x in steady]), 2),
        "tasks": round(slope_per_hour(t, [x.tasks for x in steady]), 2),
        "p99_ms": round(slope_per_hour(t, [x.p99_ms or 0.0 for x in steady]), 3),
    }


def steady_figures(samples: list[Sample], settings: SoakSettings) -> dict[str, float]:
    steady = _steady(samples, settings)
    if not steady:
        return {}
    p99 = [x.p99_ms or 0.0 for x in steady]
    return {
        "samples": len(steady),
        "rss_mb_first": steady[0].rss_mb,
        "rss_mb_last": steady[-1].rss_mb,
        "rss_mb_max": max(x.rss_mb for x in steady),
        "fds_min": min(x.fds for x in steady),
        "fds_max": max(x.fds for x in steady),
        "tasks_min": min(x.tasks for x in steady),
        "tasks_max": max(x.tasks for x in steady),
        "p99_ms_median": round(float(np.median(p99)), 3),
        "p99_ms_max": max(p99),
        "requests_per_second": round(
            sum(x.answers for x in steady) / max(steady[-1].t - settings.warmup_s, 1e-9), 1
        ),
    }


def run_soak(settings: SoakSettings, work: Path) -> SoakResult:
    with soak_stack(work) as (triton, sidecar):
        return asyncio.run(Soak(triton, sidecar, settings).run())


def plot(result: SoakResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result.samples
    t = np.asarray([x.t for x in samples]) / 60.0
    series = [
        ("RSS (MiB)", [x.rss_mb for x in samples], "rss_mb"),
        ("open fds", [x.fds for x in samples], "fds"),
        ("asyncio tasks", [x.tasks for x in samples], "tasks"),
        ("p99 latency (ms)", [x.p99_ms or np.nan for x in samples], "p99_ms"),
    ]
    fig, axes = plt.subplots(len(series), 1, figsize=(9, 9), sharex=True)
    for ax, (label, values, key) in zip(axes, series, strict=True):
        ax.plot(t, values, marker=".", linewidth=1)
        ax.axvline(result.settings.warmup_s / 60.0, color="grey", linestyle=":", linewidth=1)
        ax.set_ylabel(label)
        ax.set_title(f"slope after warm-up: {result.slopes_per_hour[key]:+g} per hour", fontsize=9)
    axes[-1].set_xlabel("minutes of soak traffic")
    fig.suptitle(
        f"sidecar soak: {result.answered} requests at {result.settings.rate:g}/s, "
        f"{result.mismatches} answers of the wrong class"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second (below saturation)")
    parser.add_argument("--warmup", type=float, default=120.0, help="seconds left out of the slopes")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--output", type=Path, default=RESULTS / "soak.json")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: stop Triton and the sidecar
    settings = SoakSettings(
        seconds=args.minutes * 60.0, rate=args.rate, warmup_s=args.warmup, interval_s=args.interval
    )
    with tempfile.TemporaryDirectory(prefix="gm-soak-") as tmp:
        result = run_soak(settings, Path(tmp))
    payload = result.to_json()
    payload["mix"] = [list(slot) for slot in PLAN]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(payload, indent=2) + "\n")
    plot(result, args.output.with_suffix(".png"))
    summary = {k: v for k, v in payload.items() if k not in ("samples", "mix")}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
