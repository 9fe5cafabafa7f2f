"""The rollout controller's metrics, on the operator's registry (served with the others)."""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge

from ..metrics import REGISTRY
from .verdict import ABORTED, INCONCLUSIVE, NO_DATA_HOLDS, Kind, Verdict

ROLLOUTS = Counter(
    "guardedmodel_operator_rollouts_total",
    "Rollout decisions that changed routing, by outcome.",
    ["outcome"],
    registry=REGISTRY,
)
ROLLBACKS = Counter(
    "guardedmodel_operator_rollbacks_total",
    "Rollbacks, per GuardedModel and the version rolled back.",
    ["namespace", "name", "version"],
    registry=REGISTRY,
)
CHECKS = Counter(
    "guardedmodel_operator_rollout_checks_total",
    "Metric checks of a canary or a stable version, by result (passed, failed, no_data).",
    ["result"],
    registry=REGISTRY,
)
STALE_DECISIONS = Counter(
    "guardedmodel_operator_rollout_stale_decisions_total",
    "Rollout decisions not written because the GuardedModel had changed since the copy they were "
    "taken on (the API server refused the write; the step is taken again on the newer copy).",
    registry=REGISTRY,
)
CANARY_WEIGHT = Gauge(
    "guardedmodel_operator_canary_weight",
    "Share of traffic (percent) routed to the canary, per GuardedModel.",
    ["namespace", "name"],
    registry=REGISTRY,
)

_OUTCOMES = {
    Kind.START_SHADOW: "shadowed",
    Kind.REJECT: "rejected",
    Kind.START_CANARY: "started",
    Kind.PROMOTE_STEP: "stepped",
    Kind.PROMOTE_FULL: "promoted",
    Kind.ROLLBACK: "rolled_back",
    Kind.DEGRADE: "degraded",
    Kind.ABORT: "aborted",
    Kind.RECOVER: "recovered",
}


def count(namespace: str, name: str, verdict: Verdict) -> None:
    # A person's abort is not a rollback the guard decided (GuardedModelRolledBack alerts on those).
    aborted = verdict.reason == ABORTED
    if verdict.kind in _OUTCOMES:
        ROLLOUTS.labels(outcome="aborted" if aborted else _OUTCOMES[verdict.kind]).inc()
    if verdict.kind is Kind.ROLLBACK and not aborted:
        ROLLBACKS.labels(namespace=namespace, name=name, version=str(verdict.version)).inc()
    if verdict.breaches:
        CHECKS.labels(result="failed").inc()
    elif verdict.checked:
        CHECKS.labels(result="passed").inc()
    elif verdict.reason in NO_DATA_HOLDS or verdict.reason == INCONCLUSIVE:
        CHECKS.labels(result="no_data").inc()
    if verdict.kind in (Kind.START_CANARY, Kind.PROMOTE_STEP):
        CANARY_WEIGHT.labels(namespace=namespace, name=name).set(verdict.weight or 0)
    elif verdict.kind in (Kind.PROMOTE_FULL, Kind.ROLLBACK, Kind.ABORT):
        CANARY_WEIGHT.labels(namespace=namespace, name=name).set(0)


def forget(namespace: str, name: str) -> None:
    """A deleted model leaves no stale per-model series behind."""
    with contextlib.suppress(KeyError):
        CANARY_WEIGHT.remove(namespace, name)
