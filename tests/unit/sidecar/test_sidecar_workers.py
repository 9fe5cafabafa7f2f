"""Worker processes per pod: the merged metrics stay right across restarts, the parent restarts
workers that die, gives up on one that cannot stay up, and stops them all gracefully."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from guardedmodel_sidecar.config import SidecarConfig, parse_config
from guardedmodel_sidecar.metrics_aggregate import Aggregator, parse
from guardedmodel_sidecar.workers import WorkerPool, adopt_spool, worker_config


def counters(requests: float, triton: float = 40.0, ready: float = 1.0) -> str:
    return f"""# HELP guardedmodel_requests_total Requests by guard decision
# TYPE guardedmodel_requests_total counter
guardedmodel_requests_total{{model="m",version="1",decision="accept"}} {requests}
# HELP guardedmodel_triton_requests_total Requests Triton completed
# TYPE guardedmodel_triton_requests_total counter
guardedmodel_triton_requests_total{{model="m",version="1"}} {triton}
# HELP guardedmodel_triton_ready 1 when Triton answers ready
# TYPE guardedmodel_triton_ready gauge
guardedmodel_triton_ready {ready}
"""


def values(text: str | bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = text.decode() if isinstance(text, bytes) else text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


ACCEPT = ("guardedmodel_requests_total", (("decision", "accept"), ("model", "m"), ("version", "1")))
TRITON = ("guardedmodel_triton_requests_total", (("model", "m"), ("version", "1")))


def worker(name: str, index: int) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, (("worker", str(index)),)


def test_counters_stay_monotonic_when_a_worker_restarts() -> None:
    agg = Aggregator(2)
    gen = [agg.started(0), agg.started(1)]
    agg.observe(0, gen[0], counters(10))
    agg.observe(1, gen[1], counters(7, ready=0.0))
    first = values(agg.render())
    assert first[ACCEPT] == 17
    assert first[TRITON] == 40  # Triton's counter, republished by both workers: once, not twice
    assert first[("guardedmodel_triton_ready", ())] == 1  # Triton answered ready to one of them
    assert first[worker("guardedmodel_worker_ready", 1)] == 0

    agg.exited(0)  # died; its successor starts from zero
    late = gen[0]
    gen[0] = agg.started(0)
    agg.observe(0, late, counters(99))  # a scrape answered by the dead worker: ignored
    agg.observe(0, gen[0], counters(2, triton=45))
    after = values(agg.render())
    assert after[ACCEPT] == 10 + 2 + 7
    assert after[TRITON] == 45  # not carried over: it is Triton's, and Triton still counts
    assert after[worker("guardedmodel_worker_restarts_total", 0)] == 1
    assert after[worker("guardedmodel_worker_restarts_total", 1)] == 0
    assert after[worker("guardedmodel_worker_requests_total", 0)] == 12

    agg.missed(1, gen[1])  # did not answer: its last figures stand, so no counter steps back
    missed = values(agg.render())
    assert missed[ACCEPT] == 19
    assert missed[worker("guardedmodel_worker_up", 1)] == 0
    assert missed[worker("guardedmodel_worker_up", 0)] == 1


def test_weighted_gauges_ignore_workers_without_samples() -> None:
    def window(samples: int, accuracy: float) -> str:
        return f"""# TYPE guardedmodel_estimated_accuracy gauge
guardedmodel_estimated_accuracy{{model="m",version="1"}} {accuracy}
# TYPE guardedmodel_drift_window_samples gauge
guardedmodel_drift_window_samples{{model="m",version="1"}} {samples}
"""

    agg = Aggregator(3)
    for slot, text in enumerate([window(30, 0.9), window(10, 0.5), window(0, math.nan)]):
        agg.observe(slot, agg.started(slot), text)
    got = values(agg.render())
    lv = (("model", "m"), ("version", "1"))
    assert got[("guardedmodel_estimated_accuracy", lv)] == pytest.approx((30 * 0.9 + 10 * 0.5) / 40)
    assert got[("guardedmodel_drift_window_samples", lv)] == 40

    empty = Aggregator(1)
    empty.observe(0, empty.started(0), window(0, math.nan))
    assert math.isnan(values(empty.render())[("guardedmodel_estimated_accuracy", lv)])


def test_drift_decisions_merge_so_the_pod_keeps_alpha() -> None:
    def window(p_value: float, detected: float, version: str = "1") -> str:
        return f"""# TYPE guardedmodel_drift_p_value gauge
