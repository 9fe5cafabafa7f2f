"""Direct Triton vs. Triton behind the guard sidecar, side by side in one run.

    .venv/bin/python bench/sidecar_vs_triton.py [--model-repository DIR] [--seconds 5]

Same Triton, same model, same inputs; for HTTP and gRPC, batch 1 and 32, concurrency 1 and 16, a
closed-loop load generator (its own process, binary tensors, one connection per concurrent stream)
measures throughput and latency against Triton directly and through the sidecar. CPU time of Triton
(its whole process group, Python-backend stubs included) and of the sidecar is read from /proc around
each cell, giving T and P per request and the ratio rule's prediction T / (T + P) next to the measured
throughput ratio; the sidecar's own stage histograms give the gate + scorer cost per request.
``--profile`` records the sidecar with py-spy during the batch-1, concurrency-16 cell of
``--profile-protocol`` (HTTP by default).
Writes bench/results/sidecar_vs_triton.json and .png.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from sidecar_bench_load import run_load
from sidecar_bench_measure import measure_cell, summarize_profile
from sidecar_bench_report import plot, print_table, summarize

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


# ------------------------------------------------------------------------------------ orchestration


def example_repository(path: Path | None) -> Path:
    if path is not None:
        return path
    sys.path.insert(0, str(ROOT / "sidecar"))
    from guardedmodel_fit.example import DEFAULT_OUT, build_example

    return Path(build_example(DEFAULT_OUT, versions=["1"], progress=False).repository)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--protocol", default="http")
    parser.add_argument("--url", default="")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--inputs", type=Path)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--model", default="fashion-mnist")
    parser.add_argument(
        "--model-repository", type=Path, help="Triton repository (default: build the worked example)"
    )
    parser.add_argument(
        "--micro-batching", action="store_true", help="also measure the sidecar with micro-batching"
    )
    parser.add_argument(
        "--workers",
        default="",
        help="also measure the sidecar with these worker process counts, e.g. 2,4 (tuning.workers; "
        "micro-batching on with --micro-batching)",
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the sidecar in the b=1 c=16 cell")
    parser.add_argument("--profile-protocol", default="http", help="the protocol of the profiled cell")
    parser.add_argument("--out", type=Path, default=RESULTS / "sidecar_vs_triton.json")
    parser.add_argument(
        "--input-shape", default="1,28,28", help="per-sample shape when the repository has no data"
    )
    parser.add_argument("--replot", action="store_true", help="redraw the plot and table from --out")
    parser.add_argument("--rounds", type=int, default=3, help="paired rounds; the summary takes medians")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--concurrencies", default="1,16")
    parser.add_argument("--protocols", default="http,grpc")
    parser.add_argument(
        "--baselines",
        action="store_true",
        help="also measure a careful aiohttp proxy (bench/baseline_proxy.py)",
    )
    args = parser.parse_args()
    if args.replot:
        payload = json.loads(args.out.read_text())
        plot(payload["comparison"], args.out.with_suffix(".png"))
        print_table(payload["comparison"])
        return 0
    if args.worker:
        print(json.dumps(run_load(args)))
        return 0

    from guardedmodel_testground.triton import TritonServer

    repository = example_repository(args.model_repository)
    work = Path(tempfile.mkdtemp(prefix="sidecar-bench-"))
    data_file = repository.parent / "data" / "validation.npz"
    if data_file.exists():
        with np.load(data_file) as data:
            x = data["inputs"][:64].astype(np.float32)
    else:
        shape = tuple(int(d) for d in args.input_shape.split(","))
        x = np.random.default_rng(0).uniform(0.3, 0.7, (64, *shape)).astype(np.float32)
    inputs = work / "inputs.npy"
    np.save(inputs, x)

    variants = [Variant("sidecar")]
    if args.micro_batching:
        variants.append(Variant("sidecar-microbatch", micro=True))
    for workers in (int(w) for w in args.workers.split(",") if w.strip()):
        if workers > 1:
            variants.append(Variant(f"sidecar-w{workers}", micro=args.micro_batching, workers=workers))
    if args.baselines:
        variants.append(Variant("aiohttp-proxy", protocols=("http",)))
    cells: list[dict[str, Any]] = []
    sidecars: dict[str, tuple[subprocess.Popen[bytes], dict[str, int]]] = {}
    with TritonServer(repository, model_control_mode="explicit", log_dir=work) as triton:
        triton_pgid = triton.process.pid if triton.process else 0
        try:
            for variant in variants:
                if variant.name == "aiohttp-proxy":
                    sidecars[variant.name] = start_baseline_proxy(work, args.model, repository, triton)
                else:
                    sidecars[variant.name] = start_sidecar(work, variant, args.model, x, repository, triton)
            served = {v.name: v.protocols for v in variants}
            # Neighbours on a shared machine come and go: every round measures direct and each sidecar
            # back to back, and the summary takes the median over rounds.
            for round_index in range(args.rounds):
                for protocol in args.protocols.split(","):
                    for batch in (int(b) for b in args.batches.split(",")):
                        for concurrency in (int(c) for c in args.concurrencies.split(",")):
                            direct = triton.http_url if protocol == "http" else triton.grpc_url
                            targets = [("direct", direct, 0, "")]
                            for variant, (proc, listen) in sidecars.items():
                                if protocol not in served[variant]:
                                    continue
                                port = listen["http"] if protocol == "http" else listen["grpc"]
                                metrics = listen.get("metrics")
                                metrics_url = f"http://127.0.0.1:{metrics}/metrics" if metrics else ""
                                targets.append((variant, f"127.0.0.1:{port}", proc.pid, metrics_url))
                            for target, url, pid, metrics_url in targets:
                                profile = None
                                if (
                                    args.profile
                                    and round_index == 0
                                    and target == "sidecar"
                                    and protocol == args.profile_protocol
                                    and batch == 1
                                    and concurrency == 16
                                ):
                                    profile = work / f"{target}-profile.txt"
                                load_before = os.getloadavg()[0]
                                cell = measure_cell(
                                    protocol,
                                    "direct" if target == "direct" else "sidecar",
                                    url,
                                    batch,
                                    concurrency,
                                    inputs,
                                    args.seconds,
                                    args.model,
                                    triton_pgid,
                                    pid or next(iter(sidecars.values()))[0].pid,
                                    metrics_url,
                                    profile,
                                )
                                cell.update(variant=target, round=round_index, loadavg_1m=load_before)
                                if profile is not None and profile.exists():
                                    cell["profile"] = summarize_profile(profile)
                                cells.append(cell)
                                print(
                                    json.dumps({k: v for k, v in cell.items() if k != "profile"}), flush=True
                                )
        finally:
            for proc, _ in sidecars.values():
                proc.terminate()
                proc.wait(timeout=30)

    summary = summarize(cells)
    payload = {
        "machine": {
            "cpus": os.cpu_count(),
            "note": "Triton, sidecar(s) and the load generator share these CPUs with other work on the machine",
            "loadavg_1m_range": [min(c["loadavg_1m"] for c in cells), max(c["loadavg_1m"] for c in cells)],
        },
        "model": args.model,
        "seconds_per_cell": args.seconds,
        "rounds": args.rounds,
        "cells": cells,
        "comparison": summary,
        "profile": next((c["profile"] for c in cells if "profile" in c), None),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))
    plot(summary, args.out.with_suffix(".png"))
    print_table(summary)
    return 0


@dataclass(frozen=True)
class Variant:
    """One thing measured against direct Triton: the sidecar with some tuning, or the baseline proxy."""

    name: str
    micro: bool = False
    protocols: tuple[str, ...] = ("http", "grpc")
    workers: int = 1


def start_baseline_proxy(
    work: Path, model: str, repository: Path, triton: Any
) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    from guardedmodel_testground.procs import free_port

    port = free_port()
    log = (work / "aiohttp-proxy.log").open("wb")
    argv = [sys.executable, str(ROOT / "bench" / "baseline_proxy.py"), "--port", str(port)]
    argv += ["--triton-url", triton.http_url, "--model", model, "--repository", str(repository)]
    argv += ["--audit", str(work / "aiohttp-proxy-audit.jsonl")]
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    _wait_ready(proc, f"http://127.0.0.1:{port}/v2/health/ready", work / "aiohttp-proxy.log")
    return proc, {"http": port}


def start_sidecar(
    work: Path, variant: Variant, model: str, x: np.ndarray, repository: Path, triton: Any
) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    from guardedmodel_testground.sidecar_config import sidecar_command, sidecar_config

    spec = {
        "model": {"name": model, "version": "1"},
        "gate": {
            "inputs": [
                {"name": "INPUT", "datatype": "FP32", "shape": list(x.shape[1:]), "min": 0.0, "max": 1.0}
            ],
            "ood": {"method": "mahalanobis", "action": "review"},
        },
        "confidence": {"reviewBelow": 0.5, "review": {"maxFraction": 0.05}},
        "audit": {"enabled": True, "sampleRate": 0.01},
        "drift": {"window": "60s"},
    }
    config = sidecar_config(
        spec,
        triton=triton,
        repository=repository,
        workdir=work / variant.name,
        routing={"stableVersion": "1"},
        tuning={
            "microBatching": {"enabled": variant.micro, "maxBatch": 64, "maxInflight": 2},
            "workers": variant.workers,
        },
    )
    listen = config["listen"]
    config_path = work / f"{variant.name}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log = (work / f"{variant.name}.log").open("wb")
    proc = subprocess.Popen(
        sidecar_command(config_path, "--log-level", "WARNING"),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    _wait_ready(proc, f"http://127.0.0.1:{listen['http']}/v2/health/ready", work / f"{variant.name}.log")
    if variant.workers > 1:
        _wait_workers(f"http://127.0.0.1:{listen['metrics']}/metrics", variant.workers)
    return proc, listen


def _wait_workers(metrics_url: str, workers: int) -> None:
    """Connections made before a worker joins the shared ports all go to the others: wait for every
    worker to be ready (it listens right after), or one cell would measure fewer workers."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with urllib.request.urlopen(metrics_url, timeout=5) as response:
            text = response.read().decode()
        ready = re.findall(r'^guardedmodel_worker_ready\{worker="\d+"\} 1\.0$', text, re.MULTILINE)
        if len(ready) == workers:
            time.sleep(1.0)
            return
        time.sleep(0.2)
    raise RuntimeError(f"not all {workers} sidecar workers became ready; see {metrics_url}")


def _wait_ready(proc: subprocess.Popen[bytes], ready_url: str, log: Path) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(ready_url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{ready_url} never answered; see {log}") from None
            time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())
