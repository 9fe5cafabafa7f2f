"""The audit and review-spool volumes run out of space under traffic (real tmpfs volumes, filled).

Chosen behaviour: degraded, not down. The sidecar keeps answering every request; what it cannot write
waits in memory (audit lines up to tuning.auditBufferBytes, then new lines are dropped and counted;
review items up to 16 MiB); ``guardedmodel_volume_full{volume}`` says which volume is full and the
alerts (GuardedModelVolumeFull, GuardedModelAuditDropping) match on a real Prometheus. A sidecar started
on the full volumes comes up and serves (no crash loop). Once space is freed, the waiting lines and items
are written, every review item reaches the webhook once, and the audit log plus the drop counter account
for every request.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from conftest import SidecarProcess
from review_harness import (
    FlakyWebhook,
    Sampler,
    Traffic,
    alert_states,
    metric,
    review_sidecar_config,
    watching_prometheus,
)
from sidecar_toy import MODEL, toy_data

from guardedmodel_sidecar.audit_file import iter_records
from guardedmodel_testground.prometheus import Prometheus
from guardedmodel_testground.sidecar_config import loopback_listen
from guardedmodel_testground.small_disk import small_disk
from guardedmodel_testground.triton import TritonServer

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

AUDIT_BUFFER = 64 * 1024  # tuning.auditBufferBytes: a second or two of this traffic
FULL_FOR_S = 8.0


def one_request(url: str) -> str:
    x = toy_data().sample(1, seed=11)[0]
    inp = httpclient.InferInput("INPUT", list(x.shape), "FP32")
    inp.set_data_from_numpy(np.ascontiguousarray(x))
    result = httpclient.InferenceServerClient(url).infer(MODEL, [inp])
    return str(result.get_response()["parameters"]["guard_decision"])


def test_full_audit_and_spool_volumes_degrade_then_recover_with_nothing_lost_silently(
    toy_repository: Path,
    toy_triton: TritonServer,
    sidecar_factory: Callable[..., SidecarProcess],
    prometheus_factory: Callable[..., Prometheus],
    tmp_path: Path,
) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting the tmpfs volumes needs root (CI runs this test as root)")
    with contextlib.ExitStack() as stack:
        audit_disk = stack.enter_context(small_disk(tmp_path / "audit-volume", "8m"))
        spool_disk = stack.enter_context(small_disk(tmp_path / "spool-volume", "4m"))
        webhook = FlakyWebhook().start()
        stack.callback(webhook.stop)
        tuning = {"auditBufferBytes": AUDIT_BUFFER, "reviewRetryInterval": "0.5s"}
        config = review_sidecar_config(toy_triton, toy_repository, tmp_path, webhook.url, tuning)
        config["auditDir"] = str(audit_disk.root / "audit")
        config["spoolDir"] = str(spool_disk.root / "spool")
        sidecar = sidecar_factory(config)
        pid = sidecar.popen.pid if sidecar.popen else 0
        prometheus = watching_prometheus(prometheus_factory, sidecar)
        traffic = Traffic(sidecar.http_url, review_rps=4.0).start()
        stack.callback(traffic.stop)

        def probe() -> dict[str, Any]:
            text = sidecar.metrics()
            return {
                "at": time.monotonic(),
                "audit_full": metric(text, "guardedmodel_volume_full", volume="audit"),
                "spool_full": metric(text, "guardedmodel_volume_full", volume="review_spool"),
                "pending": metric(text, "guardedmodel_audit_pending_lines", stream="records"),
                "dropped": metric(
                    text, "guardedmodel_audit_records_dropped_total", stream="records", reason="buffer_full"
                ),
                "errors": metric(text, "guardedmodel_audit_write_errors_total", stream="records"),
                "review_waiting": metric(text, "guardedmodel_review_spool_items"),
                "ready": sidecar.status("/v2/health/ready"),
            }

        with Sampler(probe, every_s=0.2) as sampler:
            time.sleep(2)
            # The webhook refuses while the volumes are full: a delivered item's file would free its
            # pages, the next item would fit, and the spool's flag would come and go with deliveries.
            webhook.mode = "error"
            audit_disk.fill()
            spool_disk.fill()
            full_at = time.monotonic()
            assert audit_disk.is_full() and spool_disk.is_full()
            wait_until = full_at + FULL_FOR_S
            # A sidecar that starts on the full volumes comes up and serves (its own directories there).
            second_config = {
                **config,
                "listen": loopback_listen(),
                "auditDir": str(audit_disk.root / "second-audit"),
                "spoolDir": str(spool_disk.root / "second-spool"),
            }
            second = sidecar_factory(second_config)
            assert one_request(second.http_url) == "accept"
            assert second.stop() == 0
            time.sleep(max(0.0, wait_until - time.monotonic()))
            while_full = alert_states(prometheus, "GuardedModelVolumeFull", by="volume")
            dropping = alert_states(prometheus, "GuardedModelAuditDropping", by="reason")
            during = probe()

            audit_disk.free()
            spool_disk.free()
            webhook.mode = "ok"
            freed_at = time.monotonic()
            recovered_s = 0.0
            while True:
                now = probe()
                if not now["audit_full"] and not now["spool_full"] and now["pending"] < 200:
                    recovered_s = time.monotonic() - freed_at
                    break
                assert time.monotonic() - freed_at < 30, f"not recovered 30 s after space was freed: {now}"
                time.sleep(0.1)
            time.sleep(2)
            traffic.pause()
            deadline = time.monotonic() + 30
            while (now := probe())["pending"] or now["review_waiting"]:
                assert time.monotonic() < deadline, f"lines or items still waiting: {now}"
                time.sleep(0.1)
            time.sleep(2.5)  # scrape and evaluate once more: the full-volume alert resolves
            after_free = alert_states(prometheus, "GuardedModelVolumeFull", by="volume")
        traffic.stop()

        # Degraded, not down: every request answered, ready all along, the same process.
        assert traffic.failures == [], traffic.failures[:5]
        assert set(sampler.values("ready")) == {200}
        assert sidecar.popen is not None and sidecar.popen.poll() is None and sidecar.popen.pid == pid
        # Flagged: both volumes full, write errors and drops counted, the alerts match.
        assert during["audit_full"] == 1 and during["spool_full"] == 1, during
        assert during["errors"] > 0 and during["dropped"] > 0 and during["review_waiting"] > 0, during
        assert while_full == {"audit": "pending", "review_spool": "pending"}  # fires after 1 minute
        assert dropping == {"buffer_full": "firing"}
        assert after_free == {}
        first_flag = sampler.first(lambda s: s["audit_full"] == 1 and s["spool_full"] == 1)
        assert first_flag is not None and first_flag >= full_at

        # Nothing lost silently: the audit log and the drop counter add up to every request answered.
        final = sidecar.metrics()
        answered = sum(traffic.decisions.values())
        records = sum(1 for _ in iter_records(sidecar.audit_dir))
        dropped = metric(
            final, "guardedmodel_audit_records_dropped_total", stream="records", reason="buffer_full"
        )
        assert records == metric(final, "guardedmodel_audit_records_total")
        assert records + dropped == answered, (records, dropped, answered)
        # Every review item waited in memory and reached the webhook once.
        kept = webhook.kept()
        assert len(kept) == traffic.decisions["review"] and set(kept.values()) == {1}
        assert metric(final, "guardedmodel_review_items_total", outcome="write_failed") > 0
        assert metric(final, "guardedmodel_review_items_total", outcome="queue_full") == 0
        peak_waiting = max(sampler.values("review_waiting"))
        print(
            f"\ndisk full {FULL_FOR_S:.0f} s: {answered} requests answered, 0 failed; audit "
            f"{records} records written, {dropped:.0f} dropped (counted, buffer {AUDIT_BUFFER // 1024} KiB), "
            f"{during['errors']:.0f} failed writes; {len(kept)} review items delivered once "
            f"(peak {peak_waiting:.0f} waiting in memory); flagged {first_flag - full_at:.1f} s after "
            f"the volumes filled; recovered {recovered_s:.1f} s after space was freed"
        )
