"""Last good, shadow and replay against a real Triton, with the sidecar running in this process.

The sidecar runs in the test's event loop so that routing can be fed to it as its watcher does
(``routing_from_status`` on a GuardedModel status, then ``apply_routing``) and the flip timed; the
callers are real HTTP and gRPC clients on its ports, and what is checked is what they got, the
sidecar's /metrics, Triton's own log and the audit files.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from conftest import sidecar_config
from sidecar_toy import MODEL, toy_data, write_toy_repository
from tritonclient.utils import InferenceServerException

from guardedmodel_sidecar.app import SidecarApp
from guardedmodel_sidecar.audit_file import iter_records
from guardedmodel_sidecar.config import parse_config
from guardedmodel_sidecar.metrics_aggregate import Exposition, parse
from guardedmodel_sidecar.status_watch import routing_from_status
from guardedmodel_testground.triton import TritonServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def three_versions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_repository(tmp_path_factory.mktemp("toy3"), ("1", "2", "3"))


@pytest.fixture
def triton(three_versions: Path, triton_server_factory: Callable[..., TritonServer]) -> TritonServer:
    return triton_server_factory(three_versions, model_control_mode="explicit")


@contextlib.asynccontextmanager
async def running(document: dict[str, Any]) -> AsyncIterator[SidecarApp]:
    app = SidecarApp(parse_config(document), health_interval_s=0.2)
    await app.start()
    try:
        await app.wait_ready(timeout_s=90)
        yield app
    finally:
        await app.stop()


def http_infer(app: SidecarApp, x: np.ndarray, request_id: str = "", version: str = "") -> dict[str, Any]:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{app.http_port}")
    inp = httpclient.InferInput("INPUT", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    response: dict[str, Any] = client.infer(
        MODEL, [inp], model_version=version, request_id=request_id
    ).get_response()
    return response


def grpc_infer(app: SidecarApp, x: np.ndarray, request_id: str) -> str:
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{app.grpc_port}")
    inp = grpcclient.InferInput("INPUT", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer(MODEL, [inp], request_id=request_id)
    return str(result.get_response().parameters["model_version"].string_param)


async def scrape(app: SidecarApp) -> Exposition:
    """The sidecar's /metrics, read by a client on a thread (the sidecar serves it on this loop)."""

    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{app.metrics_port}/metrics", timeout=5) as response:
            return response.read().decode()

    return parse(await asyncio.to_thread(get))


def value(exposition: Exposition, family: str, **labels: str) -> float | None:
    """The one sample of ``family`` whose labels include ``labels``; None when there is none."""
    family = family.removesuffix("_total")  # a counter's family is named without it
    samples = exposition[family].samples if family in exposition else {}
    found = [
        v
        for (name, sample_labels), v in samples.items()
        if not name.endswith("_created") and labels.items() <= dict(sample_labels).items()
    ]
    assert len(found) <= 1, f"{family} {labels}: {len(found)} samples"
    return found[0] if found else None


async def comparison(app: SidecarApp, candidate: str, source: str) -> dict[str, float]:
    exposition = await scrape(app)
    fields = (
        "rows",
        "agreements",
        "candidate_confidence",
        "baseline_confidence",
        "candidate_ood",
        "baseline_ood",
    )
    return {
        f: value(exposition, f"guardedmodel_comparison_{f}", version=candidate, source=source) or 0.0
        for f in fields
    }


async def replayed_rows(app: SidecarApp, candidate: str, rows: int) -> bool:
    return (await comparison(app, candidate, "replay"))["rows"] >= rows


