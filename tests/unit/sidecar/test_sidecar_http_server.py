"""The v2 HTTP server over a real loopback socket: keep-alive, pipelining, chunked and gzip bodies,
100-continue, body limits, HTTP/1.0, backpressure, timeouts, the connection cap, and bugs that stay
inside their own request. No Triton is needed: health answers from the sidecar, and a request that
fails to decode is refused before any upstream call."""

from __future__ import annotations

import asyncio
import gzip
from pathlib import Path
from typing import Any

import orjson
import pytest

from guardedmodel_sidecar.audit import AuditLog
from guardedmodel_sidecar.config import parse_config
from guardedmodel_sidecar.http_server import V2HttpServer
from guardedmodel_sidecar.limits import Limits
from guardedmodel_sidecar.metrics import SidecarMetrics
from guardedmodel_sidecar.pipeline import Pipeline
from guardedmodel_sidecar.review import ReviewSink
from guardedmodel_sidecar.routing import Router
from guardedmodel_sidecar.upstream import TritonHttp

LIMITS = Limits(max_json_body_bytes=1000, max_body_bytes=4000, max_pipelined_requests=4)


def make_server(
    tmp_path: Path, limits: Limits = LIMITS, ready: bool = False
) -> tuple[V2HttpServer, AuditLog]:
    config = parse_config({"spec": {"model": {"name": "m"}}, "auditDir": str(tmp_path / "audit")})
    audit = AuditLog(config.audit_dir)
    pipeline = Pipeline(
        config,
        TritonHttp("127.0.0.1:9"),
        Router(config.routing),
        SidecarMetrics("m"),
        audit,
        ReviewSink(None, tmp_path / "spool", max_fraction=0.1),
    )
    return V2HttpServer(pipeline, pipeline.upstream, limits=limits, is_ready=lambda: ready), audit


@pytest.fixture
async def serve(tmp_path: Path):
    """``await serve(limits)`` -> (port, V2HttpServer, AuditLog); servers are closed after the test."""
    servers: list[asyncio.Server] = []

    async def start(limits: Limits = LIMITS, ready: bool = False) -> tuple[int, V2HttpServer, AuditLog]:
        v2, audit = make_server(tmp_path, limits, ready)
        srv = await v2.start("127.0.0.1", 0)
        servers.append(srv)
        return srv.sockets[0].getsockname()[1], v2, audit

    yield start
    for srv in servers:
        srv.close()
        await srv.wait_closed()


@pytest.fixture
async def server(serve):
    port, _, audit = await serve()
    return port, audit


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes] | None:
    status_line = await reader.readline()
    if not status_line:
        return None
    status = int(status_line.split()[1])
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        key, _, value = line.decode().partition(":")
        headers[key.strip().lower()] = value.strip()
    if status == 100:
        return status, headers, b""
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def exchange(port: int, raw: bytes, responses: int = 1) -> list[tuple[int, dict[str, str], bytes]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    out = []
    for _ in range(responses):
        response = await asyncio.wait_for(read_response(reader), 5)
        if response is None:
            break
        out.append(response)
    writer.close()
    return out


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    return await asyncio.wait_for(reader.read(1), 5) == b""


INFER_JSON = orjson.dumps({"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}]})


# ------------------------------------------------------------------------------------ the basics


async def test_pipelined_keep_alive_requests_are_answered_in_order(server) -> None:
    port, _ = server
    raw = (
        b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
        + b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n"
        + b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    responses = await exchange(port, raw, 3)
    assert [r[0] for r in responses] == [200, 503, 200]
    assert b"not ready" in responses[1][2]
    assert all("connection" not in r[1] for r in responses)


async def test_infer_while_triton_is_not_ready_is_503_and_audited(server) -> None:
    port, audit = server
    raw = b"POST /v2/models/m/infer HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(INFER_JSON), INFER_JSON)
    ((status, _, payload),) = await exchange(port, raw)
    assert status == 503 and b"Triton is not ready" in payload
    audit.flush()
    assert audit.records_written == 1


async def test_chunked_and_gzip_bodies_are_read(server) -> None:
    port, audit = server
    body = gzip.compress(b"{not json")
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:5], body[5:])) + b"0\r\n\r\n"
    raw = (
        b"POST /v2/models/m/infer HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Encoding: gzip\r\n\r\n"
        + chunked
    )
    ((status, _, payload),) = await exchange(port, raw)
    assert status == 400 and b"not valid JSON" in payload
    audit.flush()
    assert audit.records_written == 1  # refused requests are audited too


async def test_a_body_that_arrives_in_pieces_is_gathered(server) -> None:
    port, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /v2/models/m/infer HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(INFER_JSON))
    for i in range(0, len(INFER_JSON), 7):
        writer.write(INFER_JSON[i : i + 7])
        await writer.drain()
        await asyncio.sleep(0.002)
    status, _, payload = await read_response(reader)  # type: ignore[misc]
    assert status == 503 and b"Triton is not ready" in payload  # decoded whole, then refused upstream
    writer.close()


