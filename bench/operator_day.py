"""The operator over a time-compressed day: many GuardedModels, fast timers, and whether it stays quiet.

    .venv/bin/python bench/operator_day.py [--count 1000] [--minutes 10] [--interval 10]

Starts a local cluster (real kube-apiserver with an audit log of every write, etcd, controllers,
kwok GPU nodes), a real Prometheus (it holds no sidecar series: kwok pods serve no metrics, so every
check finds no data, the steady state of a model nobody calls) and the real operator with its timers
compressed: the rollout controller's continuous guard (spec.rollout.interval), the scaler
(GUARDEDMODEL_SCALE_INTERVAL_S) and the idle watch (GUARDEDMODEL_IDLE_INTERVAL_S) all fire every
``--interval`` seconds instead of every 30-60 s, and the watches are re-established every
``--watch-timeout`` seconds instead of every 5 minutes.

Creates ``--count`` GuardedModels (replicas 1..2, idleAfter ``--idle-after``), waits until every one
is Ready and has turned Idle (the one write a quiet day owes: the Idle condition) and the Events
of those transitions have been posted (the operator wrote nothing for two timer rounds; after 5
minutes the steady state starts anyway, so a writer that never stops is counted), then for
``--minutes`` samples every ``--sample`` seconds:

- the operator's writes to the API server, counted from the API server's audit log (every create,
  update, patch, delete, by user agent: the operator's own client and kopf's), by resource and verb:
  in steady state this must be 0 per minute;
- the operator's RSS (/proc/PID/status VmRSS) and open descriptors;
- the timer firings that reached Prometheus (its own query counter) and the rollout checks.

Fits a least-squares slope per hour to RSS and descriptors. Writes bench/results/operator_day.json
and operator_day.png. tests/integration/operator/test_operator_day.py runs the same code with 100
models for a minute and asserts on it; this file asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import signal
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from operator_scale import (
    NAMESPACE,
    OPERATOR_AGENTS,
    PODS_PER_NODE,
    manifest,
    phases,
    scrape,
    start_operator,
    total,
)
from proc_stats import fd_census, open_fds, rss_mb, slope_per_hour

from guardedmodel_testground import stack as local_stack
from guardedmodel_testground.api_audit import parse_writes
from guardedmodel_testground.cluster import LocalCluster
from guardedmodel_testground.kwok_nodes import FakeNode
from guardedmodel_testground.procs import ManagedProcess
from guardedmodel_testground.prometheus import Prometheus

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


@dataclass(frozen=True)
class DaySettings:
    count: int = 1000
    minutes: float = 10.0  # steady state, after every model is Ready and Idle
    interval_s: float = 10.0  # rollout, scaling and idle timers
    idle_after_s: float = 20.0
    watch_timeout_s: int = 60
    sample_s: float = 10.0
    worker_limit: int = 20
    ready_timeout_s: float = 900.0
    drain_timeout_s: float = 300.0  # longest wait for the transitions' writes to stop
    batch: int = 100

    @property
    def quiet_s(self) -> float:
        return max(2 * self.interval_s, 10.0)


@dataclass
class DaySample:
    t: float  # seconds since the steady state began
    rss_mb: float
    fds: int
    # The descriptors by kind: "prometheus" and "apiserver" connections come from pools (aiohttp's
    # default of 100 to Prometheus; the API client's 50 and kopf's watches), the rest must not move.
    fd_kinds: dict[str, int]
    operator_writes: int  # audit-logged writes by the operator in this sample's interval
    other_writes: int  # by everyone else (controllers, kwok): context, not asserted
    prometheus_queries: float  # in this interval
    rollout_checks: float
    reconciles: float


@dataclass
class DayResult:
    settings: DaySettings
    ready_seconds: float
    settle_seconds: float  # from all Ready until every model was Idle
    drain_seconds: float  # from all Idle until the operator had written nothing for quiet_s
    writes_until_steady: dict[str, int]  # by "agent verb resource[/subresource]"
    steady_writes: dict[str, int]  # the same, in steady state: must be empty
    steady_writes_per_minute: list[float]
    steady_write_examples: list[str]  # the first operator writes of the steady state, if any
    steady_events: dict[str, int]  # Events seen in the steady state, by "reason: message"
    operator_counted_writes: float  # its own guardedmodel_operator_writes_total rise in steady state
    samples: list[DaySample]
    slopes_per_hour: dict[str, float]
    steady: dict[str, float]
    machine: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def day_manifest(index: int, settings: DaySettings) -> dict[str, Any]:
    """A model every timer watches: scaled (max > min), idle-checked and continuously guarded."""
    doc = manifest(index)
    doc["spec"].update(
        replicas={"min": 1, "max": 2},
        scaling={"idleAfter": f"{settings.idle_after_s:g}s"},
        rollout={"interval": f"{settings.interval_s:g}s"},
    )
    return doc


class AuditTail:
    """The writes the API server logged since the last read, by who and what."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.examples: list[str] = []  # the first operator writes read, for the report

    def read(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        if not self.path.exists():
            return counts
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # a line still being written is read next time
        self.offset += end
        for write in parse_writes(data[:end].decode(errors="replace").splitlines()):
            resource = (write.resource or "?") + (f"/{write.subresource}" if write.subresource else "")
            who = next((a for a in OPERATOR_AGENTS if write.user_agent.startswith(a)), "other")
            counts[f"{who} {write.verb} {resource}"] += 1
            if who != "other" and len(self.examples) < 20:
                self.examples.append(write.describe())
        return counts


def _operator_total(counts: Counter[str]) -> int:
    return sum(n for key, n in counts.items() if not key.startswith("other "))


def _prometheus_queries(url: str) -> float:
    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("prometheus_http_requests_total{") and 'handler="/api/v1/query' in line
    )


