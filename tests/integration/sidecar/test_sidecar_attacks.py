"""Attacks on the live sidecar over real sockets, with a real Triton behind it.

Every attack class the hardening addresses has a parametrized test here: HTTP/1.1 framing and
smuggling, body and header limits, slowloris, decompression bombs (HTTP and gRPC), element bombs,
malformed JSON, pipelining and connection floods, the control endpoints Triton must never see through
the sidecar, malformed gRPC metadata, raw HTTP/2 frame abuse, gRPC stream errors and rapid cancels,
and a short fuzz run. After each attack the same three things are checked:

- the sidecar answers ``ready`` within 1 s on both protocols (a fresh connection each);
- its peak RSS grew by less than ``MEMORY_BUDGET_MIB`` and it used less than ``CPU_BUDGET_S`` of CPU
  during the attack (``/proc/<pid>``);
- the reply was a 4xx (or the connection was closed, for framing no server can answer), or a gRPC
  status other than INTERNAL and UNKNOWN — and, where the request was refused, Triton never saw it.

The sidecar runs with small limits (``attack_stack.ATTACK_LIMITS``: 1 s header and body timeouts, 2 s
idle, 64 connections) so the timeouts trip within a test's patience.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import struct
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from attack_fuzz import Fuzzer
from attack_h2 import (
    ACK,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    HEADERS,
    PADDED,
    PING,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    RawH2,
    StreamResult,
    encode_fields,
    frame,
    grpc_message,
    grpc_request_fields,
)
from attack_stack import (
    INFER_PATH,
    MIB,
    AttackStack,
    attack_stack,
    binary_infer,
    json_body,
    json_infer,
    proto_infer,
)
from attack_wire import (
    Cost,
    Exchange,
    RawHttp,
    deflate_bomb,
    exchange,
    grpc_ready,
    http_ready,
    measured,
    request_bytes,
    triton_inference_count,
)
from sidecar_toy import INPUT_DIM, MODEL
from tritonclient.grpc import service_pb2

pytestmark = pytest.mark.integration

# ------------------------------------------------------------------------------------ budgets

# Peak RSS growth allowed during one attack. The sidecar holds at most one body at the body limit
# (16 MiB here) plus its decoding; 64 MiB is four times that and far below what an unbounded buffer,
# an inflated bomb (1 GiB) or a decoded element bomb cost before the hardening (256-955 MiB).
MEMORY_BUDGET_MIB = 64
# A JSON body is decoded to Python objects before its declared shapes can be checked: orjson alone
# takes ~85 MiB for the 1M one-element strings of a 5 MB body (measured). The bound is the JSON body
# limit times that expansion, not the declared element count, so element bombs get this budget.
JSON_ELEMENT_BOMB_BUDGET_MIB = 128
# CPU the sidecar may spend on one attack. Legitimate work in these tests (a thousand pipelined health
# checks, 500 cancelled calls, a 5 MB JSON parse) costs well under a second on this machine; a parse
# loop that spins, replays a request or inflates a bomb costs seconds to forever.
CPU_BUDGET_S = 2.0
# What "answers ready" means after an attack, per protocol, on a fresh connection.
READY_WITHIN_S = 1.0
# A framing error is found while parsing, not by a timeout: its verdict must come before the 1 s
# header timeout could have produced it.
FRAMING_VERDICT_S = 0.9
# Slack on top of a configured timeout before a test calls the connection "not closed" (a loaded CI
# machine schedules late; the timeouts themselves are 1-2 s).
TIMEOUT_SLACK_S = 1.5
# Set to a file name to have every attack's cost appended to it (JSON lines), for reports.
COSTS_FILE = os.environ.get("GUARDEDMODEL_ATTACK_COSTS", "")
SMUGGLED = b"GET /v2/logging HTTP/1.1\r\nHost: sidecar\r\n\r\n"
# grpc core (grpcio's server) rejects some malformed calls itself, in its transport filters, before any
# handler of the sidecar runs: unparseable grpc-timeout or grpc-encoding metadata, a compressed flag with
# no encoding, a payload that does not inflate. It answers those with INTERNAL and one of these
# messages. The status is grpcio's, not the sidecar's (the sidecar never saw the call, and cannot
# answer it differently without owning HTTP/2 again); these are the only INTERNALs the tests accept.
GRPC_CORE_REJECTIONS = (
    "Error parsing '",
    "Compression bit set but no encoding configured",
    "Decompression failed",
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, toy_repository: Path) -> Iterator[AttackStack]:
    with attack_stack(toy_repository, tmp_path_factory.mktemp("attacks")) as live:
        yield live


def assert_ready(stack: AttackStack, when: str = "after the attack") -> None:
    assert stack.sidecar.popen is not None and stack.sidecar.popen.poll() is None, (
        f"the sidecar died {when} (exit {stack.sidecar.popen.returncode if stack.sidecar.popen else '?'})"
    )
    ok, seconds, seen = http_ready(stack.http, READY_WITHIN_S)
    assert ok, f"HTTP /v2/health/ready not 200 within {READY_WITHIN_S}s {when} ({seconds:.2f}s: {seen})"
    ok, seconds, seen = grpc_ready(stack.grpc, READY_WITHIN_S)
    assert ok, f"gRPC ServerReady not ready=True within {READY_WITHIN_S}s {when} ({seconds:.2f}s: {seen})"


@contextmanager
def attack(
    stack: AttackStack,
    *,
    memory_mib: float = MEMORY_BUDGET_MIB,
    cpu_s: float = CPU_BUDGET_S,
    triton_untouched: bool = False,
) -> Iterator[Cost]:
    """Measure the sidecar while the body runs; afterwards it must be ready, within budget, and (for
    refused requests) Triton must not have executed anything."""
    before = triton_inference_count(stack.triton_metrics, MODEL) if triton_untouched else 0.0
    with measured(stack.pid) as cost:
        yield cost
    assert_ready(stack)
    if COSTS_FILE:
        with open(COSTS_FILE, "a") as f:
            test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
            f.write(
                json.dumps({"test": test, "peak_mib": round(cost.peak_growth / MIB, 1), "cpu_s": cost.cpu_s})
                + "\n"
            )
    assert cost.peak_growth < memory_mib * MIB, f"memory over the {memory_mib} MiB budget: {cost.describe()}"
    assert cost.cpu_s < cpu_s, f"CPU over the {cpu_s} s budget: {cost.describe()}"
    if triton_untouched:
        after = triton_inference_count(stack.triton_metrics, MODEL)
        assert after == before, f"Triton executed {after - before:.0f} request(s) for a refused request"


def refused_http(ex: Exchange, allowed: tuple[int, ...] = ()) -> bool:
    """At most one reply, a 4xx (or one of ``allowed``), and the connection closed."""
    ok_statuses = all(400 <= r.status < 500 or r.status in allowed for r in ex.replies)
    return ex.closed and len(ex.replies) <= 1 and ok_statuses and not ex.parse_error


def grpc_call(
    stack: AttackStack,
    method: str,
    body: bytes,
    *,
    timeout: float = 10.0,
    metadata: list[tuple[str, str]] | None = None,
    compression: grpc.Compression | None = None,
) -> tuple[grpc.StatusCode, str, bytes]:
    with grpc.insecure_channel(stack.grpc, options=[("grpc.max_send_message_length", -1)]) as channel:
        call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}")
        try:
            reply = call(body, timeout=timeout, metadata=metadata, compression=compression)
            return grpc.StatusCode.OK, "", reply
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or "", b""


def not_internal(code: grpc.StatusCode) -> bool:
    return code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)


# ------------------------------------------------------------------------------------ HTTP framing

_JSON = json_body(json_infer())
_POST = f"POST {INFER_PATH} HTTP/1.1\r\nHost: sidecar\r\nContent-Type: application/json\r\n".encode()


def _post(headers: bytes, body: bytes) -> bytes:
    return _POST + headers + b"\r\n" + body + SMUGGLED


FRAMING: list[tuple[str, bytes, tuple[int, ...], float]] = [
    # (id, bytes, statuses besides 4xx that are fine, seconds by which the verdict must be in)
    ("negative-content-length", _post(b"Content-Length: -70\r\n", _JSON), (), FRAMING_VERDICT_S),
    (
        "duplicate-content-length",
        _post(f"Content-Length: {len(_JSON)}\r\nContent-Length: 4\r\n".encode(), _JSON),
        (),
        FRAMING_VERDICT_S,
    ),
    (
        "duplicate-content-length-same-value",
        _post(f"Content-Length: {len(_JSON)}\r\nContent-Length: {len(_JSON)}\r\n".encode(), _JSON),
        (),
        FRAMING_VERDICT_S,
    ),
    ("content-length-list", _post(b"Content-Length: 4, 4\r\n", b"abcd"), (), FRAMING_VERDICT_S),
    ("content-length-plus-sign", _post(b"Content-Length: +4\r\n", b"abcd"), (), FRAMING_VERDICT_S),
    (
        "content-length-overflow",
        _post(b"Content-Length: 99999999999999999999999\r\n", b"abcd"),
        (),
        FRAMING_VERDICT_S,
    ),
    (
        "cl-and-te",
        _post(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
        (),
        FRAMING_VERDICT_S,
    ),
    (
        "te-chunked-identity",
        _post(b"Transfer-Encoding: chunked, identity\r\n", b"0\r\n\r\n"),
        (),
        FRAMING_VERDICT_S,
    ),
    ("te-identity", _post(b"Transfer-Encoding: identity\r\n", b"abcd"), (), FRAMING_VERDICT_S),
    (
        "te-chunked-twice",
        _post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
        (),
        FRAMING_VERDICT_S,
    ),
    ("te-gzip-chunked", _post(b"Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n"), (), FRAMING_VERDICT_S),
    (
        "chunk-size-negative",
        _post(b"Transfer-Encoding: chunked\r\n", b"-6\r\nabcdef\r\n0\r\n\r\n"),
        (),
        FRAMING_VERDICT_S,
    ),
    (
        "chunk-size-hex-overflow",
        _post(b"Transfer-Encoding: chunked\r\n", b"FFFFFFFFFFFFFFFFFFFF\r\nabc\r\n"),
        (),
        FRAMING_VERDICT_S,
    ),
    # A chunk size that fits 64 bits but not the body limit: refused at once (413) or, if the server
    # counts bytes as they come, by the body timeout; either way never buffered to the end.
    (
        "chunk-size-2^63",
        _post(b"Transfer-Encoding: chunked\r\n", b"7fffffffffffffff\r\nabc"),
        (),
        1.0 + TIMEOUT_SLACK_S,
    ),
    (
        "chunk-extension-control-char",
        _post(b"Transfer-Encoding: chunked\r\n", b"4;a=\x01\r\nabcd\r\n0\r\n\r\n"),
        (),
        FRAMING_VERDICT_S,
    ),
    ("chunk-bare-lf", _post(b"Transfer-Encoding: chunked\r\n", b"4\nabcd\n0\n\n"), (), FRAMING_VERDICT_S),
    (
        "obs-fold",
        b"GET /v2/health/ready HTTP/1.1\r\nHost: sidecar\r\nX-A: b\r\n folded\r\n\r\n" + SMUGGLED,
        (),
        FRAMING_VERDICT_S,
    ),
    ("bare-lf", b"GET /v2/health/ready HTTP/1.1\nHost: sidecar\n\n" + SMUGGLED, (), FRAMING_VERDICT_S),
    (
        "bare-lf-in-header",
        b"GET /v2/health/ready HTTP/1.1\r\nHost: sidecar\nX-A: b\r\n\r\n" + SMUGGLED,
        (),
        FRAMING_VERDICT_S,
    ),
    ("bare-cr", b"GET /v2/health/ready HTTP/1.1\rHost: sidecar\r\r" + SMUGGLED, (), FRAMING_VERDICT_S),
    (
        "control-char-in-target",
        b"GET /v2/health/ready\x01 HTTP/1.1\r\nHost: sidecar\r\n\r\n" + SMUGGLED,
        (),
        FRAMING_VERDICT_S,
    ),
    (
        "escape-in-target",
        b"GET /v2/models/\x1b[31mtoy/ready HTTP/1.1\r\nHost: sidecar\r\n\r\n" + SMUGGLED,
        (),
        FRAMING_VERDICT_S,
    ),
    (
        "nul-in-target",
        b"GET /v2/models/toy\x00/ready HTTP/1.1\r\nHost: sidecar\r\n\r\n" + SMUGGLED,
        (),
        FRAMING_VERDICT_S,
    ),
    (
        "control-char-in-header-value",
        b"GET /v2/health/ready HTTP/1.1\r\nHost: sidecar\r\nX-A: b\x01c\r\n\r\n" + SMUGGLED,
        (),
        FRAMING_VERDICT_S,
    ),
    (
        "nul-in-header-value",
        b"GET /v2/health/ready HTTP/1.1\r\nHost: sidecar\r\nX-A: b\x00c\r\n\r\n" + SMUGGLED,
        (),
        FRAMING_VERDICT_S,
    ),
    (
        "space-before-colon",
        b"GET /v2/health/ready HTTP/1.1\r\nHost: sidecar\r\nContent-Length : 4\r\n\r\nabcd" + SMUGGLED,
        (),
        FRAMING_VERDICT_S,
    ),
    (
        "invalid-method",
        b"FOO /v2/health/ready HTTP/1.1\r\nHost: sidecar\r\n\r\n" + SMUGGLED,
        (),
        FRAMING_VERDICT_S,
    ),
    (
        "nul-in-method",
        b"G\x00T /v2/health/ready HTTP/1.1\r\nHost: sidecar\r\n\r\n" + SMUGGLED,
        (),
        FRAMING_VERDICT_S,
    ),
    # HTTP/0.9 has no status line to carry a 4xx: closing is the answer (505 would be too).
    ("http-0.9", b"GET /v2/health/ready\r\n\r\n", (505,), FRAMING_VERDICT_S),
    (
        "http-2.0-request-line",
        b"GET /v2/health/ready HTTP/2.0\r\nHost: sidecar\r\n\r\n",
        (505,),
        FRAMING_VERDICT_S,
    ),
    (
        "http-version-garbage",
        b"GET /v2/health/ready HTTP/9.9\r\nHost: sidecar\r\n\r\n",
        (505,),
        FRAMING_VERDICT_S,
    ),
    (
        "request-line-too-long",
        b"GET /v2/health/ready?" + b"a" * (128 * 1024) + b" HTTP/1.1\r\nHost: sidecar\r\n\r\n",
        (),
        FRAMING_VERDICT_S,
    ),
    (
        "header-too-long",
        b"GET /v2/health/ready HTTP/1.1\r\nHost: sidecar\r\nX-A: " + b"a" * (128 * 1024) + b"\r\n\r\n",
        (),
        FRAMING_VERDICT_S,
    ),
    (
        "too-many-headers",
        b"GET /v2/health/ready HTTP/1.1\r\nHost: sidecar\r\n"
        + b"".join(b"X-%d: a\r\n" % i for i in range(1000))
        + b"\r\n",
        (),
        FRAMING_VERDICT_S,
    ),
    ("connect-method", b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n", (), FRAMING_VERDICT_S),
]


@pytest.mark.parametrize(
    ("data", "allowed", "verdict_s"), [f[1:] for f in FRAMING], ids=[f[0] for f in FRAMING]
)
def test_http_framing_and_smuggling_are_refused(
    stack: AttackStack, data: bytes, allowed: tuple[int, ...], verdict_s: float
) -> None:
    """Malformed or ambiguous framing gets one 4xx (or just the close) and the connection ends: the
    request after it (a smuggled GET /v2/logging) is never answered, and Triton sees nothing."""
    with attack(stack, triton_untouched=True), RawHttp(stack.http) as conn:
        conn.send(data)
        ex = conn.read(timeout=verdict_s + TIMEOUT_SLACK_S, until_closed=True)
    assert refused_http(ex, allowed), f"expected one 4xx (or the close) and the close: {ex.describe()}"
    assert ex.elapsed <= verdict_s, (
        f"the verdict took {ex.elapsed:.2f}s (limit {verdict_s}s): {ex.describe()}"
    )


# ------------------------------------------------------------------------------------ body limits


def test_huge_content_length_is_413_before_any_body(stack: AttackStack) -> None:
    """Content-Length far over the body limit, no body sent: 413 at once (not after a body timeout)."""
    data = request_bytes("POST", INFER_PATH, headers=[("Content-Length", str(10**12))], content_length=False)
    with attack(stack, triton_untouched=True):
        ex = exchange(stack.http, data, timeout=FRAMING_VERDICT_S)
    assert ex.status == 413, ex.describe()


def test_expect_continue_over_the_limit_gets_413_not_100(stack: AttackStack) -> None:
    over = stack.limit_bytes("maxBodyBytes") + 1
    data = request_bytes(
        "POST",
        INFER_PATH,
        headers=[("Content-Length", str(over)), ("Expect", "100-continue")],
        content_length=False,
    )
    with attack(stack, triton_untouched=True):
        ex = exchange(stack.http, data, timeout=FRAMING_VERDICT_S)
    assert ex.status == 413 and b"100 Continue" not in ex.raw, ex.describe()


def test_json_body_over_the_json_limit_is_413_before_the_body(stack: AttackStack) -> None:
    """A JSON body (no binary-tensor header) gets the smaller JSON budget, checked from Content-Length."""
    over = stack.limit_bytes("maxJsonBodyBytes") + 1
    assert over < stack.limit_bytes("maxBodyBytes")
    data = request_bytes(
        "POST",
        INFER_PATH,
        headers=[("Content-Type", "application/json"), ("Content-Length", str(over))],
        content_length=False,
    )
    with attack(stack, triton_untouched=True), RawHttp(stack.http) as conn:
        conn.send(data + b'{"inputs": [')
        ex = conn.read(timeout=FRAMING_VERDICT_S)
    assert ex.status == 413, ex.describe()


def test_chunked_body_over_the_limit_is_413_while_streaming(stack: AttackStack) -> None:
    """Chunked bodies have no declared length: the limit applies to the bytes as they arrive, and the
    sidecar stops reading (the client's send fails or stalls) instead of buffering everything."""
    limit = stack.limit_bytes("maxBodyBytes")
    chunk = b"%x\r\n" % MIB + b"a" * MIB + b"\r\n"
    head = request_bytes("POST", INFER_PATH, headers=[("Transfer-Encoding", "chunked")], content_length=False)
    with attack(stack, triton_untouched=True), RawHttp(stack.http) as conn:
        conn.send(head)
        sent = conn.send_some(chunk * (4 * limit // MIB), seconds=3.0)
        ex = conn.read(timeout=2.0, until_closed=True)
    assert ex.status in (413, None) and ex.closed, ex.describe()
    assert ex.status == 413 or sent < 4 * limit, f"no 413 and all {sent} bytes taken: {ex.describe()}"


# ------------------------------------------------------------------------------------ slowloris


def _trickle(conn: RawHttp, data: bytes, gap_s: float, max_s: float) -> float | None:
    """Send ``data`` a byte at a time every ``gap_s``; seconds until the server closed, or None."""
    t0 = time.monotonic()
    for byte in data:
        if conn.is_closed(wait=gap_s) or not conn.send(bytes((byte,))):
            return time.monotonic() - t0
        if time.monotonic() - t0 > max_s:
            return None
    return time.monotonic() - t0 if conn.is_closed(wait=max_s - (time.monotonic() - t0)) else None


SLOW: list[tuple[str, str, float]] = [
    ("headers-trickled", "headerTimeout", 0.2),
    ("body-stalled", "bodyTimeout", 0.0),
    ("body-trickled-slower-than-the-body-timeout", "bodyTimeout", 1.5),
    ("idle-keep-alive", "idleTimeout", 0.0),
]


def _seconds(value: str) -> float:
    return float(value.removesuffix("s"))


@pytest.mark.parametrize(("timeout_key", "gap_s"), [s[1:] for s in SLOW], ids=[s[0] for s in SLOW])
def test_slowloris_is_closed_by_the_timeouts(stack: AttackStack, timeout_key: str, gap_s: float) -> None:
    limit = _seconds(stack.limits[timeout_key])
    with attack(stack, triton_untouched=True), RawHttp(stack.http) as conn:
        if timeout_key == "headerTimeout":
            # Bytes keep coming, faster than any progress timeout: only a deadline on the whole
            # head closes this.
            conn.send(b"GET /v2/health/ready HTTP/1.1\r\n")
            closed_after = _trickle(conn, b"X-Slow: " + b"a" * 200, gap_s, limit + TIMEOUT_SLACK_S)
        elif timeout_key == "bodyTimeout" and gap_s == 0.0:
            conn.send(_POST + b"Content-Length: 1000\r\n\r\n" + b'{"inputs"')
            closed_after = _trickle(conn, b"", 0.0, limit + TIMEOUT_SLACK_S)
        elif timeout_key == "bodyTimeout":
            conn.send(_POST + b"Content-Length: 1000\r\n\r\n")
            closed_after = _trickle(conn, b'{"inputs": []}', gap_s, limit + gap_s + TIMEOUT_SLACK_S)
        else:
            conn.send(request_bytes("GET", "/v2/health/ready"))
            assert conn.read(timeout=2.0).status == 200
            closed_after = _trickle(conn, b"", 0.0, limit + TIMEOUT_SLACK_S)
    assert closed_after is not None, (
        f"connection still open {limit + TIMEOUT_SLACK_S:.1f}s into {timeout_key}"
    )
    assert closed_after >= min(0.5 * limit, limit - 0.5), (
        f"closed after {closed_after:.2f}s, before {timeout_key}"
    )


def test_slowloris_does_not_slow_other_clients(stack: AttackStack) -> None:
    """40 connections trickling their headers; meanwhile a normal client is answered fast, and every
    slow connection is closed by the header timeout."""
    limit = _seconds(stack.limits["headerTimeout"])
    slow = [RawHttp(stack.http) for _ in range(40)]
    closed_at: dict[int, float] = {}
    t0 = time.monotonic()

    def trickle() -> None:
        for conn in slow:
            conn.send(b"GET /v2/health/ready HTTP/1.1\r\n")
        while len(closed_at) < len(slow) and time.monotonic() - t0 < limit + 3 * TIMEOUT_SLACK_S:
            for i, conn in enumerate(slow):
                if i not in closed_at and (conn.is_closed(wait=0.001) or not conn.send(b"a")):
                    closed_at[i] = time.monotonic() - t0
            time.sleep(0.1)

    latencies: list[float] = []
    with attack(stack, triton_untouched=True):
        worker = threading.Thread(target=trickle)
        worker.start()
        try:
            for _ in range(20):
                ok, seconds, seen = http_ready(stack.http, timeout=2.0)
                assert ok, seen
                latencies.append(seconds)
                time.sleep(0.02)
        finally:
            worker.join()
            for conn in slow:
                conn.close()
    assert max(latencies) < 0.5, f"a normal client waited {max(latencies):.2f}s during the slowloris"
    assert len(closed_at) == len(slow), f"{len(slow) - len(closed_at)} slow connections never closed"
    assert max(closed_at.values()) < limit + 2 * TIMEOUT_SLACK_S, sorted(closed_at.values())


# ------------------------------------------------------------------------------------ bombs


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_http_decompression_bomb_is_413_with_bounded_memory(stack: AttackStack, encoding: str) -> None:
    """~1 MiB that inflates to 1 GiB: refused while inflating (413; 415 if the encoding is not served
    at all), with memory far below the inflated size."""
    bomb = deflate_bomb(1024 * MIB, container="gzip" if encoding == "gzip" else "zlib")
    data = request_bytes(
        "POST",
        INFER_PATH,
        bomb,
        headers=[("Content-Type", "application/json"), ("Content-Encoding", encoding)],
    )
    with attack(stack, triton_untouched=True):
        ex = exchange(stack.http, data, timeout=5.0)
    assert ex.status in (413, 415), ex.describe()


def test_grpc_decompression_bomb_is_resource_exhausted(stack: AttackStack) -> None:
    """A gzip-compressed gRPC message of ~1 MiB that inflates to 1 GiB, sent as raw HTTP/2 frames
    (grpcio's client compresses only what it is given): refused while inflating."""
    bomb = deflate_bomb(1024 * MIB)
    with attack(stack, triton_untouched=True), RawH2(*_addr(stack.grpc), timeout=10) as h2:
        result = h2.call("ModelInfer", bomb, extra=[("grpc-encoding", "gzip")], compressed=True, wait=10)
    assert result.grpc_status == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] or result.refused, _h2(result)


def test_grpc_compressed_message_over_the_limit_from_grpcio(stack: AttackStack) -> None:
    """The same through grpcio's own client: a 64 MiB request compressed to ~64 KiB with gzip."""
    msg = service_pb2.ModelInferRequest(model_name=MODEL)
    msg.inputs.add(name="INPUT", datatype="FP32", shape=[2 * MIB, INPUT_DIM])
    msg.raw_input_contents.append(bytes(64 * MIB))
    body = msg.SerializeToString()
    with attack(stack, triton_untouched=True):
        code, details, _ = grpc_call(stack, "ModelInfer", body, compression=grpc.Compression.Gzip)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, f"{code}: {details}"


def _json_strings(n: int) -> bytes:
    head = b'{"inputs":[{"name":"INPUT","datatype":"BYTES","shape":[%d],"data":[' % n
    return head + b",".join(b'"%d"' % (i % 100) for i in range(n)) + b"]}]}"


def _binary(shape: list[int], raw: bytes, size: int | None = None) -> bytes:
    header = json_body(
        {
            "inputs": [
                {
                    "name": "INPUT",
                    "datatype": "FP32",
                    "shape": shape,
                    "parameters": {"binary_data_size": len(raw) if size is None else size},
                }
            ]
        }
    )
    return request_bytes(
        "POST",
        INFER_PATH,
        header + raw,
        headers=[
            ("Inference-Header-Content-Length", str(len(header))),
            ("Content-Type", "application/octet-stream"),
        ],
    )


def _grpc_bomb(kind: str) -> bytes:
    msg = service_pb2.ModelInferRequest(model_name=MODEL, id=f"bomb-{kind}")
    if kind == "typed-huge-count":
        tensor = msg.inputs.add(name="INPUT", datatype="FP32", shape=[1, INPUT_DIM])
        tensor.contents.fp32_contents.extend([0.5] * 2_000_000)
    elif kind == "bytes-1M":
        tensor = msg.inputs.add(name="INPUT", datatype="BYTES", shape=[1_000_000])
        tensor.contents.bytes_contents.extend([b"ab"] * 1_000_000)
    elif kind == "shape-2^40":
        msg.inputs.add(name="INPUT", datatype="FP32", shape=[2**40])
        msg.raw_input_contents.append(b"\x00" * 4)
    elif kind == "shape-2^37x8":
        msg.inputs.add(name="INPUT", datatype="FP32", shape=[2**37, INPUT_DIM])
        msg.raw_input_contents.append(b"\x00" * 32)
    return msg.SerializeToString()


ELEMENT_BOMBS: list[tuple[str, Callable[[], bytes], float]] = [
    (
        "json-bytes-1M-strings",
        lambda: request_bytes(
            "POST", INFER_PATH, _json_strings(1_000_000), headers=[("Content-Type", "application/json")]
        ),
        JSON_ELEMENT_BOMB_BUDGET_MIB,
    ),
    (
        "json-shape-2^40-tiny-body",
        lambda: request_bytes(
            "POST",
            INFER_PATH,
            json_body({"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [2**40], "data": [0.5]}]}),
        ),
        MEMORY_BUDGET_MIB,
    ),
    (
        "json-shape-2^37x8-tiny-body",
        lambda: request_bytes(
            "POST",
            INFER_PATH,
            json_body(
                {"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [2**37, 8], "data": [0.5] * 8}]}
            ),
        ),
        MEMORY_BUDGET_MIB,
    ),
    ("binary-shape-2^40-tiny-body", lambda: _binary([2**40], b"\x00" * 4), MEMORY_BUDGET_MIB),
    (
        "binary-declared-size-2^40",
        lambda: _binary([1, INPUT_DIM], b"\x00" * 32, size=2**40),
        MEMORY_BUDGET_MIB,
    ),
]


@pytest.mark.parametrize(
    ("make", "memory_mib"), [b[1:] for b in ELEMENT_BOMBS], ids=[b[0] for b in ELEMENT_BOMBS]
)
def test_http_element_bombs_are_refused_before_decoding(
    stack: AttackStack, make: Callable[[], bytes], memory_mib: float
) -> None:
    data = make()
    with attack(stack, memory_mib=memory_mib, triton_untouched=True):
        ex = exchange(stack.http, data, timeout=5.0)
    assert ex.status in (400, 413), ex.describe()


@pytest.mark.parametrize("kind", ["typed-huge-count", "bytes-1M", "shape-2^40", "shape-2^37x8"])
def test_grpc_element_bombs_are_refused_before_decoding(stack: AttackStack, kind: str) -> None:
    body = _grpc_bomb(kind)
    with attack(stack, triton_untouched=True):
        code, details, _ = grpc_call(stack, "ModelInfer", body)
    assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED), (
        f"{code}: {details}"
    )


# ------------------------------------------------------------------------------------ bad input


def _infer_with(**entry: Any) -> bytes:
    doc = json_infer()
    doc["inputs"][0].update(entry)
    return json_body(doc)


BAD_JSON: list[tuple[str, bytes, tuple[int, ...]]] = [
    (
        "deep-100k-data",
        _infer_with(data=[]).replace(b'"data":[]', b'"data":' + b"[" * 100_000 + b"]" * 100_000),
        (400,),
    ),
    ("deep-100k-document", b"[" * 100_000 + b"]" * 100_000, (400,)),
    ("deep-100k-objects", b'{"a":' * 100_000 + b"1" + b"}" * 100_000, (400,)),
    ("shape-2^63", _infer_with(shape=[2**63, INPUT_DIM]), (400, 413)),
    ("shape-2^64", _infer_with(shape=[2**64]), (400, 413)),
    ("shape-1e400", _infer_with(shape=[1, 8]).replace(b"[1,8]", b"[1e400,8]"), (400, 413)),
    ("shape-negative", _infer_with(shape=[-1, INPUT_DIM]), (400,)),
    ("shape-product-overflows-int64", _infer_with(shape=[2**62, 2**62, INPUT_DIM]), (400, 413)),
    ("shape-not-a-list", _infer_with(shape="8"), (400,)),
    ("shape-floats", _infer_with(shape=[1.5, 8]), (400,)),
    ("shape-too-many-dims", _infer_with(shape=[1] * 100 + [INPUT_DIM]), (400,)),
    ("binary-data-size-string", _infer_with(parameters={"binary_data_size": "abc"}), (400,)),
    ("binary-data-size-negative", _infer_with(parameters={"binary_data_size": -5}), (400,)),
    ("binary-data-size-float", _infer_with(parameters={"binary_data_size": 1e30}), (400,)),
    ("parameters-a-list", _infer_with(parameters=[1, 2]), (400,)),
    ("request-parameters-a-string", json_body({**json_infer(), "parameters": "x"}), (400,)),
    (
        "outputs-binary-data-string",
        json_body({**json_infer(), "outputs": [{"name": "LOGITS", "parameters": {"binary_data": "yes"}}]}),
        (400,),
    ),
    ("outputs-a-dict", json_body({**json_infer(), "outputs": {"name": "LOGITS"}}), (400,)),
    ("output-name-a-number", json_body({**json_infer(), "outputs": [{"name": 5}]}), (400,)),
    ("inputs-a-dict", json_body({"inputs": {"name": "INPUT"}}), (400,)),
    ("inputs-null-entry", json_body({"inputs": [None]}), (400,)),
    ("input-name-a-number", _infer_with(name=5), (400,)),
    ("datatype-a-number", _infer_with(datatype=7), (400,)),
    ("data-a-dict", _infer_with(data={"a": 1}), (400,)),
    ("data-strings-for-fp32", _infer_with(data=["a"] * INPUT_DIM), (400,)),
    ("data-null-values", _infer_with(data=[None] * INPUT_DIM), (400,)),
    ("data-ragged", _infer_with(shape=[2, 4], data=[[1, 2, 3, 4], [1, 2]]), (400,)),
    ("id-a-dict", json_body({**json_infer(), "id": {"x": 1}}), (400,)),
    # Triton's reserved request parameters with the wrong type: Triton itself answers 500 for these, so
    # the sidecar must check them (or map the answer) instead of passing a 500 on.
    ("priority-a-string", json_body({**json_infer(), "parameters": {"priority": "high"}}), (400,)),
    ("priority-negative", json_body({**json_infer(), "parameters": {"priority": -1}}), (400,)),
    ("timeout-a-string", json_body({**json_infer(), "parameters": {"timeout": "soon"}}), (400,)),
    ("sequence-id-a-bool", json_body({**json_infer(), "parameters": {"sequence_id": True}}), (400,)),
    ("sequence-start-a-number", json_body({**json_infer(), "parameters": {"sequence_start": 5}}), (400,)),
    ("parameter-key-with-nul", json_body({**json_infer(), "parameters": {"a\u0000b": True}}), (400,)),
    ("document-a-string", b'"inputs"', (400,)),
    ("document-not-json", b"{inputs: [}", (400,)),
    ("invalid-utf8", json_body(json_infer(request_id="X")).replace(b'"X"', b'"\xff\xfe"'), (400,)),
    ("lone-surrogate", json_body(json_infer(request_id="X")).replace(b'"X"', b'"\\ud800"'), (400,)),
]


@pytest.mark.parametrize(("body", "statuses"), [b[1:] for b in BAD_JSON], ids=[b[0] for b in BAD_JSON])
def test_malformed_json_is_a_client_error(stack: AttackStack, body: bytes, statuses: tuple[int, ...]) -> None:
    """Deep nesting, overflowing dimensions and wrong parameter types are 400 (413 for sizes), never
    500, and never reach Triton."""
    data = request_bytes("POST", INFER_PATH, body, headers=[("Content-Type", "application/json")])
    with attack(stack, triton_untouched=True):
        ex = exchange(stack.http, data, timeout=5.0)
    assert ex.status in statuses, ex.describe()
    assert b'"error"' in ex.replies[0].body, f"no v2 error body: {ex.describe()}"


def _proto_with(mutate: Callable[[Any], None]) -> bytes:
    msg = proto_infer()
    mutate(msg)
    return msg.SerializeToString()


def _set_shape(shape: list[int]) -> Callable[[Any], None]:
    def mutate(msg: Any) -> None:
        del msg.inputs[0].shape[:]
        msg.inputs[0].shape.extend(shape)

    return mutate


BAD_PROTO: list[tuple[str, bytes]] = [
    ("shape-negative", _proto_with(_set_shape([-1, INPUT_DIM]))),
    ("shape-int64-min", _proto_with(_set_shape([-(2**63), INPUT_DIM]))),
    ("shape-product-overflows-int64", _proto_with(_set_shape([2**62, 2**62, INPUT_DIM]))),
    ("raw-contents-count-mismatch", _proto_with(lambda m: m.raw_input_contents.append(b"\x00" * 32))),
    ("raw-contents-truncated", _proto_with(lambda m: m.raw_input_contents.__setitem__(0, b"\x00" * 5))),
    ("typed-and-raw-contents", _proto_with(lambda m: m.inputs[0].contents.fp32_contents.extend([0.5] * 8))),
    (
        "bytes-contents-for-fp32",
        _proto_with(lambda m: m.inputs[0].contents.bytes_contents.extend([b"a"] * 8)),
    ),
    ("no-inputs", _proto_with(lambda m: m.ClearField("inputs"))),
    # Reserved parameters of the wrong type: Triton answers INTERNAL for these (see BAD_JSON).
    ("priority-a-string", _proto_with(lambda m: setattr(m.parameters["priority"], "string_param", "high"))),
    ("timeout-a-double", _proto_with(lambda m: setattr(m.parameters["timeout"], "double_param", 1.5))),
    ("sequence-id-a-bool", _proto_with(lambda m: setattr(m.parameters["sequence_id"], "bool_param", True))),
    (
        "sequence-end-a-string",
        _proto_with(lambda m: setattr(m.parameters["sequence_end"], "string_param", "x")),
    ),
    # A parameter name with a NUL reaches Triton cut short, and Triton answers INTERNAL.
    ("parameter-key-with-nul", _proto_with(lambda m: setattr(m.parameters["a\x00b"], "bool_param", True))),
    ("invalid-utf8-model-name", proto_infer().SerializeToString().replace(b"toy", b"t\xffy")),
    ("truncated-message", proto_infer().SerializeToString()[:-7]),
    ("not-protobuf", b"\xff\xff\xff\xff\x0f\x00garbage"),
]


@pytest.mark.parametrize("body", [b[1] for b in BAD_PROTO], ids=[b[0] for b in BAD_PROTO])
def test_malformed_grpc_requests_are_invalid_argument(stack: AttackStack, body: bytes) -> None:
    with attack(stack, triton_untouched=True):
        code, details, _ = grpc_call(stack, "ModelInfer", body)
    assert code in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.NOT_FOUND,
    ), f"{code}: {details}"


# ------------------------------------------------------------------------------------ floods


def test_pipelining_flood_is_bounded_and_others_are_served(stack: AttackStack) -> None:
    """1000 pipelined requests (48 KiB each) on one connection whose replies are not read at first:
    the sidecar reads a bounded number ahead (over the limit it may refuse with 429 and close), holds
    bounded memory, and keeps serving everyone else; what it does answer is in order and not 5xx."""
    one = request_bytes("GET", "/v2/health/ready", headers=[("X-Pad", "a" * (48 * 1024))])
    flood = one * 1000
    with attack(stack), RawHttp(stack.http) as conn:
        sent = conn.send_some(flood, seconds=3.0)
        ok, seconds, seen = http_ready(stack.http, READY_WITHIN_S)
        assert ok, f"another client not served during the flood ({seconds:.2f}s): {seen}"
        ok, seconds, seen = grpc_ready(stack.grpc, READY_WITHIN_S)
        assert ok, f"gRPC not served during the flood ({seconds:.2f}s): {seen}"
        ex = conn.read(replies=1000, timeout=3.0)
    statuses = [r.status for r in ex.replies]
    assert statuses, f"no reply at all after {sent / MIB:.1f} MiB sent: {ex.describe()}"
    head, last = statuses[:-1], statuses[-1]
    assert all(s == 200 for s in head) and (last == 200 or 400 <= last < 500), statuses[-20:]
    assert len(statuses) == 1000 or ex.closed, f"{len(statuses)} replies and the connection still open"


def test_pipelined_infers_beyond_the_limit_are_answered_in_order_or_refused(stack: AttackStack) -> None:
    """200 pipelined infers written at once: each is answered in order, or the first
    maxPipelinedRequests are and the rest get one 429 and the close; the replies reach the client
    (no reset eats them), and Triton runs only the requests that were answered."""
    one = request_bytes(
        "POST", INFER_PATH, json_body(json_infer()), headers=[("Content-Type", "application/json")]
    )
    before = triton_inference_count(stack.triton_metrics, MODEL)
    with attack(stack), RawHttp(stack.http) as conn:
        conn.send(one * 200)
        ex = conn.read(replies=200, timeout=10.0)
    statuses = [r.status for r in ex.replies]
    ok = statuses.count(200)
    assert statuses == [200] * 200 or (statuses == [200] * ok + [429] and ex.closed), ex.describe()
    time.sleep(0.2)
    assert triton_inference_count(stack.triton_metrics, MODEL) - before == ok


def test_connection_flood_beyond_max_connections(stack: AttackStack) -> None:
    """Three times maxConnections sockets, each sending a request: at most maxConnections are served;
    gRPC is served meanwhile; once they close, new clients are served again (checked by ``attack``)."""
    limit = int(stack.limits["maxConnections"])
    conns: list[RawHttp] = []
    with attack(stack):
        try:
            for _ in range(3 * limit):
                try:
                    conns.append(RawHttp(stack.http, timeout=2.0))
                except OSError:
                    break
            for conn in conns:
                conn.send(request_bytes("GET", "/v2/health/ready"))
            time.sleep(1.0)
            served = sum(1 for conn in conns if conn.read(timeout=0.01).status == 200)
            ok, seconds, seen = grpc_ready(stack.grpc, READY_WITHIN_S)
            assert ok, f"gRPC not served during the HTTP connection flood ({seconds:.2f}s): {seen}"
        finally:
            for conn in conns:
                conn.close()
        time.sleep(0.2)
    assert served <= limit, f"{served} of {len(conns)} connections served; maxConnections is {limit}"


# ------------------------------------------------------------------------------------ control endpoints


def _triton_state(stack: AttackStack) -> dict[str, Any]:
    def get(path: str) -> Any:
        with urllib.request.urlopen(f"http://{stack.triton.http_url}{path}", timeout=5) as response:
            return json.loads(response.read() or b"null")

    return {
        "logging": get("/v2/logging"),
        "trace": get("/v2/trace/setting"),
        "shm": get("/v2/systemsharedmemory/status"),
        "ready": stack.triton.ready(),
        "model_ready": urllib.request.urlopen(
            f"http://{stack.triton.http_url}/v2/models/{MODEL}/ready", timeout=5
        ).status,
    }


CONTROL_HTTP: list[tuple[str, str, bytes]] = [
    ("POST", f"/v2/repository/models/{MODEL}/load", b"{}"),
    ("POST", f"/v2/repository/models/{MODEL}/unload", b"{}"),
    ("POST", "/v2/logging", b'{"log_verbose_level": 3}'),
    ("GET", "/v2/logging", b""),
    ("POST", "/v2/trace/setting", b'{"trace_level": ["TENSORS"], "trace_file": "/tmp/stolen"}'),
    ("GET", "/v2/trace/setting", b""),
    ("POST", f"/v2/models/{MODEL}/trace/setting", b'{"trace_level": ["TENSORS"]}'),
    ("POST", "/v2/systemsharedmemory/region/r/register", b'{"key": "/attack", "offset": 0, "byte_size": 64}'),
    ("POST", "/v2/systemsharedmemory/region/r/unregister", b""),
    ("POST", "/v2/systemsharedmemory/unregister", b""),
    ("GET", "/v2/systemsharedmemory/status", b""),
    (
        "POST",
        "/v2/cudasharedmemory/region/r/register",
        b'{"raw_handle": {"b64": "AAAA"}, "device_id": 0, "byte_size": 64}',
    ),
    ("POST", "/v2/cudasharedmemory/region/r/unregister", b""),
    ("GET", "/v2/cudasharedmemory/status", b""),
    ("POST", f"/v2/models/{MODEL}/generate", json_body({"INPUT": [0.5] * INPUT_DIM})),
    ("POST", f"/v2/models/{MODEL}/generate_stream", json_body({"INPUT": [0.5] * INPUT_DIM})),
    ("POST", f"/v2/models/{MODEL}/versions/1/generate", json_body({"INPUT": [0.5] * INPUT_DIM})),
]
# The same endpoints reached through path tricks: refused or not found, never forwarded.
CONTROL_TRICKS: list[tuple[str, str, bytes]] = [
    ("POST", "/v2//logging", b'{"log_verbose_level": 3}'),
    ("POST", "/v2/logging/", b'{"log_verbose_level": 3}'),
    ("POST", "/v2/logging?x=1", b'{"log_verbose_level": 3}'),
    ("POST", "/v2/./logging", b'{"log_verbose_level": 3}'),
    ("POST", "/v2/models/../logging", b'{"log_verbose_level": 3}'),
    ("POST", "/v2/%6cogging", b'{"log_verbose_level": 3}'),
    ("POST", "/V2/logging", b'{"log_verbose_level": 3}'),
    ("POST", "//v2/logging", b'{"log_verbose_level": 3}'),
    ("POST", f"/v2/models/{MODEL}/infer/../../../logging", b'{"log_verbose_level": 3}'),
    ("POST", "http://127.0.0.1/v2/logging", b'{"log_verbose_level": 3}'),
    ("POST", f"/v2/repository/models/{MODEL}/unload?unload_dependents=true", b"{}"),
    ("POST", f"/v2/repository/models/{MODEL}%2Funload", b"{}"),
    ("POST", "/v2/trace/setting%00", b'{"trace_level": ["TENSORS"]}'),
]


def _guarded(ex: Exchange) -> bool:
    return bool(ex.replies) and "guard-decision" in ex.replies[0].headers


@pytest.mark.parametrize(
    ("method", "path", "body"), CONTROL_HTTP, ids=[f"{m} {p}" for m, p, _ in CONTROL_HTTP]
)
def test_http_control_endpoints_are_403(stack: AttackStack, method: str, path: str, body: bytes) -> None:
    """Load/unload, logging, trace, shared memory and generate are not forwarded: 403 with a v2 error
    body (generate may instead be guarded like infer), and Triton's settings stay as they were."""
    state = _triton_state(stack)
    with attack(stack, triton_untouched=True):
        ex = exchange(
            stack.http, request_bytes(method, path, body, headers=[("Content-Type", "application/json")])
        )
    if "generate" in path and _guarded(ex):
        return
    assert ex.status == 403, ex.describe()
    assert json.loads(ex.replies[0].body).get("error"), f"no v2 error body: {ex.describe()}"
    assert _triton_state(stack) == state


@pytest.mark.parametrize(
    ("method", "path", "body"), CONTROL_TRICKS, ids=[f"{m} {p}" for m, p, _ in CONTROL_TRICKS]
)
def test_http_control_endpoints_behind_path_tricks_are_not_forwarded(
    stack: AttackStack, method: str, path: str, body: bytes
) -> None:
    state = _triton_state(stack)
    with attack(stack, triton_untouched=True):
        ex = exchange(
            stack.http, request_bytes(method, path, body, headers=[("Content-Type", "application/json")])
        )
    assert ex.status is not None and ex.status in (400, 403, 404, 405), ex.describe()
    assert _triton_state(stack) == state


def _control_message(method: str) -> bytes:
    if method == "LogSettings":
        msg: Any = service_pb2.LogSettingsRequest()
        msg.settings["log_verbose_level"].uint32_param = 3
    elif method == "TraceSetting":
        msg = service_pb2.TraceSettingRequest()
        msg.settings["trace_level"].value.append("TENSORS")
        msg.settings["trace_file"].value.append("/tmp/stolen")
    elif method == "SystemSharedMemoryRegister":
        msg = service_pb2.SystemSharedMemoryRegisterRequest(name="r", key="/attack", byte_size=64)
    elif method == "CudaSharedMemoryRegister":
        msg = service_pb2.CudaSharedMemoryRegisterRequest(name="r", raw_handle=b"\x00" * 64, byte_size=64)
    elif method in ("RepositoryModelLoad", "RepositoryModelUnload"):
        msg = getattr(service_pb2, f"{method}Request")(model_name=MODEL)
    else:
        msg = getattr(service_pb2, f"{method}Request")()
    return bytes(msg.SerializeToString())


CONTROL_GRPC = [
    "LogSettings",
    "TraceSetting",
    "SystemSharedMemoryRegister",
    "SystemSharedMemoryUnregister",
    "SystemSharedMemoryStatus",
    "CudaSharedMemoryRegister",
    "CudaSharedMemoryUnregister",
    "CudaSharedMemoryStatus",
    "RepositoryModelLoad",
    "RepositoryModelUnload",
]


@pytest.mark.parametrize("method", CONTROL_GRPC)
def test_grpc_control_methods_are_permission_denied(stack: AttackStack, method: str) -> None:
    state = _triton_state(stack)
    with attack(stack, triton_untouched=True):
        code, details, _ = grpc_call(stack, method, _control_message(method))
    assert code == grpc.StatusCode.PERMISSION_DENIED, f"{code}: {details}"
    assert _triton_state(stack) == state


# ------------------------------------------------------------------------------------ gRPC metadata


def _addr(url: str) -> tuple[str, int]:
    host, _, port = url.rpartition(":")
    return host, int(port)


def _h2(result: StreamResult) -> str:
    return (
        f"grpc-status={result.grpc_status} message={result.grpc_message[:200]!r} rst={result.rst_code} "
        f"goaway={result.goaway_code} closed={result.closed} ended={result.ended}"
    )


def _acceptable_grpc_end(result: StreamResult) -> bool:
    """A non-INTERNAL/UNKNOWN status, a refused stream, or grpc core's own metadata rejection."""
    if result.refused:
        return True
    status = result.grpc_status
    if status is None:
        return False
    if status in (grpc.StatusCode.INTERNAL.value[0], grpc.StatusCode.UNKNOWN.value[0]):
        return result.grpc_message.startswith(GRPC_CORE_REJECTIONS)
    return True


METADATA: list[tuple[str, list[tuple[str, str]], bool, bytes | None]] = [
    # (id, extra header fields, compressed flag, message (None: a valid ModelInferRequest))
    ("grpc-timeout-400-digits", [("grpc-timeout", "9" * 400 + "S")], False, None),
    ("grpc-timeout-400-digits-no-unit", [("grpc-timeout", "1" * 400)], False, None),
    ("grpc-timeout-negative", [("grpc-timeout", "-5S")], False, None),
    ("grpc-timeout-negative-millis", [("grpc-timeout", "-5m")], False, None),
    ("grpc-timeout-unit-only", [("grpc-timeout", "S")], False, None),
    ("grpc-timeout-garbage", [("grpc-timeout", "abc")], False, None),
    ("grpc-encoding-unknown", [("grpc-encoding", "bogus")], True, None),
    ("grpc-encoding-list", [("grpc-encoding", "gzip, deflate")], True, None),
    ("grpc-encoding-gzip-not-gzip", [("grpc-encoding", "gzip")], True, b"this is not gzip"),
    ("compressed-flag-without-encoding", [], True, None),
    ("huge-metadata-1MiB", [("x-big", "a" * MIB)], False, None),
    ("metadata-70k", [("x-big", "a" * 70_000)], False, None),
    ("many-metadata-fields", [(f"x-{i}", "") for i in range(20_000)], False, None),
    ("binary-metadata-bad-base64", [("x-bin", "!!!not base64")], False, None),
    ("control-chars-in-metadata", [("x-a", "b\x01\x1b[31mc")], False, None),
    ("content-type-not-grpc", [("content-type", "text/plain")], False, None),
]


@pytest.mark.parametrize(
    ("extra", "compressed", "message"), [m[1:] for m in METADATA], ids=[m[0] for m in METADATA]
)
def test_malformed_grpc_metadata_is_refused_cleanly(
    stack: AttackStack, extra: list[tuple[str, str]], compressed: bool, message: bytes | None
) -> None:
    """Raw HTTP/2 (grpcio's client refuses to send these): the call ends with a status other than
    INTERNAL/UNKNOWN (or the stream is refused), and the sidecar is unharmed."""
    body = proto_infer(request_id="metadata").SerializeToString() if message is None else message
    with attack(stack), RawH2(*_addr(stack.grpc), timeout=10) as h2:
        result = h2.call("ModelInfer", body, extra=extra, compressed=compressed, wait=5)
        # A bad call is a stream error: the connection, and the calls on it, carry on.
        follow_up = h2.call("ServerReady", b"", wait=5)
    assert _acceptable_grpc_end(result), _h2(result)
    assert follow_up.grpc_status == 0, f"the next call on the same connection failed: {_h2(follow_up)}"


class _SettingsH2(RawH2):
    """``RawH2`` that notes the server's SETTINGS and, with ``ack_settings=False``, never acknowledges
    them (a client that does not, so the server cannot hold it to what it advertised)."""

    def __init__(self, host: str, port: int, *, timeout: float, ack_settings: bool = True) -> None:
        self.ack_settings = ack_settings
        self.settings_seen = False
        super().__init__(host, port, timeout=timeout)

    def _handle(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if kind == SETTINGS and not flags & ACK:
            self.settings_seen = True
            if not self.ack_settings:
                return
        super()._handle(kind, flags, stream_id, payload)

    def acknowledge_settings(self, timeout: float) -> None:
        """Read until the server's SETTINGS came and were acknowledged: the ACK leaves before any
        stream is opened, so the server has it before the first HEADERS."""
        deadline = time.monotonic() + timeout
        while not (self.settings_seen or self.closed) and time.monotonic() < deadline:
            self._pump(deadline - time.monotonic())
        assert self.settings_seen, f"no SETTINGS from the server within {timeout}s"


def _open_streams_with_metadata(h2: RawH2, streams: int, extra: list[tuple[str, str]]) -> list[StreamResult]:
    sids = []
    for _ in range(streams):
        sid = h2.new_stream()
        sids.append(sid)
        h2.send_headers(sid, grpc_request_fields("ModelStreamInfer", extra))  # left open: no END_STREAM
    h2.drain(2.0)
    return [h2.streams[sid] for sid in sids]


OVERSIZED_METADATA: list[tuple[str, int, list[tuple[str, str]]]] = [
    ("one-1MiB-value", 1, [("x-big", "a" * MIB)]),
    ("20k-fields", 1, [(f"x-{i}", "") for i in range(20_000)]),
    ("20-open-streams-with-8MiB-each", 20, [("x-big", "a" * (8 * MIB))]),
]


@pytest.mark.parametrize(
    ("streams", "extra"), [m[1:] for m in OVERSIZED_METADATA], ids=[m[0] for m in OVERSIZED_METADATA]
)
def test_grpc_metadata_over_the_header_limit_is_refused_with_bounded_memory(
    stack: AttackStack, streams: int, extra: list[tuple[str, str]]
) -> None:
    """Metadata beyond maxHeaderBytes (the HTTP/1.1 head limit applies to gRPC header lists too) is
    refused per stream (RESOURCE_EXHAUSTED, or the stream reset) while the streams stay open (no
    END_STREAM), without holding it in memory: grpc core skips a string over the limit unread.

    The client acknowledges the sidecar's SETTINGS first, as every HTTP/2 client does: grpc core holds
    a client to the SETTINGS_MAX_HEADER_LIST_SIZE it advertised only from that ACK on. The window
    before it is the next test's."""
    with attack(stack, triton_untouched=True), _SettingsH2(*_addr(stack.grpc), timeout=30) as h2:
        h2.acknowledge_settings(5.0)
        results = _open_streams_with_metadata(h2, streams, extra)
    accepted = [
        r for r in results if not (r.refused or r.grpc_status == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])
    ]
    assert not accepted, f"{len(accepted)} of {len(results)} streams not refused: {_h2(accepted[0])}"


# Before a client acknowledges SETTINGS, grpc core's hard limit on a header list is HTTP/2's default as it
# assumes it (16 MiB), and a list between maxHeaderBytes and that is refused only with probability
# (size - maxHeaderBytes) / (16 MiB - maxHeaderBytes). An accepted list is held with its call: grpc
# core's copy and the Python metadata grpcio makes of it, ~3 bytes of RSS per byte (measured: ~24 MiB per
# accepted 8 MiB list).
RSS_PER_HELD_HEADER_BYTE = 3
SETTINGS_TIMEOUT = 0x4  # HTTP/2 error code of the GOAWAY that ends a connection which never sent the ACK


def test_grpc_metadata_before_the_settings_ack_is_bounded_by_the_settings_timeout(stack: AttackStack) -> None:
    """A client that never acknowledges SETTINGS is not held to maxHeaderBytes (see above); what bounds
    it is time: within headerTimeout (``grpc.http2.settings_timeout``) the connection gets GOAWAY
    SETTINGS_TIMEOUT and is closed, every stream on it with it, and meanwhile the sidecar holds at most
    streams x list size x the measured cost per byte."""
    streams, size = 20, 4 * MIB
    budget_mib = streams * size * RSS_PER_HELD_HEADER_BYTE / MIB
    limit = _seconds(stack.limits["headerTimeout"])
    with (
        attack(stack, memory_mib=budget_mib, triton_untouched=True),
        _SettingsH2(*_addr(stack.grpc), timeout=30, ack_settings=False) as h2,
    ):
        connected = time.monotonic()
        results = _open_streams_with_metadata(h2, streams, [("x-big", "a" * size)])
        closed = h2.wait_closed(max(0.0, connected + limit + TIMEOUT_SLACK_S - time.monotonic()))
        waited = time.monotonic() - connected
    assert closed, f"the connection without a SETTINGS ACK was still open after {waited:.1f}s"
    assert h2.goaway_code in (SETTINGS_TIMEOUT, None), f"GOAWAY {h2.goaway_code}, not SETTINGS_TIMEOUT"
    # Each stream ends: refused by the random early rejection (RESOURCE_EXHAUSTED), or with the
    # connection (UNAVAILABLE "settings timeout" and RST_STREAM, or the socket closed under it).
    ends = (grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], grpc.StatusCode.UNAVAILABLE.value[0])
    left_open = [r for r in results if not (r.refused or r.closed or (r.ended and r.grpc_status in ends))]
    assert not left_open, (
        f"{len(left_open)} of {len(results)} streams outlived the connection: {_h2(left_open[0])}"
    )


# ------------------------------------------------------------------------------------ raw HTTP/2


def _h2_padded_empty_headers(h2: RawH2) -> list[StreamResult]:
    sid = h2.new_stream()
    h2.send(frame(HEADERS, END_HEADERS | PADDED, sid, b""))
    return [h2.wait(sid, 2)]


def _h2_empty_continuations(h2: RawH2) -> list[StreamResult]:
    sid = h2.new_stream()
    block = encode_fields(grpc_request_fields("ServerReady"))
    h2.send(frame(HEADERS, 0, sid, block) + frame(CONTINUATION, 0, sid, b"") * 20_000)
    return [h2.wait(sid, 2)]


def _h2_rapid_reset(h2: RawH2) -> list[StreamResult]:
    block = encode_fields(grpc_request_fields("ModelInfer"))
    body = grpc_message(proto_infer().SerializeToString())
    out = bytearray()
    for _ in range(3000):
        sid = h2.new_stream()
        out += frame(HEADERS, END_HEADERS, sid, block) + frame(DATA, END_STREAM, sid, body)
        out += frame(RST_STREAM, 0, sid, struct.pack(">I", 8))
    h2.send(bytes(out))
    h2.drain(1.0)
    return []


def _h2_field_bomb(h2: RawH2) -> list[StreamResult]:
    """A ~64 KiB header block that decodes to 65k fields: one field put in the dynamic table, then
    referenced by a one-byte index 65,000 times."""
    sid = h2.new_stream()
    block = encode_fields(grpc_request_fields("ServerReady")) + b"\x40\x01x\x00" + b"\xbe" * 65_000
    first, rest = block[:16384], block[16384:]
    chunks = [rest[i : i + 16384] for i in range(0, len(rest), 16384)]
    out = frame(HEADERS, END_STREAM, sid, first)
    for i, chunk in enumerate(chunks):
        out += frame(CONTINUATION, END_HEADERS if i == len(chunks) - 1 else 0, sid, chunk)
    h2.send(out)
    return [h2.wait(sid, 3)]


def _h2_streams_over_the_limit(h2: RawH2) -> list[StreamResult]:
    """Open 1000 streams and never finish them (no END_STREAM): beyond the concurrency limit they are
    refused; none of them may hold the connection's memory unbounded."""
    block = encode_fields(grpc_request_fields("ModelStreamInfer"))
    sids = [h2.new_stream() for _ in range(1000)]
    h2.send(b"".join(frame(HEADERS, END_HEADERS, sid, block) for sid in sids))
    h2.drain(1.0)
    return []


def _h2_settings_flood(h2: RawH2) -> list[StreamResult]:
    h2.send(frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 65535)) * 20_000)
    h2.drain(1.0)
    return []


