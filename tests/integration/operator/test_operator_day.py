"""The operator's compressed day in its reduced form (``make bench-operator-day`` runs 1,000 models).

Forty GuardedModels on the real API server (kwok nodes), a real Prometheus with no sidecar series
(every check finds no data, as for a model nobody calls), the real operator with every timer
(continuous guard, scaler, idle watch) firing every 2 s and its watches renewed every 20 s. Writes
are counted from the API server's audit log, not from the operator's own counters. Asserted:

- until the steady state, every child is written exactly once per model (a field the API server
  normalises away would make every reconcile write it again);
- in the steady state the operator writes nothing at all: no patch, no status, no Event, while its
  timers demonstrably keep firing (rollout checks and Prometheus queries are counted);
- its memory and open descriptors do not grow (at most 3 MiB between the first and the last third
  of the steady state; every descriptor but pooled connections constant, the pools within bounds).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "bench"))

from operator_day import DaySettings, run_day  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

SETTINGS = DaySettings(
    count=40,
    minutes=0.6,
    interval_s=2.0,
    idle_after_s=8.0,
    watch_timeout_s=20,
    sample_s=5.0,
    worker_limit=20,
)
CHILDREN = (
    "configmaps",
    "deployments",
    "networkpolicies",
    "rolebindings",
    "roles",
    "serviceaccounts",
    "services",
)
RSS_GROWTH_LIMIT_MB = 3.0


def test_a_compressed_day_of_timers_writes_nothing_and_stays_flat(tmp_path: Path) -> None:
    result = run_day(SETTINGS, tmp_path)
    print(
        f"\nday: ready in {result.ready_seconds} s, steady {result.steady}, slopes per hour "
        f"{result.slopes_per_hour}, writes until steady {result.writes_until_steady}"
    )

    for child in CHILDREN:
        assert result.writes_until_steady.get(f"guardedmodel-operator patch {child}") == SETTINGS.count, child

    assert result.steady_writes == {}, (result.steady_write_examples, result.steady_events)
    assert set(result.steady_writes_per_minute) == {0.0}
    assert result.operator_counted_writes == 0

    # The quiet is not for lack of work: every model was checked on every timer, again and again.
    seconds = result.steady["seconds"]
    expected_checks = seconds / SETTINGS.interval_s
    assert result.steady["rollout_checks_per_model"] >= 0.5 * expected_checks
    assert result.steady["prometheus_queries_per_second"] * SETTINGS.interval_s >= 3 * SETTINGS.count

    samples = result.samples
    third = max(1, len(samples) // 3)
    rss_growth = max(s.rss_mb for s in samples[-third:]) - max(s.rss_mb for s in samples[:third])
    assert rss_growth < RSS_GROWTH_LIMIT_MB, f"RSS grew {rss_growth:.2f} MiB: {result.slopes_per_hour}"
    # Descriptors: files, pipes, listeners and the like exactly as they were; connections only from
    # the pools, within their bounds (aiohttp's default of 100 to Prometheus), and the API server's
    # no more at the end than at the start but for watch renewals (8 watched kinds).
    pooled = ("prometheus", "apiserver", "tcp_other")
    fixed = [{k: n for k, n in s.fd_kinds.items() if k not in pooled} for s in samples]
    assert all(kinds == fixed[0] for kinds in fixed), fixed
    assert max(s.fd_kinds.get("prometheus", 0) for s in samples) <= 100
    api = [s.fd_kinds.get("apiserver", 0) for s in samples]
    assert max(api[-third:]) <= max(api[:third]) + 8, api
