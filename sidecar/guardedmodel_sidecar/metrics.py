"""Prometheus metrics of the data plane: one registry, plain counters on the hot path, served apart.

What is counted per model version, and how cheaply, is ``version_metrics.py``; this collector adds the
sidecar-wide numbers and turns both into metric families at scrape time.

Exported (labels ``model``, ``version`` unless noted):
  guardedmodel_requests_total{decision}            requests by guard decision, the worst of its rows
                                                   (a perRow batch answered with one refused row counts
                                                   as reject; gate refusals: reject)
  guardedmodel_row_decisions_total{decision}       rows by guard decision (rows the gate refused are
                                                   not scored and not counted here)
  guardedmodel_samples_total                       samples scored (a batch of 32 counts 32)
  guardedmodel_ood_samples_total                   samples whose OOD score is above the threshold
  guardedmodel_gate_refusals_total{model}          requests the input gate refused
  guardedmodel_upstream_errors_total{model,version,code}  Triton errors and unreachable Triton
                                                   (version "" when no version was chosen yet)
  guardedmodel_confidence                          histogram of calibrated confidence per sample
  guardedmodel_ood_score{method}                   histogram of OOD scores per sample
  guardedmodel_estimated_accuracy                  mean calibrated confidence of the last window
  guardedmodel_drift_score{statistic}              PSI/KS of the last drift window against the reference:
                                                   the effect size (how far), not the decision
  guardedmodel_drift_p_value                       p-value of the last window's drift test (chi-square
                                                   per binned statistic, Bonferroni-combined); NaN when
                                                   the window had too few rows to test
  guardedmodel_drift_detected                      the last window's decision: 1 drifted (p <= alpha),
                                                   0 stable, NaN insufficient data (< minSamples rows)
  guardedmodel_drift_windows_total{decision}       drift windows closed: drifted, stable, insufficient
  guardedmodel_drift_window_samples                samples in the last window
  (the drift series appear once a version's first drift window has closed; see guard/drift_decision.py)
  guardedmodel_stage_seconds{stage}                gate / model / scorer / total latency per request,
                                                   per version (a canary's latency is its own);
                                                   version "" for requests refused before routing
  guardedmodel_triton_queue_seconds_total          Triton's queue time and completed requests, read
  guardedmodel_triton_requests_total               from Triton (the operator scales on them)
  guardedmodel_triton_compute_seconds_total        Triton's compute time (input + infer + output) and
  guardedmodel_triton_executions_total             model executions, read from Triton (triton_metrics.py
                                                   says what the compute time measures exactly)
  guardedmodel_reviews_total                       review items sent to people (spooled for the webhook)
  guardedmodel_cost_price{model,source}            with spec.cost: the prices, source gpu_hour | review
  guardedmodel_cost_total{source}                  with spec.cost: money spent in spec.cost.currency,
                                                   source compute | review (cost.py)
  guardedmodel_review_items_total{outcome}         review items: spooled, capped, sent, send_failed,
                                                   spool_full, queue_full, write_failed, io_failed, lost
  guardedmodel_review_spool_items                  items waiting in the durable spool
  guardedmodel_review_spool_fill_ratio             the spool's items or bytes over its bound, the
                                                   nearer one (0..1; items are refused at 1)
  guardedmodel_volume_full{model,volume}           1 while the latest write to the volume (audit,
                                                   review_spool) failed for lack of space
  guardedmodel_audit_records_total                 audit records written
  guardedmodel_audit_records_dropped_total{stream,reason}  audit lines (records, samples) dropped
  guardedmodel_audit_write_errors_total{stream}    failed audit writes (the lines are kept and retried)
  guardedmodel_audit_pending_lines{stream}         audit lines in memory, not yet written
  guardedmodel_audit_pending_bytes{stream}
  guardedmodel_audit_files_deleted_total{stream}   rotated audit files deleted by retention
  guardedmodel_audit_export_rows_total{stream}     with spec.audit.export: rows stored as Parquet
  guardedmodel_audit_export_objects_total{stream}  Parquet objects stored
  guardedmodel_audit_export_errors_total{stream}   failed object writes (retried with backoff)
  guardedmodel_audit_export_lost_lines_total{stream}  lines never exported: deleted by retention first,
                                                   or not a record (torn by a crash)
  guardedmodel_audit_export_pending_bytes{stream}  bytes of audit files not yet exported
  guardedmodel_audit_export_last_success_timestamp_seconds  when the latest export stored everything
  guardedmodel_triton_ready                        1 when Triton answers ready, else 0
  guardedmodel_sidecar_asyncio_tasks{model}        asyncio tasks alive in the process's event loop (a
                                                   connection or request that leaks its task shows here)
  guardedmodel_version_loaded{model,version,role}  1 when the version is loaded in Triton and guarded;
                                                   role: stable, canary, lastGood, shadow (a version
                                                   with two roles has two series)
  A shadow candidate's answers, compared with the stable's (labels model, version: the candidate,
  baseline: the stable it is compared with, source: shadow (live copies) or replay (audit samples));
  they never count in the serving metrics above:
  guardedmodel_comparison_rows_total               rows answered by both
  guardedmodel_comparison_agreements_total         rows with the same top-1 class
  guardedmodel_comparison_candidate_confidence_total  sums of calibrated confidence (divide by rows)
  guardedmodel_comparison_baseline_confidence_total
  guardedmodel_comparison_candidate_ood_total      rows each side's own guard calls OOD
  guardedmodel_comparison_baseline_ood_total
  guardedmodel_comparison_skipped_total{model,version,source,reason}  requests not compared:
                                                   inflight_limit, upstream_error, not_loaded, unreadable
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from guardedmodel_sidecar.cost import COMPUTE, REVIEW, CostLedger
from guardedmodel_sidecar.guard.drift_decision import DriftPolicy
from guardedmodel_sidecar.version_metrics import VersionMetrics, new_stages

if TYPE_CHECKING:
    from guardedmodel_sidecar.audit_export import ExportStats
    from guardedmodel_sidecar.audit_stream import StreamStats
    from guardedmodel_sidecar.comparison import ComparisonCounts

# guardedmodel_comparison_<field of ComparisonCounts>_total, and its help
_COMPARISON_FAMILIES = (
    ("rows", "Rows answered by both a shadow candidate and the stable"),
    ("agreements", "Rows where the candidate's top-1 class is the stable's"),
    ("candidate_confidence", "Sum of the candidate's calibrated confidence"),
    ("baseline_confidence", "Sum of the stable's calibrated confidence"),
    ("candidate_ood", "Rows the candidate's guard calls out of distribution"),
    ("baseline_ood", "Rows the stable's guard calls out of distribution"),
)


class SidecarMetrics(Collector):
    def __init__(self, model: str, drift_policy: DriftPolicy | None = None) -> None:
        self.model = model
        # How every version's drift windows are closed and tested (spec.drift, this worker's share).
        self.drift_policy = drift_policy or DriftPolicy()
        self.registry = CollectorRegistry(auto_describe=False)
        self.versions: dict[str, VersionMetrics] = {}
        self.stages = new_stages()  # requests refused before a version was chosen
        self.gate_refusals = 0
        self.overload_refusals = 0  # refused at limits.maxInflightRequests
        self.upstream_errors: dict[tuple[str, str], int] = {}  # (version, code) -> count
        self.triton_ready = False
        # version -> (queue seconds, requests) since Triton started, as Triton last reported them.
        self.triton_queue: dict[str, tuple[float, float]] = {}
        # version -> (compute seconds, executions) since Triton started, as Triton last reported them.
        self.triton_compute: dict[str, tuple[float, float]] = {}
        self.cost = CostLedger()
        # Read at scrape time from the parts that own the numbers.
        self.review_counts: Callable[[], dict[str, int]] = dict
        self.spool_depth: Callable[[], int] = lambda: 0
        self.spool_fill: Callable[[], float] = lambda: 0.0
        self.volumes_full: Callable[[], Mapping[str, bool]] = dict
        self.audit_records: Callable[[], int] = lambda: 0
        self.audit_stats: Callable[[], Mapping[str, StreamStats]] = dict
        # (per-stream export numbers, time of the latest complete export); None without spec.audit.export.
        self.audit_export: Callable[[], tuple[Mapping[str, ExportStats], float | None] | None] = lambda: None
        self.asyncio_tasks: Callable[[], int] = lambda: 0
        # (version, role, loaded and guarded) of every version routing keeps, read at scrape time.
        self.version_roles: Callable[[], list[tuple[str, str, bool]]] = list
        # (following the GuardedModel now, failed API reads so far) of the routing watch; None without one.
        self.routing_watch: Callable[[], tuple[bool, int] | None] = lambda: None
        # (candidate, baseline, source) -> counts; (candidate, source, reason) -> requests
        self.comparisons: dict[tuple[str, str, str], ComparisonCounts] = {}
        self.comparison_skipped: dict[tuple[str, str, str], int] = {}
        self.registry.register(self)

    def version(self, version: str) -> VersionMetrics | None:
        return self.versions.get(version)

    def add_version(self, metrics: VersionMetrics) -> None:
        if metrics.version not in self.versions:
            metrics.use_drift_policy(self.drift_policy)
            self.versions[metrics.version] = metrics

    def count_decision(self, version: str, decision: str) -> None:
        vm = self.versions.get(version)
        if vm is not None:
            vm.decisions[decision] += 1

    def count_upstream_error(self, code: str, version: str = "") -> None:
        # Per version, so a canary's errors count against the canary and not the stable version.
        key = (version, code)
        self.upstream_errors[key] = self.upstream_errors.get(key, 0) + 1

    def count_comparison(self, candidate: str, baseline: str, source: str, counts: ComparisonCounts) -> None:
        key = (candidate, baseline, source)
        old = self.comparisons.get(key)
        self.comparisons[key] = counts if old is None else old + counts

    def count_comparison_skipped(self, candidate: str, source: str, reason: str) -> None:
        key = (candidate, source, reason)
        self.comparison_skipped[key] = self.comparison_skipped.get(key, 0) + 1

    def close_windows(self) -> None:
        for vm in self.versions.values():
            vm.close_window()

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        labels = ["model", "version"]
        requests = CounterMetricFamily(
            "guardedmodel_requests", "Requests by guard decision", labels=[*labels, "decision"]
        )
        rows = CounterMetricFamily(
            "guardedmodel_row_decisions", "Scored rows by guard decision", labels=[*labels, "decision"]
        )
        samples = CounterMetricFamily("guardedmodel_samples", "Samples scored", labels=labels)
        ood_samples = CounterMetricFamily(
            "guardedmodel_ood_samples", "Samples with an OOD score above the threshold", labels=labels
        )
        confidence = HistogramMetricFamily(
            "guardedmodel_confidence", "Calibrated confidence per sample", labels=labels
        )
        ood = HistogramMetricFamily(
            "guardedmodel_ood_score", "OOD score per sample (higher = more OOD)", labels=[*labels, "method"]
        )
        accuracy = GaugeMetricFamily(
            "guardedmodel_estimated_accuracy", "Mean calibrated confidence of the last window", labels=labels
        )
        drift = GaugeMetricFamily(
            "guardedmodel_drift_score",
            "Drift of the last window against the reference",
            labels=[*labels, "statistic"],
        )
        window = GaugeMetricFamily(
            "guardedmodel_drift_window_samples", "Samples in the last drift window", labels=labels
        )
        p_value = GaugeMetricFamily(
            "guardedmodel_drift_p_value",
            "p-value of the last drift window's test against the reference (NaN: too few rows)",
            labels=labels,
        )
        detected = GaugeMetricFamily(
            "guardedmodel_drift_detected",
            "Last drift window: 1 drifted (p <= spec.drift.alpha), 0 stable, NaN insufficient data",
            labels=labels,
        )
        windows = CounterMetricFamily(
            "guardedmodel_drift_windows", "Drift windows closed, by decision", labels=[*labels, "decision"]
        )
        for vm in self.versions.values():
            vm.flush()
            lv = [vm.model, vm.version]
            for decision, count in vm.decisions.items():
                requests.add_metric([*lv, decision], count)
            for decision, count in vm.row_decisions.items():
                rows.add_metric([*lv, decision], count)
            samples.add_metric(lv, vm.samples)
            ood_samples.add_metric(lv, vm.ood_samples)
            buckets, total = vm.confidence.family_samples()
            confidence.add_metric(lv, buckets, total)
            if vm.method != "none":
                buckets, total = vm.ood.family_samples()
                ood.add_metric([*lv, vm.method], buckets, total)
            accuracy.add_metric(lv, vm.last_accuracy)
            for statistic, value in vm.last_drift.items():
                drift.add_metric([*lv, statistic], value)
            window.add_metric(lv, vm.last_window_samples)
            if vm.last_window is not None:
                p_value.add_metric(lv, vm.last_window.test.p_value)
                detected.add_metric(lv, vm.last_window.decision.gauge)
            if vm.drift is not None:
                for decision, count in vm.drift_windows.items():
                    windows.add_metric([*lv, decision.value], count)
        yield from (requests, samples, ood_samples, confidence, ood, accuracy, drift, window)
        yield from (p_value, detected, windows, rows)

        refusals = CounterMetricFamily(
            "guardedmodel_gate_refusals", "Requests refused by the input gate", labels=["model"]
        )
        refusals.add_metric([self.model], self.gate_refusals)
        yield refusals
        overload = CounterMetricFamily(
            "guardedmodel_overload_refusals",
            "Requests refused with 503 because limits.maxInflightRequests were already in flight",
            labels=["model"],
        )
        overload.add_metric([self.model], self.overload_refusals)
        yield overload
        upstream = CounterMetricFamily(
            "guardedmodel_upstream_errors",
            "Errors from or reaching Triton",
            labels=["model", "version", "code"],
        )
        for (version, code), count in self.upstream_errors.items():
            upstream.add_metric([self.model, version, code], count)
        yield upstream
        stages = HistogramMetricFamily(
            "guardedmodel_stage_seconds",
            "Latency per request by stage and model version",
            labels=["model", "version", "stage"],
        )
        per_version = [(vm.version, vm.stages) for vm in self.versions.values()]
        if any(hist.observed for hist in self.stages.values()):
            per_version.append(("", self.stages))
        for version, histograms in per_version:
            for stage, hist in histograms.items():
                buckets, total = hist.family_samples()
                stages.add_metric([self.model, version, stage], buckets, total)
        yield stages
        review = CounterMetricFamily(
            "guardedmodel_review_items", "Human-review items by outcome", labels=["model", "outcome"]
        )
        for outcome, count in self.review_counts().items():
            review.add_metric([self.model, outcome], count)
        yield review
        yield GaugeMetricFamily(
            "guardedmodel_review_spool_items", "Review items waiting in the spool", value=self.spool_depth()
        )
        yield GaugeMetricFamily(
            "guardedmodel_review_spool_fill_ratio",
            "Review spool items or bytes over their bound, the nearer one (items are refused at 1)",
            value=self.spool_fill(),
        )
        full = GaugeMetricFamily(
            "guardedmodel_volume_full",
            "1 while the latest write to the volume failed for lack of space",
            labels=["model", "volume"],
        )
        for volume, is_full in self.volumes_full().items():
            full.add_metric([self.model, volume], 1.0 if is_full else 0.0)
        yield full
        yield CounterMetricFamily(
            "guardedmodel_audit_records", "Audit records written", value=self.audit_records()
        )
        yield from self._audit_families()
        queue = CounterMetricFamily(
            "guardedmodel_triton_queue_seconds",
            "Time requests waited in Triton's queue, as Triton reports it (the scaler's signal)",
            labels=["model", "version"],
        )
        served = CounterMetricFamily(
            "guardedmodel_triton_requests",
            "Requests Triton completed, as Triton reports it",
            labels=["model", "version"],
        )
        for version, (seconds, completed) in self.triton_queue.items():
            queue.add_metric([self.model, version], seconds)
            served.add_metric([self.model, version], completed)
        yield queue
        yield served
        yield from self._cost_families()
        yield GaugeMetricFamily(
            "guardedmodel_triton_ready",
            "1 when Triton answers ready",
            value=1.0 if self.triton_ready else 0.0,
        )
        tasks = GaugeMetricFamily(
            "guardedmodel_sidecar_asyncio_tasks",
            "asyncio tasks alive in the sidecar's event loop",
            labels=["model"],
        )
        tasks.add_metric([self.model], self.asyncio_tasks())
        yield tasks
        loaded = GaugeMetricFamily(
            "guardedmodel_version_loaded",
            "1 when the version is loaded in Triton and guarded, by its role in routing",
            labels=["model", "version", "role"],
        )
        for version, role, ready in self.version_roles():
            loaded.add_metric([self.model, version, role], 1.0 if ready else 0.0)
        yield loaded
        watch = self.routing_watch()
        if watch is not None:
            yield GaugeMetricFamily(
                "guardedmodel_routing_watch_connected",
                "1 while the sidecar follows its GuardedModel's routing through the API server; 0 while "
                "it cannot reach it and serves on the last routing it had",
                value=1.0 if watch[0] else 0.0,
            )
            yield CounterMetricFamily(
                "guardedmodel_routing_watch_failures",
                "Failed reads or watches of the GuardedModel (API server unreachable or refusing)",
                value=watch[1],
            )
        yield from self._comparison_families()

    def _cost_families(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        labels = ["model", "version"]
        compute = CounterMetricFamily(
            "guardedmodel_triton_compute_seconds",
            "Triton's compute time (input + infer + output) of the requests it completed, as Triton "
            "reports it (with dynamic batching each request counts its whole execution)",
            labels=labels,
        )
        executions = CounterMetricFamily(
            "guardedmodel_triton_executions", "Model executions, as Triton reports them", labels=labels
        )
        # From 0 for every guarded version, like the reviews below, so that compute, reviews and
        # predictions (guardedmodel_samples_total, also there from the start) are all read over the
        # same window the same way: one series born later is extrapolated differently by increase().
        read = {**{version: (0.0, 0.0) for version in self.versions}, **self.triton_compute}
        for version, (seconds, runs) in read.items():
            compute.add_metric([self.model, version], seconds)
            executions.add_metric([self.model, version], runs)
        reviews = CounterMetricFamily(
            "guardedmodel_reviews", "Review items sent to people (spooled for the webhook)", labels=labels
        )
        # Every guarded version from its start, at 0 until its first item: rate() takes a series'
        # first sample as its baseline, so a series born at the first review would lose that review,
        # and reviews per prediction read low (by a third over a short window) until it ages out.
        for version in dict.fromkeys([*self.versions, *self.cost.reviews]):
            reviews.add_metric([self.model, version], self.cost.reviews.get(version, 0))
        yield from (compute, executions, reviews)
        prices = self.cost.prices
        if prices is None:
            return
        price = GaugeMetricFamily(
            "guardedmodel_cost_price",
            f"spec.cost prices in {prices.currency}: per GPU hour of compute, per review item",
            labels=["model", "source"],
        )
        price.add_metric([self.model, "gpu_hour"], prices.gpu_hour)
        price.add_metric([self.model, "review"], prices.review)
        money = CounterMetricFamily(
            "guardedmodel_cost",
            f"Money spent in {prices.currency}, at the price in force when the work was done",
            labels=[*labels, "source"],
        )
        spent = {
            **{(v, source): 0.0 for v in self.versions for source in (COMPUTE, REVIEW)},
            **self.cost.money,
        }
        for (version, source), amount in spent.items():  # from 0, as the reviews above
            money.add_metric([self.model, version, source], amount)
        yield from (price, money)

    def _comparison_families(self) -> Iterator[CounterMetricFamily]:
        labels = ["model", "version", "baseline", "source"]
        families = [
            (field, CounterMetricFamily(f"guardedmodel_comparison_{field}", text, labels=labels))
            for field, text in _COMPARISON_FAMILIES
        ]
        for (candidate, baseline, source), counts in self.comparisons.items():
            for field, family in families:
                family.add_metric([self.model, candidate, baseline, source], getattr(counts, field))
        yield from (family for _, family in families)
        skipped = CounterMetricFamily(
            "guardedmodel_comparison_skipped",
            "Requests not compared with a shadow candidate, by reason",
            labels=["model", "version", "source", "reason"],
        )
        for (candidate, source, reason), count in self.comparison_skipped.items():
            skipped.add_metric([self.model, candidate, source, reason], count)
        yield skipped

    def _audit_families(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        labels = ["model", "stream"]
        dropped = CounterMetricFamily(
            "guardedmodel_audit_records_dropped",
            "Audit lines dropped (stream: records or samples), by reason",
            labels=[*labels, "reason"],
        )
        errors = CounterMetricFamily(
            "guardedmodel_audit_write_errors",
            "Failed audit writes; the lines are kept and retried",
            labels=labels,
        )
        lines = GaugeMetricFamily(
            "guardedmodel_audit_pending_lines", "Audit lines not yet written", labels=labels
        )
        pending = GaugeMetricFamily(
            "guardedmodel_audit_pending_bytes", "Bytes of audit lines not yet written", labels=labels
        )
        deleted = CounterMetricFamily(
            "guardedmodel_audit_files_deleted", "Rotated audit files deleted by retention", labels=labels
        )
        for stream, stats in self.audit_stats().items():
            lv = [self.model, stream]
            for reason, count in stats.dropped.items():
                dropped.add_metric([*lv, reason], count)
            errors.add_metric(lv, stats.write_errors)
            lines.add_metric(lv, stats.pending_lines)
            pending.add_metric(lv, stats.pending_bytes)
            deleted.add_metric(lv, stats.files_deleted)
        yield from (dropped, errors, lines, pending, deleted)
        yield from self._export_families()

    def _export_families(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        export = self.audit_export()
        if export is None:
            return
        stats, last_success = export
        labels = ["model", "stream"]
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {
            "rows": CounterMetricFamily(
                "guardedmodel_audit_export_rows", "Audit rows stored in the bucket as Parquet", labels=labels
            ),
            "objects": CounterMetricFamily(
                "guardedmodel_audit_export_objects", "Parquet objects stored in the bucket", labels=labels
            ),
            "errors": CounterMetricFamily(
                "guardedmodel_audit_export_errors",
                "Failed object writes of the audit export (retried with backoff)",
                labels=labels,
            ),
            "lost_lines": CounterMetricFamily(
                "guardedmodel_audit_export_lost_lines",
                "Audit lines never exported (deleted by retention first, or torn)",
                labels=labels,
            ),
            "pending_bytes": GaugeMetricFamily(
                "guardedmodel_audit_export_pending_bytes",
                "Bytes of audit files not yet exported",
                labels=labels,
            ),
        }
        for stream, numbers in stats.items():
            for name, family in families.items():
                family.add_metric([self.model, stream], getattr(numbers, name))
        yield from families.values()
        if last_success is not None:
            last = GaugeMetricFamily(
                "guardedmodel_audit_export_last_success_timestamp_seconds",
                "Unix time of the latest audit export that stored everything waiting",
                labels=["model"],
            )
            last.add_metric([self.model], last_success)
            yield last
