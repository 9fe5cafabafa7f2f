"""The sidecar soak in its reduced form (``make bench-soak`` runs the same code for 30 minutes).

About a minute of a sustained mix (half in-distribution, a fifth OOD, the rest malformed) over HTTP
and gRPC against the real sidecar and a real CPU Triton, below saturation. Asserted:

- every answer is of its request's class (good: 200 / OK accepted; OOD: 422 / INVALID_ARGUMENT
  refused as out of distribution; malformed: 400 / INVALID_ARGUMENT with a v2 error), none lost;
- the sidecar counted what was sent: accepted requests = good ones, gate refusals = malformed ones,
  one audit record per request, nothing dropped, no upstream error;
- after the traffic stops, its descriptors come back to the baseline exactly (no client connection
  left, the connection following Triton's metrics still the one; Triton connections kept by the
  pool within its cap) and so does its asyncio task count;
- resident memory does not grow with the requests: at most 2 MiB between the first and the last
  third of the steady state (~2,400 requests apart: a leak of ~1 KB per request exceeds it; the
  30-minute bench resolves far less); its slope per hour is reported.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "bench"))

from soak_sidecar import MAX_TRITON_CONNECTIONS, SoakResult, SoakSettings, run_soak  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

SETTINGS = SoakSettings(seconds=60.0, rate=80.0, warmup_s=15.0, interval_s=3.0, prime_s=5.0)
RSS_GROWTH_LIMIT_MB = 2.0


def _sent(result: SoakResult, kind: str) -> int:
    return sum(c["sent"] for case, c in result.by_case.items() if case.startswith(kind + "/"))


def _counted(result: SoakResult, prefix: str) -> float:
    return sum(v for k, v in result.counted.items() if k.startswith(prefix))


def test_sidecar_soak_stays_flat(tmp_path: Path) -> None:
    result = run_soak(SETTINGS, tmp_path)
    print(
        f"\nsoak: {result.answered} answers, slopes per hour after warm-up {result.slopes_per_hour}, "
        f"steady {result.steady}, baseline {result.baseline}, after {result.after} "
        f"(settled in {result.settle_seconds} s)"
    )

    # Every request answered, each with an answer of its class.
    assert result.not_sent == 0, "the sender saturated: the rate is not below the sidecar's capacity"
    assert result.answered == result.sent == int(SETTINGS.seconds * SETTINGS.rate)
    assert result.mismatches == 0, result.first_mismatches
    assert {case.split("/")[0] for case in result.by_case} == {"good", "ood", "bad"}
    assert {case.split("/")[1] for case in result.by_case} == {"http", "grpc"}

    # The sidecar's own counts agree with what was sent.
    good, ood, bad = (_sent(result, kind) for kind in ("good", "ood", "bad"))
    assert _counted(result, 'guardedmodel_requests_total{decision="accept"') == good
    assert ood <= _counted(result, 'guardedmodel_requests_total{decision="reject"') <= ood + bad
    assert _counted(result, "guardedmodel_gate_refusals_total") == bad
    assert _counted(result, "guardedmodel_audit_records_total") == result.sent
    assert _counted(result, "guardedmodel_audit_records_dropped_total") == 0
    assert _counted(result, "guardedmodel_upstream_errors_total") == 0

    # Quiet again: descriptors and tasks back where they were.
    assert result.after.fds.get("clients", 0) == 0, result.after
    assert result.after.without_upstream() == result.baseline.without_upstream()
    assert result.after.fds.get("upstream", 0) <= MAX_TRITON_CONNECTIONS
    assert result.after.tasks == result.baseline.tasks

    # Memory does not grow with the traffic.
    steady = [s for s in result.samples if SETTINGS.warmup_s < s.t < SETTINGS.seconds]
    third = max(1, len(steady) // 3)
    growth = max(s.rss_mb for s in steady[-third:]) - max(s.rss_mb for s in steady[:third])
    requests = sum(s.answers for s in steady[third:])
    assert growth < RSS_GROWTH_LIMIT_MB, (
        f"RSS grew {growth:.2f} MiB over {requests} requests ({growth * 2**20 / requests:.0f} bytes each); "
        f"slope {result.slopes_per_hour['rss_mb']} MiB/h"
    )
