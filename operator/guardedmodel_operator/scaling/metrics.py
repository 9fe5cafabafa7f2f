"""The scaler's metrics, on the operator's registry (served with the others)."""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge

from ..metrics import REGISTRY
from .policy import SCALED_DOWN, SCALED_UP, ScaleVerdict

SCALINGS = Counter(
    "guardedmodel_operator_scalings_total",
    "Replica count changes made by the scaler, by direction (up, down).",
    ["direction"],
    registry=REGISTRY,
)
DESIRED = Gauge(
    "guardedmodel_operator_desired_replicas",
    "Replicas the scaler asks for, per GuardedModel.",
    ["namespace", "name"],
    registry=REGISTRY,
)


SATURATED = Gauge(
    "guardedmodel_operator_scaling_saturated",
    "1 while a GuardedModel runs spec.replicas.max and Triton queue time is still above target.",
    ["namespace", "name"],
    registry=REGISTRY,
)

IDLE = Gauge(
    "guardedmodel_operator_model_idle",
    "1 while a GuardedModel has served no request for spec.scaling.idleAfter (its Idle condition is "
    "True), else 0; absent for models with idleAfter 0s.",
    ["namespace", "name"],
    registry=REGISTRY,
)


def observe(namespace: str, name: str, verdict: ScaleVerdict) -> None:
    DESIRED.labels(namespace=namespace, name=name).set(verdict.replicas)
    SATURATED.labels(namespace=namespace, name=name).set(1.0 if verdict.saturated else 0.0)
    if verdict.changed and verdict.reason in (SCALED_UP, SCALED_DOWN):
        SCALINGS.labels(direction="up" if verdict.reason == SCALED_UP else "down").inc()


def observe_idle(namespace: str, name: str, idle: bool) -> None:
    IDLE.labels(namespace=namespace, name=name).set(1.0 if idle else 0.0)


def forget(namespace: str, name: str) -> None:
    _remove((DESIRED, SATURATED), namespace, name)


def forget_idle(namespace: str, name: str) -> None:
    _remove((IDLE,), namespace, name)


def _remove(gauges: tuple[Gauge, ...], namespace: str, name: str) -> None:
    for gauge in gauges:
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, name)
