"""The allow-list toward Triton: what is answered locally, guarded, forwarded read-only, refused (403),
the wrong method (405) and outside /v2 (404); and that a forwarded request reaches a stand-in Triton
rebuilt from its validated path, with none of the caller's headers, query or extra bytes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from guardedmodel_sidecar.audit import AuditLog
from guardedmodel_sidecar.config import parse_config
from guardedmodel_sidecar.endpoints import (
    FORWARD,
    GRPC_FORWARDED,
    GRPC_REFUSED,
    INFER,
    LIVE,
    READY,
    route,
)
from guardedmodel_sidecar.errors import GuardError
from guardedmodel_sidecar.http_server import V2HttpServer
from guardedmodel_sidecar.limits import Limits
from guardedmodel_sidecar.metrics import SidecarMetrics
from guardedmodel_sidecar.pipeline import Pipeline
from guardedmodel_sidecar.review import ReviewSink
from guardedmodel_sidecar.routing import Router
from guardedmodel_sidecar.upstream import TritonHttp

ALLOWED = [
    ("GET", "/v2/health/live", LIVE, ""),
    ("GET", "/v2/health/ready", READY, ""),
    ("POST", "/v2/models/m/infer", INFER, "/v2/models/m/infer"),
    ("POST", "/v2/models/m/versions/2/infer?x=1", INFER, "/v2/models/m/versions/2/infer"),
    ("GET", "/v2", FORWARD, "/v2"),
    ("GET", "/v2/models/m", FORWARD, "/v2/models/m"),
    ("GET", "/v2/models/m.v2-a_b/versions/3", FORWARD, "/v2/models/m.v2-a_b/versions/3"),
    ("GET", "/v2/models/m/ready", FORWARD, "/v2/models/m/ready"),
    ("GET", "/v2/models/m/versions/1/ready", FORWARD, "/v2/models/m/versions/1/ready"),
    ("GET", "/v2/models/m/config?secret=1#frag", FORWARD, "/v2/models/m/config"),
    ("GET", "/v2/models/m/stats", FORWARD, "/v2/models/m/stats"),
    ("GET", "/v2/models/m/versions/1/stats", FORWARD, "/v2/models/m/versions/1/stats"),
    ("GET", "/v2/models/stats", FORWARD, "/v2/models/stats"),
    ("POST", "/v2/repository/index", FORWARD, "/v2/repository/index"),
]

REFUSED = [
    ("POST", "/v2/repository/models/m/load", 403, "managed by the guard sidecar"),
    ("POST", "/v2/repository/models/m/unload", 403, "managed by the guard sidecar"),
    ("POST", "/v2/models/m/generate", 403, "without the input gate"),
    ("POST", "/v2/models/m/versions/1/generate_stream", 403, "use .../infer"),
    ("GET", "/v2/logging", 403, "log settings"),
    ("POST", "/v2/logging", 403, "log settings"),
    ("POST", "/v2/trace/setting", 403, "TENSORS"),
    ("POST", "/v2/models/m/trace/setting", 403, "TENSORS"),
    ("GET", "/v2/systemsharedmemory/status", 403, "shared-memory"),
    ("POST", "/v2/systemsharedmemory/region/r/register", 403, "shared-memory"),
    ("POST", "/v2/cudasharedmemory/region/r/unregister", 403, "shared-memory"),
    ("GET", "/v2/cudasharedmemory/status", 403, "shared-memory"),
    ("GET", "/v2/", 403, "not served"),
    ("GET", "/v2/models", 403, "not served"),
    ("GET", "/v2/models/m/labels", 403, "not served"),
    ("GET", "/v2//models/m", 403, "not served"),
    ("GET", "/v2/models/m/%69nfer", 403, "not served"),
    ("GET", "/v2/models/m/../../logging", 403, "not served"),
    ("GET", "/v2/anything", 403, "not served"),
    ("GET", "/v2/models/../config", 400, "not a Triton model name"),
    ("GET", "/v2/models/a%0ab/config", 400, "not a Triton model name"),
    ("GET", "/v2/models/m/versions/x/config", 400, "not a number"),
    ("GET", "/v2/models/m/infer", 405, "use POST"),
    ("PUT", "/v2/models/m/versions/1/infer", 405, "use POST"),
    ("POST", "/v2/health/ready", 405, "use GET"),
    ("HEAD", "/v2/health/live", 405, "use GET"),
    ("POST", "/v2/models/m/config", 405, "use GET"),
    ("GET", "/v2/repository/index", 405, "use POST"),
    ("DELETE", "/v2", 405, "use GET"),
    ("GET", "/metrics", 404, "under /v2"),
    ("GET", "/", 404, "under /v2"),
    ("GET", "/v2x", 404, "under /v2"),
    ("GET", "http://triton:8000/v2/logging", 400, "not a path"),
    ("OPTIONS", "*", 400, "not a path"),
]


@pytest.mark.parametrize(("method", "target", "kind", "path"), ALLOWED)
def test_allowed_endpoints(method: str, target: str, kind: int, path: str) -> None:
    found = route(method, target)
    assert (found.kind, found.path) == (kind, path)


@pytest.mark.parametrize(("method", "target", "status", "fragment"), REFUSED)
def test_everything_else_is_refused_with_a_reason(
    method: str, target: str, status: int, fragment: str
) -> None:
    with pytest.raises(GuardError) as refused:
        route(method, target)
    assert refused.value.http_status == status and fragment in refused.value.message
    if status == 405:
        assert refused.value.headers["Allow"] in ("GET", "POST")


def test_grpc_mirrors_the_same_list() -> None:
    assert {
        "ServerMetadata",
        "ModelMetadata",
        "ModelReady",
        "ModelConfig",
        "ModelStatistics",
        "RepositoryIndex",
    } == GRPC_FORWARDED
    assert "generate" not in " ".join(GRPC_FORWARDED).lower()
    assert {"RepositoryModelLoad", "LogSettings", "TraceSetting", "SystemSharedMemoryRegister"} <= set(
        GRPC_REFUSED
    )


# ------------------------------------------------------------------------ forwarding, over sockets


class _StandInTriton(asyncio.Protocol):
    """Records each request's raw bytes and answers with ``answer``."""

    received: list[bytes] = []
    answer = (
        b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{"name":"tri"}\n'
    )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        head, sep, rest = self.buf.partition(b"\r\n\r\n")
        if not sep:
            return
        length = next(
            (
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            ),
            0,
        )
        if len(rest) < length:
            return
        type(self).received.append(head + sep + rest[:length])
        self.buf = rest[length:]
        self.transport.write(type(self).answer)  # type: ignore[attr-defined]


