"""The sidecar benchmark's summary (medians over paired rounds), its table and its plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


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
