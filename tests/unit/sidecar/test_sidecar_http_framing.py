"""Crafted HTTP/1.1 framing against the v2 server over a real loopback socket.

Each case is a request smuggling, hang or exhaustion attempt (negative and duplicate lengths, CL+TE,
odd transfer codings, obs-fold, bare LF, negative and huge chunk sizes, control characters, heads and
bodies past their limits, decompression bombs). Each must get its 4xx with a v2 error body and a
closed connection, and the server must go on answering. Where llhttp itself refuses, the test pins
that; where it is lenient (``gzip, chunked``, Transfer-Encoding in HTTP/1.0, HTTP/2.0 and 0.9 request
lines, CONNECT), the server's own checks must."""

from __future__ import annotations

import asyncio
import gzip
import re
import zlib
from pathlib import Path

import httptools
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guardedmodel_sidecar.audit import AuditLog
from guardedmodel_sidecar.config import parse_config
from guardedmodel_sidecar.http_server import V2HttpServer
from guardedmodel_sidecar.limits import Limits
from guardedmodel_sidecar.metrics import SidecarMetrics
from guardedmodel_sidecar.pipeline import Pipeline
from guardedmodel_sidecar.review import ReviewSink
from guardedmodel_sidecar.routing import Router
from guardedmodel_sidecar.upstream import TritonHttp

LIMITS = Limits(
    max_header_bytes=2048,
    max_header_count=20,
    max_json_body_bytes=1000,
    max_body_bytes=4000,
    max_decompressed_bytes=3000,
)


def v2_server(tmp: Path) -> V2HttpServer:
    """A v2 server with the test LIMITS in front of an unreachable Triton."""
    config = parse_config({"spec": {"model": {"name": "m"}}, "auditDir": str(tmp / "audit")})
    pipeline = Pipeline(
        config,
        TritonHttp("127.0.0.1:9"),
        Router(config.routing),
        SidecarMetrics("m"),
        AuditLog(config.audit_dir),
        ReviewSink(None, tmp / "spool", max_fraction=0.1),
    )
    return V2HttpServer(pipeline, pipeline.upstream, limits=LIMITS, is_ready=lambda: True)


@pytest.fixture
async def port(tmp_path: Path):
    srv = await v2_server(tmp_path).start("127.0.0.1", 0)
    yield srv.sockets[0].getsockname()[1]
    srv.close()
    await srv.wait_closed()