async def test_expect_100_continue_and_the_size_limit(server) -> None:
    port, _ = server
    head = b"POST /v2/models/m/infer HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    assert (await reader.readline()).startswith(b"HTTP/1.1 100")
    await reader.readline()
    writer.write(b"{}{}")
    assert (await reader.readline()).startswith(b"HTTP/1.1 400")
    writer.close()
    # A body above the limit is refused from its Content-Length, before the client sends it.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /v2/models/m/infer HTTP/1.1\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n")
    status, headers, payload = await read_response(reader)  # type: ignore[misc]
    assert status == 413 and headers["connection"] == "close" and b"above the limit of 1000" in payload
    assert await closed_by_server(reader)


async def test_binary_tensor_bodies_get_the_larger_limit(server) -> None:
    port, _ = server
    # 3000 bytes: over the JSON limit (1000), within the binary limit (4000).
    body = b'{"inputs":[]}' + b"\0" * 2987
    raw = (
        b"POST /v2/models/m/infer HTTP/1.1\r\nInference-Header-Content-Length: 13\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    ((status, _, payload),) = await exchange(port, raw)
    assert status == 400 and b"inputs" in payload  # read and decoded, then refused as a request
    raw = raw.replace(b"Inference-Header-Content-Length: 13\r\n", b"")
    ((status, _, payload),) = await exchange(port, raw)
    assert status == 413 and b"JSON bodies" in payload


async def test_a_malformed_binary_header_length_is_a_client_error(server) -> None:
    port, _ = server
    raw = b"POST /v2/models/m/infer HTTP/1.1\r\nInference-Header-Content-Length: 1_0\r\nContent-Length: 2\r\n\r\n{}"
    ((status, _, payload),) = await exchange(port, raw)
    assert status == 400 and b"must be a whole number of bytes" in payload


async def test_http10_closes_unless_asked_to_keep_alive(server) -> None:
    port, _ = server
    ((status, headers, _),) = await exchange(port, b"GET /metrics HTTP/1.0\r\n\r\n")
    assert status == 404 and headers["connection"] == "close"
    raw = b"GET /v2/health/live HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" * 2
    responses = await exchange(port, raw, 2)
    assert [r[0] for r in responses] == [200, 200]
    assert responses[0][1]["connection"] == "keep-alive"


async def test_connection_close_ends_the_connection_and_later_bytes_are_ignored(server) -> None:
    port, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"GET /v2/health/live HTTP/1.1\r\nConnection: close\r\n\r\nGET /v2/health/live HTTP/1.1\r\n\r\n"
    )
    status, headers, _ = await read_response(reader)  # type: ignore[misc]
    assert status == 200 and headers["connection"] == "close"
    assert await closed_by_server(reader)


