"""Cost per prediction end to end: a real CPU Triton, the real sidecar with spec.cost, a real review
webhook and a real Prometheus scraping the sidecar, read by the operator's status.cost code."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
import yaml
from conftest import SidecarProcess, WebhookReceiver, sidecar_config
from prometheus_client.parser import text_string_to_metric_families
from sidecar_toy import MODEL, toy_data

from guardedmodel_operator.prometheus import PrometheusSettings, PrometheusSource
from guardedmodel_operator.rollout.cost import fetch_cost, prices_of
from guardedmodel_testground.procs import free_port
from guardedmodel_testground.prometheus import Prometheus, ScrapeJob
from guardedmodel_testground.stack import install_crd
from guardedmodel_testground.triton import TritonServer

pytestmark = pytest.mark.integration

NAMESPACE, NAME = "ml", "classifier"
# 3600 per hour: one unit of money per compute second, so the arithmetic reads plainly.
COST = {"currency": "EUR", "gpuHourPrice": 3600.0, "reviewPrice": 0.5}
REQUESTS = 160


def _infer(url: str, x: np.ndarray) -> dict[str, Any]:
    client = httpclient.InferenceServerClient(url)
    inp = httpclient.InferInput("INPUT", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return dict(client.infer(MODEL, [inp]).get_response()["parameters"])


def _series(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "model"))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def _by_version(
    series: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> dict[str, float]:
    out: dict[str, float] = {}
    for (sample, key), value in series.items():
        got = dict(key)
        if sample == name and all(got.get(k) == v for k, v in labels.items()):
            out[got.get("version", "")] = out.get(got.get("version", ""), 0.0) + value
    return out


def _wait(what: str, check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def test_compute_and_review_cost_per_version_from_triton_to_status(
    tmp_path: Path,
    toy_repository: Path,
    toy_triton: TritonServer,
    sidecar_factory: Callable[..., SidecarProcess],
    webhook_receiver: Callable[..., WebhookReceiver],
    prometheus_factory: Callable[..., Prometheus],
) -> None:
    receiver = webhook_receiver()
    config = sidecar_config(
        toy_triton,
        toy_repository,
        tmp_path,
        spec={
            "confidence": {"reviewBelow": 0.8, "review": {"webhook": receiver.url, "maxFraction": 1.0}},
            "cost": COST,
        },
        routing={"stableVersion": "1", "canaryVersion": "2", "canaryWeight": 50},
        tuning={"tritonMetricsInterval": "0.2s"},
    )
    sidecar = sidecar_factory(config)
    target = sidecar.metrics_url.removeprefix("http://").removesuffix("/metrics")
    prometheus = prometheus_factory(
        [ScrapeJob("cost", [target], labels={"namespace": NAMESPACE, "guardedmodel_io_name": NAME})]
    )
    prometheus.wait_for('guardedmodel_cost_price{source="gpu_hour"}')
    time.sleep(1.5)  # a scrape before the traffic, so increase() sees all of it

    # Sequential traffic (one request per execution, so the compute counter is the busy time), a
    # mix of clear inputs and inputs between two classes that the guard sends to review.
    data = toy_data()
    clear = data.sample(REQUESTS, seed=5)[0]
    unsure = data.ambiguous(REQUESTS, seed=6)
    decisions = [
        _infer(sidecar.http_url, (unsure if i % 4 == 0 else clear)[i : i + 1])["guard_decision"]
        for i in range(REQUESTS)
    ]
    reviewed = decisions.count("review")
    assert 0 < reviewed < REQUESTS

    def settled() -> bool:
        series = _series(sidecar.metrics())
        done = sum(_by_version(series, "guardedmodel_triton_requests_total").values()) >= REQUESTS
        spooled = _by_version(series, "guardedmodel_review_items_total", outcome="spooled").get("", 0.0)
        return done and spooled >= reviewed

    _wait("Triton's counters and the spool to take in the traffic", settled)
    series = _series(sidecar.metrics())
    compute = _by_version(series, "guardedmodel_triton_compute_seconds_total")
    executions = _by_version(series, "guardedmodel_triton_executions_total")
    served = _by_version(series, "guardedmodel_triton_requests_total")
    reviews = _by_version(series, "guardedmodel_reviews_total")
    money = {
        source: _by_version(series, "guardedmodel_cost_total", source=source)
        for source in ("compute", "review")
    }
    predictions = _by_version(series, "guardedmodel_samples_total")
    assert set(compute) == {"1", "2"} and all(seconds > 0 for seconds in compute.values())
    assert executions == served  # sequential: every request its own execution
    for version, seconds in compute.items():
        # cost = compute seconds / 3600 x gpuHourPrice, within float rounding
        assert math.isclose(money["compute"][version], seconds / 3600 * COST["gpuHourPrice"], rel_tol=1e-9)
        assert math.isclose(
            money["review"][version], reviews.get(version, 0.0) * COST["reviewPrice"], rel_tol=1e-9
        )
    # every review answer went to people (maxFraction 1), counted once per version
    assert sum(reviews.values()) == reviewed
    assert series[("guardedmodel_review_items_total", (("outcome", "spooled"),))] == reviewed
    decided = _by_version(series, "guardedmodel_requests_total", decision="review")
    assert {v: n for v, n in reviews.items() if n} == {v: n for v, n in decided.items() if n}
    assert sum(predictions.values()) == REQUESTS

    # status.cost as the operator computes it from Prometheus, against the sidecar's exact counters
    # Every counter the figures read, as settled: reviews settle with the answers, the compute time
    # only with Triton's next republished metrics, so one scrape can hold the first and not the second.
    def scraped(name: str) -> float:
        return sum(float(r["value"][1]) for r in prometheus.query(name))

    _wait(
        "Prometheus to scrape the settled counters",
        lambda: (
            scraped("guardedmodel_reviews_total") >= reviewed
            and scraped("guardedmodel_samples_total") >= REQUESTS
            and math.isclose(
                scraped("guardedmodel_triton_compute_seconds_total"), sum(compute.values()), rel_tol=1e-6
            )
        ),
    )
    status = _fetch_status(prometheus.url)
    assert status is not None and status["currency"] == "EUR"
    figures = {v["version"]: v for v in status["versions"]}
    assert set(figures) == {"1", "2"}
    for version, got in figures.items():
        per_prediction = compute[version] / predictions[version]
        per_thousand = 1000 * reviews.get(version, 0.0) / predictions[version]
        # increase() extrapolates each series to the window's edges; the ratios stay close
        assert got["gpuSecondsPerPrediction"] == pytest.approx(per_prediction, rel=0.15)
        assert got["reviewsPerThousand"] == pytest.approx(per_thousand, rel=0.15, abs=1.0)
        expected = 1000 * per_prediction / 3600 * COST["gpuHourPrice"] + per_thousand * COST["reviewPrice"]
        assert got["costPerThousand"] == pytest.approx(expected, rel=0.15)
    print(
        "compute seconds per prediction:",
        {v: round(compute[v] / predictions[v], 6) for v in compute},
        "reviews per 1000:",
        {v: round(1000 * reviews.get(v, 0.0) / predictions[v], 1) for v in predictions},
    )


def _fetch_status(url: str) -> dict[str, Any] | None:
    async def go() -> dict[str, Any] | None:
        source = PrometheusSource(PrometheusSettings(url, min_window_s=0))
        try:
            prices = prices_of({"cost": COST})
            assert prices is not None
            return await fetch_cost(source, NAMESPACE, NAME, prices, 120.0)
        finally:
            await source.close()

    return asyncio.run(go())


def test_a_price_edit_reaches_the_running_sidecar_and_a_negative_price_is_refused(
    tmp_path: Path,
    k8s_cluster: Any,
    toy_repository: Path,
    toy_triton: TritonServer,
    sidecar_factory: Callable[..., SidecarProcess],
) -> None:
    namespace = f"cost-{free_port()}"
    install_crd(k8s_cluster, namespace)
    name = "priced"
    manifest = {
        "apiVersion": "guardedmodel.io/v1alpha1",
        "kind": "GuardedModel",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": {"name": MODEL, "repository": f"file://{toy_repository}", "version": "1"},
            "cost": {"gpuHourPrice": 2.5},
        },
    }
    k8s_cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))
    try:
        stored = k8s_cluster.kubectl_json("get", "guardedmodel", name, "-n", namespace)["spec"]["cost"]
        assert stored == {"currency": "USD", "gpuHourPrice": 2.5}  # the CRD's default currency
        config = sidecar_config(toy_triton, toy_repository, tmp_path, spec={"cost": stored})
        config["guardedModel"] = {"namespace": namespace, "name": name}
        sidecar = sidecar_factory(config, extra_args=("--kubeconfig", str(k8s_cluster.kubeconfig)))
        pid = sidecar.popen.pid if sidecar.popen else None

        def price(source: str) -> float | None:
            return _series(sidecar.metrics()).get(("guardedmodel_cost_price", (("source", source),)))

        assert price("gpu_hour") == 2.5
        patch = {"spec": {"cost": {"gpuHourPrice": 4.0, "reviewPrice": 0.08}}}
        k8s_cluster.kubectl(
            "patch", "guardedmodel", name, "-n", namespace, "--type=merge", "-p", json.dumps(patch)
        )
        _wait(
            "the sidecar to follow the new prices",
            lambda: price("gpu_hour") == 4.0 and price("review") == 0.08,
        )
        assert sidecar.popen is not None and sidecar.popen.pid == pid and sidecar.popen.poll() is None

        refused = k8s_cluster.kubectl(
            "patch",
            "guardedmodel",
            name,
            "-n",
            namespace,
            "--type=merge",
            "-p",
            json.dumps({"spec": {"cost": {"reviewPrice": -1}}}),
            check=False,
        )
        assert refused.returncode != 0 and "spec.cost.reviewPrice" in refused.stderr
        assert price("review") == 0.08
    finally:
        k8s_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
