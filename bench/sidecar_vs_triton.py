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
import asyncio
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

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CLK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------------ load generator


async def _http_worker(
    url: str, path: str, body: list[bytes], header_len: int, deadline: float, lat: list[float]
) -> int:
    from guardedmodel_sidecar.upstream import TritonHttp

    client = TritonHttp(url, max_connections=2)
    extra = f"Inference-Header-Content-Length: {header_len}\r\n"
    count = 0
    perf = time.perf_counter
    while True:
        t0 = perf()
        if t0 >= deadline:
            break
        response = await client.request("POST", path, body, extra)
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {bytes(response.body[:300])!r}")
        lat.append(perf() - t0)
        count += 1
    client.close()
    return count


async def _grpc_worker(url: str, message: Any, deadline: float, lat: list[float]) -> int:
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    channel = grpc.aio.insecure_channel(url)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    count = 0
    perf = time.perf_counter
    while True:
        t0 = perf()
        if t0 >= deadline:
            break
        await stub.ModelInfer(message)
        lat.append(perf() - t0)
        count += 1
    await channel.close()
    return count


def run_load(args: argparse.Namespace) -> dict[str, Any]:
    """One cell: closed loop with ``concurrency`` streams for ``seconds`` after a warm-up."""
    import uvloop

    x = np.load(args.inputs)[: args.batch].astype(np.float32)
    if x.shape[0] < args.batch:
        x = np.resize(x, (args.batch, *x.shape[1:]))
    header = {
        "inputs": [
            {
                "name": "INPUT",
                "datatype": "FP32",
                "shape": list(x.shape),
                "parameters": {"binary_data_size": x.nbytes},
            }
        ],
        "outputs": [{"name": "LOGITS", "parameters": {"binary_data": True}}],
    }
    header_bytes = json.dumps(header).encode()
    body = [header_bytes, x.tobytes()]

    async def cell(seconds: float) -> tuple[int, list[float]]:
        lat: list[float] = []
        deadline = time.perf_counter() + seconds
        if args.protocol == "http":
            tasks = [
                _http_worker(
                    args.url, f"/v2/models/{args.model}/infer", body, len(header_bytes), deadline, lat
                )
                for _ in range(args.concurrency)
            ]
        else:
            from tritonclient.grpc import service_pb2

            msg = service_pb2.ModelInferRequest(model_name=args.model)
            tensor = msg.inputs.add()
            tensor.name, tensor.datatype = "INPUT", "FP32"
            tensor.shape.extend(x.shape)
            msg.outputs.add().name = "LOGITS"
            msg.raw_input_contents.append(x.tobytes())
            tasks = [_grpc_worker(args.url, msg, deadline, lat) for _ in range(args.concurrency)]
        counts = await asyncio.gather(*tasks)
        return sum(counts), lat

    uvloop.install()
    asyncio.run(cell(args.warmup))
    sys.stdout.write("START\n")
    sys.stdout.flush()
    t0 = time.perf_counter()
    count, lat = asyncio.run(cell(args.seconds))
    elapsed = time.perf_counter() - t0
    lat_ms = np.asarray(lat) * 1000.0
    return {
        "requests": count,
        "seconds": elapsed,
        "rps": count / elapsed,
        "p50_ms": float(np.percentile(lat_ms, 50)),
        "p99_ms": float(np.percentile(lat_ms, 99)),
    }


# ------------------------------------------------------------------------------------ measurement


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants: a sidecar with several workers spends its CPU in its children."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        todo += [int(c) for c in children]
    return pids


def group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:
                pids.append(int(entry.name))
    return pids


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r'guardedmodel_stage_seconds_(sum|count)\{[^}]*stage="(\w+)"[^}]*\} (\S+)', line)
        if match:  # summed over versions
            key = f"{match.group(2)}_{match.group(1)}"
            out[key] = out.get(key, 0.0) + float(match.group(3))
    return out


