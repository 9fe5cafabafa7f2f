"""What the per-model background controllers (rollout, scaling, idle watch) share in their kopf wiring.

Each runs one task per GuardedModel that wakes up, takes the model's lock (the one the core's
reconcile takes), works on the freshest copy of the object and writes only its own status fields.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import kopf

from .config import OperatorConfig
from .events import Event
from .keys import Key, key_of
from .kube import KubeClient, PatchStatus
from .labels import GROUP, PLURAL, VERSION
from .prometheus import PrometheusSource, settings_from
from .scheduler import ModelScheduler

if TYPE_CHECKING:
    from .scaling.controller import ScaleController

Result = TypeVar("Result")


class Memo(Protocol):
    """What the controllers use of the state the handlers share (kopf's `memo`, the core's
    `handlers.OperatorState`)."""

    config: OperatorConfig
    client: KubeClient | None
    locks: dict[Key, asyncio.Lock]
    # The one Prometheus client, shared by rollout analysis and the scaler.
    prometheus: PrometheusSource | None
    rollouts: ModelScheduler | None
    rollout_bodies: dict[Key, dict[str, Any]]
    rollout_checks: dict[Key, dt.datetime]
    scalers: ModelScheduler | None
    scale_controller: ScaleController | None
    scale_bodies: dict[Key, dict[str, Any]]
    idle_watch: ModelScheduler | None
    idle_bodies: dict[Key, dict[str, Any]]

    def freshest(self, kind: str, namespace: str, name: str, watched: Mapping[str, Any] | None) -> Any: ...

    def remember(self, obj: Mapping[str, Any]) -> None: ...


def shared_prometheus(memo: Memo) -> PrometheusSource | None:
    """The operator's one Prometheus client, made on first use; None without a prometheusUrl."""
    if memo.prometheus is None:
        settings = settings_from(memo.config)
        if settings is not None:
            memo.prometheus = PrometheusSource(settings)
    return memo.prometheus


async def close_prometheus(memo: Memo) -> None:
    """Called by each controller's cleanup after its tasks stopped; closing twice is harmless."""
    if memo.prometheus is not None:
        await memo.prometheus.close()


def post_event(body: Mapping[str, Any], event: Event) -> None:
    kopf.event(dict(body), type=event.type, reason=event.reason, message=event.message)  # type: ignore[arg-type]


def status_patcher(memo: Memo) -> PatchStatus:
    async def patch_status(
        namespace: str, name: str, patch: Mapping[str, Any], resource_version: str | None = None
    ) -> dict[str, Any]:
        assert memo.client is not None, "the core's startup handler creates the client"
        written: dict[str, Any] = await memo.client.patch_status(namespace, name, patch, resource_version)
        return written

    return patch_status


def slim(body: Mapping[str, Any]) -> dict[str, Any]:
    """The object without managedFields: often the largest part of an object and read by nobody
    here, so dropping it keeps the indices small with 1000s of models."""
    meta = {k: v for k, v in body["metadata"].items() if k != "managedFields"}
    return {**dict(body), "metadata": meta}


async def locked_step(
    memo: Memo,
    key: Key,
    cached: Mapping[str, Any] | None,
    step: Callable[[Mapping[str, Any]], Awaitable[tuple[Result, dict[str, Any] | None]]],
) -> Result | None:
    """Run `step` on the freshest copy of the model under its lock; None when it is gone."""
    body = memo.freshest("GuardedModel", key[0], key[1], cached)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    async with memo.locks.setdefault(key, asyncio.Lock()):
        body = memo.freshest("GuardedModel", key[0], key[1], body)
        result, written = await step(body)
        if written is not None:
            memo.remember(written)
    return result


def register_model_tasks(
    registry: kopf.OperatorRegistry,
    label: str,
    start: Callable[[Memo], None],
    scheduler_of: Callable[[Memo], ModelScheduler | None],
    on_event: Callable[[Memo, ModelScheduler, Key, kopf.RawEvent, kopf.Body], None],
) -> None:
    """The kopf handlers every per-model controller needs: `start` makes its scheduler on startup,
    cleanup closes it and the shared Prometheus client, and a watch-event handler of its own (id
    `label`) passes each GuardedModel event to `on_event` once the scheduler exists."""

    @kopf.on.startup(id=f"{label}-startup", registry=registry)
    async def start_tasks(memo: Memo, **_: Any) -> None:
        start(memo)

    @kopf.on.cleanup(id=f"{label}-cleanup", registry=registry)
    async def stop_tasks(memo: Memo, **_: Any) -> None:
        scheduler = scheduler_of(memo)
        if scheduler is not None:
            await scheduler.close()
        await close_prometheus(memo)

    @kopf.on.event(GROUP, VERSION, PLURAL, id=label, registry=registry)
    async def on_model_event(event: kopf.RawEvent, body: kopf.Body, memo: Memo, **_: Any) -> None:
        scheduler = scheduler_of(memo)
        if scheduler is not None:
            on_event(memo, scheduler, key_of(body), event, body)
