"""The summary per scenario (ours next to the Flagger-style analysis of the same knobs) and the plot
of `rollback_time.py`."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from rollback_model import QUANTILES, FlaggerKnobs, Knobs, Run, flagger_quantiles, simulate_flagger, summary

#: Flagger's own default for a metric's query window (metrics[].interval: 1m in its docs' examples).
FLAGGER_DEFAULT_WINDOW_S = 60.0


def flagger_variants(knobs: Knobs, crossing: float) -> dict[str, FlaggerKnobs]:
    """The Flagger-style analyses set next to ours: the same knobs and check window (the main one),
    the schedule alone (a metric that fails on the first bad sample), and Flagger's default 1m
    metric window."""
    same = FlaggerKnobs(knobs.interval_s, knobs.failure_limit, knobs.check_window_s, crossing, knobs.scrape_s)
    return {
        "same_window": same,
        "schedule_only": FlaggerKnobs(same.interval_s, same.threshold, same.window_s, 0.0, same.scrape_s),
        "default_1m_window": FlaggerKnobs(
            same.interval_s, same.threshold, FLAGGER_DEFAULT_WINDOW_S, crossing, same.scrape_s
        ),
    }


def scenario_summary(runs: list[Run], knobs: Knobs, crossing: float) -> dict[str, Any]:
    """Ours (every run that reached the end) and the Flagger-style analyses, for one scenario."""
    ok = [r for r in runs if r.ok]
    stages = sorted({k for r in ok for k in r.times})
    target = knobs.interval_s + 2.0
    return {
        "runs": len(runs),
        "ok": len(ok),
        "onset_to_good_version_s": summary([r.onset_to_good_s for r in ok if r.onset_to_good_s is not None]),
        "onset_to_status_s": summary([r.onset_to_status_s for r in ok if r.onset_to_status_s is not None]),
        "stages_median_s": {
            k: float(np.median(v)) if (v := [t for r in ok if (t := r.times.get(k)) is not None]) else None
            for k in stages
        },
        "target_s": target,
        "within_target": sum(1 for r in ok if r.onset_to_good_s is not None and r.onset_to_good_s <= target),
        "flagger_style": {
            name: {
                "knobs": asdict(variant),
                "analytic": flagger_quantiles(variant),
                "simulated": summary(list(simulate_flagger(variant, runs=20_000, seed=1))),
            }
            for name, variant in flagger_variants(knobs, crossing).items()
        },
    }


#: The Flagger-style ranges drawn next to our runs: variant, x offset, colour, line width, legend.
RANGES = (
    ("same_window", 0.12, "tab:orange", 6, "Flagger-style, same window (min-max)"),
    ("schedule_only", 0.22, "grey", 3, "any fixed schedule, no lag (min-max)"),
)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = list(results["scenarios"])
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for i, key in enumerate(scenarios):
        scenario = results["scenarios"][key]
        ours = [
            r["onset_to_good_s"]
            for r in results["runs"]
            if r["ok"] and f"{r['case']}-{r['interval_s']}s" == key
        ]
        ax.scatter(
            [i - 0.12] * len(ours),
            ours,
            color="tab:blue",
            label="guardedmodel (runs)" if i == 0 else "_nolegend_",
            zorder=3,
        )
        for variant, x, color, width, label in RANGES:
            q = scenario["flagger_style"][variant]["analytic"]
            ax.vlines(
                i + x,
                q["min"],
                q["max"],
                color=color,
                lw=width,
                alpha=0.5,
                label=label if i == 0 else "_nolegend_",
            )
        q = scenario["flagger_style"]["same_window"]["analytic"]
        ax.scatter([i + 0.12], [q["median"]], color="tab:orange", marker="_", s=300)
        ax.hlines(
            scenario["target_s"],
            i - 0.3,
            i + 0.3,
            color="grey",
            ls="--",
            label="target: interval + 2 s" if i == 0 else "_nolegend_",
        )
    ax.set_ylim(bottom=0)
    ax.set_xticks(range(len(scenarios)), scenarios)
    ax.set_ylabel("drift onset → traffic on the last good version (s)")
    ax.set_title("Rollback time on drift (real operator, sidecar, Prometheus, Triton CPU)")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def markdown_table(results: dict[str, Any]) -> str:
    """Ours next to the Flagger-style analysis, per scenario, as the README and the doc show it."""

    def cells(figures: dict[str, Any]) -> str:
        return " / ".join("n/a" if figures.get(k) is None else f"{figures[k]:.1f}" for k in QUANTILES)

    lines = [
        "| scenario | runs | ours: onset → last good version (s) | ours: onset → RolledBack status (s) "
        "| within interval + 2 s | Flagger-style, same window | schedule only | Flagger's 1m window |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, scenario in results["scenarios"].items():
        flagger = scenario["flagger_style"]
        lines.append(
            f"| {name} | {scenario['ok']}/{scenario['runs']} | {cells(scenario['onset_to_good_version_s'])} "
            f"| {cells(scenario['onset_to_status_s'])} | {scenario['within_target']}/{scenario['ok']} "
            f"| {cells(flagger['same_window']['analytic'])} | {cells(flagger['schedule_only']['analytic'])} "
            f"| {cells(flagger['default_1m_window']['analytic'])} |"
        )
    return "\n".join(lines) + "\n\nmin / median / p90 / max, seconds"