@pytest.fixture
async def stack(tmp_path: Path):
    _StandInTriton.received = []
    loop = asyncio.get_running_loop()
    triton_server = await loop.create_server(_StandInTriton, "127.0.0.1", 0)
    triton_url = f"127.0.0.1:{triton_server.sockets[0].getsockname()[1]}"
    config = parse_config({"spec": {"model": {"name": "m"}}, "auditDir": str(tmp_path / "audit")})
    triton = TritonHttp(triton_url)
    pipeline = Pipeline(
        config,
        triton,
        Router(config.routing),
        SidecarMetrics("m"),
        AuditLog(config.audit_dir),
        ReviewSink(None, tmp_path / "spool", max_fraction=0.1),
    )
    v2 = V2HttpServer(pipeline, triton, limits=Limits(), is_ready=lambda: True)
    srv = await v2.start("127.0.0.1", 0)
    yield srv.sockets[0].getsockname()[1], triton_url
    srv.close()
    triton.close()
    triton_server.close()


async def ask(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    body = await reader.readexactly(int(headers["content-length"]))
    writer.close()
    return int(lines[0].split()[1]), headers, body


async def test_a_forwarded_request_is_rebuilt_from_its_path(stack) -> None:
    port, triton_url = stack
    status, headers, body = await ask(
        port,
        b"GET /v2/models/m/versions/1/config?x=1&y=%0d%0a HTTP/1.1\r\nHost: evil\r\nCookie: c=1\r\n"
        b"X-Forwarded-For: 1.2.3.4\r\nContent-Length: 5\r\n\r\nhello",
    )
    assert (status, headers["content-type"], body) == (200, "application/json", b'{"name":"tri"}\n')
    assert _StandInTriton.received == [
        b"GET /v2/models/m/versions/1/config HTTP/1.1\r\nHost: %s\r\nContent-Length: 0\r\n"
        b"Accept-Encoding: identity\r\n\r\n" % triton_url.encode()
    ]


async def test_the_repository_index_body_is_re_encoded(stack) -> None:
    port, _ = stack
    status, _, _ = await ask(
        port,
        b"POST /v2/repository/index HTTP/1.1\r\nContent-Type: text/evil\r\nContent-Length: 16\r\n\r\n"
        b'{"ready" :false}',
    )
    assert status == 200
    (sent,) = _StandInTriton.received
    assert sent.endswith(b"Content-Type: application/json\r\n\r\n" + b'{"ready":false}')
    assert b"evil" not in sent
    status, _, body = await ask(
        port, b'POST /v2/repository/index HTTP/1.1\r\nContent-Length: 24\r\n\r\n{"ready":true,"x":"../"}'
    )
    assert status == 400 and b"ready" in body and len(_StandInTriton.received) == 1


async def test_tritons_own_errors_pass_through(stack) -> None:
    port, _ = stack
    error = orjson.dumps({"error": "Request for unknown model: 'nope' is not found"})
    normal = _StandInTriton.answer
    _StandInTriton.answer = (
        b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (
            len(error),
            error,
        )
    )
    try:
        status, _, body = await ask(port, b"GET /v2/models/nope HTTP/1.1\r\n\r\n")
    finally:
        _StandInTriton.answer = normal
    assert status == 400 and b"unknown model" in body
