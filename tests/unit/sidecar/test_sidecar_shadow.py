"""Last good and shadow versions: routing that carries them, the exact mirror share, the row-by-row
comparison, reading the stable's answers back from audit records, replay's choice of requests, and
the comparison metrics of one worker and of several."""

from __future__ import annotations

import math
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import generate_latest

from guardedmodel_sidecar.audit import AuditLog
from guardedmodel_sidecar.audit_file import iter_records, rotated_files
from guardedmodel_sidecar.audit_records import comparison_record, scored_record
from guardedmodel_sidecar.comparison import (
    ComparisonCounts,
    RowScores,
    compare_rows,
    rows_from_record,
    rows_from_scores,
    worker_share,
)
from guardedmodel_sidecar.config import Routing, Shadow, parse_config, parse_routing
from guardedmodel_sidecar.config_values import ConfigError
from guardedmodel_sidecar.decision import DecisionPolicy, decide
from guardedmodel_sidecar.gate import InputGate
from guardedmodel_sidecar.metrics import SidecarMetrics
from guardedmodel_sidecar.metrics_aggregate import merge, parse
from guardedmodel_sidecar.protocol.model import InferRequest, Tensor
from guardedmodel_sidecar.replay import replay_items, sample_inputs
from guardedmodel_sidecar.response_scoring import Scores
from guardedmodel_sidecar.routing import Router
from guardedmodel_sidecar.status_watch import routing_from_status
from guardedmodel_sidecar.version_guard import VersionGuard
from guardedmodel_sidecar.version_metrics import VersionMetrics
from guardedmodel_sidecar.workers import worker_config

# ----------------------------------------------------------------------------------- routing


def test_parse_routing_reads_last_good_and_shadow() -> None:
    routing = parse_routing(
        {
            "stableVersion": "2",
            "lastGoodVersion": 1,
            "shadow": {"version": 3, "fraction": 0.1, "replay": 200},
        },
        "9",
    )
    assert routing == Routing("2", None, 0, "1", Shadow("3", 0.1, 200))
    assert routing.versions() == ("2",)
    assert routing.kept_versions() == ("2", "1", "3")
    assert parse_routing({}, "9") == Routing("9")
    assert parse_routing({"shadow": {"version": "3"}}, "1").shadow == Shadow("3", 0.0, 0)
    assert parse_routing({"shadow": None}, "1").shadow is None