guardedmodel_drift_p_value{{model="m",version="{version}"}} {p_value}
# TYPE guardedmodel_drift_detected gauge
guardedmodel_drift_detected{{model="m",version="{version}"}} {detected}
"""

    def merged(*windows: str, slots: int | None = None) -> tuple[float, float]:
        agg = Aggregator(slots or len(windows))
        for slot, text in enumerate(windows):
            agg.observe(slot, agg.started(slot), text)
        got = values(agg.render())
        lv = (("model", "m"), ("version", "1"))
        return got[("guardedmodel_drift_p_value", lv)], got[("guardedmodel_drift_detected", lv)]

    # each worker tested at alpha / 3; the pod's p-value is min(1, 3 * min p), drifted if any is
    p, detected = merged(window(0.4, 0), window(0.0001, 1), window(math.nan, math.nan))
    assert p == pytest.approx(0.0003) and detected == 1
    p, detected = merged(window(0.5, 0), window(0.6, 0))
    assert p == 1.0 and detected == 0
    # insufficient data everywhere stays insufficient (NaN), not "no drift"
    p, detected = merged(window(math.nan, math.nan), window(math.nan, math.nan))
    assert math.isnan(p) and math.isnan(detected)
    # a worker that has not answered still tested at alpha / 4: the multiplier is the slot count
    p, _ = merged(window(0.01, 0), window(0.2, 0), slots=4)
    assert p == pytest.approx(0.04)


def test_label_values_and_help_survive_the_round_trip() -> None:
    text = """# HELP guardedmodel_requests_total Requests "by" decision \\ and\\nmore
