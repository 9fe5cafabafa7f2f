"""kopf wiring of the rollout controller, kept apart from the core's handlers.

Its own watch-event handler on GuardedModels wakes the model's rollout task; the
step itself runs under the core's per-model lock and reads the freshest copy of
the object, so the core's reconcile and a rollout step never interleave. Only the
Prometheus queries run before the lock is taken (`rollout_step`).
"""

from __future__ import annotations

import logging
from functools import partial

import kopf

from .. import model_tasks
from ..keys import Key
from ..model_tasks import Memo
from ..scheduler import ModelScheduler
from . import metrics
from .controller import RolloutController

log = logging.getLogger(__name__)


def start_rollouts(memo: Memo) -> None:
    source = model_tasks.shared_prometheus(memo)
    if source is None:
        log.warning("no prometheusUrl: canaries will hold for lack of metrics (strategy instant still works)")

    controller = RolloutController(
        source, model_tasks.status_patcher(memo), model_tasks.post_event, last_checks=memo.rollout_checks
    )

    async def run(key: Key) -> float | None:
        return await rollout_step(memo, controller, key)

    memo.rollouts = ModelScheduler(run, label="rollout")


async def rollout_step(memo: Memo, controller: RolloutController, key: Key) -> float | None:
    """One step of one model: its metrics read first, without its lock (a hung Prometheus must not
    hold up the core's reconcile of the model), then the decision and the write under the lock,
    on the freshest copy. Returns when to step again (None: at the next watch event)."""
    cached = memo.rollout_bodies.get(key)
    body = memo.freshest("GuardedModel", key[0], key[1], cached)
    measured = None if body is None else await controller.measure(body)
    result = await model_tasks.locked_step(memo, key, cached, partial(controller.step, measured=measured))
    return None if result is None else result.next_in_s


def on_model_rollout(
    memo: Memo, rollouts: ModelScheduler, key: Key, event: kopf.RawEvent, body: kopf.Body
) -> None:
    if event["type"] == "DELETED":
        rollouts.forget(key)
        memo.rollout_bodies.pop(key, None)
        memo.rollout_checks.pop(key, None)
        metrics.forget(*key)
        return
    memo.rollout_bodies[key] = model_tasks.slim(body)
    rollouts.touch(key)


def register(registry: kopf.OperatorRegistry) -> None:
    """Attach the rollout handlers. `memo` is the core's OperatorState; its
    `rollouts` field holds the scheduler."""
    model_tasks.register_model_tasks(
        registry, "rollout", start_rollouts, lambda memo: memo.rollouts, on_model_rollout
    )