@pytest.mark.parametrize(
    ("shadow", "message"),
    [
        ({"fraction": 0.5}, "needs at least a version"),
        ("3", "needs at least a version"),
        ({"version": "3", "fraction": 1.5}, "fraction: 1.5 must be a number from 0 to 1"),
        ({"version": "3", "fraction": -0.1}, "fraction"),
        ({"version": "3", "fraction": True}, "fraction"),
        ({"version": "3", "fraction": "half"}, "fraction"),
        ({"version": "3", "replay": -1}, "replay: -1 must be a whole number"),
        ({"version": "3", "replay": 2.5}, "replay"),
        ({"version": "3", "replay": True}, "replay"),
    ],
)
def test_parse_routing_refuses_a_shadow_it_cannot_honour(shadow: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_routing({"stableVersion": "1", "shadow": shadow}, "1")


def test_the_shadow_bounds_are_tuning_and_each_worker_knows_its_share() -> None:
    base = {"spec": {"model": {"name": "m"}}, "routing": {"shadow": {"version": "2", "replay": 10}}}
    config = parse_config(base)
    assert (config.tuning.shadow_max_inflight, config.tuning.replay_concurrency) == (4, 2)
    tuned = parse_config({**base, "tuning": {"shadowMaxInflight": 16, "replayConcurrency": 1, "workers": 3}})
    assert (tuned.tuning.shadow_max_inflight, tuned.tuning.replay_concurrency) == (16, 1)
    assert [worker_config(tuned, i).tuning.worker_index for i in range(3)] == [0, 1, 2]
    for key in ("shadowMaxInflight", "replayConcurrency"):
        with pytest.raises(ConfigError, match=f"tuning.{key}: 0 must be a whole number >= 1"):
            parse_config({**base, "tuning": {key: 0}})


def test_routing_from_status_reads_last_good_and_shadow_as_they_are() -> None:
    last = Routing("1", None, 0, "0", Shadow("2", 0.5, 10))
    status = {"stableVersion": "1", "lastGoodVersion": "0", "shadow": {"version": "3", "fraction": 0.2}}
    assert routing_from_status(status, last) == Routing("1", None, 0, "0", Shadow("3", 0.2, 0))
    # absent means none: the operator removes them when a rollout ends
    assert routing_from_status({"stableVersion": "3"}, last) == Routing("3")
    # one the API server should have refused keeps the last shadow
    bad = {"stableVersion": "1", "shadow": {"version": "3", "fraction": 7}}
    assert routing_from_status(bad, last).shadow == Shadow("2", 0.5, 10)


def test_kept_versions_roles_and_the_previous_stable_fallback() -> None:
    router = Router(Routing("1", "2", 50))
    assert router.versions_to_load() == ("1", "2") and router.last_good is None
    router.update(Routing("2"))
    # no lastGoodVersion given: the stable this sidecar saw before is kept for a rollback
    assert router.versions_to_load() == ("2", "1")
    assert router.roles() == [("2", "stable"), ("1", "lastGood")]
    # the GuardedModel's lastGoodVersion wins over what this sidecar saw
    router.update(Routing("2", None, 0, "0", Shadow("3", 0.1)))
    assert router.versions_to_load() == ("2", "0", "3")
    assert router.roles() == [("2", "stable"), ("0", "lastGood"), ("3", "shadow")]
    # a rollback to the previous stable: it is not its own last good
    fresh = Router(Routing("2"))
    fresh.update(Routing("1"))
    fresh.update(Routing("2"))
    fresh.update(Routing("2", "3", 10))
    assert fresh.roles() == [("2", "stable"), ("3", "canary"), ("1", "lastGood")]
    # a version with two roles (an A/A shadow of the stable) is kept once
    same = Router(Routing("1", None, 0, "1", Shadow("1", 1.0)))
    assert same.versions_to_load() == ("1",)
    assert same.roles() == [("1", "stable"), ("1", "lastGood"), ("1", "shadow")]


@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.1, 0.25, 1 / 3, 0.5, 0.999, 1.0])
def test_the_mirror_share_is_exact_and_evenly_spread(fraction: float) -> None:
    router = Router(Routing("1", None, 0, None, Shadow("2", fraction)))
    picks = [router.mirror() for _ in range(3000)]
    mirrored = [i for i, p in enumerate(picks) if p is not None]
    assert set(picks) <= {None, "2"}
    assert abs(len(mirrored) - fraction * 3000) <= 1
    if len(mirrored) > 2:
        gaps = {b - a for a, b in pairwise(mirrored)}
        assert max(gaps) - min(gaps) <= 1  # every n-th request, not bursts
    # a new routing starts the count afresh; no shadow mirrors nothing
    router.update(Routing("1"))
    assert [router.mirror() for _ in range(10)] == [None] * 10


# ----------------------------------------------------------------------------------- comparison


def _rows(rng: np.random.Generator, n: int) -> RowScores:
    return RowScores(rng.integers(0, 4, n), rng.uniform(0.2, 1.0, n), rng.uniform(size=n) < 0.2)


@pytest.mark.parametrize("seed", range(20))
def test_compare_rows_counts_agreement_confidence_and_ood(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 65))
    candidate, baseline = _rows(rng, n), _rows(rng, n)
    counts = compare_rows(candidate, baseline)
    assert counts.rows == n
    assert counts.agreements == sum(
        int(a == b) for a, b in zip(candidate.predicted, baseline.predicted, strict=True)
    )
    assert counts.candidate_confidence == pytest.approx(sum(candidate.confidence))
    assert counts.baseline_confidence == pytest.approx(sum(baseline.confidence))
    assert (counts.candidate_ood, counts.baseline_ood) == (int(candidate.ood.sum()), int(baseline.ood.sum()))
    itself = compare_rows(baseline, baseline)
    assert itself.agreements == n and itself.candidate_confidence == itself.baseline_confidence
    # counts add up over requests as the counters do
    assert (counts + itself).rows == 2 * n and (counts + ComparisonCounts()) == counts


def test_compare_rows_refuses_different_row_counts_and_skips_nan_confidence() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="3 rows and the baseline 4"):
        compare_rows(_rows(rng, 3), _rows(rng, 4))
    nan = RowScores(np.array([1, 2]), np.array([math.nan, 0.5]), np.array([False, False]))
    assert compare_rows(nan, nan).candidate_confidence == 0.5


