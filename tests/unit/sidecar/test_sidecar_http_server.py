"""HTTP/1.1 framing of the v2 server over a real socket: keep-alive, pipelining, chunked bodies,
100-continue, size limits, gzip bodies. No Triton is needed: health answers from the sidecar, and a
request that fails to decode is refused before any upstream call."""

from __future__ import annotations

import asyncio
import gzip
from pathlib import Path

import orjson
import pytest

from guardedmodel_sidecar.audit import AuditLog
from guardedmodel_sidecar.config import parse_config
from guardedmodel_sidecar.http_server import V2HttpServer
from guardedmodel_sidecar.metrics import SidecarMetrics
from guardedmodel_sidecar.pipeline import Pipeline
from guardedmodel_sidecar.review import ReviewSink
from guardedmodel_sidecar.routing import Router
from guardedmodel_sidecar.upstream import TritonHttp


@pytest.fixture
async def server(tmp_path: Path):
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
    v2 = V2HttpServer(pipeline, pipeline.upstream, max_body=1000, is_ready=lambda: False)
    srv = await v2.start("127.0.0.1", 0)
    yield srv.sockets[0].getsockname()[1], audit
    srv.close()
    await srv.wait_closed()


async def exchange(port: int, raw: bytes, responses: int = 1) -> list[tuple[int, dict[str, str], bytes]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    out = []
    for _ in range(responses):
        status_line = await reader.readline()
        if not status_line:
            break
        status = int(status_line.split()[1])
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            key, _, value = line.decode().partition(":")
            headers[key.strip().lower()] = value.strip()
        if status == 100:
            out.append((status, headers, b""))
            continue
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        out.append((status, headers, body))
    writer.close()
    return out


async def test_pipelined_keep_alive_requests_are_answered_in_order(server) -> None:
    port, _ = server
    raw = (
        b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
        + b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    responses = await exchange(port, raw, 2)
    assert [r[0] for r in responses] == [200, 503]
    assert b"not ready" in responses[1][2]


async def test_infer_while_triton_is_not_ready_is_503_and_audited(server) -> None:
    port, audit = server
    body = orjson.dumps({"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}]})
    raw = b"POST /v2/models/m/infer HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    ((status, _, payload),) = await exchange(port, raw)
    assert status == 503 and b"Triton is not ready" in payload
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
    assert audit.records_written == 1  # refused requests are audited too


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
    ((status, headers, payload),) = await exchange(
        port, b"POST /v2/models/m/infer HTTP/1.1\r\nContent-Length: 5000\r\n\r\n"
    )
    assert status == 413 and headers["connection"] == "close" and b"above the limit of 1000" in payload


async def test_unknown_paths_and_http10_close(server) -> None:
    port, _ = server
    ((status, headers, _),) = await exchange(port, b"GET /metrics HTTP/1.0\r\n\r\n")
    assert status == 404 and headers["connection"] == "close"
    ((status, _, payload),) = await exchange(port, b"POST /v2/repository/models/m/load HTTP/1.1\r\n\r\n")
    assert status == 403 and b"managed by the guard sidecar" in payload


class _RecordingTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.reading = True

    def writelines(self, chunks: list[bytes]) -> None:
        self.written.append(b"".join(bytes(c) for c in chunks))

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        pass


async def test_a_client_that_does_not_read_its_answers_is_not_served_more(tmp_path: Path) -> None:
    config = parse_config({"spec": {"model": {"name": "m"}}, "auditDir": str(tmp_path / "audit")})
    pipeline = Pipeline(
        config,
        TritonHttp("127.0.0.1:9"),
        Router(config.routing),
        SidecarMetrics("m"),
        AuditLog(config.audit_dir),
        ReviewSink(None, tmp_path / "spool", max_fraction=0.1),
    )
    v2 = V2HttpServer(pipeline, pipeline.upstream, max_body=1000, is_ready=lambda: True)
    connection = v2.protocol()
    transport = _RecordingTransport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    request = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    connection.data_received(request)
    await asyncio.sleep(0.01)
    assert len(transport.written) == 1
    connection.pause_writing()  # what the transport does when its buffer passes the high-water mark
    assert not transport.reading
    connection.data_received(request * 5)
    await asyncio.sleep(0.01)
    assert len(transport.written) == 1  # nothing more is taken while the client is behind
    connection.resume_writing()
    assert transport.reading
    for _ in range(20):
        await asyncio.sleep(0.005)
    assert len(transport.written) == 6 and all(w.startswith(b"HTTP/1.1 200") for w in transport.written)
