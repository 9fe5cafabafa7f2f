"""The soak's traffic: a fixed mix of in-distribution, out-of-distribution and malformed v2 requests,
over HTTP and gRPC, sent open-loop at a fixed rate, every answer checked against its class.

The mix repeats every ``len(PLAN)`` requests, so any stretch of the soak sends the same proportions:
good rows must be answered (HTTP 200 / gRPC OK, guard decision ``accept``), OOD rows refused by the
guard (HTTP 422 with ``Guard-Decision: reject`` and a v2 error body / gRPC INVALID_ARGUMENT saying
"out of distribution"), malformed requests refused before the model (HTTP 400 with a v2 error body /
gRPC INVALID_ARGUMENT). An answer of the wrong class, a transport error or a timeout is a mismatch.

Open loop: request ``i`` is due at ``start + i / rate`` whatever the answers before it did, and its
latency counts from that due time, so a stall shows in the latency instead of slowing the sender.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import grpc
import numpy as np
from sidecar_toy import INPUT_DIM, MODEL, toy_data
from tritonclient.grpc import service_pb2, service_pb2_grpc

GOOD, OOD, BAD = "good", "ood", "bad"
HTTP, GRPC = "http", "grpc"
INFER_PATH = f"/v2/models/{MODEL}/infer"
POOL = 64  # distinct rows per class, cycled
# Well inside the toy classes (the fit used spread 0.06): far below the OOD threshold, so "good" is
# good for every row of the pool, not for most.
GOOD_SPREAD = 0.02


@dataclass(frozen=True)
class Case:
    kind: str  # good | ood | bad
    protocol: str  # http | grpc
    name: str  # which request of its kind (for the report)
    http_body: bytes = b""
    http_header_length: int | None = None  # binary-tensor request: Inference-Header-Content-Length
    grpc_message: Any = None


def _json_doc(x: np.ndarray, datatype: str = "FP32", shape: list[int] | None = None) -> bytes:
    tensor = {
        "name": "INPUT",
        "datatype": datatype,
        "shape": shape or list(x.shape),
        "data": x.ravel().tolist(),
    }
    return json.dumps({"inputs": [tensor]}, separators=(",", ":")).encode()


def _binary_doc(x: np.ndarray) -> tuple[bytes, int]:
    raw = x.astype("<f4").tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "INPUT",
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "LOGITS", "parameters": {"binary_data": True}}],
        },
        separators=(",", ":"),
    ).encode()
    return header + raw, len(header)


def _proto(shape: list[int], raw: bytes, datatype: str = "FP32") -> Any:
    message = service_pb2.ModelInferRequest(model_name=MODEL)
    message.inputs.add(name="INPUT", datatype=datatype, shape=shape)
    message.raw_input_contents.append(raw)
    return message


def _rows(kind: str, seed: int) -> np.ndarray:
    data = toy_data()
    if kind == GOOD:
        return data.sample(POOL, seed=seed, spread=GOOD_SPREAD)[0]
    return data.far_ood(POOL, seed=seed)


def build_cases(seed: int = 0) -> list[list[Case]]:
    """One list of interchangeable requests per slot of PLAN (the slot fixes kind and protocol)."""
    good, ood = _rows(GOOD, seed), _rows(OOD, seed + 1)
    row = lambda x, i: x[i : i + 1]  # noqa: E731 - a batch of one row
    slots: dict[tuple[str, str, str], list[Case]] = {
        (GOOD, HTTP, "json"): [Case(GOOD, HTTP, "json", _json_doc(row(good, i))) for i in range(POOL)],
        (GOOD, HTTP, "binary"): [Case(GOOD, HTTP, "binary", *_binary_doc(row(good, i))) for i in range(POOL)],
        (GOOD, GRPC, "raw"): [
            Case(GOOD, GRPC, "raw", grpc_message=_proto([1, INPUT_DIM], row(good, i).tobytes()))
            for i in range(POOL)
        ],
        (OOD, HTTP, "json"): [Case(OOD, HTTP, "json", _json_doc(row(ood, i))) for i in range(POOL)],
        (OOD, GRPC, "raw"): [
            Case(OOD, GRPC, "raw", grpc_message=_proto([1, INPUT_DIM], row(ood, i).tobytes()))
            for i in range(POOL)
        ],
        (BAD, HTTP, "bad_json"): [Case(BAD, HTTP, "bad_json", b'{"inputs": [{"name": "INPUT", ')],
        (BAD, HTTP, "wrong_shape"): [Case(BAD, HTTP, "wrong_shape", _json_doc(good[:1, : INPUT_DIM - 1]))],
        (BAD, HTTP, "wrong_dtype"): [
            Case(BAD, HTTP, "wrong_dtype", _json_doc(np.ones((1, INPUT_DIM), dtype=np.int32), "INT32"))
        ],
        (BAD, GRPC, "wrong_shape"): [
            Case(BAD, GRPC, "wrong_shape", grpc_message=_proto([1, INPUT_DIM - 1], good[0, :-1].tobytes()))
        ],
        (BAD, GRPC, "wrong_dtype"): [
            Case(
                BAD,
                GRPC,
                "wrong_dtype",
                grpc_message=_proto([1, INPUT_DIM], np.ones(INPUT_DIM, np.int32).tobytes(), "INT32"),
            )
        ],
        (BAD, GRPC, "short_raw"): [
            Case(BAD, GRPC, "short_raw", grpc_message=_proto([1, INPUT_DIM], good[0, :-1].tobytes()))
        ],
    }
    return [slots[slot] for slot in PLAN]


# Twenty requests, ten over each protocol: 10 good (50 %), 4 OOD (20 %), 6 malformed (30 %).
PLAN: tuple[tuple[str, str, str], ...] = (
    (GOOD, HTTP, "json"),
    (GOOD, GRPC, "raw"),
    (OOD, HTTP, "json"),
    (GOOD, HTTP, "binary"),
    (BAD, GRPC, "wrong_shape"),
    (GOOD, GRPC, "raw"),
    (GOOD, HTTP, "json"),
    (OOD, GRPC, "raw"),
    (BAD, HTTP, "bad_json"),
    (GOOD, GRPC, "raw"),
    (GOOD, HTTP, "binary"),
    (BAD, GRPC, "wrong_dtype"),
    (GOOD, HTTP, "json"),
    (OOD, GRPC, "raw"),
    (BAD, HTTP, "wrong_shape"),
    (GOOD, GRPC, "raw"),
    (BAD, GRPC, "short_raw"),
    (OOD, HTTP, "json"),
    (GOOD, GRPC, "raw"),
    (BAD, HTTP, "wrong_dtype"),
)


@dataclass(frozen=True)
class Answer:
    due: float  # monotonic time the request was due
    latency_s: float  # from due to answer
    kind: str
    protocol: str
    name: str
    ok: bool  # the answer is of the request's class
    detail: str  # what came back, short


def _http_verdict(kind: str, status: int, headers: Any, body: bytes) -> tuple[bool, str]:
    decision = headers.get("Guard-Decision", "")
    detail = f"HTTP {status} decision={decision or '-'}"
    if kind == GOOD:
        return status == 200 and decision == "accept", detail
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return False, f"{detail} body is not a v2 error: {body[:120]!r}"
    if not isinstance(error, str) or not error:
        return False, f"{detail} body is not a v2 error: {body[:120]!r}"
    if kind == OOD:
        return status == 422 and decision == "reject" and "out of distribution" in error, detail
    return status == 400, f"{detail} {error[:80]}"


def _grpc_verdict(kind: str, code: grpc.StatusCode, details: str, response: Any) -> tuple[bool, str]:
    detail = f"gRPC {code.name}"
    if kind == GOOD:
        decision = response.parameters["guard_decision"].string_param if response is not None else ""
        return code == grpc.StatusCode.OK and decision == "accept", f"{detail} decision={decision or '-'}"
    if kind == OOD:
        return code == grpc.StatusCode.INVALID_ARGUMENT and "out of distribution" in details, detail
    return code == grpc.StatusCode.INVALID_ARGUMENT and bool(details), f"{detail} {details[:80]}"


@dataclass
class Traffic:
    """Open-loop sender to one sidecar; answers go to ``on_answer`` as they arrive."""

    http_address: str  # host:port
    grpc_address: str
    rate: float  # requests per second, all kinds and protocols together
    on_answer: Callable[[Answer], None]
    timeout_s: float = 10.0
    max_outstanding: int = 256  # beyond this the sender is saturated: counted, not sent
    seed: int = 0
    sent: int = 0
    not_sent: int = 0  # due while max_outstanding requests were unanswered
    _outstanding: set[asyncio.Task[None]] = field(default_factory=set)

    async def run(self, seconds: float) -> None:
        cases = build_cases(self.seed)
        http = aiohttp.ClientSession(
            f"http://{self.http_address}",
            connector=aiohttp.TCPConnector(limit=32),
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
        )
        channel = grpc.aio.insecure_channel(self.grpc_address)
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            start = time.monotonic()
            total = int(seconds * self.rate)
            for i in range(total):
                due = start + i / self.rate
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if len(self._outstanding) >= self.max_outstanding:
                    self.not_sent += 1
                    continue
                slot = cases[i % len(cases)]
                case = slot[(i // len(cases)) % len(slot)]
                task = asyncio.create_task(self._send(case, due, http, stub))
                self._outstanding.add(task)
                task.add_done_callback(self._outstanding.discard)
                self.sent += 1
            if self._outstanding:
                await asyncio.wait(set(self._outstanding))
        finally:
            await http.close()
            await channel.close()

    async def _send(self, case: Case, due: float, http: aiohttp.ClientSession, stub: Any) -> None:
        try:
            if case.protocol == HTTP:
                ok, detail = await self._http(case, http)
            else:
                ok, detail = await self._grpc(case, stub)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            ok, detail = False, f"{case.protocol} transport error: {type(exc).__name__}: {exc}"
        self.on_answer(Answer(due, time.monotonic() - due, case.kind, case.protocol, case.name, ok, detail))

    async def _http(self, case: Case, http: aiohttp.ClientSession) -> tuple[bool, str]:
        headers = {"Content-Type": "application/json"}
        if case.http_header_length is not None:
            headers = {
                "Content-Type": "application/octet-stream",
                "Inference-Header-Content-Length": str(case.http_header_length),
            }
        async with http.post(INFER_PATH, data=case.http_body, headers=headers) as response:
            body = await response.read()
            return _http_verdict(case.kind, response.status, response.headers, body)

    async def _grpc(self, case: Case, stub: Any) -> tuple[bool, str]:
        try:
            response = await stub.ModelInfer(case.grpc_message, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            return _grpc_verdict(case.kind, exc.code(), exc.details() or "", None)
        return _grpc_verdict(case.kind, grpc.StatusCode.OK, "", response)
