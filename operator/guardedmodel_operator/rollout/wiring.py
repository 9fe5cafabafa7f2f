"""kopf wiring of the rollout controller, kept apart from the core's handlers.

Its own watch-event handler on GuardedModels wakes the model's rollout task; the
step itself runs under the core's per-model lock and reads the freshest copy of
the object, so the core's reconcile and a rollout step never interleave.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from ..labels import GROUP, PLURAL, VERSION
from ..model_tasks import locked_step, post_event, slim, status_patcher
from . import metrics
from .controller import Key, RolloutController, RolloutScheduler
from .metrics_source import PrometheusSettings, PrometheusSource

log = logging.getLogger(__name__)


def settings_from(config: Any) -> PrometheusSettings | None:
    url = getattr(config, "prometheus_url", "")
    if not url:
        return None
    return PrometheusSettings(
        url=url,
        namespace_label=config.prometheus_namespace_label,
        name_label=config.prometheus_name_label,
        timeout_s=config.request_timeout_s,
        min_window_s=config.rollout_min_window_s,
    )


def prometheus_source(memo: Any) -> PrometheusSource | None:
    """The operator's one Prometheus client: canary analysis and the scaler share its session."""
    if memo.prometheus is None:
        settings = settings_from(memo.config)
        if settings is not None:
            memo.prometheus = PrometheusSource(settings)
    source: PrometheusSource | None = memo.prometheus
    return source


async def close_prometheus(memo: Any) -> None:
    """Called by each controller's cleanup after its tasks stopped; closing twice is harmless."""
    if memo.prometheus is not None:
        await memo.prometheus.close()


def register(registry: kopf.OperatorRegistry) -> None:
    """Attach the rollout handlers. `memo` is the core's OperatorState; its
    `rollouts` field holds the scheduler."""

    @kopf.on.startup(registry=registry)
    async def start_rollouts(memo: Any, **_: Any) -> None:
        source = prometheus_source(memo)
        if source is None:
            log.warning(
                "no prometheusUrl: canaries will hold for lack of metrics (strategy instant still works)"
            )

        controller = RolloutController(source, status_patcher(memo), post_event)

        async def run(key: Key) -> float | None:
            result = await locked_step(memo, key, memo.rollout_bodies.get(key), controller.step)
            return None if result is None else result.next_in_s

        memo.rollouts = RolloutScheduler(run)

    @kopf.on.cleanup(registry=registry)
    async def stop_rollouts(memo: Any, **_: Any) -> None:
        if memo.rollouts is not None:
            await memo.rollouts.close()
        await close_prometheus(memo)

    @kopf.on.event(GROUP, VERSION, PLURAL, id="rollout", registry=registry)
    async def on_model_rollout(event: kopf.RawEvent, body: kopf.Body, memo: Any, **_: Any) -> None:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        if memo.rollouts is None:
            return
        if event["type"] == "DELETED":
            memo.rollouts.forget(key)
            memo.rollout_bodies.pop(key, None)
            metrics.forget(*key)
            return
        memo.rollout_bodies[key] = slim(body)
        memo.rollouts.touch(key)
