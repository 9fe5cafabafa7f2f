"""Latency of the example as a Triton ensemble vs. the classifier alone, direct and through the sidecar.

    .venv/bin/python bench/ensemble_latency.py [--seconds 5]

One CPU Triton (explicit model control) holds the chain (``fashion-mnist-chain``: an unflatten step,
then the classifier) and the classifier; one sidecar guards each. A single closed-loop HTTP client
(binary tensors, one request at a time) sends the same in-distribution rows, batch 1 and 32, to each
of the four endpoints for ``--seconds``; the table gives p50 / p99 per request. The chain's guard is
fitted through Triton first (a few seconds). Writes bench/results/ensemble_latency.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from sidecar_vs_triton import _wait_ready

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def start_sidecar(
    work: Path, name: str, model: str, gate_input: dict[str, Any], repository: Path, triton: Any
) -> tuple[subprocess.Popen[bytes], str]:
    from guardedmodel_testground.sidecar_config import sidecar_command, sidecar_config

    spec = {
        "model": {"name": model, "version": "1"},
        "gate": {"inputs": [gate_input], "ood": {"method": "mahalanobis", "action": "reject"}},
        "confidence": {"reviewBelow": 0.0, "review": {"maxFraction": 0.0}},
        "audit": {"enabled": True, "sampleRate": 0.01},
        "drift": {"window": "60s"},
    }
    config = sidecar_config(spec, triton=triton, repository=repository, workdir=work / name)
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    log = work / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            sidecar_command(path, "--log-level", "WARNING"), stdout=out, stderr=subprocess.STDOUT
        )
    url = f"127.0.0.1:{config['listen']['http']}"
    _wait_ready(proc, f"http://{url}/v2/health/ready", log)
    return proc, url


def measure(url: str, model: str, input_name: str, x: np.ndarray, seconds: float) -> dict[str, float]:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url)
    inp = httpclient.InferInput(input_name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    outputs = [httpclient.InferRequestedOutput("LOGITS", binary_data=True)]
    for _ in range(10):  # warm the connection and the models
        client.infer(model, [inp], outputs=outputs)
    times: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.perf_counter()
        client.infer(model, [inp], outputs=outputs)
        times.append(time.perf_counter() - started)
    ms = np.array(times) * 1000
    return {
        "requests": len(ms),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per cell")
    args = parser.parse_args()
    sys.path[:0] = [str(ROOT / d) for d in ("sidecar", "testground", "cli", "operator")]
    import tritonclient.http as httpclient

    from guardedmodel_fit.example import DEFAULT_OUT, build_example
    from guardedmodel_fit.example_ensemble import (
        ENSEMBLE_INPUT,
        ENSEMBLE_INPUT_SHAPE,
        ENSEMBLE_NAME,
        fit_ensemble_guard,
        write_ensemble_repository,
    )
    from guardedmodel_fit.example_network import INPUT_NAME, INPUT_SHAPE, MODEL_NAME
    from guardedmodel_testground.triton import TritonServer

    example = build_example(DEFAULT_OUT, versions=["1"], progress=False)
    rows = example.dataset("validation").inputs[:32].astype(np.float32)
    cells: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ensemble-latency-") as tmp:
        work = Path(tmp)
        layout = write_ensemble_repository(example.model_dir, work / "models")
        shutil.copytree(example.model_dir / "1" / "guard", layout.repository / MODEL_NAME / "1" / "guard")
        triton = TritonServer(layout.repository, model_control_mode="explicit", log_dir=work / "logs").start()
        procs: list[subprocess.Popen[bytes]] = []
        try:
            httpclient.InferenceServerClient(triton.http_url).load_model(ENSEMBLE_NAME)
            fit_ensemble_guard(example, layout, triton.http_url)
            models = {
                "classifier": (MODEL_NAME, INPUT_NAME, INPUT_SHAPE),
                "chain": (ENSEMBLE_NAME, ENSEMBLE_INPUT, ENSEMBLE_INPUT_SHAPE),
            }
            urls = {}
            for label, (model, name, shape) in models.items():
                gate = {"name": name, "datatype": "FP32", "shape": list(shape), "min": 0.0, "max": 1.0}
                proc, urls[label] = start_sidecar(work, label, model, gate, layout.repository, triton)
                procs.append(proc)
            for batch in (1, 32):
                for label, (model, name, shape) in models.items():
                    x = np.ascontiguousarray(rows[:batch].reshape(batch, *shape))
                    for path, url in (("direct", triton.http_url), ("sidecar", urls[label])):
                        cell = {"model": label, "path": path, "batch": batch}
                        cell |= measure(url, model, name, x, args.seconds)
                        cells.append(cell)
                        print(
                            f"{label:10s} {path:7s} batch {batch:2d}: p50 {cell['p50_ms']:6.2f} ms  p99 {cell['p99_ms']:6.2f} ms  ({cell['requests']} requests)",
                            flush=True,
                        )
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(timeout=15)
            triton.stop()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ensemble_latency.json").write_text(
        json.dumps({"seconds": args.seconds, "cells": cells}, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