# TYPE guardedmodel_requests_total counter
guardedmodel_requests_total{model="a\\"b\\\\c\\nd",decision="accept"} 2.0
"""
    agg = Aggregator(2)
    for slot in (0, 1):
        agg.observe(slot, agg.started(slot), text)
    rendered = agg.render().decode()
    assert (
        values(rendered)[("guardedmodel_requests_total", (("decision", "accept"), ("model", 'a"b\\c\nd')))]
        == 4.0
    )
    assert (
        parse(rendered)["guardedmodel_requests"].documentation
        == parse(text)["guardedmodel_requests"].documentation
    )


def test_garbage_from_a_worker_is_refused() -> None:
    with pytest.raises(ValueError):
        parse("guardedmodel_requests_total{ 12\n")


def config(tmp_path: Path, workers: int = 2) -> SidecarConfig:
    return parse_config(
        {
            "spec": {
                "model": {"name": "m", "version": "1"},
                "gate": {"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [4]}]},
            },
            "triton": {"httpUrl": "127.0.0.1:1", "grpcUrl": "127.0.0.1:2"},
            "modelRepository": str(tmp_path / "models"),
            "listen": {"host": "127.0.0.1", "http": 0, "grpc": 0, "metrics": 0},
            "auditDir": str(tmp_path / "audit"),
            "spoolDir": str(tmp_path / "spool"),
            "tuning": {"workers": workers},
        }
    )


def test_each_worker_has_its_own_dirs_and_only_worker_0_loads(tmp_path: Path) -> None:
    base = config(tmp_path, workers=3)
    first, second = worker_config(base, 0), worker_config(base, 2)
    assert first.audit_dir == tmp_path / "audit" / "worker-0"
    assert second.spool_dir == tmp_path / "spool" / "worker-2"
    assert first.tuning.load_versions and not second.tuning.load_versions
    assert second.tuning.listen_when_ready and not first.tuning.listen_when_ready


def test_review_items_no_worker_would_send_move_to_worker_0(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    for where in ("", "worker-1", "worker-3"):
        (spool / where).mkdir(parents=True, exist_ok=True)
        (spool / where / f"item{where}.json").write_text("{}")
    (spool / ".partial.json.tmp").write_text("")
    assert adopt_spool(spool, workers=2) == 2
    assert sorted(p.name for p in (spool / "worker-0").iterdir()) == ["item.json", "itemworker-3.json"]
    assert (spool / "worker-1" / "itemworker-1.json").exists()  # worker 1 still runs: its own


# ------------------------------------------------------------------ a real pool of fake workers


def fake_worker(config: SidecarConfig, kubeconfig: str | None, socket: str, parent: int, level: int) -> None:
    """Stands in for a sidecar worker (spawned, so module level): behaviour from files the test writes."""
    mode = (config.audit_dir.parent / "mode").read_text()
    config.audit_dir.mkdir(parents=True, exist_ok=True)
    if mode == "always-crash" or (mode == "crash-once" and not (config.audit_dir / "crashed").exists()):
        (config.audit_dir / "crashed").touch()
        os._exit(3)
    asyncio.run(_fake_serve(config.audit_dir, socket))


async def _fake_serve(workdir: Path, socket: str) -> None:
    from aiohttp import web

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=counters(5), content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.UnixSite(runner, socket).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    (workdir / "pid").write_text(str(os.getpid()))
    await stop.wait()
    await asyncio.sleep(0.2)  # a request in flight, finished before exiting
    (workdir / "stopped").touch()
    await runner.cleanup()


async def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    def get() -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return bytes(response.read())

    return values(await asyncio.to_thread(get))


async def _until(check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.1)


async def test_pool_restarts_a_dead_worker_and_stops_all_gracefully(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    (tmp_path / "audit").mkdir()
    (tmp_path / "audit" / "mode").write_text("crash-once")
    pool = WorkerPool(cfg, None, fake_worker, backoff_s=0.05)
    run = asyncio.create_task(pool.run())

    async def both_up() -> dict[Any, float] | None:
        if not pool.metrics_port:
            return None
        got = await _scrape(pool.metrics_port)
        up = [got.get(worker("guardedmodel_worker_up", i)) for i in (0, 1)]
        return got if up == [1.0, 1.0] else None

    got = await _until(both_up)
    assert got[ACCEPT] == 10
    assert got[worker("guardedmodel_worker_restarts_total", 0)] == 1  # each crashed once at start

    pid0 = int((tmp_path / "audit" / "worker-0" / "pid").read_text())
    os.kill(pid0, signal.SIGKILL)

    async def replaced() -> dict[Any, float] | None:
        path = tmp_path / "audit" / "worker-0" / "pid"
        if not path.exists() or int(path.read_text()) == pid0:
            return None
        got = await _scrape(pool.metrics_port)
        return got if got.get(worker("guardedmodel_worker_up", 0)) == 1.0 else None

    got = await _until(replaced)
    assert got[ACCEPT] == 15  # the dead worker's 5 are kept: the pod's counter never steps back
    assert got[worker("guardedmodel_worker_restarts_total", 0)] == 2

    os.kill(os.getpid(), signal.SIGTERM)  # what Kubernetes sends the container's main process
    assert await asyncio.wait_for(run, 30) == 0
    for index in (0, 1):
        assert (tmp_path / "audit" / f"worker-{index}" / "stopped").exists()


async def test_pool_gives_up_on_a_worker_that_cannot_stay_up(tmp_path: Path) -> None:
    (tmp_path / "audit").mkdir()
    (tmp_path / "audit" / "mode").write_text("always-crash")
    pool = WorkerPool(config(tmp_path, workers=1), None, fake_worker, backoff_s=0.01, max_fast_exits=3)
    assert await asyncio.wait_for(pool.run(), 60) == 1
