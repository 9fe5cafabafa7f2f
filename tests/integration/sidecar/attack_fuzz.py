"""A structure-aware fuzzer for the live sidecar, over real sockets, on both protocols.

The cases come from ``attack_fuzz_cases`` (seeded per worker, so a run is described by its seed).
The oracle is what the issue demands of the sidecar, nothing finer:

- the process stays alive and answers ``ready`` on both protocols within 1 s (checked every
  ``probe_every_s``; a failed probe is a *crash*, and the cases sent just before are written for replay);
- no HTTP reply is a 5xx and no gRPC call ends INTERNAL, UNKNOWN or DATA_LOSS (503/UNAVAILABLE only
  while Triton itself is down, which the probe watches);
- no unguarded 2xx comes back for a control endpoint (load/unload, logging, trace, shared memory,
  generate);
- every reply is valid HTTP, and no connection is left hanging past the sidecar's own timeouts.

Every failing case is appended to a JSON-lines file that ``bench/fuzz_sidecar.py --replay`` reads.
HTTP cases the client's own httptools parse finds complete go over keep-alive connections (pipelined
when a case holds several requests); any other case gets its own connection, half-closed after
sending, so the sidecar sees the end of input instead of the fuzzer waiting for its timeouts.
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httptools
from attack_fuzz_cases import Case, GrpcCases, HttpCases
from attack_wire import ProcStats, grpc_ready, http_ready, split_addr
from tritonclient.grpc import service_pb2

from guardedmodel_testground.procs import http_ok

CONTROL_WORDS = ("/load", "/unload", "logging", "trace", "sharedmemory", "generate")
FAILING_GRPC = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}

# ------------------------------------------------------------------------------------ running


@dataclass
class FuzzReport:
    seed: str
    cases_http: int = 0
    cases_grpc: int = 0
    duration_s: float = 0.0
    crashes: int = 0
    http_5xx: int = 0
    grpc_internal: int = 0  # INTERNAL, UNKNOWN or DATA_LOSS
    unavailable: int = 0  # 503 / UNAVAILABLE while Triton was up
    bypass: int = 0  # a 2xx for a control endpoint
    bad_reply: int = 0  # bytes that are not a valid HTTP/1.1 response
    hung: int = 0  # no answer and no close within the sidecar's own timeouts
    http_replies: int = 0
    http_statuses: dict[str, int] = field(default_factory=dict)
    grpc_codes: dict[str, int] = field(default_factory=dict)
    http_modes: dict[str, int] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)
    grpc_client_write_race: int = 0  # grpcio client bug grpc/grpc#36066, not a sidecar status
    triton_down_seen: bool = False
    failures_written: int = 0
    failures_file: str = ""
    sidecar: dict[str, float] = field(default_factory=dict)
    first_failures: list[str] = field(default_factory=list)

    @property
    def cases(self) -> int:
        return self.cases_http + self.cases_grpc

    @property
    def failures(self) -> int:
        return (
            self.crashes
            + self.http_5xx
            + self.grpc_internal
            + self.unavailable
            + self.bypass
            + self.bad_reply
            + self.hung
        )

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["cases"] = self.cases
        out["failures"] = self.failures
        out["cases_per_s"] = round(self.cases / self.duration_s, 1) if self.duration_s else 0.0
        return out


def _plan(data: bytes) -> tuple[str, int, list[str]]:
    """("keepalive", requests, paths) when httptools reads ``data`` as whole requests, none of them
    HEAD/CONNECT, that leave the connection open; ("oneshot", 0, paths) for anything else."""

    class Sink:
        def __init__(self) -> None:
            self.begun = self.complete = 0
            self.paths: list[str] = []
            self.methods: list[bytes] = []

        def on_message_begin(self) -> None:
            self.begun += 1

        def on_url(self, url: bytes) -> None:
            self.paths.append(url.decode("latin-1"))

        def on_headers_complete(self) -> None:
            self.methods.append(parser.get_method())

        def on_message_complete(self) -> None:
            self.complete += 1

    sink = Sink()
    parser = httptools.HttpRequestParser(sink)
    try:
        parser.feed_data(data)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):
        return "oneshot", 0, sink.paths
    whole = sink.complete >= 1 and sink.begun == sink.complete
    if whole and parser.should_keep_alive() and not {b"HEAD", b"CONNECT"} & set(sink.methods):
        return "keepalive", sink.complete, sink.paths
    return "oneshot", 0, sink.paths


def _is_control(path: str) -> bool:
    plain = urllib.parse.unquote(path.split("?", 1)[0]).lower()
    return any(word in plain for word in CONTROL_WORDS)


def _client_write_race(exc: grpc.aio.AioRpcError) -> bool:
    if exc.code() != grpc.StatusCode.INTERNAL or exc.details() != "Internal error from Core":
        return False
    debug = exc.debug_error_string() or ""
    return "execute_batch" in debug and "SendMessageOperation" in debug


class _Reader:
    """Final replies' statuses; a status is negative when the reply carried the guard's decision (a
    guarded ``generate`` is allowed to answer 2xx, an unguarded one is a bypass)."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.parser = httptools.HttpResponseParser(self)
        self._guarded = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"guard-decision":
            self._guarded = True

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        if status >= 200:  # 100 Continue is not an answer
            self.statuses.append(-status if self._guarded else status)
        self._guarded = False