def _h2_ping_flood(h2: RawH2) -> list[StreamResult]:
    h2.send(frame(PING, 0, 0, b"\x00" * 8) * 20_000)
    h2.drain(1.0)
    return []


def _h2_window_overflow(h2: RawH2) -> list[StreamResult]:
    h2.send(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 2**31 - 1)) * 2)
    h2.wait_closed(2.0)
    return []


def _h2_headers_on_stream_zero(h2: RawH2) -> list[StreamResult]:
    h2.send(frame(HEADERS, END_HEADERS | END_STREAM, 0, encode_fields(grpc_request_fields("ServerReady"))))
    h2.wait_closed(2.0)
    return []


def _h2_garbage_preface(h2: RawH2) -> list[StreamResult]:
    h2.send(b"\x00" * 9 + b"GET / HTTP/1.1\r\n\r\n" * 100)
    h2.wait_closed(2.0)
    return []


H2_ATTACKS: list[tuple[str, Callable[[RawH2], list[StreamResult]]]] = [
    ("padded-headers-empty-payload", _h2_padded_empty_headers),
    ("20k-empty-continuation-frames", _h2_empty_continuations),
    ("rapid-reset-3000-streams", _h2_rapid_reset),
    ("64KiB-block-decoding-to-65k-fields", _h2_field_bomb),
    ("1000-unfinished-streams", _h2_streams_over_the_limit),
    ("settings-flood", _h2_settings_flood),
    ("ping-flood", _h2_ping_flood),
    ("window-update-overflow", _h2_window_overflow),
    ("headers-on-stream-zero", _h2_headers_on_stream_zero),
    ("garbage-after-preface", _h2_garbage_preface),
]


