"""How the operator copes with many GuardedModels on a real control plane.

    .venv/bin/python bench/operator_scale.py [--count 1000] [--worker-limit 20] [--timeout 900]

Starts a local cluster (real kube-apiserver, etcd, controller-manager,
scheduler; kwok GPU nodes sized for --count single-GPU pods) and installs the
CRD. First the floor (bench/operator_floor.py, skipped with --no-floor): the
same --count GuardedModels created with kubectl in batches, and the children
the operator would write for each applied by its own write client with no
operator, --worker-limit models at a time, until every Deployment has rolled
out; that namespace is then deleted. Then the operator, as a subprocess
watching another namespace, and the same creates. Measures:

- time from the first create until every GuardedModel reports phase Ready
  (its Deployment rolled out, its pod Running on a GPU node), and its ratio
  to the floor's time;
- per model, in each run: the writer's writes as the API server's audit log
  counts them (Events and status patches among them), the writer's CPU
  seconds (the operator's process; the floor's writer thread) and the
  control plane's (kube-apiserver, etcd, controllers, kwok);
- reconciles per second and the reconcile duration histogram, from the
  operator's own /metrics;
- the operator's peak memory (VmHWM of its process) and memory over time;
- writes in a quiet period after everything is Ready (should be zero), and a
  restart: time for a fresh operator to re-list and re-check everything, and
  how many writes it makes (should be zero).

A benchmark, not a test: it asserts nothing and writes
bench/results/operator_scale.json and bench/results/operator_scale.png.
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
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from operator_floor import FloorWriter, rolled_out_count
from proc_stats import cpu_seconds

from guardedmodel_testground import stack as local_stack
from guardedmodel_testground.api_audit import AuditTail
from guardedmodel_testground.cluster import LocalCluster
from guardedmodel_testground.kwok_nodes import FakeNode
from guardedmodel_testground.procs import ManagedProcess
from guardedmodel_testground.stack import OperatorPorts

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CRD = ROOT / "crds" / "guardedmodel.io_guardedmodels.yaml"
NAMESPACE = "bench"
FLOOR_NAMESPACE = "bench-floor"
# The operator's two clients: its own (kube.py) and kopf's (watches, Events).
OPERATOR_AGENTS = ("guardedmodel-operator", "kopf")
FLOOR_AGENTS = ("guardedmodel-operator",)  # the floor writes with the operator's own client
PODS_PER_NODE = 100  # kwok nodes advertise 110 pods; keep room for surge pods


def manifest(index: int, namespace: str = NAMESPACE) -> dict[str, Any]:
    return {
        "apiVersion": "guardedmodel.io/v1alpha1",
        "kind": "GuardedModel",
        "metadata": {"name": f"model-{index:05d}", "namespace": namespace},
        "spec": {"model": {"name": f"model_{index}", "repository": "s3://bench/models", "version": "1"}},
    }


def scrape(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("guardedmodel_operator_") and " " in line:
            key, value = line.rsplit(" ", 1)
            samples[key] = float(value)
    return samples


def total(samples: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in samples.items() if k.startswith(prefix))


def memory_kb(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(rest.split()[0])
    return fields


def quantile(samples: dict[str, float], q: float) -> float | None:
    """A quantile from the reconcile-duration histogram (upper bucket bound)."""
    prefix = "guardedmodel_operator_reconcile_duration_seconds_bucket{le="
    buckets = sorted(
        (float(k[len(prefix) + 1 : -2]) if "+Inf" not in k else math.inf, v)
        for k, v in samples.items()
        if k.startswith(prefix)
    )
    if not buckets or buckets[-1][1] == 0:
        return None
    target = q * buckets[-1][1]
    return next(bound for bound, count in buckets if count >= target)


def start_operator(
    cleanup: contextlib.ExitStack,
    cluster: LocalCluster,
    logs: Path,
    name: str,
    worker_limit: int,
    *,
    prometheus_url: str | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> tuple[ManagedProcess, str]:
    """The operator as the test ground starts it, stopped by `cleanup`; returns it and its metrics URL."""
    ports = OperatorPorts.free()
    process = local_stack.start_operator(
        cleanup,
        cluster,
        namespace=NAMESPACE,
        ports=ports,
        log_dir=logs,
        name=name,
        prometheus_url=prometheus_url,
        extra_env=extra_env,
        extra_args=("--log-level=warning", f"--worker-limit={worker_limit}"),
    )
    return process, f"http://127.0.0.1:{ports.metrics}/metrics"


def phases(cluster: LocalCluster) -> dict[str, int]:
    out = cluster.kubectl(
        "get",
        "gm",
        "-n",
        NAMESPACE,
        "-o",
        "jsonpath={range .items[*]}{.status.phase}{'\\n'}{end}",
        timeout=120,
    ).stdout
    counts: dict[str, int] = {}
    for line in out.splitlines():
        counts[line or "None"] = counts.get(line or "None", 0) + 1
    return counts


@dataclass
class Phase:
    """What one way of getting --count models Ready cost: the writer's writes as the API server's
    audit log counts them (by "verb resource[/subresource]"), and the CPU seconds of the writer and
    of every control-plane process over the phase."""

    seconds: float | None  # until all Ready; None when the timeout came first
    writer_writes: dict[str, int]
    other_writes: int  # by the controllers, the scheduler, kwok and kubectl: context
    writer_cpu_s: float
    control_plane_cpu_s: dict[str, float]
    progress: list[tuple[float, int]]  # (seconds since the first create, models Ready)

    def per_model(self, count: int) -> dict[str, float]:
        def share(n: float) -> float:
            return round(n / count, 3)

        return {
            "writes": share(sum(self.writer_writes.values())),
            "events": share(sum(n for k, n in self.writer_writes.items() if k.endswith(" events"))),
            "status_patches": share(
                sum(n for k, n in self.writer_writes.items() if k.endswith(" guardedmodels/status"))
            ),
            "writer_cpu_s": share(self.writer_cpu_s),
            "apiserver_cpu_s": share(self.control_plane_cpu_s.get("kube-apiserver", 0.0)),
            "control_plane_cpu_s": share(sum(self.control_plane_cpu_s.values())),
        }


class CpuMeter:
    """CPU seconds of the control plane's processes (and a writer's) since `start`."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.pids = {p.name: p.pid for p in cluster.processes if p.alive()}
        self.before: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def start(self) -> CpuMeter:
        self.before = self._now()
        return self

    def since_start(self) -> dict[str, float]:
        return {name: round(v - self.before.get(name, 0.0), 2) for name, v in self._now().items()}


