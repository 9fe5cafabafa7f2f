"""The operator's own Prometheus metrics (not the models'; the sidecars export those)."""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)

RECONCILES = Counter(
    "guardedmodel_operator_reconciles_total",
    "Reconciles of a GuardedModel, by what triggered it and the result (success, error, or conflict: the "
    "model changed while reconciling, so the next reconcile reads the newer copy).",
    ["trigger", "result"],
    registry=REGISTRY,
)
RECONCILE_SECONDS = Histogram(
    "guardedmodel_operator_reconcile_duration_seconds",
    "Time to reconcile one GuardedModel, API writes included.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
RECONCILE_ERRORS = Counter(
    "guardedmodel_operator_reconcile_errors_total",
    "Reconciles that failed, by error type.",
    ["error"],
    registry=REGISTRY,
)
WRITES = Counter(
    "guardedmodel_operator_writes_total",
    "Objects the operator wrote, by kind and action (create, update, restore, status).",
    ["kind", "action"],
    registry=REGISTRY,
)
COALESCED = Counter(
    "guardedmodel_operator_coalesced_triggers_total",
    "Triggers dropped because a reconcile of the same model was already queued (it covers them).",
    registry=REGISTRY,
)
RESYNCS = Counter(
    "guardedmodel_operator_resyncs_total",
    "GuardedModels reconciled by the periodic resync: watch_behind (a spec generation the watch never "
    "delivered across two listings: a lost watch event), not_converged (reconciles since have failed) or "
    "rolling_out (routine: pods not rolled out whose init container fetches the model, looked at again).",
    ["reason"],
    registry=REGISTRY,
)
MODELS = Gauge(
    "guardedmodel_operator_models",
    "GuardedModels the operator currently tracks, by phase.",
    ["phase"],
    registry=REGISTRY,
)

# Per model, so that an alert can name the model that is unhealthy (MODELS only counts them).
MODEL_PHASE = Gauge(
    "guardedmodel_operator_model_phase",
    "1 for each GuardedModel's current phase: one series per model, labelled with its namespace and name.",
    ["namespace", "name", "phase"],
    registry=REGISTRY,
)


def publish_model_phase(namespace: str, name: str, old: str | None, new: str | None) -> None:
    """Move a model's phase series from `old` to `new` (None: the model is gone)."""
    if old == new:
        return
    if old is not None:
        with contextlib.suppress(KeyError):
            MODEL_PHASE.remove(namespace, name, old)
    if new is not None:
        MODEL_PHASE.labels(namespace=namespace, name=name, phase=new).set(1)


def serve(host: str, port: int) -> None:
    if port:
        start_http_server(port, addr=host, registry=REGISTRY)
