"""The routing watch's retry delays (doubling to a cap, spread over the upper half of each span) and
the metrics that say whether a sidecar follows its routing or serves on the last one it had."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from guardedmodel_sidecar.guard.drift_decision import DriftPolicy
from guardedmodel_sidecar.metrics import SidecarMetrics
from guardedmodel_sidecar.metrics_aggregate import merge, parse
from guardedmodel_sidecar.status_watch import retry_delay


@pytest.mark.parametrize("draw", [0.0, 0.3, 0.999])
def test_retry_delay_doubles_up_to_the_cap_within_the_upper_half(draw: float) -> None:
    first_s, max_s = 0.5, 5.0
    delays = [retry_delay(n, first_s, max_s, lambda: draw) for n in range(1, 12)]
    for n, delay in enumerate(delays, start=1):
        ceiling = min(max_s, first_s * 2 ** (n - 1))
        assert ceiling / 2 <= delay <= ceiling
    assert delays == sorted(delays)  # never shorter after another failure (one draw)
    assert delays[-1] == pytest.approx(max_s * (0.5 + 0.5 * draw))


def test_retry_delays_of_pods_that_failed_together_spread_out() -> None:
    draws = iter([i / 10 for i in range(10)])
    delays = {round(retry_delay(4, 0.5, 5.0, lambda: next(draws)), 3) for _ in range(10)}
    assert len(delays) == 10 and min(delays) == 2.0 and max(delays) < 4.0


def exposition(watch: tuple[bool, int] | None) -> str:
    metrics = SidecarMetrics("toy", DriftPolicy())
    metrics.routing_watch = lambda: watch
    return generate_latest(metrics.registry).decode()


@pytest.mark.parametrize("watch", [None, (True, 0), (False, 3), (True, 7)])
def test_the_routing_watch_is_exported_only_where_there_is_one(watch: tuple[bool, int] | None) -> None:
    families = {f.name: f for f in text_string_to_metric_families(exposition(watch))}
    if watch is None:  # standalone: routing from the config file, nothing to follow
        assert "guardedmodel_routing_watch_connected" not in families
        assert "guardedmodel_routing_watch_failures" not in families
        return
    connected, failures = watch
    assert families["guardedmodel_routing_watch_connected"].samples[0].value == float(connected)
    assert families["guardedmodel_routing_watch_failures"].samples[0].value == failures


@pytest.mark.parametrize(
    ("workers", "connected"),
    [([(True, 0), (True, 2)], 1.0), ([(True, 1), (False, 4)], 0.0), ([(False, 1), (False, 1)], 0.0)],
)
def test_a_pod_follows_its_routing_only_when_every_worker_does(
    workers: list[tuple[bool, int]], connected: float
) -> None:
    merged = merge([parse(exposition(w)) for w in workers])
    samples = merged["guardedmodel_routing_watch_connected"].samples
    assert list(samples.values()) == [connected]
    failures = merged["guardedmodel_routing_watch_failures"].samples
    assert sum(v for (name, _), v in failures.items() if name.endswith("_total")) == sum(
        n for _, n in workers
    )