def audited(audit: AuditTail, namespace: str, writers: tuple[str, ...]) -> tuple[dict[str, int], int]:
    """The writes in `namespace` since the mark: the writer's by "verb resource[/subresource]", and
    how many everybody else made."""
    writes = audit.since_mark(namespace, ("",))
    mine: Counter[str] = Counter()
    others = 0
    for write in writes:
        if write.user_agent.startswith(writers):
            mine[
                f"{write.verb} {write.resource}" + (f"/{write.subresource}" if write.subresource else "")
            ] += 1
        else:
            others += 1
    return dict(mine.most_common()), others


def drain(
    tail: AuditTail, namespace: str, writers: tuple[str, ...], quiet_s: float = 10, limit_s: float = 180
) -> float:
    """Seconds until `writers` wrote nothing in `namespace` for `quiet_s` (at most `limit_s`)."""
    started = quiet_since = time.monotonic()
    while time.monotonic() - started < limit_s:
        time.sleep(2)
        if tail.since_mark(namespace, writers):
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            break
        tail.mark()
    return time.monotonic() - started


def create_models(cluster: LocalCluster, namespace: str, first: int, last: int) -> list[dict[str, Any]]:
    """GuardedModels first..last-1 created with one `kubectl create`; the objects as created."""
    docs = [manifest(i, namespace) for i in range(first, last)]
    out = cluster.kubectl("create", "-f", "-", "-o", "json", input=yaml.safe_dump_all(docs), timeout=300)
    # One JSON document per object, one after the other.
    decoder, text, at = json.JSONDecoder(), out.stdout.strip(), 0
    created: list[dict[str, Any]] = []
    while at < len(text):
        obj, at = decoder.raw_decode(text, at)
        created.extend(obj["items"] if obj.get("kind") == "List" else [obj])
        at += len(text[at:]) - len(text[at:].lstrip())  # the blank between two documents
    return created


