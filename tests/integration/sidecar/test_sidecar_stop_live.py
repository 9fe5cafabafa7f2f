"""The sidecar process stopped under HTTP and gRPC traffic, as a kubelet stops it: SIGTERM (a graceful
stop, pod deletion or rollout), or SIGKILL (the grace period ran out, or the OOM killer).

SIGTERM: every call already in the sidecar is answered 200; from the stop on, new connections are
refused and new calls get 503 / UNAVAILABLE or a closed connection, never a hang or a 500; the process
exits 0; every answered call has its audit record on disk (nothing lost on a graceful stop); review items
spooled before the stop stay on disk and are delivered by the next sidecar.

SIGKILL: what is lost is measured, not hoped for: audit records of answered calls still in the memory
buffer (at most one flush interval, 0.1 s, of traffic plus the write in flight), and review items not
yet spooled. Spooled items survive.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from conftest import SidecarProcess, WebhookReceiver, sidecar_config
from fault_traffic import Outcome, Traffic
from sidecar_toy import toy_data

from guardedmodel_sidecar.audit import AuditLog
from guardedmodel_sidecar.audit_file import iter_lines, iter_records
from guardedmodel_sidecar.review_spool import list_spool
from guardedmodel_testground.triton import TritonServer

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

FLUSH_INTERVAL_S = AuditLog.__init__.__kwdefaults__["flush_interval"]  # type: ignore[index]
LOAD_S = 3.0  # traffic before the signal
HOLD_S = 0.4


def review_input() -> np.ndarray:
    """One row the model is sure of and one it is not: every call makes one review item."""
    data = toy_data()
    return np.concatenate([data.sample(1, seed=41)[0], data.ambiguous(1, seed=42)])


@pytest.fixture
def stack(
    toy_triton: TritonServer,
    toy_repository: Path,
    tmp_path: Path,
    sidecar_factory: Callable[..., SidecarProcess],
    webhook_receiver: Callable[..., WebhookReceiver],
) -> tuple[TritonServer, SidecarProcess, WebhookReceiver, Callable[..., SidecarProcess]]:
    """Triton, a sidecar whose review webhook is down (items stay spooled), the webhook, and the
    factory to start the next sidecar with."""
    receiver = webhook_receiver(fail_first=10**9)
    review = {"reviewBelow": 0.8, "review": {"webhook": receiver.url, "maxFraction": 1.0}}
    config = sidecar_config(toy_triton, toy_repository, tmp_path, spec={"confidence": review})
    return toy_triton, sidecar_factory(config), receiver, sidecar_factory


def under_load(
    sidecar: SidecarProcess, sig: signal.Signals, prefix: str, hold: TritonServer | None = None
) -> tuple[Traffic, float, int]:
    """Traffic for LOAD_S, then ``sig`` to the sidecar; returns the traffic, when the signal went,
    and the exit code. ``hold``: Triton is paused for HOLD_S around the signal, so that every caller
    has a call in flight when it comes (briefly: the liveness watch abandons calls after 1 s)."""
    traffic = Traffic(sidecar.http_url, sidecar.grpc_url, review_input(), prefix=prefix).start()
    try:
        time.sleep(LOAD_S)
        assert sum(o.ok for o in traffic.snapshot()) > 50, traffic.snapshot()[-5:]
        assert sidecar.popen is not None
        if hold is not None:
            hold.pause()
            time.sleep(HOLD_S / 2)
        signalled_at = time.monotonic()
        sidecar.popen.send_signal(sig)
        if hold is not None:
            time.sleep(HOLD_S / 2)
            hold.resume()
        code = sidecar.popen.wait(timeout=30)
        time.sleep(0.3)  # callers see the closed ports
    finally:
        traffic.stop(timeout_s=15)
    return traffic, signalled_at, code


def audited(directory: Path, prefix: str) -> dict[str, dict[str, Any]]:
    return {
        r["client_id"]: r for r in iter_records(directory) if str(r.get("client_id") or "").startswith(prefix)
    }


def count(outcomes: list[Outcome]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[f"{o.protocol}:{o.status}"] = counts.get(f"{o.protocol}:{o.status}", 0) + 1
    return counts


def test_sigterm_under_load_answers_what_it_took_and_loses_no_record(stack) -> None:
    triton, sidecar, receiver, sidecar_factory = stack
    traffic, stopped_at, code = under_load(sidecar, signal.SIGTERM, "term", hold=triton)
    assert code == 0

    outcomes = traffic.snapshot()
    records = audited(sidecar.audit_dir, "term")
    inflight = [o for o in outcomes if o.started < stopped_at < o.ended]
    assert len(inflight) >= 4, count(inflight)  # Triton held them: most callers were waiting
    assert all(o.ok for o in inflight), f"calls in flight at SIGTERM not answered 200: {count(inflight)}"
    after = [o for o in outcomes if o.started >= stopped_at]
    # Refused: the listening socket is closed (connection refused), an idle keep-alive connection is
    # closed, gRPC answers UNAVAILABLE; a gRPC call that reached the server as it began its shutdown
    # is CANCELLED by grpc-core, before any handler (it has no audit record: it never ran).
    allowed = {"http:200", "http:503", "http:conn", "grpc:OK", "grpc:UNAVAILABLE", "grpc:CANCELLED"}
    assert set(count(after)) <= allowed, count(after)
    assert not [o for o in after if o.status == "CANCELLED" and o.client_id in records]
    assert all(o.ended - o.started < 10 for o in outcomes), "a call hung"

    answered = [o for o in outcomes if o.ok]
    missing = [o for o in answered if o.client_id not in records]
    assert not missing, f"{len(missing)} answered calls have no audit record, e.g. {missing[:3]}"

    spooled = [r for r in records.values() if r.get("review") == "spooled"]
    on_disk = list_spool(sidecar.spool_dir)
    assert spooled and len(on_disk) == len(spooled), (len(on_disk), len(spooled))

    # The next sidecar (same volumes) delivers what the stopped one spooled.
    receiver.fail_first = 0
    restarted = sidecar_factory(sidecar.config)
    deadline = time.monotonic() + 30
    while len(receiver.received) < len(on_disk) and time.monotonic() < deadline:
        time.sleep(0.1)
    delivered = {item["client_id"] for item in receiver.received}
    assert {r["client_id"] for r in spooled} <= delivered
    assert restarted.stop() == 0
    print(
        f"\nSIGTERM under load: {len(outcomes)} calls, in flight at the signal {count(inflight)}, "
        f"after it {count(after)}; {len(records)} audit records for {len(answered)} answered calls, none "
        f"missing; {len(on_disk)} review items spooled at the stop, all delivered after the restart"
    )


def test_sigkill_under_load_loses_at_most_the_last_flush_interval(stack) -> None:
    _, sidecar, _, _ = stack
    traffic, killed_at, code = under_load(sidecar, signal.SIGKILL, "kill")
    assert code == -signal.SIGKILL

    outcomes = traffic.snapshot()
    records = audited(sidecar.audit_dir, "kill")
    answered = [o for o in outcomes if o.ok]
    lost = [o for o in answered if o.client_id not in records]
    by_id = {o.client_id: o for o in answered}
    # A record is written at most one flush interval after its call is answered (plus the write in
    # flight and a loaded machine's scheduling): every lost record is of a call answered just before.
    window = FLUSH_INTERVAL_S + 1.0
    assert all(o.ended >= killed_at - window for o in lost), [killed_at - o.ended for o in lost]
    last_window = [o for o in answered if o.ended >= killed_at - FLUSH_INTERVAL_S]

    torn = [line for _, _, line in iter_lines(sidecar.audit_dir) if not line.endswith(b"\n")]
    assert len(torn) <= 1  # at most the line a write was in the middle of; readers skip it
    # Review items: spooled ones are whole (written to a temporary file, fsynced, renamed); an item
    # still queued in memory for the spool at the kill is lost with its process.
    spool = [orjson.loads(path.read_bytes()) for path, _ in list_spool(sidecar.spool_dir)]
    on_disk = {item["id"] for item in spool}
    offered = {r["id"]: r for r in records.values() if r.get("review") == "spooled"}
    assert on_disk & set(offered), "no review item reached the spool before the kill"
    items_lost = [
        by_id[r["client_id"]] for i, r in offered.items() if i not in on_disk and r["client_id"] in by_id
    ]
    print(
        f"\nSIGKILL under load: {len(answered)} answered calls, {len(lost)} audit records lost "
        f"(answered at most {max((killed_at - o.ended for o in lost), default=0.0):.3f} s before the kill; "
        f"{len(last_window)} calls were answered in the last flush interval of {FLUSH_INTERVAL_S:g} s; "
        f"{len(torn)} torn line); "
        f"review items: {len(on_disk)} on disk, {len(items_lost)} of audited calls lost from the memory "
        f"queue (answered at most {max((killed_at - o.ended for o in items_lost), default=0.0):.3f} s "
        "before the kill)"
    )
