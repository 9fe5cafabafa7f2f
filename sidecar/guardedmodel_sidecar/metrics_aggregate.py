"""One pod, several worker processes, one metrics endpoint: merge the workers' expositions.

With ``tuning.workers > 1`` every worker keeps its own ``SidecarMetrics`` and serves it on a private
unix socket; the supervising parent serves the pod's metrics port and, on each scrape, reads every
worker and merges the texts here. The result is what a single process would have exported for the
same traffic, so the canary analysis, the scaler and the alerts read the same series whatever the
worker count.

Why an aggregating endpoint and not prometheus-client's multiprocess mode:
  * ``SidecarMetrics`` is a custom collector: it computes at scrape time (sample buffers binned in
    bulk, drift windows, the audit / review / spool callbacks). Multiprocess mode only sees the
    mmap-backed ``Counter``/``Gauge``/``Histogram`` objects and ignores custom collectors, so it would
    mean rewriting the hot path onto per-observation mmap writes (today: a Python int increment).
  * Some gauges have no correct multiprocess mode: estimated accuracy and drift are means over each
    worker's window and must be weighted by that window's samples.
  * Here the hot path is untouched; the cost is one local HTTP GET per worker per scrape.

Merge rules (per family, per label set):
  counters, histograms (buckets, _sum, _count)   summed over workers
  guardedmodel_triton_queue_seconds_total        max: Triton's own counters, read and republished by
  guardedmodel_triton_requests_total             every worker, so the pod's value is Triton's, once
  guardedmodel_triton_compute_seconds_total      (likewise)
  guardedmodel_triton_executions_total           (likewise)
  guardedmodel_cost_total{source="compute"}      max: every worker charges the same Triton counter
  guardedmodel_cost_total{source="review"}       sum (each worker's own review items)
  guardedmodel_cost_price                        max: every worker has the same spec.cost
  guardedmodel_drift_window_samples              sum (each worker's window holds its share)
  guardedmodel_review_spool_items                sum (each worker spools into its own directory)
  guardedmodel_review_spool_fill_ratio           max: the fullest worker's spool is refused first
  guardedmodel_volume_full                       max: a full volume is full for every worker
  guardedmodel_audit_pending_lines, _bytes       sum (each worker's own queue)
  guardedmodel_audit_export_pending_bytes        sum (each worker exports its own directory)
  guardedmodel_audit_export_last_success_timestamp_seconds  min: the pod's export is complete up to
                                                 its least recent worker's
  guardedmodel_sidecar_asyncio_tasks             sum (each worker's own event loop)
  guardedmodel_triton_ready                      max: Triton answers ready if any worker saw it so
                                                 (each worker's own view: guardedmodel_worker_ready)
  guardedmodel_version_loaded                    min: a version is ready for a flip when every
                                                 worker has it loaded and guarded
  guardedmodel_routing_watch_connected           min: the pod follows its routing when every worker
                                                 does (each worker watches on its own)
  guardedmodel_estimated_accuracy                mean weighted by each worker's window samples: the
                                                 mean confidence of the pooled windows, exact
  guardedmodel_drift_score                       mean weighted by window samples: an estimate (PSI/KS
                                                 of the pooled window needs the raw bin counts)
  guardedmodel_drift_p_value                     bonferroni: min(1, workers * min p) over the workers'
                                                 last windows; NaN when no worker had enough rows
  guardedmodel_drift_detected                    max, NaN ignored: drifted (1) when any worker's last
                                                 window is, 0 when some are stable, NaN when all are
                                                 insufficient data
                                                 (each worker tests at alpha / workers, so "any worker
                                                 drifted" keeps the pod's false-alarm rate at alpha,
                                                 whatever the dependence between workers)
  any other gauge                                sum (depths, sizes and sample counts add up);
                                                 a flag or a level must be listed in GAUGE_RULES
  *_created                                      min (the earliest start)

Counters stay monotonic across worker restarts: when a worker exits, its last scraped counters and
histograms are kept and added to its successor's, as one process's counters would have kept
growing (increments after that last scrape are lost: at most one scrape interval of one worker).
A worker that does not answer a scrape contributes its previous answer (counters never step back)
and shows ``guardedmodel_worker_up 0``.

Per worker (label ``worker``), from the parent: ``guardedmodel_worker_up``,
``guardedmodel_worker_ready``, ``guardedmodel_worker_restarts_total`` and
``guardedmodel_worker_requests_total`` (how evenly the kernel spreads connections).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

Labels = tuple[tuple[str, str], ...]
SampleKey = tuple[str, Labels]  # (sample name, sorted labels)
How = Literal["sum", "max", "min", "weighted_mean", "bonferroni"]


@dataclass(frozen=True)
class Rule:
    how: How
    weight: str = ""  # weighted_mean: the gauge family holding each worker's weight
    # (label, ((value, how), ...)): samples whose label has one of these values merge by that rule
    by_label: tuple[str, tuple[tuple[str, How], ...]] | None = None

    def how_for(self, labels: Labels) -> How:
        if self.by_label is not None:
            name, rules = self.by_label
            value = dict(labels).get(name)
            for wanted, how in rules:
                if value == wanted:
                    return how
        return self.how


WINDOW_SAMPLES = "guardedmodel_drift_window_samples"
GAUGE_RULES: dict[str, Rule] = {
    WINDOW_SAMPLES: Rule("sum"),
    "guardedmodel_review_spool_items": Rule("sum"),
    "guardedmodel_review_spool_fill_ratio": Rule("max"),  # each worker's spool has its own bound
    "guardedmodel_volume_full": Rule("max"),
    "guardedmodel_audit_pending_lines": Rule("sum"),
    "guardedmodel_audit_pending_bytes": Rule("sum"),
    "guardedmodel_audit_export_pending_bytes": Rule("sum"),
    # The oldest worker's: the pod's export is complete up to the least recent of them.
    "guardedmodel_audit_export_last_success_timestamp_seconds": Rule("min"),
    "guardedmodel_sidecar_asyncio_tasks": Rule("sum"),
    "guardedmodel_triton_ready": Rule("max"),
    "guardedmodel_version_loaded": Rule("min"),
    "guardedmodel_routing_watch_connected": Rule("min"),
    "guardedmodel_estimated_accuracy": Rule("weighted_mean", WINDOW_SAMPLES),
    "guardedmodel_drift_score": Rule("weighted_mean", WINDOW_SAMPLES),
    "guardedmodel_drift_p_value": Rule("bonferroni"),
    "guardedmodel_drift_detected": Rule("max"),
    "guardedmodel_cost_price": Rule("max"),
}
# Counters that are not the workers' own: every worker republishes the same Triton counter.
COUNTER_RULES: dict[str, Rule] = {
    "guardedmodel_triton_queue_seconds": Rule("max"),
    "guardedmodel_triton_requests": Rule("max"),
    "guardedmodel_triton_compute_seconds": Rule("max"),
    "guardedmodel_triton_executions": Rule("max"),
    "guardedmodel_cost": Rule("sum", by_label=("source", (("compute", "max"),))),
}
_SUM = Rule("sum")
_MONOTONIC_TYPES = ("counter", "histogram", "summary")


@dataclass
class Family:
    name: str
    type: str
    documentation: str
    samples: dict[SampleKey, float] = field(default_factory=dict)


Exposition = dict[str, Family]  # by family name, in exposition order


def rule_for(family: Family) -> Rule:
    if family.type in _MONOTONIC_TYPES:
        return COUNTER_RULES.get(family.name, _SUM)
    if family.name.endswith("_created"):
        return Rule("min")
    return GAUGE_RULES.get(family.name, _SUM)


def parse(text: str) -> Exposition:
    """Prometheus text format -> families; raises ValueError on text that is not the format."""
    out: Exposition = {}
    for metric in text_string_to_metric_families(text):
        family = out.setdefault(metric.name, Family(metric.name, metric.type, metric.documentation))
        for s in metric.samples:
            family.samples[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def merge(expositions: Sequence[Exposition], workers: int | None = None) -> Exposition:
    """The families of all ``expositions`` (one per worker), combined by ``rule_for`` each family.

    ``workers``: how many worker processes share the pod's drift alpha (default: one per exposition).
    """
    merged: Exposition = {}
    for exposition in expositions:
        for name, family in exposition.items():
            if name not in merged:
                merged[name] = Family(name, family.type, family.documentation)
    for name, target in merged.items():
        parts = [e[name] for e in expositions if name in e]
        rule = rule_for(target)
        if rule.how == "weighted_mean":
            target.samples = _weighted_mean(parts, [e.get(rule.weight) for e in expositions if name in e])
            continue
        if rule.how == "bonferroni":
            target.samples = _bonferroni(parts, len(expositions) if workers is None else workers)
            continue
        for part in parts:
            for key, value in part.samples.items():
                if target.type == "summary" and any(k == "quantile" for k, _ in key[1]):
                    continue  # quantiles do not add up (the sidecar exports no summaries)
                old = target.samples.get(key)
                target.samples[key] = value if old is None else _combine(rule.how_for(key[1]), old, value)
    return merged


def _combine(how: How, a: float, b: float) -> float:
    if how == "max":
        return b if math.isnan(a) else a if math.isnan(b) else max(a, b)
    if how == "min":
        return b if math.isnan(a) else a if math.isnan(b) else min(a, b)
    return a + b


def _weighted_mean(parts: Sequence[Family], weights: Sequence[Family | None]) -> dict[SampleKey, float]:
    """Per label set: sum(w * v) / sum(w) over the workers whose weight is > 0 and value is a number;
    NaN ("no data") when no worker has one, as a single process with an empty window exports."""
    totals: dict[SampleKey, tuple[float, float]] = {}
    for part, weight_family in zip(parts, weights, strict=True):
        weights_by_labels: dict[Labels, float] = {}
        weight_label_names: set[str] = set()
        if weight_family is not None:
            for (_, labels), value in weight_family.samples.items():
                weights_by_labels[labels] = value
                weight_label_names.update(k for k, _ in labels)
        for key, value in part.samples.items():
            weighted, total = totals.get(key, (0.0, 0.0))
            w = weights_by_labels.get(tuple(kv for kv in key[1] if kv[0] in weight_label_names), 0.0)
            if w > 0 and not math.isnan(value):
                weighted, total = weighted + w * value, total + w
            totals[key] = (weighted, total)
    return {key: (weighted / total if total > 0 else math.nan) for key, (weighted, total) in totals.items()}


def _bonferroni(parts: Sequence[Family], workers: int) -> dict[SampleKey, float]:
    """Per label set: min(1, workers * min p) over the workers with a p-value, NaN when none has.

    ``workers`` is the configured count, not the number answering: a worker that is down still
    tested at alpha / workers."""
    smallest: dict[SampleKey, float] = {}
    for part in parts:
        for key, value in part.samples.items():
            old = smallest.get(key, math.nan)
            smallest[key] = _combine("min", old, value)
    return {key: (min(1.0, workers * p) if not math.isnan(p) else math.nan) for key, p in smallest.items()}


def monotonic_part(exposition: Exposition) -> Exposition:
    """The families a worker's successor carries on: its own counters and histograms (not the
    samples that republish Triton's counters: the successor reads those again)."""
    out: Exposition = {}
    for name, family in exposition.items():
        if family.type not in _MONOTONIC_TYPES:
            continue
        rule = rule_for(family)
        own = {key: value for key, value in family.samples.items() if rule.how_for(key[1]) == "sum"}
        if own:
            out[name] = Family(family.name, family.type, family.documentation, own)
    return out