@pytest.mark.parametrize("run", [a[1] for a in H2_ATTACKS], ids=[a[0] for a in H2_ATTACKS])
def test_http2_frame_abuse_leaves_the_sidecar_unharmed(
    stack: AttackStack, run: Callable[[RawH2], list[StreamResult]]
) -> None:
    before = triton_inference_count(stack.triton_metrics, MODEL)
    with attack(stack), RawH2(*_addr(stack.grpc), timeout=10) as h2:
        results = run(h2)
    for result in results:
        assert _acceptable_grpc_end(result) or not result.ended, _h2(result)
    # Reset or refused streams may reach Triton once each, never more (no replays).
    assert triton_inference_count(stack.triton_metrics, MODEL) - before <= 3000


# ------------------------------------------------------------------------------------ gRPC streams


def test_grpc_stream_error_responses_carry_the_request_id(stack: AttackStack) -> None:
    """ModelStreamInfer answers every request in order; a refused one comes back as an error response
    whose id is the id the client sent (not a made-up one), and the stream goes on."""
    bad_name = proto_infer(request_id="stream-bad-name")
    bad_name.inputs[0].name = "NOPE"
    bad_decode = proto_infer(request_id="stream-bad-decode")
    bad_decode.raw_input_contents.append(b"\x00" * 32)
    bad_shape = proto_infer(request_id="stream-bad-shape")
    del bad_shape.inputs[0].shape[:]
    bad_shape.inputs[0].shape.extend([2**40])
    requests = [
        proto_infer(request_id="stream-ok-1"),
        bad_name,
        bad_decode,
        bad_shape,
        proto_infer(request_id="stream-ok-5", seed=1),
    ]
    with attack(stack), grpc.insecure_channel(stack.grpc) as channel:
        call = channel.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            request_serializer=service_pb2.ModelInferRequest.SerializeToString,
            response_deserializer=service_pb2.ModelStreamInferResponse.FromString,
        )
        responses = list(call(iter(requests), timeout=20))
    assert len(responses) == len(requests)
    for sent, got in zip(requests, responses, strict=True):
        assert got.infer_response.id == sent.id, (
            f"sent id {sent.id!r}, the response says {got.infer_response.id!r}"
        )
        refused = sent.id.startswith("stream-bad")
        assert bool(got.error_message) == refused, f"{sent.id}: error_message={got.error_message!r}"
        if refused:
            assert "internal" not in got.error_message.lower(), got.error_message