async def test_refused_endpoints(server) -> None:
    port, _ = server
    ((status, _, payload),) = await exchange(port, b"POST /v2/repository/models/m/load HTTP/1.1\r\n\r\n")
    assert status == 403 and b"managed by the guard sidecar" in payload
    ((status, _, payload),) = await exchange(port, b"POST /v2/models/m/generate HTTP/1.1\r\n\r\n")
    assert status == 403 and b"without" in payload and b"infer" in payload
    ((status, headers, _),) = await exchange(port, b"GET /v2/models/m/infer HTTP/1.1\r\n\r\n")
    assert status == 405 and headers["allow"] == "POST"
    # A HEAD request gets the head of its answer and no body.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"HEAD /v2/health/live HTTP/1.1\r\n\r\nGET /v2/health/live HTTP/1.1\r\n\r\n")
    assert (await reader.readline()).startswith(b"HTTP/1.1 405")
    while await reader.readline() != b"\r\n":
        pass
    assert (await reader.readline()).startswith(b"HTTP/1.1 200")
    writer.close()


async def test_an_upgrade_request_is_answered_as_http_and_the_connection_closes(server) -> None:
    port, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"GET /v2/health/live HTTP/1.1\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    )
    status, headers, _ = await read_response(reader)  # type: ignore[misc]
    assert status == 200 and headers["connection"] == "close"
    assert await closed_by_server(reader)


# ------------------------------------------------------------------------- backpressure and queue


class _RecordingTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.reading = True
        self.closed = False

    def writelines(self, chunks: list[bytes]) -> None:
        self.written.append(b"".join(bytes(c) for c in chunks))

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


async def test_a_client_that_does_not_read_its_answers_is_not_served_more(tmp_path: Path) -> None:
    v2, _ = make_server(tmp_path, Limits(max_pipelined_requests=16), ready=True)
    connection = v2.protocol()
    transport = _RecordingTransport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    request = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    connection.data_received(request)
    assert len(transport.written) == 1
    connection.pause_writing()  # what the transport does when its buffer passes the high-water mark
    assert not transport.reading
    connection.data_received(request * 5)
    await asyncio.sleep(0.01)
    assert len(transport.written) == 1  # nothing more is answered while the client is behind
    connection.resume_writing()
    assert transport.reading
    assert len(transport.written) == 6 and all(w.startswith(b"HTTP/1.1 200") for w in transport.written)
    connection.connection_lost(None)


async def test_parsing_ahead_stops_at_the_pipelining_limit(tmp_path: Path) -> None:
    v2, _ = make_server(tmp_path, LIMITS)  # max_pipelined_requests=4
    gate = asyncio.Event()

    async def slow_answer(request: Any) -> Any:
        await gate.wait()
        return 200, "application/json", [], None

    v2.answer = slow_answer  # type: ignore[method-assign]
    connection = v2.protocol()
    transport = _RecordingTransport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    forwarded = b"GET /v2 HTTP/1.1\r\n\r\n"  # needs an answer that waits (forwarded to Triton)
    connection.data_received(forwarded * 4)
    assert not transport.reading  # 4 requests queued: reading is paused
    gate.set()
    for _ in range(10):
        await asyncio.sleep(0.001)
    assert len(transport.written) == 4 and transport.reading
    # More requests in one read than the limit: the ones within it are answered, then 429 and close.
    gate.clear()
    connection.data_received(forwarded * 6)
    gate.set()
    for _ in range(10):
        await asyncio.sleep(0.001)
    answers = transport.written[4:]
    assert [a.split(b" ")[1] for a in answers] == [b"200"] * 4 + [b"429"] and transport.closed
    connection.connection_lost(None)


# ------------------------------------------------------------------------------------- timeouts


async def test_a_slow_head_gets_408_and_the_connection_closes(serve) -> None:
    port, _, _ = await serve(Limits(header_timeout_s=0.2))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")
    for _ in range(4):  # bytes keep coming, but the head never completes
        await asyncio.sleep(0.06)
        writer.write(b"X-Slow: 1\r\n")
    status, headers, payload = await read_response(reader)  # type: ignore[misc]
    assert status == 408 and headers["connection"] == "close" and b"not complete within 0.2 s" in payload
    assert await closed_by_server(reader)


