"""The closed-loop load generator of the sidecar benchmark, run as its own process per cell
(``sidecar_vs_triton.py --worker``): ``concurrency`` streams of binary-tensor infer requests, one
connection each, over HTTP or gRPC."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np


async def _closed_loop(send: Callable[[], Awaitable[object]], deadline: float, lat: list[float]) -> int:
    """Send back to back until ``deadline``, one latency per answer; returns the number of answers."""
    count = 0
    perf = time.perf_counter
    while True:
        t0 = perf()
        if t0 >= deadline:
            break
        await send()
        lat.append(perf() - t0)
        count += 1
    return count


async def _http_worker(
    url: str, path: str, body: list[bytes], header_len: int, deadline: float, lat: list[float]
) -> int:
    from guardedmodel_sidecar.upstream import TritonHttp

    client = TritonHttp(url, max_connections=2)
    extra = f"Inference-Header-Content-Length: {header_len}\r\n"

    async def send() -> None:
        response = await client.request("POST", path, body, extra)
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {bytes(response.body[:300])!r}")

    count = await _closed_loop(send, deadline, lat)
    client.close()
    return count


async def _grpc_worker(url: str, message: Any, deadline: float, lat: list[float]) -> int:
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    channel = grpc.aio.insecure_channel(url)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    count = await _closed_loop(lambda: stub.ModelInfer(message), deadline, lat)
    await channel.close()
    return count


def run_load(args: argparse.Namespace) -> dict[str, Any]:
    """One cell: closed loop with ``concurrency`` streams for ``seconds`` after a warm-up."""
    import uvloop

    x = np.load(args.inputs)[: args.batch].astype(np.float32)
    if x.shape[0] < args.batch:
        x = np.resize(x, (args.batch, *x.shape[1:]))
    header = {
        "inputs": [
            {
                "name": "INPUT",
                "datatype": "FP32",
                "shape": list(x.shape),
                "parameters": {"binary_data_size": x.nbytes},
            }
        ],
        "outputs": [{"name": "LOGITS", "parameters": {"binary_data": True}}],
    }
    header_bytes = json.dumps(header).encode()
    body = [header_bytes, x.tobytes()]

    async def cell(seconds: float) -> tuple[int, list[float]]:
        lat: list[float] = []
        deadline = time.perf_counter() + seconds
        if args.protocol == "http":
            tasks = [
                _http_worker(
                    args.url, f"/v2/models/{args.model}/infer", body, len(header_bytes), deadline, lat
                )
                for _ in range(args.concurrency)
            ]
        else:
            from tritonclient.grpc import service_pb2

            msg = service_pb2.ModelInferRequest(model_name=args.model)
            tensor = msg.inputs.add()
            tensor.name, tensor.datatype = "INPUT", "FP32"
            tensor.shape.extend(x.shape)
            msg.outputs.add().name = "LOGITS"
            msg.raw_input_contents.append(x.tobytes())
            tasks = [_grpc_worker(args.url, msg, deadline, lat) for _ in range(args.concurrency)]
        counts = await asyncio.gather(*tasks)
        return sum(counts), lat

    uvloop.install()
    asyncio.run(cell(args.warmup))
    sys.stdout.write("START\n")
    sys.stdout.flush()
    t0 = time.perf_counter()
    count, lat = asyncio.run(cell(args.seconds))
    elapsed = time.perf_counter() - t0
    lat_ms = np.asarray(lat) * 1000.0
    return {
        "requests": count,
        "seconds": elapsed,
        "rps": count / elapsed,
        "p50_ms": float(np.percentile(lat_ms, 50)),
        "p99_ms": float(np.percentile(lat_ms, 99)),
    }