def test_grpc_stream_with_an_unparseable_message_ends_cleanly(stack: AttackStack) -> None:
    with attack(stack), grpc.insecure_channel(stack.grpc) as channel:
        call = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
        messages = [proto_infer(request_id="s1").SerializeToString(), b"\xff\xff\xff\xff garbage"]
        try:
            replies = list(call(iter(messages), timeout=20))
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            replies, code = [], exc.code()
    assert not_internal(code), code
    for reply in replies:
        assert "internal" not in service_pb2.ModelStreamInferResponse.FromString(reply).error_message.lower()


def test_grpc_rapid_cancels_leave_the_sidecar_unharmed(stack: AttackStack) -> None:
    """500 unary calls and 100 streams, each cancelled right after it started: nothing leaks, Triton
    runs each at most once, and the sidecar stays ready."""
    body = proto_infer().SerializeToString()
    before = triton_inference_count(stack.triton_metrics, MODEL)

    async def storm() -> None:
        async with grpc.aio.insecure_channel(stack.grpc) as channel:
            unary = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
            calls: list[Any] = []
            # Ten waves of 50, each cancelled a little later than the one before: the first before they
            # leave the client, the later ones while the sidecar and Triton work on them.
            for wave in range(10):
                batch = [unary(body, timeout=10) for _ in range(50)]
                await asyncio.sleep(0.005 * wave)
                for call in batch:
                    call.cancel()
                calls += batch
            for _ in range(100):
                s = stream(timeout=10)
                await s.write(body)
                await asyncio.sleep(0)
                s.cancel()
            await asyncio.gather(*calls, return_exceptions=True)

    with attack(stack, cpu_s=2 * CPU_BUDGET_S):
        asyncio.run(storm())
    time.sleep(0.5)
    executed = triton_inference_count(stack.triton_metrics, MODEL) - before
    assert executed <= 600, f"Triton executed {executed:.0f} requests for 600 cancelled calls"


