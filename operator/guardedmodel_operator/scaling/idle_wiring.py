"""kopf wiring of the idle watch: one task per GuardedModel whose spec.scaling.idleAfter is not 0s.

The step runs under the core's per-model lock on the freshest copy of the object, like the
scaler's, so an Idle write and a reconcile never interleave (both write the conditions list).
"""

from __future__ import annotations

import logging

import kopf

from .. import model_tasks
from ..keys import Key
from ..model_tasks import Memo
from ..scheduler import ModelScheduler
from . import metrics
from .idle import IdleSpec, idle_condition
from .idle_controller import IdleController

log = logging.getLogger(__name__)


def start_idle_watch(memo: Memo) -> None:
    config = memo.config
    source = model_tasks.shared_prometheus(memo)
    if source is None:
        log.warning("no prometheusUrl: idle models are not detected (no Idle condition, gauge or alert)")
    controller = IdleController(source, model_tasks.status_patcher(memo), model_tasks.post_event)
    # Models whose last check had no data, so that an outage is logged once per model, not per check.
    holding: set[Key] = set()

    async def run(key: Key) -> float | None:
        outcome = await model_tasks.locked_step(memo, key, memo.idle_bodies.get(key), controller.step)
        if outcome is None or not outcome.enabled:
            holding.discard(key)
            return None  # gone or switched off: sleep until the spec changes
        if outcome.idle is not None:
            metrics.observe_idle(key[0], key[1], outcome.idle)
        no_data = outcome.held_for_lack_of_data
        if no_data and key not in holding and source is not None:
            log.warning("%s/%s: %s", key[0], key[1], outcome.message)
        if outcome.changed:
            log.info("%s/%s: %s", key[0], key[1], outcome.message)
        (holding.add if no_data else holding.discard)(key)
        return config.idle_interval_s

    memo.idle_watch = ModelScheduler(run, label="idle")


def _stop(memo: Memo, watch: ModelScheduler, key: Key) -> None:
    watch.forget(key)
    memo.idle_bodies.pop(key, None)
    metrics.forget_idle(*key)


def on_model_idle(memo: Memo, watch: ModelScheduler, key: Key, event: kopf.RawEvent, body: kopf.Body) -> None:
    if event["type"] == "DELETED":
        _stop(memo, watch, key)
        return
    try:
        spec = IdleSpec.from_body(body)
    except ValueError as error:
        log.warning("%s/%s: not watched for idleness: %s", key[0], key[1], error)
        _stop(memo, watch, key)
        return
    if not spec.enabled:
        if idle_condition(body.get("status") or {}) is None:
            _stop(memo, watch, key)
            return
        metrics.forget_idle(*key)
        memo.idle_bodies[key] = model_tasks.slim(body)
        watch.touch(key)  # one step removes the condition of a watch that was switched off
        return
    memo.idle_bodies[key] = model_tasks.slim(body)
    watch.ensure(key)


def register(registry: kopf.OperatorRegistry) -> None:
    model_tasks.register_model_tasks(
        registry, "idle", start_idle_watch, lambda memo: memo.idle_watch, on_model_idle
    )