class _Families(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def to_metric(family: Family) -> Metric:
    metric = Metric(family.name, family.documentation, family.type)
    for (sample_name, labels), value in family.samples.items():
        metric.add_sample(sample_name, dict(labels), value)
    return metric


def render(families: Iterable[Metric]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return generate_latest(registry)


@dataclass
class _Slot:
    incarnation: int = 0
    last: Exposition | None = None  # the running worker's latest answer
    retired: Exposition = field(default_factory=dict)  # counters of its predecessors, summed
    up: bool = False


class Aggregator:
    """The pod's view of ``workers`` worker slots. The parent's event loop is its only caller."""

    def __init__(self, workers: int) -> None:
        self.slots = [_Slot() for _ in range(workers)]

    def started(self, slot: int) -> int:
        """A new process in ``slot``; returns its incarnation (scrapes of an older one are ignored)."""
        self.slots[slot].incarnation += 1
        return self.slots[slot].incarnation

    def observe(self, slot: int, incarnation: int, text: str) -> None:
        s = self.slots[slot]
        if incarnation != s.incarnation:
            return
        s.last = parse(text)
        s.up = True

    def missed(self, slot: int, incarnation: int) -> None:
        """The worker did not answer this scrape: keep its previous figures, flag it down."""
        if incarnation == self.slots[slot].incarnation:
            self.slots[slot].up = False

    def exited(self, slot: int) -> None:
        """The worker's process ended: its counters live on in the slot, its gauges go."""
        s = self.slots[slot]
        if s.last is not None:
            s.retired = merge([s.retired, monotonic_part(s.last)])
        s.last = None
        s.up = False

    def merged(self) -> Exposition:
        parts: list[Exposition] = []
        for s in self.slots:
            if s.retired:
                parts.append(s.retired)
            if s.last is not None:
                parts.append(s.last)
        return merge(parts, workers=len(self.slots))

    def per_worker(self) -> list[Metric]:
        up = Metric("guardedmodel_worker_up", "1 when the worker process answered the last scrape", "gauge")
        ready = Metric("guardedmodel_worker_ready", "The worker's own guardedmodel_triton_ready", "gauge")
        restarts = Metric("guardedmodel_worker_restarts", "Times the worker process was restarted", "counter")
        requests = Metric(
            "guardedmodel_worker_requests", "Requests the worker decided on (all models, versions)", "counter"
        )
        for index, s in enumerate(self.slots):
            labels = {"worker": str(index)}
            up.add_sample(up.name, labels, 1.0 if s.up else 0.0)
            restarts.add_sample("guardedmodel_worker_restarts_total", labels, max(s.incarnation - 1, 0))
            served = merge([s.retired, s.last or {}]).get("guardedmodel_requests")
            requests.add_sample(
                "guardedmodel_worker_requests_total", labels, sum(served.samples.values()) if served else 0.0
            )
            triton_ready = (s.last or {}).get("guardedmodel_triton_ready")
            if triton_ready is not None and triton_ready.samples:
                ready.add_sample(ready.name, labels, max(triton_ready.samples.values()))
        return [up, ready, restarts, requests]

    def render(self) -> bytes:
        return render([*(to_metric(f) for f in self.merged().values()), *self.per_worker()])
