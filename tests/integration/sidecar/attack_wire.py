"""Socket-level tools for attacking a live sidecar: raw HTTP/1.1 exchanges, readiness probes on both
protocols, and the /proc readings that tell what an attack cost the sidecar process.

Raw sockets on purpose: every HTTP client library normalises or refuses exactly the bytes an attacker
sends (negative lengths, bare LF, folded headers). Responses are read back with httptools, so a reply
this module counts as an answer is one a strict parser accepts.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import struct
import time
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Self

import grpc
import httptools
from tritonclient.grpc import service_pb2

SERVICE = "inference.GRPCInferenceService"
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024


def split_addr(url: str) -> tuple[str, int]:
    host, _, port = url.rpartition(":")
    return host, int(port)


# ------------------------------------------------------------------------------------ HTTP/1.1 replies


@dataclass
class HttpReply:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class Exchange:
    """What came back on one connection: the complete replies, and whether the server closed it."""

    replies: list[HttpReply] = field(default_factory=list)
    closed: bool = False  # EOF or reset from the server
    elapsed: float = 0.0  # seconds from the first byte sent to the last event observed
    raw: bytes = b""
    parse_error: str = ""  # the server's bytes were not a valid HTTP/1.1 response

    @property
    def status(self) -> int | None:
        return self.replies[0].status if self.replies else None

    def describe(self) -> str:
        statuses = [r.status for r in self.replies]
        head = self.raw[:200]
        return f"replies={statuses} closed={self.closed} after {self.elapsed:.2f}s raw={head!r}"


class _ResponseParser:
    """Feeds a byte stream to httptools and collects whole responses (HEAD requests are not used)."""

    def __init__(self) -> None:
        self.replies: list[HttpReply] = []
        self._parser = httptools.HttpResponseParser(self)
        self._headers: dict[str, str] = {}
        self._body = bytearray()

    def feed(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self.replies.append(HttpReply(self._parser.get_status_code(), self._headers, bytes(self._body)))
        self._headers, self._body = {}, bytearray()


class RawSocket:
    """One blocking TCP connection (Nagle off) that sends exactly the bytes it is given; subclasses
    read the server's answers in their protocol."""

    def __init__(self, addr: tuple[str, int], *, timeout: float) -> None:
        self.sock = socket.create_connection(addr, timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def send(self, data: bytes) -> bool:
        """False when the server has already closed (or reset) the connection."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            self.peer_closed()
            return False

    def receive(self, timeout: float) -> bytes | None:
        """What the server sent within ``timeout`` (up to 1 MiB): None when nothing came in time,
        b"" when it closed or reset the connection."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1 << 20)
        except TimeoutError:
            return None
        except OSError:
            return b""

    def peer_closed(self) -> None:
        """Record that the server closed the connection."""
        raise NotImplementedError


class RawHttp(RawSocket):
    """One TCP connection to an HTTP port; sends exact bytes and reads replies as they come."""

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        super().__init__(split_addr(url), timeout=timeout)
        self._parser = _ResponseParser()
        self.exchange = Exchange()
        self._t0 = time.monotonic()

    def peer_closed(self) -> None:
        self.exchange.closed = True

    def send_some(self, data: bytes, seconds: float) -> int:
        """Write as much of ``data`` as the server takes within ``seconds`` (it may stop reading)."""
        self.sock.setblocking(False)
        sent = 0
        deadline = time.monotonic() + seconds
        try:
            while sent < len(data) and time.monotonic() < deadline:
                try:
                    sent += self.sock.send(data[sent : sent + 65536])
                except BlockingIOError:
                    time.sleep(0.005)
                except OSError:
                    self.exchange.closed = True
                    break
        finally:
            self.sock.setblocking(True)
        return sent

    def half_close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def read(self, *, replies: int = 1, timeout: float = 2.0, until_closed: bool = False) -> Exchange:
        """Read until ``replies`` complete replies arrived (or the close, with ``until_closed``), the
        server closed the connection, or ``timeout`` passed."""
        deadline = time.monotonic() + timeout
        ex = self.exchange
        while not ex.closed:
            if len(self._parser.replies) >= replies and not until_closed:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                break
            chunk = self.receive(left)
            if chunk is None:
                break
            if not chunk:
                ex.closed = True
                break
            ex.raw += chunk
            if not ex.parse_error:
                try:
                    self._parser.feed(chunk)
                except httptools.HttpParserError as exc:
                    ex.parse_error = str(exc)
        ex.replies = list(self._parser.replies)
        ex.elapsed = time.monotonic() - self._t0
        return ex

    def is_closed(self, wait: float = 0.0) -> bool:
        """True when the server has closed this connection (EOF or reset), waiting up to ``wait``;
        whatever it wrote before closing (a 408, say) is read into ``exchange``."""
        if not self.exchange.closed:
            self.read(timeout=max(wait, 0.001), until_closed=True)
        return self.exchange.closed


def exchange(url: str, data: bytes, *, replies: int = 1, timeout: float = 2.0) -> Exchange:
    """Send ``data`` on a fresh connection and read the replies (or the close)."""
    with RawHttp(url) as conn:
        conn.send(data)
        return conn.read(replies=replies, timeout=timeout)


def request_bytes(
    method: str,
    target: str,
    body: bytes = b"",
    headers: list[tuple[str, str]] | None = None,
    *,
    content_length: bool = True,
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: sidecar"]
    for name, value in headers or []:
        lines.append(f"{name}: {value}")
    if content_length and (body or method in ("POST", "PUT")):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# ------------------------------------------------------------------------------------ readiness


def http_ready(url: str, timeout: float = 1.0) -> tuple[bool, float, str]:
    """GET /v2/health/ready on a fresh connection: (200 within ``timeout``, seconds, what was seen)."""
    t0 = time.monotonic()
    try:
        ex = exchange(url, request_bytes("GET", "/v2/health/ready"), timeout=timeout)
    except OSError as exc:
        return False, time.monotonic() - t0, f"connect: {exc}"
    elapsed = time.monotonic() - t0
    return ex.status == 200 and elapsed <= timeout, elapsed, ex.describe()


def grpc_ready(url: str, timeout: float = 1.0) -> tuple[bool, float, str]:
    """gRPC ServerReady on a fresh channel: (ready=True within ``timeout``, seconds, what was seen)."""
    t0 = time.monotonic()
    with grpc.insecure_channel(url) as channel:
        call = channel.unary_unary(
            f"/{SERVICE}/ServerReady",
            request_serializer=service_pb2.ServerReadyRequest.SerializeToString,
            response_deserializer=service_pb2.ServerReadyResponse.FromString,
        )
        try:
            reply = call(service_pb2.ServerReadyRequest(), timeout=timeout)
        except grpc.RpcError as exc:
            return False, time.monotonic() - t0, f"{exc.code()}: {exc.details()}"
    elapsed = time.monotonic() - t0
    return bool(reply.ready) and elapsed <= timeout, elapsed, f"ready={reply.ready}"


# ------------------------------------------------------------------------------------ cost


class ProcStats:
    """CPU and memory of one process from /proc (all its threads; grpcio's included)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def alive(self) -> bool:
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                return f.read().split(") ", 1)[1][0] not in "ZX"
        except OSError:
            return False

    def _status(self, key: str) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        raise KeyError(key)

    def rss(self) -> int:
        return self._status("VmRSS")

    def peak(self) -> int:
        return self._status("VmHWM")

    def reset_peak(self) -> bool:
        """Start a new peak-RSS window (clear_refs 5); False where the kernel does not allow it."""
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def cpu(self) -> float:
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().split(") ", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclass
class Cost:
    rss_before: int = 0
    rss_after: int = 0
    peak_growth: int = 0  # bytes above rss_before at the highest point during the attack
    cpu_s: float = 0.0
    peak_exact: bool = True  # False: peak is the HWM over the process's life, not this window

    def describe(self) -> str:
        return (
            f"RSS {self.rss_before / MIB:.0f} -> {self.rss_after / MIB:.0f} MiB, "
            f"peak +{self.peak_growth / MIB:.1f} MiB{'' if self.peak_exact else ' (lifetime HWM)'}, "
            f"CPU {self.cpu_s:.2f} s"
        )


@contextlib.contextmanager
def measured(pid: int) -> Iterator[Cost]:
    """The sidecar's CPU seconds and peak RSS growth while the ``with`` body runs."""
    stats = ProcStats(pid)
    cost = Cost()
    cost.peak_exact = stats.reset_peak()
    cost.rss_before = stats.rss()
    hwm_before = stats.peak()
    cpu0 = stats.cpu()
    try:
        yield cost
    finally:
        if stats.alive():
            cost.cpu_s = stats.cpu() - cpu0
            cost.rss_after = stats.rss()
            peak = stats.peak()
            base = cost.rss_before if cost.peak_exact else hwm_before
            cost.peak_growth = max(0, peak - base)


# ------------------------------------------------------------------------------------ Triton


def triton_inference_count(metrics_url: str, model: str) -> float:
    """Requests Triton has executed for ``model`` (successes and failures), from its /metrics."""
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    total = 0.0
    pattern = re.compile(
        r'^nv_inference_request_(?:success|failure)\{[^}]*model="([^"]*)"[^}]*\} (\S+)$', re.M
    )
    for name, value in pattern.findall(text):
        if name == model:
            total += float(value)
    return total


# ------------------------------------------------------------------------------------ bombs


def deflate_bomb(inflated: int, *, container: str = "gzip", chunk: int = MIB) -> bytes:
    """A gzip (or zlib) stream that inflates to ``inflated`` zero bytes but is about a thousandth of
    that: one full-flushed deflate block of ``chunk`` zeros, repeated (a full flush makes every block
    independent of the ones before), with a correct checksum and length, so only a size cap stops it."""
    if inflated % chunk:
        raise ValueError("inflated must be a multiple of chunk")
    zeros = bytes(chunk)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    final = compressor.flush(zlib.Z_FINISH)  # the empty last block
    blocks = inflated // chunk
    if container == "gzip":
        crc = 0
        for _ in range(blocks):
            crc = zlib.crc32(zeros, crc)
        head = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
        return head + block * blocks + final + struct.pack("<II", crc, inflated & 0xFFFFFFFF)
    adler = 1
    for _ in range(blocks):
        adler = zlib.adler32(zeros, adler)
    return b"\x78\xda" + block * blocks + final + struct.pack(">I", adler)