# ------------------------------------------------------------------------------------ fuzz


FUZZ_CASES = 2000
FUZZ_SEED = "attack-suite-1"  # fixed in CI so a failure reproduces; `make fuzz` draws a new one per run


def test_short_fuzz_run_finds_no_crash_no_5xx(stack: AttackStack, tmp_path: Path) -> None:
    """The fuzzer of ``make fuzz`` for 2000 cases over both protocols (a minute at most)."""
    failures = tmp_path / "fuzz-failures.jsonl"
    fuzzer = Fuzzer(
        stack.http,
        stack.grpc,
        seed=FUZZ_SEED,
        pid=stack.pid,
        triton_url=stack.triton.http_url,
        failures_path=failures,
        http_workers=8,
        grpc_workers=8,
    )
    report = asyncio.run(fuzzer.run(FUZZ_CASES))
    summary = json.dumps(report.to_json(), indent=1)[:4000]
    assert report.cases == FUZZ_CASES, summary
    assert report.failures == 0, f"{report.failures} failure(s), cases in {failures}:\n{summary}"
    assert_ready(stack, "after the fuzz run")


def test_gzip_bodies_that_fit_still_work(stack: AttackStack) -> None:
    """The limits refuse bombs, not compression: a small gzip JSON body is answered like a plain one
    (or refused with 415 where compressed bodies are not served at all)."""
    body = gzip.compress(json_body(json_infer(request_id="gzip-fits")))
    data = request_bytes(
        "POST", INFER_PATH, body, headers=[("Content-Type", "application/json"), ("Content-Encoding", "gzip")]
    )
    ex = exchange(stack.http, data, timeout=5.0)
    assert ex.status in (200, 415), ex.describe()


def test_binary_body_between_the_json_and_body_limits_is_not_413(stack: AttackStack) -> None:
    """Binary-tensor bodies get the larger budget: one above the JSON limit (its tensor followed by
    junk) is judged on its content, a 400, not refused for its size."""
    body, header_length = binary_infer(1)
    junk = b"\x00" * (stack.limit_bytes("maxJsonBodyBytes") + MIB)
    assert len(body) + len(junk) < stack.limit_bytes("maxBodyBytes")
    data = request_bytes(
        "POST",
        INFER_PATH,
        body + junk,
        headers=[
            ("Inference-Header-Content-Length", str(header_length)),
            ("Content-Type", "application/octet-stream"),
        ],
    )
    with attack(stack, triton_untouched=True):
        ex = exchange(stack.http, data, timeout=10.0)
    assert ex.status == 400, ex.describe()
