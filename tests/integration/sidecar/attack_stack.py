"""The live target of the attack suite and the fuzzer: a real Triton serving the toy model and one real
sidecar process in front of it, started with small limits so that timeouts and size checks trip fast.

Shared by ``test_sidecar_attacks.py`` (a module fixture) and ``bench/fuzz_sidecar.py`` (``make fuzz``),
so the fuzzer attacks exactly what the tests attack. Also the v2 payloads both start from.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import SidecarProcess, launch_sidecar, sidecar_config
from sidecar_toy import INPUT_DIM, MODEL, toy_data

from guardedmodel_testground.triton import TritonServer

MIB = 1024 * 1024

# Small where small makes a test fast, and otherwise the defaults of guardedmodel_sidecar.limits.
# The timeouts are what the slowloris tests wait for; the body and decompression limits are what the
# bombs are measured against; maxConnections is what the connection flood goes beyond.
ATTACK_LIMITS: dict[str, Any] = {
    "headerTimeout": "1s",
    "bodyTimeout": "1s",
    "idleTimeout": "2s",
    "maxBodyBytes": 16 * MIB,
    "maxJsonBodyBytes": 8 * MIB,
    "maxDecompressedBytes": 16 * MIB,
    "maxGrpcMessageBytes": 16 * MIB,
    "maxConnections": 64,
}


@dataclass
class AttackStack:
    triton: TritonServer
    sidecar: SidecarProcess
    limits: dict[str, Any]

    @property
    def http(self) -> str:
        return self.sidecar.http_url

    @property
    def grpc(self) -> str:
        return self.sidecar.grpc_url

    @property
    def pid(self) -> int:
        assert self.sidecar.popen is not None
        return self.sidecar.popen.pid

    @property
    def triton_metrics(self) -> str:
        return f"http://127.0.0.1:{self.triton.metrics_port}/metrics"

    def limit_bytes(self, key: str) -> int:
        return int(self.limits[key])


@contextmanager
def attack_stack(
    repository: Path, work: Path, *, limits: dict[str, Any] | None = None
) -> Iterator[AttackStack]:
    """Triton (explicit model control) and one sidecar (audit on, no payload samples, small limits)."""
    limits = dict(ATTACK_LIMITS if limits is None else limits)
    triton = TritonServer(repository, model_control_mode="explicit", log_dir=work / "logs")
    triton.start()
    sidecar: SidecarProcess | None = None
    try:
        config = sidecar_config(
            triton,
            repository,
            work,
            spec={"audit": {"enabled": True, "sampleRate": 0.0}},
            tuning={"tritonMetricsInterval": "1s"},
            limits=limits,
        )
        sidecar = launch_sidecar(config, work, "attacked-sidecar")
        sidecar.wait_ready()
        yield AttackStack(triton, sidecar, limits)
    finally:
        if sidecar is not None:
            sidecar.stop()
        triton.stop()


# ------------------------------------------------------------------------------------ v2 payloads

INFER_PATH = f"/v2/models/{MODEL}/infer"


def sample_rows(batch: int = 1, seed: int = 0) -> list[list[float]]:
    x, _ = toy_data().sample(batch, seed=seed)
    return [[float(v) for v in row] for row in x]


def json_infer(batch: int = 1, *, request_id: str = "", seed: int = 0, **extra: Any) -> dict[str, Any]:
    rows = sample_rows(batch, seed)
    doc: dict[str, Any] = {
        "inputs": [
            {
                "name": "INPUT",
                "datatype": "FP32",
                "shape": [batch, INPUT_DIM],
                "data": [v for row in rows for v in row],
            }
        ]
    }
    if request_id:
        doc["id"] = request_id
    doc.update(extra)
    return doc


def json_body(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def binary_infer(batch: int = 1, *, seed: int = 0) -> tuple[bytes, int]:
    """(body, Inference-Header-Content-Length) of a binary-tensor infer request."""
    rows = sample_rows(batch, seed)
    raw = struct.pack(f"<{batch * INPUT_DIM}f", *(v for row in rows for v in row))
    header = json_body(
        {
            "inputs": [
                {
                    "name": "INPUT",
                    "datatype": "FP32",
                    "shape": [batch, INPUT_DIM],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "LOGITS", "parameters": {"binary_data": True}}],
        }
    )
    return header + raw, len(header)


def proto_infer(batch: int = 1, *, request_id: str = "", seed: int = 0, raw: bool = True) -> Any:
    """A valid ModelInferRequest (raw_input_contents, or typed fp32_contents with ``raw=False``)."""
    from tritonclient.grpc import service_pb2

    rows = sample_rows(batch, seed)
    flat = [v for row in rows for v in row]
    msg = service_pb2.ModelInferRequest(model_name=MODEL, id=request_id)
    tensor = msg.inputs.add(name="INPUT", datatype="FP32", shape=[batch, INPUT_DIM])
    if raw:
        msg.raw_input_contents.append(struct.pack(f"<{len(flat)}f", *flat))
    else:
        tensor.contents.fp32_contents.extend(flat)
    return msg