def _idle_models(cluster: LocalCluster) -> int:
    items = cluster.kubectl_json("get", "gm", "-n", NAMESPACE)["items"]
    return sum(
        any(
            c.get("type") == "Idle" and c.get("status") == "True"
            for c in (m.get("status") or {}).get("conditions", [])
        )
        for m in items
    )


def _recent_events(cluster: LocalCluster, seconds: float) -> dict[str, int]:
    """Events of the models' namespace last seen within ``seconds``, by "reason: message"."""
    items = cluster.kubectl_json("get", "events", "-n", NAMESPACE)["items"]
    since = time.time() - seconds
    counts: Counter[str] = Counter()
    for event in items:
        seen = event.get("lastTimestamp") or event.get("eventTime") or ""
        if seen and _epoch(seen) >= since:
            message = " ".join(str(event.get("message", "")).split())[:100]
            counts[f"{event.get('reason')}: {message}"] += int(event.get("count") or 1)
    return dict(counts.most_common(20))


def _epoch(timestamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def _start_operator(
    cleanup: contextlib.ExitStack, cluster: LocalCluster, prometheus: Prometheus, logs: Path, s: DaySettings
) -> tuple[ManagedProcess, str]:
    """The operator with every timer at ``s.interval_s`` and its watches renewed every ``s.watch_timeout_s``."""
    return start_operator(
        cleanup,
        cluster,
        logs,
        "operator",
        s.worker_limit,
        prometheus_url=prometheus.url,
        extra_env={
            "GUARDEDMODEL_SCALE_INTERVAL_S": str(s.interval_s),
            "GUARDEDMODEL_IDLE_INTERVAL_S": str(s.interval_s),
            "GUARDEDMODEL_SCALE_DOWN_WINDOW_S": str(2 * s.interval_s),
            "GUARDEDMODEL_ROLLOUT_MIN_WINDOW_S": str(2 * s.interval_s),
            "GUARDEDMODEL_WATCH_SERVER_TIMEOUT_S": str(s.watch_timeout_s),
            "GUARDEDMODEL_WATCH_CLIENT_TIMEOUT_S": str(s.watch_timeout_s + 30),
        },
    )


def run_day(s: DaySettings, state: Path) -> DayResult:
    nodes = [
        FakeNode(f"gpu-node-{i:02d}", gpus=PODS_PER_NODE, cpu="128", memory="1024Gi")
        for i in range(math.ceil(s.count / PODS_PER_NODE) + 1)
    ]
    state.mkdir(parents=True, exist_ok=True)
    # The local API server logs every write (LocalCluster's audit policy).
    cluster = LocalCluster(state / "cluster", nodes=nodes)
    audit = AuditTail(cluster.audit_log)
    with cluster, contextlib.ExitStack() as cleanup, Prometheus(state / "prometheus") as prometheus:
        local_stack.install_crd(cluster, NAMESPACE)
        operator, metrics_url = _start_operator(cleanup, cluster, prometheus, state, s)
        started = time.monotonic()
        for first in range(0, s.count, s.batch):
            docs = [day_manifest(i, s) for i in range(first, min(s.count, first + s.batch))]
            cluster.kubectl("create", "-f", "-", input=yaml.safe_dump_all(docs), timeout=300)

        ready_s = _wait(
            operator, started, s.ready_timeout_s, "Ready", lambda: phases(cluster).get("Ready", 0), s.count
        )
        idle_s = _wait(operator, started, s.ready_timeout_s, "Idle", lambda: _idle_models(cluster), s.count)
        drain_started = time.monotonic()
        until_steady = _drained(audit, operator, s)
        drain_s = time.monotonic() - drain_started
        audit.examples.clear()

        peers = {int(prometheus.port): "prometheus", cluster.apiserver_port: "apiserver"}
        steady_started = time.monotonic()
        steady_writes: Counter[str] = Counter()
        samples: list[DaySample] = []
        before = scrape(metrics_url)
        last, last_queries = before, _prometheus_queries(prometheus.url)
        while time.monotonic() - steady_started < s.minutes * 60:
            time.sleep(s.sample_s)
            operator.check_alive()
            writes = audit.read()
            steady_writes.update(writes)
            now, queries = scrape(metrics_url), _prometheus_queries(prometheus.url)
            samples.append(
                DaySample(
                    t=round(time.monotonic() - steady_started, 2),
                    rss_mb=round(rss_mb(operator.pid), 2),
                    fds=open_fds(operator.pid),
                    fd_kinds=dict(fd_census(operator.pid, (), peers)),
                    operator_writes=_operator_total(writes),
                    other_writes=sum(writes.values()) - _operator_total(writes),
                    prometheus_queries=queries - last_queries,
                    rollout_checks=_rise(last, now, "guardedmodel_operator_rollout_checks_total"),
                    reconciles=_rise(last, now, "guardedmodel_operator_reconciles_total"),
                )
            )
            last, last_queries = now, queries
            print(f"t={samples[-1].t:7.1f}s {samples[-1]}", flush=True)
        counted = _rise(before, scrape(metrics_url), "guardedmodel_operator_writes_total")
        events = _recent_events(cluster, s.minutes * 60)

    return DayResult(
        settings=s,
        ready_seconds=round(ready_s, 1),
        settle_seconds=round(idle_s - ready_s, 1),
        drain_seconds=round(drain_s, 1),
        writes_until_steady=dict(sorted(until_steady.items())),
        steady_writes={k: n for k, n in sorted(steady_writes.items()) if not k.startswith("other ")},
        steady_writes_per_minute=_per_minute(samples, s.sample_s),
        steady_write_examples=audit.examples,
        steady_events=events,
        operator_counted_writes=counted,
        samples=samples,
        slopes_per_hour={
            "rss_mb": round(slope_per_hour([x.t for x in samples], [x.rss_mb for x in samples]), 2),
            "fds": round(slope_per_hour([x.t for x in samples], [x.fds for x in samples]), 2),
        },
        steady=_steady_figures(samples, s),
        machine={"cpus": len(os.sched_getaffinity(0)), "python": platform.python_version()},
    )


def _wait(
    operator: ManagedProcess, started: float, timeout: float, what: str, count: Any, want: int
) -> float:
    while True:
        operator.check_alive()
        have = count()
        elapsed = time.monotonic() - started
        print(f"t={elapsed:7.1f}s {what}: {have}/{want}", flush=True)
        if have >= want:
            return elapsed
        if elapsed > timeout:
            raise TimeoutError(f"only {have} of {want} GuardedModels were {what} after {timeout:.0f}s")
        time.sleep(3)


def _drained(audit: AuditTail, operator: ManagedProcess, s: DaySettings) -> Counter[str]:
    """The writes until the transitions have drained: kopf posts Events from a bounded background
    queue, so the Events of 1,000 models' last transitions trail them by a while. Done when the
    operator has written nothing for ``quiet_s`` (at least two rounds of every timer), or after
    ``drain_timeout_s`` whatever it writes: a writer that never stops is then counted as steady."""
    written: Counter[str] = Counter()
    quiet_since = time.monotonic()
    deadline = quiet_since + s.drain_timeout_s
    while time.monotonic() - quiet_since < s.quiet_s and time.monotonic() < deadline:
        time.sleep(1.0)
        operator.check_alive()
        fresh = audit.read()
        written.update(fresh)
        if _operator_total(fresh):
            quiet_since = time.monotonic()
    return written


def _rise(before: dict[str, float], after: dict[str, float], prefix: str) -> float:
    return total(after, prefix) - total(before, prefix)


def _per_minute(samples: list[DaySample], sample_s: float) -> list[float]:
    per = max(1, round(60 / sample_s))
    return [float(sum(x.operator_writes for x in samples[i : i + per])) for i in range(0, len(samples), per)]


def _steady_figures(samples: list[DaySample], s: DaySettings) -> dict[str, float]:
    if not samples:
        return {}
    seconds = samples[-1].t
    queries = sum(x.prometheus_queries for x in samples)
    checks = sum(x.rollout_checks for x in samples)
    return {
        "seconds": seconds,
        "rss_mb_first": samples[0].rss_mb,
        "rss_mb_last": samples[-1].rss_mb,
        "rss_mb_max": max(x.rss_mb for x in samples),
        "fds_min": min(x.fds for x in samples),
        "fds_max": max(x.fds for x in samples),
        "prometheus_queries_per_second": round(queries / seconds, 1),
        "rollout_checks_per_model": round(checks / s.count, 1),
        # How much of a real day these checks stand for at the default 30 s interval.
        "rollout_checks_as_hours_at_30s": round(checks / s.count * 30 / 3600, 2),
        "reconciles": sum(x.reconciles for x in samples),
        "other_writes": sum(x.other_writes for x in samples),
    }


def plot(result: DayResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [x.t / 60 for x in result.samples]
    fig, (writes, memory, work) = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    writes.step(t, [x.operator_writes for x in result.samples], where="post", label="operator")
    writes.step(t, [x.other_writes for x in result.samples], where="post", label="controllers, kwok")
    writes.set_ylabel(f"API writes per {result.settings.sample_s:g} s")
    writes.legend()
    memory.plot(t, [x.rss_mb for x in result.samples], color="tab:red")
    memory.set_ylabel("operator RSS (MiB)")
    memory.set_title(f"slope {result.slopes_per_hour['rss_mb']:+g} MiB/h", fontsize=9)
    work.plot(t, [x.prometheus_queries for x in result.samples], label="Prometheus queries")
    work.plot(t, [x.rollout_checks for x in result.samples], label="rollout checks")
    work.set_ylabel(f"per {result.settings.sample_s:g} s")
    work.set_xlabel("minutes of steady state")
    work.legend()
    fig.suptitle(
        f"{result.settings.count} GuardedModels, timers every {result.settings.interval_s:g} s: "
        f"{sum(result.steady_writes.values())} operator writes in steady state"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--minutes", type=float, default=10.0, help="steady state to watch")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between timer firings")
    parser.add_argument("--idle-after", type=float, default=20.0, help="the models' idleAfter, seconds")
    parser.add_argument("--watch-timeout", type=int, default=60, help="seconds before a watch is renewed")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--worker-limit", type=int, default=20)
    parser.add_argument("--output", type=Path, default=RESULTS / "operator_day.json")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: stop the cluster and operator
    settings = DaySettings(
        count=args.count,
        minutes=args.minutes,
        interval_s=args.interval,
        idle_after_s=args.idle_after,
        watch_timeout_s=args.watch_timeout,
        sample_s=args.sample,
        worker_limit=args.worker_limit,
    )
    with tempfile.TemporaryDirectory(prefix="gm-day-") as tmp:
        result = run_day(settings, Path(tmp))
    payload = result.to_json()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(payload, indent=2) + "\n")
    plot(result, args.output.with_suffix(".png"))
    print(json.dumps({k: v for k, v in payload.items() if k != "samples"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
