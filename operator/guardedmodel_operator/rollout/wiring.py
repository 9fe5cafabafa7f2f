"""kopf wiring of the rollout controller, kept apart from the core's handlers.

Its own watch-event handler on GuardedModels wakes the model's rollout task; the
step itself runs under the core's per-model lock and reads the freshest copy of
the object, so the core's reconcile and a rollout step never interleave.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from ..keys import Key, key_of
from ..labels import GROUP, PLURAL, VERSION
from ..model_tasks import (
    Memo,
    close_prometheus,
    locked_step,
    post_event,
    shared_prometheus,
    slim,
    status_patcher,
)
from ..scheduler import ModelScheduler
from . import metrics
from .controller import RolloutController

log = logging.getLogger(__name__)


def register(registry: kopf.OperatorRegistry) -> None:
    """Attach the rollout handlers. `memo` is the core's OperatorState; its
    `rollouts` field holds the scheduler."""

    @kopf.on.startup(registry=registry)
    async def start_rollouts(memo: Memo, **_: Any) -> None:
        source = shared_prometheus(memo)
        if source is None:
            log.warning(
                "no prometheusUrl: canaries will hold for lack of metrics (strategy instant still works)"
            )

        controller = RolloutController(source, status_patcher(memo), post_event)

        async def run(key: Key) -> float | None:
            result = await locked_step(memo, key, memo.rollout_bodies.get(key), controller.step)
            return None if result is None else result.next_in_s

        memo.rollouts = ModelScheduler(run, label="rollout")

    @kopf.on.cleanup(registry=registry)
    async def stop_rollouts(memo: Memo, **_: Any) -> None:
        if memo.rollouts is not None:
            await memo.rollouts.close()
        await close_prometheus(memo)

    @kopf.on.event(GROUP, VERSION, PLURAL, id="rollout", registry=registry)
    async def on_model_rollout(event: kopf.RawEvent, body: kopf.Body, memo: Memo, **_: Any) -> None:
        key = key_of(body)
        if memo.rollouts is None:
            return
        if event["type"] == "DELETED":
            memo.rollouts.forget(key)
            memo.rollout_bodies.pop(key, None)
            metrics.forget(*key)
            return
        memo.rollout_bodies[key] = slim(body)
        memo.rollouts.touch(key)