async def until(check: Callable[[], bool | Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await _result(check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def _result(outcome: bool | Awaitable[bool]) -> bool:
    return await outcome if inspect.isawaitable(outcome) else bool(outcome)


def triton_loads(triton: TritonServer) -> int:
    """Model loads Triton has logged ("loading: toy:<version>" per version loaded)."""
    log_file = triton.log_dir / f"tritonserver-{triton.http_port}.log"
    return log_file.read_text(errors="replace").count(f'"loading: {MODEL}:')


async def audit_written(app: SidecarApp) -> None:
    await until(
        lambda: all(stats.pending_lines == 0 for stats in app.audit.stats().values()), 10, "the audit log"
    )


# ----------------------------------------------------------------------------------- last good


async def test_a_last_good_version_is_loaded_and_guarded_unserved_and_a_rollback_needs_no_load(
    tmp_path: Path, three_versions: Path, triton: TritonServer
) -> None:
    document = sidecar_config(
        triton, three_versions, tmp_path, routing={"stableVersion": "2", "lastGoodVersion": "1"}
    )
    data = toy_data()
    async with running(document) as app:
        direct = httpclient.InferenceServerClient(triton.http_url)
        assert direct.is_model_ready(MODEL, "1") and direct.is_model_ready(MODEL, "2")
        exposition = await scrape(app)
        assert value(exposition, "guardedmodel_version_loaded", version="1", role="lastGood") == 1.0
        assert value(exposition, "guardedmodel_version_loaded", version="2", role="stable") == 1.0
        answers = [
            (await asyncio.to_thread(http_infer, app, data.sample(1, seed=i)[0]))["parameters"][
                "model_version"
            ]
            for i in range(20)
        ]
        assert answers == ["2"] * 20
        with pytest.raises(InferenceServerException, match="version 1 of 'toy' is not served") as refused:
            await asyncio.to_thread(http_infer, app, data.sample(1, seed=99)[0], "", "1")
        assert refused.value.status() == "404"
        exposition = await scrape(app)
        assert value(exposition, "guardedmodel_samples_total", version="2") == 20.0
        assert value(exposition, "guardedmodel_samples_total", version="1") is None  # no serving series
        guard = app.pipeline.guards["1"]
        loads = triton_loads(triton)
        assert loads > 0  # Triton logs every load: the count below can see one

        # The operator rolls the stable back; the sidecar reads the status as its watcher does.
        routing = routing_from_status({"stableVersion": "1"}, app.router.routing)
        x = data.sample(1, seed=7)[0]
        started = time.perf_counter()
        await app.apply_routing(routing)
        adopted = time.perf_counter()
        answer = await asyncio.to_thread(http_infer, app, x)
        answered = time.perf_counter()
        print(
            f"\nrollback flip: routing adopted in {1000 * (adopted - started):.2f} ms, first answer from "
            f"the last good version {1000 * (answered - started):.1f} ms after the routing update"
        )
        assert answer["parameters"]["model_version"] == "1"
        assert app.pipeline.guards["1"] is guard  # no guard build
        assert answered - started < 0.5  # a load of the toy alone takes over a second here
        await asyncio.sleep(1.0)  # the kept versions are checked in the background
        assert triton_loads(triton) == loads  # no load, then or after
        exposition = await scrape(app)
        # the version it left is the last good now (this sidecar saw it as the stable)
        assert value(exposition, "guardedmodel_version_loaded", version="2", role="lastGood") == 1.0
        assert value(exposition, "guardedmodel_samples_total", version="1") == 1.0


# ----------------------------------------------------------------------------------- shadow


def shadowing(
    triton: TritonServer, repository: Path, workdir: Path, candidate: str, fraction: float, bound: int
) -> dict[str, Any]:
    """A sidecar serving version 1 that copies ``fraction`` of its requests to ``candidate``, at
    most ``bound`` at a time."""
    return sidecar_config(
        triton,
        repository,
        workdir,
        routing={"stableVersion": "1", "shadow": {"version": candidate, "fraction": fraction}},
        tuning={"shadowMaxInflight": bound},
    )


async def test_shadow_mirrors_its_fraction_of_the_stables_http_and_grpc_requests_and_serves_none(
    tmp_path: Path, three_versions: Path, triton: TritonServer
) -> None:
    data = toy_data()
    async with running(shadowing(triton, three_versions, tmp_path, "2", 0.25, 64)) as app:
        assert value(await scrape(app), "guardedmodel_version_loaded", version="2", role="shadow") == 1.0
        sizes = [1 + i % 3 for i in range(40)]
        inputs = [data.sample(n, seed=200 + i)[0] for i, n in enumerate(sizes)]
        served = [
            (await asyncio.to_thread(http_infer, app, x, f"http-{i}"))["parameters"]["model_version"]
            for i, x in enumerate(inputs)
        ]
        served += [await asyncio.to_thread(grpc_infer, app, x, f"grpc-{i}") for i, x in enumerate(inputs)]
        assert served == ["1"] * 80  # every caller is answered by the stable
        await until(lambda: app.shadow.inflight == 0, 10, "the shadow copies")
        await audit_written(app)

        mirrored = [i for i in range(40) if i % 4 == 3]  # exactly every fourth request
        rows = 2 * sum(sizes[i] for i in mirrored)
        counts = await comparison(app, "2", "shadow")
        assert counts["rows"] == rows and counts["agreements"] == rows  # version 2: the same top-1
        assert counts["candidate_confidence"] > 0 and counts["baseline_confidence"] > 0
        exposition = await scrape(app)
        assert value(exposition, "guardedmodel_comparison_rows_total", version="2", baseline="1") == rows
        for family in (
            "guardedmodel_samples_total",
            "guardedmodel_ood_samples_total",
            "guardedmodel_requests_total",
        ):
            assert value(exposition, family, version="2") is None  # nothing counts as served by it
        assert value(exposition, "guardedmodel_samples_total", version="1") == 2 * sum(sizes)

        records = list(iter_records(app.audit.directory))
        by_id = {r["id"]: r for r in records}
        copies = [r for r in records if "shadow_of" in r]
        assert len(copies) == 20 and all("status" not in r and "version" not in r for r in copies)
        assert sorted(by_id[c["shadow_of"]]["client_id"] for c in copies) == sorted(
            f"{protocol}-{i}" for protocol in ("http", "grpc") for i in mirrored
        )
        assert all(by_id[c["shadow_of"]]["version"] == "1" for c in copies)
        assert all(c["candidate"] == "2" and c["baseline"] == "1" and c["source"] == "shadow" for c in copies)


async def test_a_shadow_that_cannot_load_keeps_the_pod_ready_and_copies_past_the_bound_are_counted(
    tmp_path: Path, three_versions: Path, triton: TritonServer
) -> None:
    data = toy_data()
    async with running(shadowing(triton, three_versions, tmp_path, "9", 1.0, 1)) as app:
        # version 9 is not in the repository: the pod serves, the gauge and the skips say why
        assert value(await scrape(app), "guardedmodel_version_loaded", version="9", role="shadow") == 0.0
        for i in range(5):
            await asyncio.to_thread(http_infer, app, data.sample(1, seed=i)[0])
        exposition = await scrape(app)
        assert (
            value(exposition, "guardedmodel_comparison_skipped_total", version="9", reason="not_loaded")
            == 5.0
        )
        assert app.is_ready()

        await app.apply_routing(
            routing_from_status(
                {"stableVersion": "1", "shadow": {"version": "2", "fraction": 1.0}}, app.router.routing
            )
        )
        await until(lambda: "2" in app.pipeline.guards, 60, "version 2 loaded and guarded in the background")
        assert value(await scrape(app), "guardedmodel_version_loaded", version="2", role="shadow") == 1.0
        burst = [data.sample(2, seed=300 + i)[0] for i in range(64)]
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            answers = await asyncio.gather(
                *(asyncio.get_running_loop().run_in_executor(pool, http_infer, app, x) for x in burst)
            )
        assert Counter(a["parameters"]["model_version"] for a in answers) == {"1": 64}
        await until(lambda: app.shadow.inflight == 0, 10, "the shadow copies")
        exposition = await scrape(app)
        compared = (
            value(exposition, "guardedmodel_comparison_rows_total", version="2", source="shadow") or 0.0
        )
        skipped = value(
            exposition, "guardedmodel_comparison_skipped_total", version="2", reason="inflight_limit"
        )
        print(
            f"\nshadow at 16 concurrent callers, bound 1: {compared / 2:.0f} compared, {skipped:.0f} skipped"
        )
        assert skipped is not None and skipped > 0
        assert compared / 2 + skipped == 64  # every request picked was either compared or counted


# ----------------------------------------------------------------------------------- replay


async def test_replay_of_real_audit_samples_compares_the_candidate_with_the_current_stable(
    tmp_path: Path, three_versions: Path, triton: TritonServer
) -> None:
    spec = {"audit": {"enabled": True, "sampleRate": 1.0}}
    document = sidecar_config(
        triton,
        three_versions,
        tmp_path,
        spec=spec,
        routing={"stableVersion": "1", "canaryVersion": "2", "canaryWeight": 50},
    )
    data = toy_data()
    async with running(document) as app:
        for i in range(40):  # half of it answered by the canary: not the stable's to replay
            await asyncio.to_thread(http_infer, app, data.sample(1, seed=400 + i)[0])
        await app.apply_routing(routing_from_status({"stableVersion": "1"}, app.router.routing))
        for i in range(40):
            x = data.far_ood(1, seed=i) if i % 8 == 0 else data.sample(1, seed=500 + i)[0]
            await asyncio.to_thread(http_infer, app, x)
        await audit_written(app)
        answered = [
            r for r in iter_records(app.audit.directory) if r.get("version") == "1" and r.get("sampled")
        ]
        newest = answered[-30:]
        baseline_ood = sum(score > r["ood_threshold"] for r in newest for score in r["ood_score"])
        disagreeing = sum(p in (0, 1) for r in newest for p in r["predicted"])  # version 3 swaps 0 and 1
        assert baseline_ood > 0 and 0 < disagreeing < 30

        results = {}
        for candidate in ("1", "3", "2"):
            status = {"stableVersion": "1", "shadow": {"version": candidate, "fraction": 0, "replay": 30}}
            await app.apply_routing(routing_from_status(status, app.router.routing))
            await until(lambda c=candidate: replayed_rows(app, c, 30), 90, f"replay to {candidate}")
            await asyncio.sleep(0.3)
            results[candidate] = await comparison(app, candidate, "replay")
            print(f"\nreplay of 30 sampled requests, version 1 vs {candidate}: {results[candidate]}")
        for counts in results.values():
            assert counts["rows"] == 30
            assert counts["baseline_ood"] == baseline_ood
            assert counts["baseline_confidence"] == pytest.approx(
                sum(c for r in newest for c in r["confidence"])
            )
        itself = results["1"]
        assert itself["agreements"] == 30 and itself["candidate_ood"] == baseline_ood
        assert itself["candidate_confidence"] == pytest.approx(itself["baseline_confidence"], rel=1e-6)
        assert results["3"]["agreements"] == 30 - disagreeing
        assert results["2"]["agreements"] == 30  # a sharper head: the same top-1 everywhere

        # once per candidate per process: naming version 1 again replays nothing more
        status = {"stableVersion": "1", "shadow": {"version": "1", "fraction": 0, "replay": 30}}
        await app.apply_routing(routing_from_status(status, app.router.routing))
        await asyncio.sleep(1.0)
        assert (await comparison(app, "1", "replay"))["rows"] == 30
        await audit_written(app)
        replayed = [r for r in iter_records(app.audit.directory) if r.get("source") == "replay"]
        assert len(replayed) == 90 and {r["shadow_of"] for r in replayed} == {r["id"] for r in newest}