def measure_floor(cluster: LocalCluster, count: int, concurrency: int, timeout: float, batch: int) -> Phase:
    """The same children written with no operator (bench/operator_floor.py) until every Deployment has
    rolled out; then the namespace is deleted, so the operator's run starts from the same cluster."""
    cluster.kubectl("create", "namespace", FLOOR_NAMESPACE)
    audit = AuditTail(cluster.audit_log).mark()
    cpu = CpuMeter(cluster).start()
    started = time.monotonic()
    seconds = None
    progress: list[tuple[float, int]] = []
    with FloorWriter(str(cluster.kubeconfig), concurrency) as writer:
        for first in range(0, count, batch):
            for model in create_models(cluster, FLOOR_NAMESPACE, first, min(count, first + batch)):
                writer.submit(model)
        while time.monotonic() - started < timeout:
            if failures := writer.failures():
                raise RuntimeError(f"the floor's writes failed ({len(failures)}), first: {failures[0]}")
            ready = rolled_out_count(cluster, FLOOR_NAMESPACE)
            progress.append((round(time.monotonic() - started, 2), ready))
            print(f"floor t={time.monotonic() - started:7.1f}s rolled out={ready}/{count}", flush=True)
            if ready == count:
                seconds = time.monotonic() - started
                break
            time.sleep(2)
        control_plane = cpu.since_start()
    writes, others = audited(audit, FLOOR_NAMESPACE, FLOOR_AGENTS)
    deleting = time.monotonic()
    cluster.kubectl("delete", "namespace", FLOOR_NAMESPACE, "--timeout=600s", timeout=660)
    print(f"floor namespace deleted in {time.monotonic() - deleting:.1f}s", flush=True)
    return Phase(
        seconds=None if seconds is None else round(seconds, 2),
        writer_writes=writes,
        other_writes=others,
        writer_cpu_s=round(writer.cpu_s, 2),
        control_plane_cpu_s=control_plane,
        progress=progress,
    )


