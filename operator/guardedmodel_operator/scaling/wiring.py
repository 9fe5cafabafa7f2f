"""kopf wiring of the scaler: one task per GuardedModel whose replicas.max exceeds replicas.min.

The step runs under the core's per-model lock on the freshest copy of the object, like a rollout
step, so a scaling decision and a reconcile never interleave.
"""

from __future__ import annotations

import logging

import kopf

from .. import model_tasks
from ..keys import Key
from ..model_tasks import Memo
from ..scheduler import ModelScheduler
from . import metrics
from .controller import ScaleController
from .policy import ScaleSpec

log = logging.getLogger(__name__)


def start_scaler(memo: Memo) -> None:
    config = memo.config
    controller = ScaleController(
        model_tasks.shared_prometheus(memo),
        model_tasks.status_patcher(memo),
        model_tasks.post_event,
        config.scale_interval_s,
        config.scale_down_window_s,
    )

    async def run(key: Key) -> float | None:
        verdict = await model_tasks.locked_step(memo, key, memo.scale_bodies.get(key), controller.step)
        if verdict is None:
            return None  # not scaled: sleep until the spec changes
        metrics.observe(key[0], key[1], verdict)
        if verdict.changed:
            log.info("%s/%s: %s", key[0], key[1], verdict.message)
        return config.scale_interval_s

    memo.scalers = ModelScheduler(run, label="scaling")
    memo.scale_controller = controller


def on_model_scaling(
    memo: Memo, scalers: ModelScheduler, key: Key, event: kopf.RawEvent, body: kopf.Body
) -> None:
    if event["type"] == "DELETED" or not ScaleSpec.from_body(body).enabled:
        if key in memo.scale_bodies:
            scalers.forget(key)
            if memo.scale_controller is not None:
                memo.scale_controller.forget(key)
            memo.scale_bodies.pop(key, None)
            metrics.forget(*key)
        return
    memo.scale_bodies[key] = model_tasks.slim(body)
    scalers.ensure(key)


def register(registry: kopf.OperatorRegistry) -> None:
    model_tasks.register_model_tasks(
        registry, "scaling", start_scaler, lambda memo: memo.scalers, on_model_scaling
    )
