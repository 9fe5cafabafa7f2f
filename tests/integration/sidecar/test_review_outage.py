"""A review webhook that fails for minutes under load, compressed: 500s, then answers slower than the
sidecar waits, then gone, with a sidecar restart in the middle, then back.

The real sidecar in front of a real Triton spools every review item durably within its bound
(reviewSpoolMaxItems), the spool-filling alert fires on a real Prometheus before the bound, items
beyond the bound are counted and their audit records say so, and once the webhook is back every spooled
item reaches it, each keyed by its id (the Idempotency-Key header): a duplicate only where a delivery
was kept but answered too late (at least once), nothing lost across the restart.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import SidecarProcess
from review_harness import (
    FlakyWebhook,
    Sampler,
    Traffic,
    alert_states,
    metric,
    review_outcomes,
    review_sidecar_config,
    watching_prometheus,
)

from guardedmodel_testground.prometheus import Prometheus
from guardedmodel_testground.triton import TritonServer

pytestmark = [pytest.mark.integration, pytest.mark.reliability]


@dataclass(frozen=True)
class Outage:
    bound: int  # reviewSpoolMaxItems
    review_rps: float  # review items per second
    phase_s: float  # how long the webhook fails with 500s, then answers too slowly


# Reduced (CI): the filling alert at 96 items, refusals from 120, 4 s apart. Full: minutes of outage,
# the last fifth of the spool filling in 24 s.
OUTAGES = [
    pytest.param(Outage(bound=120, review_rps=6.0, phase_s=4.0), id="reduced"),
    pytest.param(Outage(bound=1200, review_rps=10.0, phase_s=30.0), id="full", marks=pytest.mark.slow),
]
TIMEOUT_S = 0.5  # reviewTimeout; the slow webhook answers after twice that


def wait_until(what: str, predicate: Callable[[], bool], timeout: float) -> float:
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, f"{what}: not reached in {timeout:.0f} s"
        time.sleep(0.05)
    return time.monotonic() - start


def alert_state(prometheus: Prometheus, name: str) -> str:
    return alert_states(prometheus, name).get("", "")


@pytest.mark.parametrize("outage", OUTAGES)
def test_review_items_survive_an_outage_and_a_restart_and_arrive_by_id(
    outage: Outage,
    toy_repository: Path,
    toy_triton: TritonServer,
    sidecar_factory: Callable[..., SidecarProcess],
    prometheus_factory: Callable[..., Prometheus],
    tmp_path: Path,
) -> None:
    webhook = FlakyWebhook(slow_s=2 * TIMEOUT_S).start()
    tuning = {
        "reviewRetries": 2,
        "reviewRetryInterval": "0.5s",
        "reviewTimeout": f"{TIMEOUT_S}s",
        "reviewSpoolMaxItems": outage.bound,
    }
    config = review_sidecar_config(toy_triton, toy_repository, tmp_path, webhook.url, tuning)
    sidecar = sidecar_factory(config)
    prometheus = watching_prometheus(prometheus_factory, sidecar)
    traffic = Traffic(sidecar.http_url, review_rps=outage.review_rps)
    spool = sidecar.spool_dir
    refused_before_restart = 0.0

    def probe() -> dict[str, Any]:
        sample: dict[str, Any] = {"at": time.monotonic(), "files": sum(1 for p in spool.glob("*.json"))}
        text = sidecar.metrics()
        sample["ratio"] = metric(text, "guardedmodel_review_spool_fill_ratio")
        sample["depth"] = metric(text, "guardedmodel_review_spool_items")
        sample["refused"] = refused_before_restart + metric(
            text, "guardedmodel_review_items_total", outcome="spool_full"
        )
        sample["filling_alert"] = alert_state(prometheus, "GuardedModelReviewSpoolFilling")
        return sample

    try:
        with Sampler(probe, every_s=0.2) as sampler:
            traffic.start()
            time.sleep(2)  # the webhook takes items as they come
            assert webhook.kept(), "no review item reached the webhook while it was fine"
            webhook.set_mode("error")
            time.sleep(outage.phase_s)
            webhook.set_mode("slow")
            time.sleep(outage.phase_s)
            webhook.set_mode("down")
            time.sleep(1)

            # A restart (SIGTERM, as Kubernetes sends) while the webhook is down and the spool holds
            # items: the next sidecar sends what the last one spooled.
            traffic.pause()
            refused_before_restart = metric(
                sidecar.metrics(), "guardedmodel_review_items_total", outcome="spool_full"
            )
            assert sidecar.stop() == 0
            spooled_at_restart = sum(1 for _ in spool.glob("*.json"))
            assert spooled_at_restart > 0
            sidecar = sidecar_factory(config)
            traffic.resume()

            fill_time = wait_until(
                "items refused at the bound",
                lambda: sampler.first(lambda s: s["refused"] >= 6) is not None,
                outage.bound / outage.review_rps + 30,
            )
            time.sleep(1)
            webhook.set_mode("ok")
            back_at = time.monotonic()
            time.sleep(3)  # traffic goes on while the spool drains
            traffic.pause()
            wait_until("the spool drained", lambda: not any(spool.glob("*.json")), 60)
            time.sleep(2.5)  # scrape and evaluate: the filling alert resolves
            resolved = alert_state(prometheus, "GuardedModelReviewSpoolFilling") == ""
            dropped_alert = alert_state(prometheus, "GuardedModelReviewItemsDropped")
        traffic.stop()

        # Every request was answered while the webhook failed; no sidecar error.
        assert traffic.failures == [], traffic.failures[:5]
        assert set(traffic.decisions) <= {"accept", "review"} and traffic.decisions["review"] > 0

        # What the audit log says became of each item, across both runs.
        outcomes = review_outcomes(sidecar.audit_dir)
        spooled, refused = set(outcomes.get("spooled", [])), set(outcomes.get("spool_full", []))
        assert set(outcomes) <= {"spooled", "spool_full"}, {k: len(v) for k, v in outcomes.items()}
        assert len(spooled) == len(outcomes["spooled"]) and refused, "ids must be unique; the bound was hit"
        final = sidecar.metrics()
        refused_counted = refused_before_restart + metric(
            final, "guardedmodel_review_items_total", outcome="spool_full"
        )
        assert refused_counted == len(refused)  # every item beyond the bound is counted

        # Every spooled item reached the webhook, none that was refused, each keyed by its id.
        kept = webhook.kept()
        assert set(kept) == spooled
        assert all(d.key == d.id for d in webhook.deliveries)
        # A duplicate only where an earlier delivery was kept but answered after the timeout.
        late = {d.id for d in webhook.deliveries if d.mode == "slow"}
        duplicated = {item for item, n in kept.items() if n > 1}
        assert duplicated <= late, duplicated - late
        assert late, "the slow webhook never kept an item: the at-least-once case went untested"

        # The spool stayed within its bound, and the filling alert fired before the first refusal.
        peak_files = max(sampler.values("files"))
        peak_depth = max(sampler.values("depth"))
        assert peak_files <= outage.bound and peak_depth <= outage.bound and peak_files >= outage.bound - 2
        first_refusal = sampler.first(lambda s: s["refused"] > 0)
        crossed = sampler.first(lambda s: s["ratio"] >= 0.8)
        fired = sampler.first(lambda s: s["filling_alert"] == "firing")
        assert first_refusal is not None and crossed is not None and fired is not None
        assert crossed < first_refusal and fired < first_refusal, (crossed, fired, first_refusal)
        # The backlog is sent while new items keep coming: at most one waits at a time.
        drained = sampler.first(lambda s: s["files"] <= 1 and s["ratio"] < 0.05 and s["at"] > back_at)
        assert drained is not None
        assert resolved, "GuardedModelReviewSpoolFilling still active after the spool drained"
        assert dropped_alert == "firing"  # GuardedModelReviewItemsDropped, for the refused items
        print(
            f"\nreview outage: {len(spooled)} spooled, {len(refused)} refused at the bound (counted "
            f"{refused_counted:.0f}), {sum(kept.values())} deliveries kept, {len(duplicated)} ids "
            f"duplicated ({sum(kept.values()) - len(kept)} extra copies, all answered late); "
            f"{spooled_at_restart} spooled across the restart; peak {peak_files} files / bound {outage.bound}; "
            f"filling alert {first_refusal - fired:.1f} s before the first refusal (ratio >= 0.8 "
            f"{first_refusal - crossed:.1f} s before); bound reached {fill_time:.1f} s after the restart; "
            f"backlog drained {drained - back_at:.1f} s after the webhook returned, under traffic; "
            f"{webhook.refused} attempts answered 500; "
            f"{sum(traffic.decisions.values())} requests"
        )
    finally:
        traffic.stop()
        webhook.stop()
