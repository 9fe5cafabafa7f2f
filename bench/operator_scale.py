"""How the operator copes with many GuardedModels on a real control plane.

    .venv/bin/python bench/operator_scale.py [--count 1000] [--worker-limit 20] [--timeout 900]

Starts a local cluster (real kube-apiserver, etcd, controller-manager,
scheduler; kwok GPU nodes sized for --count single-GPU pods), installs the
CRD, runs the operator as a subprocess watching one namespace, creates
--count GuardedModels with kubectl in batches, and measures:

- time from the first create until every GuardedModel reports phase Ready
  (its Deployment rolled out, its pod Running on a GPU node);
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
import platform
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from guardedmodel_testground import stack as local_stack
from guardedmodel_testground.cluster import LocalCluster
from guardedmodel_testground.kwok_nodes import FakeNode
from guardedmodel_testground.procs import ManagedProcess
from guardedmodel_testground.stack import OperatorPorts

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CRD = ROOT / "crds" / "guardedmodel.io_guardedmodels.yaml"
NAMESPACE = "bench"
PODS_PER_NODE = 100  # kwok nodes advertise 110 pods; keep room for surge pods


def manifest(index: int) -> dict[str, Any]:
    return {
        "apiVersion": "guardedmodel.io/v1alpha1",
        "kind": "GuardedModel",
        "metadata": {"name": f"model-{index:05d}", "namespace": NAMESPACE},
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


def run(count: int, worker_limit: int, timeout: float, batch: int) -> dict[str, Any]:
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
            cluster.kubectl("create", "namespace", NAMESPACE)
            operator, metrics_url = start_operator(cleanup, cluster, state, "operator", worker_limit)
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
                docs = [manifest(i) for i in range(first, min(count, first + batch))]
                cluster.kubectl("create", "-f", "-", input=yaml.safe_dump_all(docs), timeout=300)
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

            loaded = scrape(metrics_url)
            reconciles = total(loaded, "guardedmodel_operator_reconciles_total")
            elapsed = all_ready_s or (time.monotonic() - started)
            writes_at_ready = total(loaded, "guardedmodel_operator_writes_total")
            # Quiet period: nothing changes, so nothing may be written.
            time.sleep(15)
            sample(count if all_ready_s else None)
            quiet = scrape(metrics_url)
            writes_quiet = total(quiet, "guardedmodel_operator_writes_total") - writes_at_ready
            peak_kb = memory_kb(operator.pid)["VmHWM"]
            operator.stop()

            # Restart: a fresh operator lists everything and re-checks every model.
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

    writes_by = {
        k.removeprefix("guardedmodel_operator_writes_total"): v
        for k, v in loaded.items()
        if k.startswith("guardedmodel_operator_writes_total")
    }
    duration_sum = loaded.get("guardedmodel_operator_reconcile_duration_seconds_sum", 0.0)
    duration_count = loaded.get("guardedmodel_operator_reconcile_duration_seconds_count", 0.0)
    return {
        "count": count,
        "worker_limit": worker_limit,
        "nodes": len(nodes),
        "machine": {"cpus": _cpus(), "python": platform.python_version()},
        "create_seconds": round(create_s, 2),
        "all_ready_seconds": None if all_ready_s is None else round(all_ready_s, 2),
        "final_phases": counts,
        "ready_per_second": None if all_ready_s is None else round(count / all_ready_s, 2),
        "reconciles": reconciles,
        "reconciles_per_second": round(reconciles / elapsed, 2),
        "reconcile_errors": total(loaded, "guardedmodel_operator_reconcile_errors_total"),
        "reconcile_mean_ms": round(1000 * duration_sum / duration_count, 2) if duration_count else None,
        "reconcile_p50_le_s": quantile(loaded, 0.5),
        "reconcile_p99_le_s": quantile(loaded, 0.99),
        "writes_until_ready": writes_at_ready,
        "writes_by_kind_action": writes_by,
        "writes_in_quiet_15s": writes_quiet,
        "operator_peak_rss_mb": round(peak_kb / 1024, 1),
        "restart": {
            "seconds_to_recheck_all": round(restart_s, 2),
            "reconciles": restart_reconciles,
            "writes": total(after_restart, "guardedmodel_operator_writes_total"),
            "peak_rss_mb": round(restart_peak_kb / 1024, 1),
        },
        "timeline": timeline,
        "batches_created_at_s": created_at,
    }


def _cpus() -> int:
    import os

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
    top.plot(t, [p["reconciles"] / 10 for p in timeline], label="reconciles / 10", color="tab:blue")
    top.plot(t, [p["writes"] / 10 for p in timeline], label="API writes / 10", color="tab:orange")
    top.axhline(result["count"], color="grey", linestyle=":", linewidth=1)
    top.set_ylabel("count")
    top.legend(loc="lower right")
    top.set_title(
        f"{result['count']} GuardedModels: all Ready in {result['all_ready_seconds']} s, "
        f"{result['reconciles_per_second']} reconciles/s, peak RSS {result['operator_peak_rss_mb']} MB"
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
    parser.add_argument("--output", type=Path, default=RESULTS / "operator_scale.json")
    args = parser.parse_args(argv)
    # A SIGTERM (e.g. from `timeout`) unwinds normally, so the cluster and the
    # operator started here are stopped instead of outliving the benchmark.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = run(args.count, args.worker_limit, args.timeout, args.batch)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.output.with_suffix(".png"))
    summary = {k: v for k, v in result.items() if k not in ("timeline", "batches_created_at_s")}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
