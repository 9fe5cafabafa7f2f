"""kopf wiring of the scaler: one task per GuardedModel whose replicas.max exceeds replicas.min.

The step runs under the core's per-model lock on the freshest copy of the object, like a rollout
step, so a scaling decision and a reconcile never interleave.
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
from .controller import ScaleController
from .policy import ScaleSpec

log = logging.getLogger(__name__)


def register(registry: kopf.OperatorRegistry) -> None:
    @kopf.on.startup(registry=registry)
    async def start_scaler(memo: Memo, **_: Any) -> None:
        config = memo.config
        controller = ScaleController(
            shared_prometheus(memo),
            status_patcher(memo),
            post_event,
            config.scale_interval_s,
            config.scale_down_window_s,
        )

        async def run(key: Key) -> float | None:
            verdict = await locked_step(memo, key, memo.scale_bodies.get(key), controller.step)
            if verdict is None:
                return None  # not scaled: sleep until the spec changes
            metrics.observe(key[0], key[1], verdict)
            if verdict.changed:
                log.info("%s/%s: %s", key[0], key[1], verdict.message)
            return config.scale_interval_s

        memo.scalers = ModelScheduler(run, label="scaling")
        memo.scale_controller = controller

    @kopf.on.cleanup(registry=registry)
    async def stop_scaler(memo: Memo, **_: Any) -> None:
        if memo.scalers is not None:
            await memo.scalers.close()
        await close_prometheus(memo)

    @kopf.on.event(GROUP, VERSION, PLURAL, id="scaling", registry=registry)
    async def on_model_scaling(event: kopf.RawEvent, body: kopf.Body, memo: Memo, **_: Any) -> None:
        key = key_of(body)
        if memo.scalers is None:
            return
        if event["type"] == "DELETED" or not ScaleSpec.from_body(body).enabled:
            if key in memo.scale_bodies:
                memo.scalers.forget(key)
                if memo.scale_controller is not None:
                    memo.scale_controller.forget(key)
                memo.scale_bodies.pop(key, None)
                metrics.forget(*key)
            return
        memo.scale_bodies[key] = slim(body)
        if key not in memo.scalers.tasks or memo.scalers.tasks[key].done():
            memo.scalers.touch(key)  # a status echo must not cut the interval short