def _guard(threshold: float | None) -> VersionGuard:
    policy = DecisionPolicy(0.6, "mahalanobis", threshold, "reject")
    metrics = VersionMetrics("m", "1", "mahalanobis", threshold, None, 0)
    return VersionGuard("1", InputGate((), max_batch=64), 1.0, None, policy, "LOGITS", None, False, metrics)


@pytest.mark.parametrize("threshold", [10.0, math.inf, None, -1.0])
def test_the_stable_answer_read_back_from_its_audit_record_is_what_it_answered(
    tmp_path: Path, threshold: float | None
) -> None:
    """OOD per row is recoverable from the record alone (score > threshold; an infinite threshold is
    written as null), NaN scores included."""
    confidence = np.array([0.9, 0.3, 0.99, 0.7])
    ood = np.array([1.0, 50.0, math.nan, 10.5])
    scores = Scores(confidence, np.array([3, 0, 1, 2]), ood, None)
    guard = _guard(threshold)
    x = np.zeros((4, 2), np.float32)
    request = InferRequest("m", "", "c", {}, [Tensor("X", "FP32", x.shape, x.tobytes(), x)], None)
    decision = decide(confidence, ood, [], guard.policy)
    audit = AuditLog(tmp_path)
    audit.record(scored_record(request, "r1", "m", guard, decision, scores, answered=True))
    audit.close()
    (record,) = iter_records(tmp_path)
    read = rows_from_record(record)
    expected = rows_from_scores(scores, threshold)
    assert read.predicted.tolist() == expected.predicted.tolist() == [3, 0, 1, 2]
    np.testing.assert_array_equal(read.confidence, expected.confidence)
    assert read.ood.tolist() == expected.ood.tolist()
    assert read.ood.tolist() == (ood > threshold).tolist() if threshold is not None else not read.ood.any()
    # the rows the record calls OOD are the rows the decision refuses (a NaN score is not above)
    if threshold is not None:
        refused = decide(confidence, np.nan_to_num(ood, nan=-np.inf), [], guard.policy).codes == 2
        assert read.ood.tolist() == refused.tolist()


def test_a_record_without_rows_is_not_a_baseline() -> None:
    with pytest.raises(ValueError, match="no per-row predictions"):
        rows_from_record({"id": "x", "status": 400, "decision": "reject"})


@pytest.mark.parametrize("workers", range(1, 9))
def test_the_workers_replay_shares_add_up_to_the_total(workers: int) -> None:
    for total in range(0, 60):
        shares = [worker_share(total, workers, i) for i in range(workers)]
        assert sum(shares) == total and max(shares) - min(shares) <= 1


# ----------------------------------------------------------------------------------- replay's choice


def _write_traffic(directory: Path, requests: list[tuple[str, str, int, bool]]) -> dict[str, np.ndarray]:
    """Audit records (and samples) as the pipeline writes them: (id, version, status, sampled)."""
    audit = AuditLog(directory, sample_rate=1.0, rotate_bytes=1000, retain_files=0)
    inputs: dict[str, np.ndarray] = {}
    for number, (request_id, version, status, sampled) in enumerate(requests):
        x = np.full((1, 2), number, np.float32)
        request = InferRequest("m", "", "c", {}, [Tensor("X", "FP32", x.shape, x.tobytes(), x)], None)
        scores = Scores(
            np.array([0.5 + number / 1000]), np.array([number % 4]), np.array([float(number)]), None
        )
        guard = _guard(10.0)
        guard.version = version
        decision = decide(scores.confidence, scores.ood, [], guard.policy)
        record = scored_record(request, request_id, "m", guard, decision, scores, answered=status == 200)
        if sampled and audit.maybe_sample(request_id, request.inputs):
            record["sampled"] = True
            inputs[request_id] = x
        audit.record(record)
        if number % 3 == 0:  # a comparison record between them, as the shadow writes
            rows = rows_from_scores(scores, 10.0)
            counts = compare_rows(rows, rows)
            audit.record(
                comparison_record(
                    f"cmp-{number}", request_id, "shadow", "m", "2", version, scores, rows, counts
                )
            )
        audit.flush()
    audit.close()
    return inputs