async def test_a_stalled_body_gets_408_but_a_slow_steady_one_is_read(serve) -> None:
    port, _, _ = await serve(Limits(body_timeout_s=0.4))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = b"POST /v2/models/m/infer HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(INFER_JSON)
    writer.write(head + INFER_JSON[:5])
    status, _, payload = await asyncio.wait_for(read_response(reader), 2)  # type: ignore[misc]
    assert status == 408 and b"no request body bytes arrived for 0.4 s" in payload
    assert await closed_by_server(reader)
    # Slower than the timeout in total, but never a gap as long as it.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    for i in range(0, len(INFER_JSON), 5):  # ~0.85 s in all, never more than 0.06 s apart
        await asyncio.sleep(0.06)
        writer.write(INFER_JSON[i : i + 5])
    status, _, payload = await read_response(reader)  # type: ignore[misc]
    assert status == 503 and b"Triton is not ready" in payload
    writer.close()


async def test_an_idle_keep_alive_connection_is_closed_silently(serve) -> None:
    port, _, _ = await serve(Limits(idle_timeout_s=0.2))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /v2/health/live HTTP/1.1\r\n\r\n")
    assert (await read_response(reader))[0] == 200  # type: ignore[index]
    await asyncio.sleep(0.1)
    writer.write(b"GET /v2/health/live HTTP/1.1\r\n\r\n")  # activity restarts the idle clock
    assert (await read_response(reader))[0] == 200  # type: ignore[index]
    started = asyncio.get_running_loop().time()
    assert await closed_by_server(reader)  # no bytes, just the close
    assert 0.15 < asyncio.get_running_loop().time() - started < 3.0


async def test_connections_above_the_cap_get_503(serve) -> None:
    port, v2, _ = await serve(Limits(max_connections=2))
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
    await asyncio.sleep(0.05)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    status, headers, payload = await read_response(reader)  # type: ignore[misc]
    assert status == 503 and headers["connection"] == "close" and b"2 connections open" in payload
    assert await closed_by_server(reader)
    writer.close()
    held[0][1].close()
    await asyncio.sleep(0.05)
    assert v2.connections == 1
    ((status, _, _),) = await exchange(port, b"GET /v2/health/live HTTP/1.1\r\n\r\n")
    assert status == 200
    held[1][1].close()


# --------------------------------------------------------------------------------- bugs stay local


async def test_a_bug_is_a_500_without_the_callers_bytes_and_other_connections_go_on(serve, caplog) -> None:
    port, v2, _ = await serve(ready=True)
    real = v2.answer_now

    def buggy(request: Any) -> Any:
        if "boom" in request.target:
            raise KeyError(request.target)
        return real(request)

    v2.answer_now = buggy  # type: ignore[method-assign]
    other_reader, other_writer = await asyncio.open_connection("127.0.0.1", port)
    raw = b"GET /v2/boom%1b[31m HTTP/1.1\r\n\r\nGET /v2/health/live HTTP/1.1\r\n\r\n"
    (first, second) = await exchange(port, raw, 2)
    assert first[0] == 500 and b"KeyError" in first[2] and b"boom" not in first[2]
    assert second[0] == 200  # the request framing was intact: the connection goes on
    other_writer.write(b"GET /v2/health/ready HTTP/1.1\r\n\r\n")
    assert (await read_response(other_reader))[0] == 200  # type: ignore[index]
    other_writer.close()
    assert "\x1b" not in caplog.text


async def test_a_bug_inside_the_parser_callbacks_is_contained(tmp_path: Path) -> None:
    v2, _ = make_server(tmp_path)
    connection = v2.protocol()
    transport = _RecordingTransport()
    connection.connection_made(transport)  # type: ignore[arg-type]

    def broken(url: bytes) -> None:
        raise RuntimeError("bug")

    connection.on_url = broken  # type: ignore[method-assign]
    connection._parser = type(connection._parser)(connection)  # a parser that sees the broken callback
    connection.data_received(b"GET /v2/health/live HTTP/1.1\r\n\r\n")  # must not raise
    assert transport.written[0].startswith(b"HTTP/1.1 500") and transport.closed
    connection.connection_lost(None)