def measure_cell(
    protocol: str,
    target: str,
    url: str,
    batch: int,
    concurrency: int,
    inputs: Path,
    seconds: float,
    model: str,
    triton_pgid: int,
    sidecar_pid: int,
    metrics_url: str,
    profile_out: Path | None = None,
) -> dict[str, Any]:
    argv = [
        sys.executable,
        __file__,
        "--worker",
        "--protocol",
        protocol,
        "--url",
        url,
        "--batch",
        str(batch),
        "--concurrency",
        str(concurrency),
        "--inputs",
        str(inputs),
        "--seconds",
        str(seconds),
        "--model",
        model,
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "START":
        raise RuntimeError(f"load generator failed: {line}{proc.stdout.read()}")
    triton_pids = group_pids(triton_pgid)
    sidecar_pids = process_tree(sidecar_pid)
    t_cpu0, s_cpu0 = cpu_seconds(triton_pids), cpu_seconds(sidecar_pids)
    stages0 = scrape(metrics_url) if target == "sidecar" and metrics_url else {}
    spy = None
    if profile_out is not None:
        spy = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "py-spy"),
                "record",
                "--pid",
                str(sidecar_pid),
                "--format",
                "raw",
                "--duration",
                str(max(1, int(seconds) - 1)),
                "--rate",
                "250",
                "--nonblocking",
                "--output",
                str(profile_out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    out, _ = proc.communicate(timeout=seconds + 120)
    t_cpu1, s_cpu1 = cpu_seconds(triton_pids), cpu_seconds(sidecar_pids)
    if spy is not None:
        spy.wait(timeout=60)
    result = json.loads(out.strip().splitlines()[-1])
    n = max(result["requests"], 1)
    result.update(
        protocol=protocol,
        target=target,
        batch=batch,
        concurrency=concurrency,
        triton_cpu_ms_per_request=(t_cpu1 - t_cpu0) * 1000.0 / n,
    )
    if target != "direct":
        result["sidecar_cpu_ms_per_request"] = (s_cpu1 - s_cpu0) * 1000.0 / n
    if target == "sidecar" and metrics_url:
        stages1 = scrape(metrics_url)
        count = max(stages1.get("total_count", 0) - stages0.get("total_count", 0), 1)
        for stage in ("gate", "model", "scorer", "total"):
            delta = stages1.get(f"{stage}_sum", 0.0) - stages0.get(f"{stage}_sum", 0.0)
            result[f"{stage}_ms_per_request"] = delta * 1000.0 / count
        result["gate_scorer_ms_per_request"] = result["gate_ms_per_request"] + result["scorer_ms_per_request"]
    return result


def summarize_profile(path: Path, top: int = 15) -> dict[str, Any]:
    """Self and inclusive shares of the hottest frames from py-spy's collapsed stacks."""
    self_counts: dict[str, int] = {}
    incl_counts: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = [re.sub(r" \(.*?/site-packages/", " (", f) for f in stack.split(";")]
        leaf = frames[-1]
        self_counts[leaf] = self_counts.get(leaf, 0) + count
        for frame in set(frames):
            incl_counts[frame] = incl_counts.get(frame, 0) + count

    def ranked(counts: dict[str, int]) -> list[dict[str, Any]]:
        return [
            {"frame": f, "share": round(c / total, 4)}
            for f, c in sorted(counts.items(), key=lambda kv: -kv[1])[:top]
        ]

    return {"samples": total, "top_self": ranked(self_counts), "top_inclusive": ranked(incl_counts)}


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


def summarize(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (variant, protocol, batch, concurrency): medians over rounds of the paired measurements."""
    direct = {
        (c["round"], c["protocol"], c["batch"], c["concurrency"]): c
        for c in cells
        if c["variant"] == "direct"
    }
    groups: dict[tuple[str, str, int, int], list[dict[str, Any]]] = {}
    for c in cells:
        if c["variant"] == "direct":
            continue
        d = direct[(c["round"], c["protocol"], c["batch"], c["concurrency"])]
        t, p = d["triton_cpu_ms_per_request"], c["sidecar_cpu_ms_per_request"]
        groups.setdefault((c["variant"], c["protocol"], c["batch"], c["concurrency"]), []).append(
            {
                "direct_rps": d["rps"],
                "sidecar_rps": c["rps"],
                "throughput_ratio": c["rps"] / d["rps"],
                "predicted_ratio_T_over_T_plus_P": t / (t + p) if t + p > 0 else float("nan"),
                "p50_added_ms": c["p50_ms"] - d["p50_ms"],
                "p99_added_ms": c["p99_ms"] - d["p99_ms"],
                "direct_p50_ms": d["p50_ms"],
                "direct_p99_ms": d["p99_ms"],
                "triton_cpu_ms_per_request_direct": t,
                "triton_cpu_ms_per_request_via_sidecar": c["triton_cpu_ms_per_request"],
                "sidecar_cpu_ms_per_request": p,
                "gate_scorer_ms_per_request": c.get("gate_scorer_ms_per_request", float("nan")),
                "loadavg_1m": c["loadavg_1m"],
            }
        )
    rows = []
    for (variant, protocol, batch, concurrency), entries in groups.items():
        row: dict[str, Any] = {
            "variant": variant,
            "protocol": protocol,
            "batch": batch,
            "concurrency": concurrency,
        }
        for key in entries[0]:
            row[key] = float(np.median([e[key] for e in entries]))
        row["throughput_ratio_per_round"] = [round(e["throughput_ratio"], 3) for e in entries]
        rows.append(row)
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        f"{'variant':20} {'proto':5} {'b':>3} {'c':>3} {'ratio':>6} {'T/(T+P)':>8} {'p50+ms':>7} {'p99+ms':>7} "
        f"{'P ms':>6} {'T ms':>6} {'g+s ms':>7}"
    )
    for r in rows:
        pred = r["predicted_ratio_T_over_T_plus_P"]
        print(
            f"{r['variant']:20} {r['protocol']:5} {r['batch']:>3} {r['concurrency']:>3} {r['throughput_ratio']:6.2f} "
            f"{pred if pred is None else round(pred, 2):>8} {r['p50_added_ms']:7.2f} {r['p99_added_ms']:7.2f} "
            f"{r['sidecar_cpu_ms_per_request']:6.3f} {r['triton_cpu_ms_per_request_direct']:6.3f} "
            f"{r['gate_scorer_ms_per_request']:7.3f}"
        )


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [
        f"{r['variant'].replace('sidecar', 'sc')}\n{r['protocol']} b{r['batch']} c{r['concurrency']}"
        for r in rows
    ]
    fig, axes = plt.subplots(3, 1, figsize=(max(10, len(rows) * 0.45), 12))
    xs = np.arange(len(rows))
    axes[0].bar(xs - 0.2, [r["throughput_ratio"] for r in rows], 0.4, label="measured")
    axes[0].bar(xs + 0.2, [r["predicted_ratio_T_over_T_plus_P"] or 0 for r in rows], 0.4, label="T/(T+P)")
    axes[0].axhline(1.0, color="grey", lw=0.8)
    axes[0].set_ylabel("throughput sidecar / direct")
    axes[0].set_xticks(xs, labels, fontsize=7, rotation=60, ha="right")
    for x, r in zip(xs, rows, strict=True):  # the spread over rounds (noisy neighbours)
        per_round = r.get("throughput_ratio_per_round") or []
        if per_round:
            axes[0].plot([x - 0.2, x - 0.2], [min(per_round), max(per_round)], color="black", lw=1)
    axes[0].legend()
    axes[1].bar(xs - 0.2, [r["p50_added_ms"] for r in rows], 0.4, label="p50 added")
    axes[1].bar(xs + 0.2, [r["p99_added_ms"] for r in rows], 0.4, label="p99 added")
    axes[1].set_ylabel("ms added by the sidecar")
    axes[1].set_xticks(xs, labels, fontsize=7, rotation=60, ha="right")
    axes[1].set_yscale("symlog", linthresh=1.0)
    axes[1].legend()
    colors = ["tab:red" if r["variant"] == "aiohttp-proxy" else "tab:blue" for r in rows]
    axes[2].bar(xs, [r["sidecar_cpu_ms_per_request"] for r in rows], 0.6, color=colors)
    axes[2].set_ylabel("CPU ms per request (P)")
    axes[2].set_yscale("log")
    axes[2].set_xticks(xs, labels, fontsize=7, rotation=60, ha="right")
    axes[2].set_title("red: baseline (a careful aiohttp proxy)", fontsize=9)
    fig.suptitle("guard sidecar vs direct Triton (same run, same Triton; medians over rounds, bars = range)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