def run(count: int, worker_limit: int, timeout: float, batch: int, floor: bool = True) -> dict[str, Any]:
    # Sized so that GPUs, CPU (each sidecar requests 500m) and pod slots all fit --count pods.
    nodes = [
        FakeNode(f"gpu-node-{i:02d}", gpus=PODS_PER_NODE, cpu="128", memory="1024Gi")
        for i in range(math.ceil(count / PODS_PER_NODE) + 1)
    ]
    with tempfile.TemporaryDirectory(prefix="gm-bench-") as tmp:
        state = Path(tmp)
        cluster = LocalCluster(state / "cluster", nodes=nodes)
        with cluster, contextlib.ExitStack() as cleanup:
            cluster.kubectl("apply", "--server-side", "-f", str(CRD))
            cluster.kubectl("wait", "--for=condition=Established", "crd/guardedmodels.guardedmodel.io")
            floor_phase = measure_floor(cluster, count, worker_limit, timeout, batch) if floor else None
            cluster.kubectl("create", "namespace", NAMESPACE)
            operator, metrics_url = start_operator(cleanup, cluster, state, "operator", worker_limit)
            audit = AuditTail(cluster.audit_log).mark()
            cpu = CpuMeter(cluster).start()
            operator_cpu_before = cpu_seconds(operator.pid)
            timeline: list[dict[str, Any]] = []
            started = time.monotonic()

            def sample(ready: int | None = None) -> None:
                samples = scrape(metrics_url)
                timeline.append(
                    {
                        "t": round(time.monotonic() - started, 2),
                        "ready": ready,
                        "reconciles": total(samples, "guardedmodel_operator_reconciles_total"),
                        "writes": total(samples, "guardedmodel_operator_writes_total"),
                        "rss_mb": round(memory_kb(operator.pid)["VmRSS"] / 1024, 1),
                    }
                )

            created_at = []
            for first in range(0, count, batch):
                create_models(cluster, NAMESPACE, first, min(count, first + batch))
                created_at.append(round(time.monotonic() - started, 2))
                sample()
            create_s = time.monotonic() - started
            print(f"created {count} GuardedModels in {create_s:.1f}s", flush=True)

            all_ready_s = None
            counts: dict[str, int] = {}
            while time.monotonic() - started < timeout:
                operator.check_alive()
                counts = phases(cluster)
                ready = counts.get("Ready", 0)
                sample(ready)
                print(f"t={timeline[-1]['t']:7.1f}s ready={ready}/{count} {counts}", flush=True)
                if ready == count:
                    all_ready_s = time.monotonic() - started
                    break
                time.sleep(2)

            operator_cpu_s = cpu_seconds(operator.pid) - operator_cpu_before
            control_plane = cpu.since_start()
            loaded = scrape(metrics_url)
            reconciles = total(loaded, "guardedmodel_operator_reconciles_total")
            elapsed = all_ready_s or (time.monotonic() - started)
            writes_at_ready = total(loaded, "guardedmodel_operator_writes_total")
            # Events are posted in the background, and the rollout controller's first checks follow
            # Ready: what a model costs is counted once the operator has stopped writing.
            drain_s = drain(AuditTail(cluster.audit_log).mark(), NAMESPACE, OPERATOR_AGENTS)
            writes, others = audited(audit, NAMESPACE, OPERATOR_AGENTS)
            operator_phase = Phase(
                seconds=None if all_ready_s is None else round(all_ready_s, 2),
                writer_writes=writes,
                other_writes=others,
                writer_cpu_s=round(operator_cpu_s, 2),
                control_plane_cpu_s=control_plane,
                progress=[(p["t"], p["ready"]) for p in timeline if p["ready"] is not None],
            )
            # Quiet period: nothing changes, so nothing may be written.
            audit.mark()
            writes_before_quiet = total(scrape(metrics_url), "guardedmodel_operator_writes_total")
            time.sleep(15)
            sample(count if all_ready_s else None)
            quiet = scrape(metrics_url)
            writes_quiet = total(quiet, "guardedmodel_operator_writes_total") - writes_before_quiet
            audited_quiet = audited(audit, NAMESPACE, OPERATOR_AGENTS)[0]
            peak_kb = memory_kb(operator.pid)["VmHWM"]
            operator.stop()

            # Restart: a fresh operator lists everything and re-checks every model.
            audit.mark()
            restart_started = time.monotonic()
            second, second_url = start_operator(cleanup, cluster, state, "operator-restart", worker_limit)
            restart_reconciles = 0.0
            while time.monotonic() - restart_started < timeout:
                restart_reconciles = total(
                    scrape(second_url),
                    'guardedmodel_operator_reconciles_total{result="success",trigger="guardedmodel"',
                )
                if restart_reconciles >= count:
                    break
                time.sleep(0.5)
            restart_s = time.monotonic() - restart_started
            after_restart = scrape(second_url)
            restart_peak_kb = memory_kb(second.pid)["VmHWM"]
            second.stop()
            audited_restart = audited(audit, NAMESPACE, OPERATOR_AGENTS)[0]

    writes_by = {
        k.removeprefix("guardedmodel_operator_writes_total"): v
        for k, v in loaded.items()
        if k.startswith("guardedmodel_operator_writes_total")
    }
    reconciles_by = {
        k.removeprefix("guardedmodel_operator_reconciles_total"): v
        for k, v in loaded.items()
        if k.startswith("guardedmodel_operator_reconciles_total")
    }
    duration_sum = loaded.get("guardedmodel_operator_reconcile_duration_seconds_sum", 0.0)
    duration_count = loaded.get("guardedmodel_operator_reconcile_duration_seconds_count", 0.0)
    ratio = (
        round(operator_phase.seconds / floor_phase.seconds, 2)
        if floor_phase and floor_phase.seconds and operator_phase.seconds
        else None
    )
    return {
        "count": count,
        "worker_limit": worker_limit,
        "nodes": len(nodes),
        "machine": {"cpus": _cpus(), "python": platform.python_version(), "load_average": os.getloadavg()},
        "floor_seconds": floor_phase.seconds if floor_phase else None,
        "operator_seconds": operator_phase.seconds,
        "operator_over_floor": ratio,
        "per_model": {
            "floor": floor_phase.per_model(count) if floor_phase else None,
            "operator": operator_phase.per_model(count),
        },
        "floor": asdict(floor_phase) if floor_phase else None,
        "operator": asdict(operator_phase),
        "create_seconds": round(create_s, 2),
        "all_ready_seconds": None if all_ready_s is None else round(all_ready_s, 2),
        "final_phases": counts,
        "ready_per_second": None if all_ready_s is None else round(count / all_ready_s, 2),
        "reconciles": reconciles,
        "reconciles_per_model": round(reconciles / count, 2),
        "reconciles_by_trigger_result": reconciles_by,
        "reconciles_per_second": round(reconciles / elapsed, 2),
        "reconcile_errors": total(loaded, "guardedmodel_operator_reconcile_errors_total"),
        "reconcile_mean_ms": round(1000 * duration_sum / duration_count, 2) if duration_count else None,
        "reconcile_p50_le_s": quantile(loaded, 0.5),
        "reconcile_p99_le_s": quantile(loaded, 0.99),
        "writes_until_ready": writes_at_ready,
        "writes_by_kind_action": writes_by,
        "drain_seconds_after_ready": round(drain_s, 1),
        "writes_in_quiet_15s": writes_quiet,
        "audited_writes_in_quiet_15s": audited_quiet,
        "operator_peak_rss_mb": round(peak_kb / 1024, 1),
        "restart": {
            "seconds_to_recheck_all": round(restart_s, 2),
            "reconciles": restart_reconciles,
            "writes": total(after_restart, "guardedmodel_operator_writes_total"),
            "audited_writes": audited_restart,
            "peak_rss_mb": round(restart_peak_kb / 1024, 1),
        },
        "timeline": timeline,
        "batches_created_at_s": created_at,
    }


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timeline = result["timeline"]
    t = [p["t"] for p in timeline]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    ready = [(p["t"], p["ready"]) for p in timeline if p["ready"] is not None]
    top.plot([x for x, _ in ready], [y for _, y in ready], label="GuardedModels Ready", color="tab:green")
    if result.get("floor"):
        floor = result["floor"]["progress"]
        top.plot(
            [x for x, _ in floor],
            [y for _, y in floor],
            label="floor: the same children, no operator",
            color="tab:green",
            linestyle="--",
        )
    top.plot(t, [p["reconciles"] / 10 for p in timeline], label="reconciles / 10", color="tab:blue")
    top.plot(t, [p["writes"] / 10 for p in timeline], label="API writes / 10", color="tab:orange")
    top.axhline(result["count"], color="grey", linestyle=":", linewidth=1)
    top.set_ylabel("count")
    top.legend(loc="lower right")
    top.set_title(
        f"{result['count']} GuardedModels: all Ready in {result['all_ready_seconds']} s "
        f"(floor {result['floor_seconds']} s, {result['operator_over_floor']} times), "
        f"peak RSS {result['operator_peak_rss_mb']} MB",
        fontsize=10,
    )
    bottom.plot(t, [p["rss_mb"] for p in timeline], color="tab:red")
    bottom.set_ylabel("operator RSS (MB)")
    bottom.set_xlabel("seconds since the first create")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000, help="GuardedModels to create")
    parser.add_argument("--worker-limit", type=int, default=20, help="the operator's concurrent objects")
    parser.add_argument("--batch", type=int, default=100, help="GuardedModels per kubectl create")
    parser.add_argument("--timeout", type=float, default=900, help="give up waiting for Ready after this")
    parser.add_argument("--no-floor", action="store_true", help="skip the no-operator floor")
    parser.add_argument("--output", type=Path, default=RESULTS / "operator_scale.json")
    args = parser.parse_args(argv)
    # A SIGTERM (e.g. from `timeout`) unwinds normally, so the cluster and the
    # operator started here are stopped instead of outliving the benchmark.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = run(args.count, args.worker_limit, args.timeout, args.batch, floor=not args.no_floor)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.output.with_suffix(".png"))
    summary = {k: v for k, v in result.items() if k not in ("timeline", "batches_created_at_s")}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