class Fuzzer:
    def __init__(
        self,
        http_url: str,
        grpc_url: str,
        *,
        seed: str,
        pid: int | None = None,
        triton_url: str = "",
        failures_path: Path | None = None,
        max_failures_written: int = 500,
        http_workers: int = 16,
        grpc_workers: int = 16,
        reply_timeout_s: float = 5.0,
        probe_every_s: float = 2.0,
        progress: Callable[[FuzzReport], None] | None = None,
    ) -> None:
        self.http_url, self.grpc_url = http_url, grpc_url
        self.host, self.port = split_addr(http_url)
        self.report = FuzzReport(seed, failures_file=str(failures_path or ""))
        self.pid = pid
        self.triton_url = triton_url
        self.failures_path = failures_path
        self.max_failures_written = max_failures_written
        self.http_workers, self.grpc_workers = http_workers, grpc_workers
        self.reply_timeout_s = reply_timeout_s
        self.probe_every_s = probe_every_s
        self.progress = progress
        self.recent: collections.deque[Case] = collections.deque(maxlen=400)
        self.triton_up = True
        self.stop = False
        self._left = {"http": 0, "grpc": 0}
        self._statuses: collections.Counter[str] = collections.Counter()
        self._codes: collections.Counter[str] = collections.Counter()
        self._modes: collections.Counter[str] = collections.Counter()
        self._kinds: collections.Counter[str] = collections.Counter()

    # -------------------------------------------------------------------------------- bookkeeping

    def _fail(self, case: Case | None, counter: str, reason: str, extra: list[Case] | None = None) -> None:
        setattr(self.report, counter, getattr(self.report, counter) + 1)
        if len(self.report.first_failures) < 20:
            self.report.first_failures.append(f"{counter}: {reason} ({case.kind if case else 'window'})")
        if self.failures_path is None or self.report.failures_written >= self.max_failures_written:
            return
        with self.failures_path.open("a") as f:
            for item in [*(extra or []), *([case] if case else [])]:
                record = item.to_json()
                record.update(reason=reason, counter=counter)
                f.write(json.dumps(record) + "\n")
                self.report.failures_written += 1

    def _take(self, protocol: str) -> bool:
        if self.stop or self._left[protocol] <= 0:
            return False
        self._left[protocol] -= 1
        return True

    # -------------------------------------------------------------------------------- HTTP

    async def _http_worker(self, index: int) -> None:
        gen = HttpCases(random.Random(f"{self.report.seed}:http:{index}"), f"{self.report.seed}:http:{index}")
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while self._take("http"):
            case = gen.next()
            self.recent.append(case)
            self._kinds[case.kind] += 1
            try:
                conn = await self.http_case(case, conn)
            except OSError as exc:
                # A refused or reset connection is an answer for a malformed case; readiness probes
                # decide whether the sidecar itself is still there.
                self._statuses[f"conn-{type(exc).__name__}"] += 1
                conn = None
            self.report.cases_http += 1
        if conn is not None:
            conn[1].close()

    async def http_case(
        self, case: Case, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        mode, expected, paths = _plan(case.data)
        self._modes[mode] += 1
        if mode == "keepalive":
            if conn is None:
                conn = await asyncio.open_connection(self.host, self.port)
            reader, writer = conn
            writer.write(case.data)
            statuses, closed, complete = await self._read(reader, expected, until_close=False)
        else:
            if conn is not None:
                conn[1].close()
                conn = None
            reader, writer = await asyncio.open_connection(self.host, self.port)
            writer.write(case.data)
            try:
                await writer.drain()
                if writer.can_write_eof():
                    writer.write_eof()
            except OSError:
                pass
            statuses, closed, complete = await self._read(reader, 0, until_close=True)
            writer.close()
        self._judge(case, statuses, paths, complete)
        if (mode == "keepalive" and (closed or len(statuses) < expected)) or complete is None:
            if conn is not None:
                conn[1].close()
            return None
        return conn

    async def _read(
        self, reader: asyncio.StreamReader, expected: int, *, until_close: bool
    ) -> tuple[list[int], bool, bool | None]:
        """(statuses, closed, complete): complete is None when the server neither answered nor closed
        within the reply timeout, False when the bytes were not valid HTTP."""
        sink = _Reader()
        deadline = asyncio.get_running_loop().time() + self.reply_timeout_s
        valid = True
        while until_close or len(sink.statuses) < expected:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return sink.statuses, False, None
            try:
                chunk = await asyncio.wait_for(reader.read(1 << 16), left)
            except TimeoutError:
                return sink.statuses, False, None
            except OSError:
                chunk = b""
            if not chunk:
                return sink.statuses, True, valid
            if valid:
                try:
                    sink.parser.feed_data(chunk)
                except httptools.HttpParserError:
                    valid = False
        return sink.statuses, False, valid

    def _judge(self, case: Case, statuses: list[int], paths: list[str], complete: bool | None) -> None:
        self.report.http_replies += len(statuses)
        for i, signed in enumerate(statuses):
            status, guarded = abs(signed), signed < 0
            self._statuses[str(status)] += 1
            if status == 503 and not self.triton_up:
                continue
            if status == 503:
                self._fail(case, "unavailable", f"HTTP 503 while Triton was up (reply {i})")
            elif status >= 500:
                self._fail(case, "http_5xx", f"HTTP {status} (reply {i})")
            elif 200 <= status < 300 and not guarded and i < len(paths) and _is_control(paths[i]):
                self._fail(case, "bypass", f"HTTP {status} for control path {paths[i][:80]!r}")
        if complete is False:
            self._fail(case, "bad_reply", "reply is not valid HTTP/1.1")
        elif complete is None:
            self._fail(case, "hung", f"no answer and no close within {self.reply_timeout_s}s")

    # -------------------------------------------------------------------------------- gRPC

    async def _grpc_worker(self, index: int, channel: grpc.aio.Channel) -> None:
        gen = GrpcCases(random.Random(f"{self.report.seed}:grpc:{index}"), f"{self.report.seed}:grpc:{index}")
        while self._take("grpc"):
            case = gen.next()
            self.recent.append(case)
            self._kinds[case.kind] += 1
            await self.grpc_case(case, channel)
            self.report.cases_grpc += 1

    async def grpc_case(self, case: Case, channel: grpc.aio.Channel) -> str:
        compression = grpc.Compression.Gzip if case.compress else None
        try:
            if case.stream:
                call = channel.stream_stream(case.method)(
                    iter(case.messages),
                    metadata=case.metadata or None,
                    timeout=self.reply_timeout_s,
                    compression=compression,
                )
                async for reply in call:
                    try:
                        response = service_pb2.ModelStreamInferResponse.FromString(reply)
                    except Exception:
                        self._fail(case, "grpc_internal", "stream reply is not a ModelStreamInferResponse")
                        continue
                    if "internal error" in response.error_message.lower():
                        self._fail(case, "grpc_internal", f"stream error: {response.error_message[:200]}")
                code = grpc.StatusCode.OK
            else:
                await channel.unary_unary(case.method)(
                    case.messages[0],
                    metadata=case.metadata or None,
                    timeout=self.reply_timeout_s,
                    compression=compression,
                )
                code = grpc.StatusCode.OK
            details = ""
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), exc.details() or ""
            if _client_write_race(exc):
                # grpcio's asyncio client overwrites the server's status with its own INTERNAL when a
                # request write loses the race with the server ending the stream (grpc/grpc#36066):
                # the sidecar answered with a real status, the client library lost it.
                self._codes["client-write-race"] += 1
                self.report.grpc_client_write_race += 1
                return "client-write-race"
        self._codes[code.name] += 1
        if code in FAILING_GRPC:
            self._fail(case, "grpc_internal", f"{code.name}: {details[:200]}")
        elif code == grpc.StatusCode.UNAVAILABLE and self.triton_up:
            self._fail(case, "unavailable", f"UNAVAILABLE: {details[:200]}")
        elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
            self._fail(case, "hung", f"no answer within {self.reply_timeout_s}s")
        return code.name

    # -------------------------------------------------------------------------------- watching

    async def _probe(self) -> None:
        """Readiness on both protocols (within 1 s) and liveness, every ``probe_every_s``."""
        while not self.stop:
            await asyncio.sleep(self.probe_every_s)
            await self.check_ready()
            if self.progress is not None:
                self.progress(self.snapshot())

    async def check_ready(self) -> bool:
        if self.triton_url:
            self.triton_up = await asyncio.to_thread(http_ok, f"http://{self.triton_url}/v2/health/ready")
            self.report.triton_down_seen |= not self.triton_up
        if self.pid is not None and not ProcStats(self.pid).alive():
            self._fail(None, "crashes", "the sidecar process died", extra=list(self.recent))
            self.stop = True
            return False
        if not self.triton_up:
            return True
        http_ok_, http_s, http_seen = await asyncio.to_thread(http_ready, self.http_url, 1.0)
        grpc_ok, grpc_s, grpc_seen = await asyncio.to_thread(grpc_ready, self.grpc_url, 1.0)
        if not (http_ok_ and grpc_ok):
            reason = f"not ready within 1 s: HTTP {http_s:.2f}s {http_seen}; gRPC {grpc_s:.2f}s {grpc_seen}"
            self._fail(None, "crashes", reason, extra=list(self.recent))
            self.recent.clear()
            return False
        return True

    def snapshot(self) -> FuzzReport:
        self.report.http_statuses = dict(self._statuses.most_common())
        self.report.grpc_codes = dict(self._codes.most_common())
        self.report.http_modes = dict(self._modes)
        self.report.kinds = dict(self._kinds.most_common())
        return self.report

    async def run(self, cases: int, *, grpc_share: float = 0.5) -> FuzzReport:
        self._left["grpc"] = int(cases * grpc_share)
        self._left["http"] = cases - self._left["grpc"]
        stats = ProcStats(self.pid) if self.pid is not None else None
        cpu0 = stats.cpu() if stats else 0.0
        rss0 = stats.rss() if stats else 0
        t0 = time.monotonic()
        options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
        channels = [grpc.aio.insecure_channel(self.grpc_url, options=options) for _ in range(4)]
        probe = asyncio.create_task(self._probe())
        try:
            await asyncio.gather(
                *(self._http_worker(i) for i in range(self.http_workers)),
                *(self._grpc_worker(i, channels[i % len(channels)]) for i in range(self.grpc_workers)),
            )
        finally:
            self.stop = True
            probe.cancel()
            for channel in channels:
                await channel.close()
        self.report.duration_s = time.monotonic() - t0
        self.stop = False
        await self.check_ready()
        if stats is not None and stats.alive():
            self.report.sidecar = {
                "cpu_s": round(stats.cpu() - cpu0, 2),
                "rss_before_mib": round(rss0 / 2**20, 1),
                "rss_after_mib": round(stats.rss() / 2**20, 1),
                "peak_rss_mib": round(stats.peak() / 2**20, 1),
            }
        return self.snapshot()


async def replay(case: Case, http_url: str, grpc_url: str) -> str:
    """Send one recorded case again and say what came back."""
    fuzzer = Fuzzer(http_url, grpc_url, seed="replay")
    if case.protocol == "http":
        await fuzzer.http_case(case, None)
        report = fuzzer.snapshot()
        return f"HTTP statuses {report.http_statuses}; failures {report.first_failures}"
    async with grpc.aio.insecure_channel(grpc_url) as channel:
        code = await fuzzer.grpc_case(case, channel)
    return f"gRPC {code}; failures {fuzzer.report.first_failures}"
