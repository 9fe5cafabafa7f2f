"""Draw the shipped Grafana dashboard's panels with matplotlib, from the same queries, over a time range.

A picture of what the dashboard shows, for the documentation (docs/images/dashboard.png), drawn
without a Grafana: every panel's targets are run as range queries against Prometheus, and the
annotation queries are drawn as vertical lines across every panel.
"""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import PercentFormatter

from guardedmodel_cli import dashboard
from guardedmodel_cli.dashboard import Variables

COLUMNS = 3
POINTS = 240  # per series; the step follows from the range


@dataclass(frozen=True)
class Series:
    label: str
    times: list[float]
    values: list[float]


def range_query(url: str, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:.3f}"}
    with urllib.request.urlopen(
        f"{url}/api/v1/query_range?" + urllib.parse.urlencode(params), timeout=30
    ) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"PromQL {expr!r} failed: {body}")
    return list(body["data"]["result"])


def legend(template: str, labels: Mapping[str, str]) -> str:
    """Grafana's legendFormat: {{label}} replaced by the series' label value."""
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)


def panel_series(
    url: str, panel: Mapping[str, Any], variables: Variables, start: float, end: float, step: float
) -> list[Series]:
    found = []
    for target in panel["targets"]:
        for result in range_query(url, variables.substitute(target["expr"]), start, end, step):
            times = [float(t) - start for t, _ in result["values"]]
            values = [float(v) for _, v in result["values"]]
            found.append(Series(legend(target["legendFormat"], result["metric"]), times, values))
    return found


def annotation_marks(
    url: str, document: Mapping[str, Any], variables: Variables, start: float, end: float, step: float
) -> list[tuple[str, str, float]]:
    """(name, colour, seconds into the range) of each annotation: the first point of each run."""
    marks = []
    for annotation in document["annotations"]["list"]:
        if "expr" not in annotation:
            continue
        for result in range_query(url, variables.substitute(annotation["expr"]), start, end, step):
            previous = None
            for t, _ in result["values"]:
                if previous is None or float(t) - previous > 1.5 * step:
                    marks.append((annotation["name"], annotation["iconColor"], float(t) - start))
                previous = float(t)
    return marks


def draw(
    url: str,
    variables: Variables,
    start: float,
    end: float,
    path: Path,
    *,
    skip: Collection[str] = (),
    document: Mapping[str, Any] | None = None,
) -> Path:
    """Draw every panel of `document` (the shipped dashboard) into `path`; panels in `skip` are
    drawn empty, saying why."""
    document = document or json.loads(dashboard.shipped_path().read_text())
    panels = [panel for panel in document["panels"] if panel["type"] != "row"]
    step = max((end - start) / POINTS, 1.0)
    marks = annotation_marks(url, document, variables, start, end, step)
    rows = -(-len(panels) // COLUMNS)
    figure, axes = plt.subplots(rows, COLUMNS, figsize=(6 * COLUMNS, 3.4 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        ax.set_title(panel["title"], fontsize=11)
        ax.set_xlim(0, end - start)
        ax.grid(alpha=0.3)
        if panel["title"] in skip:
            ax.text(0.5, 0.5, "no series yet", ha="center", va="center", transform=ax.transAxes, color="grey")
            continue
        for series in panel_series(url, panel, variables, start, end, step):
            ax.plot(series.times, series.values, label=series.label, linewidth=1.2)
        _format_axis(ax, panel["fieldConfig"]["defaults"])
        for name, colour, at in marks:
            ax.axvline(at, color=colour, linestyle="--", linewidth=1, alpha=0.8, label=f"[{name}]")
        _dedup_legend(ax)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("seconds into the run")
    figure.suptitle(
        f"GuardedModel dashboard: namespace {variables.namespace}, model {variables.model} "
        f"(rate window {variables.rate_interval})",
        fontsize=13,
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def _format_axis(ax: Any, defaults: Mapping[str, Any]) -> None:
    unit = defaults.get("unit", "short")
    if unit == "percentunit":
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    elif unit == "s":
        ax.set_ylabel("seconds")
    elif unit == "reqps":
        ax.set_ylabel("requests/s")
    if "min" in defaults:
        ax.set_ylim(bottom=defaults["min"])
    if "max" in defaults:
        ax.set_ylim(top=defaults["max"] * 1.02)


def _dedup_legend(ax: Any) -> None:
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    if unique:
        ax.legend(unique.values(), unique.keys(), fontsize=7, loc="upper left", ncol=2)