async def send(
    port: int, raw: bytes, linger: float = 2.0
) -> tuple[int, dict[str, str], dict[str, str], bool]:
    """(status, headers, JSON body, whether the server closed the connection after it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    try:
        status_line = await asyncio.wait_for(reader.readline(), 5)
        status = int(status_line.split()[1])
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            key, _, value = line.decode().partition(":")
            headers[key.strip().lower()] = value.strip()
        payload = await reader.readexactly(int(headers["content-length"]))
        body = orjson.loads(payload) if payload else {}
        try:
            closed = await asyncio.wait_for(reader.read(1), linger) == b""
        except TimeoutError:
            closed = False
    finally:
        writer.close()
    return status, headers, body, closed


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


INFER = b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\n"
GET = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n"
BOMB = gzip.compress(b"\0" * 500_000)  # ~500 bytes on the wire, 500 KB inflated

# (id, raw request, status, a fragment of the error message)
CASES = [
    ("negative Content-Length", INFER + b"Content-Length: -70\r\n\r\n{}", 400, "Content-Length"),
    ("signed Content-Length", INFER + b"Content-Length: +2\r\n\r\n{}", 400, "Content-Length"),
    ("list Content-Length", INFER + b"Content-Length: 2, 2\r\n\r\n{}", 400, "Content-Length"),
    (
        "duplicate Content-Length",
        INFER + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
        400,
        "Duplicate",
    ),
    (
        "overflowing Content-Length",
        INFER + b"Content-Length: 99999999999999999999999\r\n\r\n",
        400,
        "overflow",
    ),
    (
        "CL then TE",
        INFER + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(b"{}"),
        400,
        "Transfer-Encoding",
    ),
    (
        "TE then CL",
        INFER + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n" + chunked(b"{}"),
        400,
        "Content-Length",
    ),
    (
        "TE chunked, identity",
        INFER + b"Transfer-Encoding: chunked, identity\r\n\r\n" + chunked(b"{}"),
        400,
        "Transfer-Encoding",
    ),
    (
        "TE gzip, chunked",
        INFER + b"Transfer-Encoding: gzip, chunked\r\n\r\n" + chunked(b"{}"),
        400,
        "'chunked' alone",
    ),
    ("TE identity", INFER + b"Transfer-Encoding: identity\r\n\r\n{}", 400, "Transfer-Encoding"),
    (
        "TE twice",
        INFER + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(b"{}"),
        400,
        "Transfer-Encoding",
    ),
    (
        "TE in HTTP/1.0",
        b"POST /v2/models/m/infer HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(b"{}"),
        400,
        "HTTP/1.1",
    ),
    ("obs-fold", GET + b"X-A: a\r\n b\r\n\r\n", 400, "whitespace"),
    ("bare LF line ends", b"GET /v2/health/live HTTP/1.1\nHost: x\n\n", 400, "CRLF"),
    ("bare LF after a header", GET + b"X-A: a\n\r\n", 400, "CR"),
    ("bare CR", GET + b"X-A: a\rX-B: b\r\n\r\n", 400, "LF"),
    ("space before the colon", GET + b"X-A : a\r\n\r\n", 400, "header token"),
    (
        "negative chunk size",
        INFER + b"Transfer-Encoding: chunked\r\n\r\n-6\r\nabc\r\n0\r\n\r\n",
        400,
        "chunk size",
    ),
    (
        "huge chunk size",
        INFER + b"Transfer-Encoding: chunked\r\n\r\nfffffffffffffffffffffff\r\nab\r\n",
        400,
        "overflow",
    ),
    (
        "chunk size with a space",
        INFER + b"Transfer-Encoding: chunked\r\n\r\n2 \r\n{}\r\n0\r\n\r\n",
        400,
        "chunk size",
    ),
    ("control character in the target", b"GET /v2/health/\x01live HTTP/1.1\r\n\r\n", 400, "url"),
    ("escape in the target", b"GET /v2/\x1b[31m HTTP/1.1\r\n\r\n", 400, "url"),
    ("NUL in a header value", GET + b"X-A: a\x00b\r\n\r\n", 400, "header value"),
    ("DEL in a header value", GET + b"X-A: a\x7fb\r\n\r\n", 400, "header value"),
    ("HTTP/2.0 request line", b"GET /v2/health/live HTTP/2.0\r\n\r\n", 400, "HTTP/2.0"),
    ("HTTP/0.9 request line", b"GET /v2/health/live\r\n\r\n", 400, "HTTP/0.9"),
    ("HTTP/1.2", b"GET /v2/health/live HTTP/1.2\r\n\r\n", 400, "version"),
    ("lower-case method", b"get /v2/health/live HTTP/1.1\r\n\r\n", 400, "method"),
    ("CONNECT", b"CONNECT triton:8000 HTTP/1.1\r\n\r\n", 405, "CONNECT"),
    (
        "upgrade with a body",
        GET + b"Connection: upgrade\r\nUpgrade: h2c\r\nContent-Length: 2\r\n\r\n{}",
        400,
        "switch",
    ),
    ("head over the byte limit", GET + b"X-Big: " + b"a" * 3000 + b"\r\n\r\n", 431, "larger than 2048"),
    ("head that never ends", GET + b"X-Big: " + b"a" * 3000, 431, "larger than 2048"),
    (
        "too many header fields",
        GET + b"".join(b"X-%d: 1\r\n" % i for i in range(21)) + b"\r\n",
        431,
        "more than 20",
    ),
    ("target over the byte limit", b"GET /v2/" + b"a" * 3000 + b" HTTP/1.1\r\n\r\n", 414, "longer than 2048"),
    ("JSON body over its limit", INFER + b"Content-Length: 1001\r\n\r\n", 413, "above the limit of 1000"),
    (
        "binary body over its limit",
        INFER + b"Inference-Header-Content-Length: 2\r\nContent-Length: 4001\r\n\r\n",
        413,
        "above the limit of 4000",
    ),
    (
        "chunked body over the limit",
        INFER + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(b"a" * 600, b"a" * 600),
        413,
        "chunked",
    ),
    (
        "many tiny chunks",
        INFER
        + b"Inference-Header-Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"1\r\na\r\n" * 1030,
        400,
        "chunks",
    ),
    (
        "trailer flood",
        INFER
        + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n"
        + b"".join(b"T-%d: 1\r\n" % i for i in range(30)),
        431,
        "header fields",
    ),
    (
        "chunk extension flood",
        INFER + b"Transfer-Encoding: chunked\r\n\r\n2;" + b"x" * 4000,
        400,
        "framing",
    ),
    (
        "binary gzip bomb",
        INFER
        + b"Inference-Header-Content-Length: 2\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s"
        % (len(BOMB), BOMB),
        413,
        "inflates to more than 3000",
    ),
    (
        "gzip bomb",
        INFER + b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s" % (len(BOMB), BOMB),
        413,
        "inflates to more than 1000",
    ),
    (
        "truncated gzip",
        INFER + b"Content-Encoding: gzip\r\nContent-Length: 10\r\n\r\n%s" % BOMB[:10],
        400,
        "truncated",
    ),
    (
        "not gzip at all",
        INFER + b"Content-Encoding: gzip\r\nContent-Length: 10\r\n\r\n0123456789",
        400,
        "cannot be inflated",
    ),
    (
        "gzip and trailing bytes",
        INFER
        + b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s"
        % (len(gzip.compress(b"{}")) + 3, gzip.compress(b"{}") + b"abc"),
        400,
        "bytes follow",
    ),
    ("unknown Content-Encoding", INFER + b"Content-Encoding: br\r\nContent-Length: 2\r\n\r\n{}", 415, "'br'"),
    (
        "stacked Content-Encoding",
        INFER + b"Content-Encoding: gzip, gzip\r\nContent-Length: 2\r\n\r\n{}",
        415,
        "gzip, gzip",
    ),
    (
        "two Content-Encoding headers",
        INFER + b"Content-Encoding: gzip\r\nContent-Encoding: gzip\r\nContent-Length: 2\r\n\r\n{}",
        400,
        "more than one Content-Encoding",
    ),
    ("unknown expectation", INFER + b"Expect: 200-ok\r\nContent-Length: 2\r\n\r\n{}", 417, "100-continue"),
]


@pytest.mark.parametrize(("raw", "status", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_crafted_framing_is_refused_and_the_connection_closed(
    port: int, raw: bytes, status: int, fragment: str
) -> None:
    got, headers, body, closed = await send(port, raw)
    assert (got, fragment.lower() in body["error"].lower()) == (status, True), body
    assert headers["connection"] == "close" and closed
    assert all(c >= " " for c in body["error"])
    # ... and the server goes on serving.
    assert (await send(port, GET + b"Connection: close\r\n\r\n"))[0] == 200


async def test_pipelining_past_the_limit_is_429_after_the_answers_within_it(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /v2/health/live HTTP/1.1\r\n\r\n" * 16 + b"GET /v2 HTTP/1.1\r\n\r\n" * 40)
    stream = await asyncio.wait_for(reader.read(), 5)  # up to the server's close
    writer.close()
    statuses = [int(s) for s in re.findall(rb"HTTP/1\.1 (\d{3}) ", stream)]
    # Health answers need no waiting, so they never fill the queue; the forwarded ones do.
    assert statuses[:16] == [200] * 16 and statuses[-1] == 429 and set(statuses[16:-1]) == {503}
    assert len(statuses) == 16 + LIMITS.max_pipelined_requests + 1


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),  # RFC 9110 deflate: a zlib stream
        ("deflate", lambda b: zlib.compress(b)[2:-4]),  # raw deflate, as some clients send it
        ("x-gzip", gzip.compress),
        ("identity", lambda b: b),
    ],
)
async def test_accepted_encodings_are_inflated(port: int, encoding: str, compress) -> None:
    payload = compress(b"{not json")
    raw = INFER + b"Content-Encoding: %s\r\nContent-Length: %d\r\n\r\n%s" % (
        encoding.encode(),
        len(payload),
        payload,
    )
    status, _, body, closed = await send(port, raw, linger=0.1)
    assert status == 400 and "not valid JSON" in body["error"] and not closed


async def test_tabs_and_obs_text_in_header_values_are_legal_and_never_forwarded(port: int) -> None:
    status, _, _, closed = await send(port, GET + b"X-A: a\tb\xff\r\n\r\n", linger=0.1)
    assert status == 200 and not closed


# --------------------------------------------------------------------------- random bytes, any split


class _Transport:
    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out += data

    def writelines(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.out += chunk

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    abort = close


class _Answers:
    """httptools' response parser on what the server wrote: every byte must be a valid answer."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.parser = httptools.HttpResponseParser(self)

    def on_headers_complete(self) -> None:
        self.statuses.append(self.parser.get_status_code())


