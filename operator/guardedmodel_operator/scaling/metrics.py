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


def observe(namespace: str, name: str, verdict: ScaleVerdict) -> None:
    DESIRED.labels(namespace=namespace, name=name).set(verdict.replicas)
    if verdict.changed and verdict.reason in (SCALED_UP, SCALED_DOWN):
        SCALINGS.labels(direction="up" if verdict.reason == SCALED_UP else "down").inc()


def forget(namespace: str, name: str) -> None:
    with contextlib.suppress(KeyError):
        DESIRED.remove(namespace, name)
