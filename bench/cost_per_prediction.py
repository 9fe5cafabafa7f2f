"""Cost per prediction of the worked example, measured through a running sidecar on this machine.

One CPU Triton serves the worked Fashion-MNIST example; one sidecar with the example manifest's spec,
a review webhook (a local receiver) and ``spec.cost`` sits in front of it. Two runs, one after the
other, each read from the sidecar's own counters:

  demo mix   the demo's traffic (``guardedmodel demo``: in-distribution, held-out classes, digits,
             inverted, grey-shifted, out-of-range and NaN inputs, ``--requests`` each), one request
             per input: compute seconds per prediction and reviews per 1,000 predictions;
  batch 32   in-distribution rows in requests of 32 rows: compute seconds per prediction when one
             execution serves a client batch.

Sequential requests, so every request is its own execution and Triton's compute time is the
backend's busy time (see the sidecar's triton_metrics module). On this CPU machine the figure is
CPU-seconds; on a GPU node the same counter gives GPU-seconds.

    python bench/cost_per_prediction.py [--requests 40] [--out bench/results/cost.json]
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import json
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "examples" / "fashion-mnist.yaml"
# Illustrative prices: a GPU at 2.50 an hour, a person's review at 0.08.
COST = {"currency": "USD", "gpuHourPrice": 2.5, "reviewPrice": 0.08}


class _Accept(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def review_webhook() -> Iterator[str]:
    """A loopback webhook that takes every review item."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Accept)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/review"
    finally:
        server.shutdown()


def counters(metrics_url: str) -> dict[str, dict[str, float]]:
    """family sample name -> version (or outcome / source for the model-wide ones) -> value."""
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = s.labels.get("version") or s.labels.get("outcome") or ""
            if s.name == "guardedmodel_cost_total":
                key = f"{s.labels['version']}/{s.labels['source']}"
            if s.name == "guardedmodel_requests_total":
                key = f"{s.labels['version']}/{s.labels['decision']}"
            out.setdefault(s.name, {})[key] = out.get(s.name, {}).get(key, 0.0) + s.value
    return out


def delta(
    after: dict[str, dict[str, float]], before: dict[str, dict[str, float]], name: str, key: str
) -> float:
    return after.get(name, {}).get(key, 0.0) - before.get(name, {}).get(key, 0.0)


def settle(
    metrics_url: str, before: dict[str, dict[str, float]], rows_per_request: int
) -> dict[str, dict[str, float]]:
    """The counters once Triton's request count (read by the sidecar every 0.2 s) covers every row the
    guard scored since `before` (gate refusals never reach Triton; OOD rejections do)."""
    deadline = time.monotonic() + 30
    while True:
        now = counters(metrics_url)
        scored = delta(now, before, "guardedmodel_samples_total", "1")
        if delta(now, before, "guardedmodel_triton_requests_total", "1") * rows_per_request >= scored:
            time.sleep(0.5)  # the review items land in the spool meanwhile
            return counters(metrics_url)
        if time.monotonic() > deadline:
            raise TimeoutError(f"Triton's counters never caught up with {scored} scored rows: {now}")
        time.sleep(0.2)


def figures(after: dict[str, dict[str, float]], before: dict[str, dict[str, float]]) -> dict[str, Any]:
    predictions = delta(after, before, "guardedmodel_samples_total", "1")
    compute = delta(after, before, "guardedmodel_triton_compute_seconds_total", "1")
    requests = delta(after, before, "guardedmodel_triton_requests_total", "1")
    executions = delta(after, before, "guardedmodel_triton_executions_total", "1")
    reviews = delta(after, before, "guardedmodel_reviews_total", "1")
    answered_review = delta(after, before, "guardedmodel_requests_total", "1/review")
    money = sum(delta(after, before, "guardedmodel_cost_total", f"1/{s}") for s in ("compute", "review"))
    return {
        "predictions": predictions,
        "triton_requests": requests,
        "triton_executions": executions,
        "compute_seconds": compute,
        "compute_seconds_per_prediction": compute / predictions,
        "compute_seconds_per_request": compute / requests,
        "reviews_sent": reviews,
        "reviews_per_thousand": 1000 * reviews / predictions,
        "answered_review_per_thousand": 1000 * answered_review / predictions,
        "cost_per_thousand": 1000 * money / predictions,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40, help="requests per demo traffic category")
    parser.add_argument("--batches", type=int, default=20, help="requests of 32 rows in the batch run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cost.json")
    args = parser.parse_args()

    from guardedmodel_cli.demo_traffic import MODEL, send, send_batches, traffic_sets
    from guardedmodel_fit.example import DEFAULT_OUT, build_example
    from guardedmodel_testground.procs import ManagedProcess, http_ok, wait_until
    from guardedmodel_testground.sidecar_config import sidecar_command, sidecar_config
    from guardedmodel_testground.triton import TritonServer

    build = build_example(DEFAULT_OUT, versions=("1",), progress=True)
    spec = yaml.safe_load(MANIFEST.read_text())["spec"]
    spec.pop("rollout", None)
    work = Path(tempfile.mkdtemp(prefix="cost-bench-"))
    with contextlib.ExitStack() as stack:
        webhook = stack.enter_context(review_webhook())
        spec["confidence"]["review"]["webhook"] = webhook
        spec["cost"] = COST
        triton = stack.enter_context(
            TritonServer(build.repository, model_control_mode="explicit", log_dir=work)
        )
        config = sidecar_config(
            spec,
            triton=triton,
            repository=build.repository,
            workdir=work,
            triton_metrics_port=triton.metrics_port,
            tuning={"tritonMetricsInterval": "0.2s"},
        )
        config_path = work / "sidecar.yaml"
        config_path.write_text(yaml.safe_dump(config))
        sidecar = ManagedProcess(
            "sidecar", sidecar_command(config_path, "--log-level", "WARNING"), work / "sidecar.log"
        )
        stack.callback(sidecar.stop)
        sidecar.start()
        address = f"127.0.0.1:{config['listen']['http']}"
        metrics_url = f"http://127.0.0.1:{config['listen']['metrics']}/metrics"
        ready = f"http://{address}/v2/models/{MODEL}/versions/1/ready"
        wait_until("the sidecar", lambda: http_ok(ready), 120, process=sidecar)

        before = counters(metrics_url)
        data = traffic_sets(build, args.requests)
        decisions = {name: dict(send(address, inputs).decisions) for name, inputs in data.items()}
        mixed = settle(metrics_url, before, 1)
        demo = figures(mixed, before)

        rows = np.asarray(build.dataset("validation").inputs, dtype=np.float32)[: 32 * args.batches]
        send_batches(address, rows, batch=32)
        batched = settle(metrics_url, mixed, 32)
        batch32 = figures(batched, mixed)

    result = {
        "machine": "CPU Triton (test ground), Python backend; sequential requests",
        "prices": COST,
        "demo_mix": {**demo, "requests_per_category": args.requests, "decisions": decisions},
        "batch_32": batch32,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"demo_mix": demo, "batch_32": batch32}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
