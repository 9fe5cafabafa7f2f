"""Measuring one cell of the sidecar benchmark: the load generator's throughput and latency, and
the CPU time Triton and the sidecar spend meanwhile (from /proc), with the sidecar's own stage
histograms and, optionally, a py-spy profile."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# The load generator runs as the benchmark script's hidden --worker mode.
BENCHMARK_SCRIPT = Path(__file__).with_name("sidecar_vs_triton.py")
CLK = os.sysconf("SC_CLK_TCK")


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
        str(BENCHMARK_SCRIPT),
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