def test_replay_takes_the_newest_sampled_requests_the_stable_answered(tmp_path: Path) -> None:
    plan = []
    for i in range(40):
        version = "2" if i % 5 == 0 else "1"  # canary traffic is not the stable's
        status = 422 if i % 7 == 0 else 200  # refusals are not replayed
        plan.append((f"r{i}", version, status, i % 4 != 1))  # unsampled requests have no payload
    inputs = _write_traffic(tmp_path, plan)
    assert len(rotated_files(tmp_path, "audit")) > 2 and len(rotated_files(tmp_path, "samples")) >= 2
    eligible = [rid for rid, version, status, sampled in plan if version == "1" and status == 200 and sampled]
    for limit in (0, 1, 5, len(eligible), len(eligible) + 10):
        items = replay_items(tmp_path, "1", limit)
        assert [item.record_id for item in items] == eligible[len(eligible) - min(limit, len(eligible)) :]
    for item in replay_items(tmp_path, "1", 100):
        (tensor,) = sample_inputs(item.sample)
        number = int(item.record_id[1:])
        assert tensor.raw == inputs[item.record_id].tobytes() and tensor.shape == (1, 2)
        assert item.baseline.predicted.tolist() == [number % 4]
        assert item.baseline.ood.tolist() == [number > 10]
    # the canary's own traffic, when it is the stable
    assert {item.record_id for item in replay_items(tmp_path, "2", 100)} == {
        rid for rid, version, status, sampled in plan if version == "2" and status == 200 and sampled
    }
    assert replay_items(tmp_path / "absent", "1", 10) == []


def test_a_sample_that_cannot_be_read_is_said_so() -> None:
    with pytest.raises(ValueError, match="no inputs"):
        sample_inputs({"id": "s"})
    with pytest.raises(ValueError, match="input not readable"):
        sample_inputs({"id": "s", "inputs": [{"name": "X", "datatype": "FP32", "shape": [1], "b64": "%%"}]})


# ----------------------------------------------------------------------------------- metrics


def _exposition(metrics: SidecarMetrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_comparison_counters_and_the_loaded_gauge_of_one_worker_and_of_several() -> None:
    workers = []
    for index in range(3):
        metrics = SidecarMetrics("m")
        rng = np.random.default_rng(index)
        for _ in range(4):
            metrics.count_comparison("3", "1", "shadow", compare_rows(_rows(rng, 5), _rows(rng, 5)))
        metrics.count_comparison("3", "1", "replay", compare_rows(_rows(rng, 2), _rows(rng, 2)))
        metrics.count_comparison_skipped("3", "shadow", "inflight_limit")
        loaded = index != 1  # worker 1 has not guarded version 3 yet
        metrics.version_roles = lambda loaded=loaded: [("1", "stable", True), ("3", "shadow", loaded)]
        workers.append((metrics, parse(_exposition(metrics))))
    one = workers[0][1]
    key = (
        "guardedmodel_comparison_rows_total",
        (("baseline", "1"), ("model", "m"), ("source", "shadow"), ("version", "3")),
    )
    assert one["guardedmodel_comparison_rows"].samples[key] == 20.0
    merged = merge([exposition for _, exposition in workers])
    assert merged["guardedmodel_comparison_rows"].samples[key] == 60.0
    total = ComparisonCounts()
    for metrics, _ in workers:
        total = total + metrics.comparisons[("3", "1", "shadow")]
    for field in (
        "agreements",
        "candidate_confidence",
        "baseline_confidence",
        "candidate_ood",
        "baseline_ood",
    ):
        sample = (f"guardedmodel_comparison_{field}_total", key[1])
        assert merged[f"guardedmodel_comparison_{field}"].samples[sample] == pytest.approx(
            getattr(total, field)
        )
    skipped = merged["guardedmodel_comparison_skipped"].samples
    assert (
        skipped[
            (
                "guardedmodel_comparison_skipped_total",
                (("model", "m"), ("reason", "inflight_limit"), ("source", "shadow"), ("version", "3")),
            )
        ]
        == 3.0
    )
    loaded_gauge = merged["guardedmodel_version_loaded"].samples

    def loaded(version: str, role: str) -> tuple[str, tuple[tuple[str, str], ...]]:
        return ("guardedmodel_version_loaded", (("model", "m"), ("role", role), ("version", version)))

    assert loaded_gauge[loaded("1", "stable")] == 1.0
    assert loaded_gauge[loaded("3", "shadow")] == 0.0  # not yet on every worker
