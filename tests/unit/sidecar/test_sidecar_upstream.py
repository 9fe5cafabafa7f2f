"""The keep-alive client to Triton against a stand-in HTTP server on loopback.

Connections are reused and bounded; a call its caller gives up on (a gRPC deadline, a cancel) closes
its connection instead of leaving it open with Triton's answer still to come; a connection Triton
closed while idle is retried once; and a Triton that answers garbage, too much, or too late costs a
connection and a clear error, never the sidecar's memory."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import pytest

from guardedmodel_sidecar.errors import ModelNotFound, Unavailable, UpstreamError
from guardedmodel_sidecar.upstream import TritonHttp, UpstreamTimeout

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"


class _StandIn(asyncio.Protocol):
    """Answers each request with ``reply(n)`` (n: requests so far on this connection) after ``delay``;
    a reply of None closes the connection instead. Counts connections and closes."""

    opened = 0
    closed = 0
    delay = 0.0
    reply: Callable[[int], bytes | None] = staticmethod(lambda n: OK)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        type(self).opened += 1
        self.transport = transport
        self.buf = b""
        self.count = 0

    def connection_lost(self, exc: Exception | None) -> None:
        type(self).closed += 1

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, _, rest = self.buf.partition(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                ),
                0,
            )
            self.buf = rest[length:]
            self.count += 1
            asyncio.get_running_loop().call_later(type(self).delay, self._answer, self.count)

    def _answer(self, n: int) -> None:
        if self.transport.is_closing():
            return
        answer = type(self).reply(n)
        if answer is None:
            self.transport.close()
        else:
            self.transport.write(answer)  # type: ignore[attr-defined]


@pytest.fixture
async def triton():
    _StandIn.opened = _StandIn.closed = 0
    _StandIn.delay = 0.0
    _StandIn.reply = staticmethod(lambda n: OK)
    server = await asyncio.get_running_loop().create_server(_StandIn, "127.0.0.1", 0)
    clients: list[TritonHttp] = []

    def client(**kw) -> TritonHttp:
        c = TritonHttp(f"127.0.0.1:{server.sockets[0].getsockname()[1]}", **kw)
        clients.append(c)
        return c

    yield client
    for c in clients:
        c.close()
    server.close()
    await server.wait_closed()


async def test_connections_are_reused_and_an_abandoned_call_closes_its_own(triton) -> None:
    client = triton()
    for _ in range(5):
        assert (await client.get_json("/v2/health/ready")) == (200, {})
    assert _StandIn.opened == 1
    _StandIn.delay = 0.5
    call = asyncio.ensure_future(client.get_json("/v2/health/ready"))
    await asyncio.sleep(0.1)
    call.cancel()
    await asyncio.sleep(0.1)
    assert _StandIn.closed == 1  # closed at once, not when the late answer arrives
    assert client.open_connections == 0
    _StandIn.delay = 0.0
    assert (await client.get_json("/v2/health/ready")) == (200, {})
    assert _StandIn.opened == 2


async def test_open_connections_are_bounded_and_callers_wait_for_one(triton) -> None:
    client = triton(max_connections=2)
    _StandIn.delay = 0.05
    results = await asyncio.gather(*(client.get_json("/v2/health/ready") for _ in range(8)))
    assert results == [(200, {})] * 8
    assert _StandIn.opened == 2 and client.open_connections == 2
    # A caller that cannot get a connection before its deadline is told so.
    _StandIn.delay = 0.5
    busy = [asyncio.ensure_future(client.get_json("/v2/x")) for _ in range(2)]
    await asyncio.sleep(0.05)
    with pytest.raises(UpstreamTimeout, match="came free"):
        await client.request("GET", "/v2/y", timeout_s=0.1)
    assert [await b for b in busy] == [(200, {})] * 2


async def test_a_slow_answer_times_out_and_costs_its_connection(triton) -> None:
    client = triton(timeout_s=5.0)
    _StandIn.delay = 1.0
    with pytest.raises(UpstreamTimeout) as timed_out:
        await client.request("GET", "/v2", timeout_s=0.1)  # a gRPC deadline shortens the call
    assert (
        timed_out.value.http_status == 504 and timed_out.value.grpc_code == grpc.StatusCode.DEADLINE_EXCEEDED
    )
    assert "0.1 s" in timed_out.value.message
    with pytest.raises(UpstreamTimeout):
        await client.infer("m", "1", b"{}", [], timeout_s=0.1)
    assert client.open_connections == 0


async def test_a_connection_closed_while_idle_is_retried_once(triton) -> None:
    client = triton()
    # Triton drops every connection at its second request without answering (an idle close racing
    # the request): the request is sent again on a fresh connection.
    _StandIn.reply = staticmethod(lambda n: OK if n == 1 else None)
    for _ in range(3):
        assert (await client.get_json("/v2/health/ready")) == (200, {})
    assert _StandIn.opened == 3
    # On a fresh connection the same close is not retried: the request may have reached Triton.
    _StandIn.reply = staticmethod(lambda n: None)
    client.close()
    with pytest.raises(Unavailable, match="closed the connection"):
        await client.get_json("/v2/health/ready")


async def test_chunked_and_interim_answers_are_parsed(triton) -> None:
    client = triton()
    _StandIn.reply = staticmethod(
        lambda n: (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b'Transfer-Encoding: chunked\r\n\r\n3\r\n{"a\r\n5\r\n":1}\n\r\n0\r\n\r\n'
        )
    )
    response = await client.request("GET", "/v2")
    assert (response.status, response.headers, bytes(response.body)) == (
        200,
        {"content-type": "application/json"},
        b'{"a":1}\n',
    )
    assert (await client.request("GET", "/v2")).json() == {"a": 1}  # the connection is still good
    assert _StandIn.opened == 1


async def test_a_body_that_arrives_in_pieces_is_gathered(triton) -> None:
    client = triton()
    body = b"x" * 300_000  # more than one socket read
    _StandIn.reply = staticmethod(
        lambda n: b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    response = await client.request("GET", "/v2")
    assert bytes(response.body) == body


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", "above the sidecar's limit of 100"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n80\r\n" + b"x" * 128 + b"\r\n",
            "passed the sidecar's limit",
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "malformed"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", "malformed"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-6\r\nabc\r\n", "malformed"),
        (b"SSH-2.0-OpenSSH\r\n\r\n", "malformed"),
        (OK + OK, "second response"),
        (
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n",
            "protocol switch",
        ),
    ],
    ids=[
        "length over the cap",
        "chunks over the cap",
        "negative length",
        "two lengths",
        "negative chunk",
        "not HTTP",
        "two answers",
        "upgrade",
    ],
)
async def test_a_broken_triton_costs_a_connection_and_a_502(triton, answer: bytes, message: str) -> None:
    client = triton(max_response_bytes=100)
    _StandIn.reply = staticmethod(lambda n: answer)
    if answer == OK + OK:
        # The first answer completes the call; the extra one closes the connection.
        assert (await client.get_json("/v2")) == (200, {})
        await asyncio.sleep(0.05)
        assert client.open_connections == 0
        return
    with pytest.raises(UpstreamError) as broken:
        await client.request("GET", "/v2")
    assert broken.value.http_status == 502 and message in broken.value.message
    assert client.open_connections == 0
    _StandIn.reply = staticmethod(lambda n: OK)
    assert (await client.get_json("/v2")) == (200, {})


async def test_infer_errors_are_mapped(triton) -> None:
    client = triton()
    error = b'{"error":"Request for unknown model: \'m\' is not found"}'
    _StandIn.reply = staticmethod(
        lambda n: b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n%s" % (len(error), error)
    )
    with pytest.raises(ModelNotFound, match="not available in Triton"):
        await client.infer("m", "1", b"{}", [])
    _StandIn.reply = staticmethod(
        lambda n: b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\n\x1b[2J"
    )
    with pytest.raises(UpstreamError) as failed:
        await client.infer("m", "", b"{}", [])
    # Triton's own failure is a bad gateway, never the sidecar's 500; a refusal of Triton's passes on.
    assert failed.value.http_status == 502 and "\x1b" not in failed.value.message
    error = b'{"error":"unexpected shape for input \'x\'"}'
    _StandIn.reply = staticmethod(
        lambda n: b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n%s" % (len(error), error)
    )
    with pytest.raises(UpstreamError) as refused:
        await client.infer("m", "", b"{}", [])
    assert (
        refused.value.http_status == 400 and refused.value.message == "Triton: unexpected shape for input 'x'"
    )


async def test_the_restricted_api_key_goes_on_repository_calls_only(triton) -> None:
    seen: list[bytes] = []
    real = _StandIn.data_received

    def recording(self: _StandIn, data: bytes) -> None:
        seen.append(data)
        real(self, data)

    _StandIn.data_received = recording  # type: ignore[method-assign]
    try:
        client = triton(restricted_header=("guardedmodel-sidecar-key", "s3cret"))
        await client.post_json("/v2/repository/index", {})
        await client.get_json("/v2/models/m/config")
    finally:
        _StandIn.data_received = real  # type: ignore[method-assign]
    index, config = seen
    assert b"\r\nguardedmodel-sidecar-key: s3cret\r\n" in index and b"s3cret" not in config
    with pytest.raises(ValueError, match="printable"):
        TritonHttp("127.0.0.1:1", restricted_header=("k", "v\r\nX-Evil: 1"))