SEED_REQUESTS = [
    GET + b"\r\n",
    INFER + b"Content-Length: 2\r\n\r\n{}",
    INFER + b"Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n" + chunked(b"{", b"}"),
    INFER
    + b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s"
    % (len(gzip.compress(b"{}")), gzip.compress(b"{}")),
    b"GET /v2/models/m/config HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.sampled_from(SEED_REQUESTS),
    junk=st.binary(max_size=64),
    at=st.integers(min_value=0, max_value=400),
    cuts=st.lists(st.integers(min_value=1, max_value=400), max_size=4),
    repeat=st.integers(min_value=1, max_value=3),
)
def test_any_bytes_in_any_split_never_raise_and_never_get_a_500(
    tmp_path_factory: pytest.TempPathFactory, seed: bytes, junk: bytes, at: int, cuts: list[int], repeat: int
) -> None:
    raw = seed * repeat
    raw = raw[:at] + junk + raw[at:]
    tmp = tmp_path_factory.mktemp("fuzz")

    async def feed() -> bytes:
        connection = v2_server(tmp).protocol()
        transport = _Transport()
        connection.connection_made(transport)  # type: ignore[arg-type]
        start = 0
        for cut in [*sorted(cuts), len(raw)]:
            connection.data_received(raw[start:cut])
            start = max(start, cut)
        for _ in range(20):
            await asyncio.sleep(0.001)
        connection.connection_lost(None)
        return bytes(transport.out)

    out = asyncio.run(feed())
    answers = _Answers()
    answers.parser.feed_data(out)
    assert all(s in (100, 200, 503) or 400 <= s < 500 for s in answers.statuses), (raw, out)
