"""Append-only audit log: one line per record, rotation with retention, exact payload sampling, private
files, and a bounded buffer that counts every line it cannot keep when the disk fails or lags."""

from __future__ import annotations

import array
import asyncio
import base64
import contextlib
import fcntl
import json
import os
import stat
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import generate_latest

from guardedmodel_sidecar.audit import AuditLog, client_id
from guardedmodel_sidecar.audit_file import iter_records, rotated_files
from guardedmodel_sidecar.metrics import SidecarMetrics
from guardedmodel_sidecar.protocol.model import Tensor
from guardedmodel_testground.small_disk import SmallDisk


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@contextlib.contextmanager
def umask(value: int) -> Iterator[None]:
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def recorded(log: AuditLog, n: int, prefix: str = "r") -> None:
    for i in range(n):
        log.record({"id": f"{prefix}{i}", "decision": "accept"})


def recorded_and_sampled(log: AuditLog, n: int, x: np.ndarray) -> None:
    """``n`` records, each with its input ``x`` offered for sampling and flushed at once."""
    for i in range(n):
        log.record({"id": f"r{i}", "decision": "accept"})
        log.maybe_sample(f"r{i}", [Tensor("X", "FP32", x.shape, x.tobytes(), x)])
        log.flush()


# ----------------------------------------------------------------------------------- basics


def test_every_record_survives_rotation_in_order(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, rotate_bytes=2000, retain_files=0)
    for i in range(500):
        log.record({"id": f"r{i}", "decision": "accept", "confidence": np.array([0.5, 0.25])})
        if i % 37 == 0:
            log.flush()
    log.close()
    rotated = list(tmp_path.glob("audit-*.jsonl"))
    assert len(rotated) >= 5
    records = list(iter_records(tmp_path))
    assert [r["id"] for r in records] == [f"r{i}" for i in range(500)]
    assert records[0]["confidence"] == [0.5, 0.25]
    assert log.records_written == 500


def test_sampling_keeps_exactly_the_rate_with_the_payload(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, sample_rate=0.1)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    kept = [log.maybe_sample(f"r{i}", [Tensor("X", "FP32", x.shape, x.tobytes(), x)]) for i in range(200)]
    log.close()
    assert sum(kept) == 20
    samples = list(iter_records(tmp_path, "samples"))
    assert len(samples) == 20
    first = samples[0]["inputs"][0]
    restored = np.frombuffer(base64.b64decode(first["b64"]), dtype=np.float32).reshape(first["shape"])
    np.testing.assert_array_equal(restored, x)


def test_reviewed_requests_keep_their_payload_outside_the_rate(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, sample_rate=0.1)
    x = np.zeros((1, 3), dtype=np.float32)
    inputs = [Tensor("X", "FP32", x.shape, x.tobytes(), x)]
    kept = [log.maybe_sample(f"r{i}", inputs, reviewed=i % 4 == 0) for i in range(200)]
    log.close()
    reviewed = {f"r{i}" for i in range(0, 200, 4)}
    sampled = {s["id"] for s in iter_records(tmp_path, "samples")}
    assert reviewed <= sampled  # every reviewed request, whatever the rate
    # the other 150 are sampled at the rate, untouched by the reviewed ones
    assert len(sampled - reviewed) == 15 and sum(kept) == 65
    off = AuditLog(tmp_path / "off", sample_rate=0.0)
    assert not off.maybe_sample("r", inputs, reviewed=True)  # no payloads kept while sampling is off
    off.close()


def test_disabled_audit_writes_nothing(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit", enabled=False, sample_rate=1.0)
    log.record({"id": "x"})
    assert not log.maybe_sample("x", [])
    log.close()
    assert not (tmp_path / "audit").exists()


def test_a_failed_write_keeps_the_lines_for_the_next_flush(tmp_path: Path) -> None:
    blocker = tmp_path / "audit"
    blocker.write_text("a file where the directory should be")
    log = AuditLog(blocker)
    log.record({"id": "kept"})
    log.flush()
    assert log.write_errors == 1
    assert log.stats()["records"].pending_lines == 1
    os.remove(blocker)
    log.flush()
    log.close()
    assert [r["id"] for r in iter_records(blocker)] == ["kept"]


# ----------------------------------------------------------------------------------- permissions


def test_files_are_0600_in_a_0700_directory_whatever_the_umask(tmp_path: Path) -> None:
    directory = tmp_path / "state" / "audit"
    with umask(0):
        log = AuditLog(directory, rotate_bytes=500, sample_rate=1.0, retain_files=0)
        recorded_and_sampled(log, 40, np.zeros(4, np.float32))
        log.close()
    assert mode(directory) == 0o700 and mode(directory.parent) == 0o700  # the parent it created too
    files = list(directory.iterdir())
    assert (directory / "audit.jsonl").exists()
    assert rotated_files(directory, "audit") and rotated_files(directory, "samples")
    assert {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}


def test_a_directory_and_file_left_with_wider_modes_are_made_private(tmp_path: Path) -> None:
    directory = tmp_path / "audit"
    directory.mkdir(mode=0o755)
    os.chmod(directory, 0o755)
    (directory / "audit.jsonl").write_bytes(b'{"id": "old"}\n')
    os.chmod(directory / "audit.jsonl", 0o644)
    log = AuditLog(directory)
    log.record({"id": "new"})
    log.close()
    assert mode(directory) == 0o700 and mode(directory / "audit.jsonl") == 0o600
    assert [r["id"] for r in iter_records(directory)] == ["old", "new"]


# ----------------------------------------------------------------------------------- failing disk


def test_a_full_disk_keeps_lines_up_to_the_bound_then_counts_every_drop(small_disk: SmallDisk) -> None:
    small_disk.fill()
    log = AuditLog(small_disk.root / "audit", buffer_bytes=4096)
    for batch in range(5):
        recorded(log, 40, prefix=f"b{batch}-")
        log.flush()
    stats = log.stats()["records"]
    assert stats.written == 0 and stats.write_errors == 5
    assert 0 < stats.pending_bytes <= 4096
    assert stats.dropped["buffer_full"] == 200 - stats.pending_lines > 0
    kept = stats.pending_lines

    small_disk.free()
    log.flush()
    recorded(log, 3, prefix="after-")
    log.close()
    ids = [r["id"] for r in iter_records(small_disk.root / "audit")]
    # The oldest lines are kept (the file is a gap-free prefix), the newest past the bound dropped.
    assert ids[:kept] == [f"b{i // 40}-{i % 40}" for i in range(kept)]
    assert ids[kept:] == ["after-0", "after-1", "after-2"]
    final = log.stats()["records"]
    assert final.written + final.dropped["buffer_full"] == 203 and final.pending_lines == 0


def test_a_write_cut_short_by_enospc_is_removed_and_retried_whole(small_disk: SmallDisk) -> None:
    directory = small_disk.root / "audit"
    log = AuditLog(directory)
    log.record({"id": "before"})
    log.flush()
    small_disk.fill()  # the audit file's page has room for part of the next batch, then ENOSPC
    recorded(log, 200)
    log.flush()
    assert log.write_errors == 1
    assert (directory / "audit.jsonl").read_bytes().endswith(b"\n")  # the torn part was cut off
    small_disk.free()
    log.close()
    assert [r["id"] for r in iter_records(directory)] == ["before", *(f"r{i}" for i in range(200))]


def test_what_the_disk_refuses_at_stop_is_counted_not_lost_silently(small_disk: SmallDisk) -> None:
    small_disk.fill()
    log = AuditLog(small_disk.root / "audit")
    recorded(log, 7)
    log.close()
    log.record({"id": "late"})
    stats = log.stats()["records"]
    assert stats.dropped == {"buffer_full": 0, "shutdown": 7, "closed": 1, "unencodable": 0}
    assert stats.pending_lines == 0 and stats.written == 0


def test_an_unencodable_record_is_counted_and_does_not_raise(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    log.record({"id": "bad", "value": object()})
    log.record({"id": "good"})
    log.close()
    assert log.stats()["records"].dropped["unencodable"] == 1
    assert [r["id"] for r in iter_records(tmp_path)] == ["good"]


class SlowDevice:
    """A real device that takes writes only as fast as something drains it: the audit file is a named
    pipe, whose 64 KiB buffer fills and then blocks the writer in the kernel, as a lagging volume
    does; ``drain`` starts a reader that empties it a little at a time."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(mode=0o700, exist_ok=True)
        self.path = directory / "audit.jsonl"
        os.mkfifo(self.path, 0o600)
        # O_RDWR: opening never waits for the writer; O_NONBLOCK: reading never waits for data.
        self._fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK)
        self._received = bytearray()
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None

    def full(self) -> bool:
        """The pipe's buffer holds (nearly) all it can: a writer with more to write is blocked."""
        waiting = array.array("i", [0])
        fcntl.ioctl(self._fd, termios.FIONREAD, waiting)
        return waiting[0] >= 60_000

    def drain(self, chunk: int = 4096, pause_s: float = 0.02) -> None:
        def read() -> None:
            while not self._stop.is_set():
                with contextlib.suppress(BlockingIOError):  # nothing to read yet
                    self._received += os.read(self._fd, chunk)
                time.sleep(pause_s)

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()

    def records(self, count: int, timeout_s: float = 20.0) -> list[dict[str, Any]]:
        """The first ``count`` records written through the pipe, once they all arrived."""
        deadline = time.monotonic() + timeout_s
        while (arrived := self._received.count(b"\n")) < count:
            assert time.monotonic() < deadline, f"{arrived} of {count} records arrived"
            time.sleep(0.02)
        return [json.loads(line) for line in bytes(self._received).splitlines()[:count]]

    def close(self) -> None:
        self._stop.set()
        if self._reader is not None:
            self._reader.join(timeout=5)
        os.close(self._fd)


PADDING = "x" * 2000  # 60 records are about twice the pipe's buffer


async def test_a_slow_disk_does_not_block_the_event_loop(tmp_path: Path) -> None:
    """Writes block in the kernel once the device is full; they wait in the writer thread, one at a
    time, while the event loop keeps ticking; once the device drains every record arrives, in order."""
    device = SlowDevice(tmp_path)
    log = AuditLog(tmp_path, flush_interval=0.01)
    flusher = asyncio.create_task(log.run_flusher())
    try:
        worst_lag = 0.0
        loop = asyncio.get_running_loop()
        for i in range(60):
            log.record({"id": f"r{i}", "pad": PADDING})
            started = loop.time()
            await asyncio.sleep(0.02)
            worst_lag = max(worst_lag, loop.time() - started - 0.02)
        assert worst_lag < 0.35, f"the event loop stalled {worst_lag:.2f} s (the device takes no writes)"
        assert 0 < log.records_written < 60, "the writer should be blocked on the full device"
        device.drain()
        deadline = loop.time() + 20
        while log.records_written < 60:
            assert loop.time() < deadline, "records not written"
            await asyncio.sleep(0.05)
    finally:
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher
        log.close()
        received = device.records(60)
        device.close()
    assert [r["id"] for r in received] == [f"r{i}" for i in range(60)]  # whole lines, none interleaved


async def test_stopping_while_a_write_is_in_flight_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    device = SlowDevice(tmp_path)
    log = AuditLog(tmp_path, flush_interval=0.01)
    flusher = asyncio.create_task(log.run_flusher())
    for i in range(40):  # more than the device holds: the writer blocks with a write in flight
        log.record({"id": f"r{i}", "pad": PADDING})
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not device.full():
        assert loop.time() < deadline, "the writer never blocked"
        await asyncio.sleep(0.01)
    recorded(log, 5, prefix="s")
    flusher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await flusher
    device.drain()
    log.close()  # waits for the write in flight, then writes the rest
    received = device.records(45)
    device.close()
    assert [r["id"] for r in received] == [*(f"r{i}" for i in range(40)), *(f"s{i}" for i in range(5))]
    assert log.records_written == 45


# ----------------------------------------------------------------------------------- retention


def test_retention_keeps_the_newest_rotated_files_and_counts_deletions(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, rotate_bytes=300, retain_files=3, sample_rate=1.0)
    recorded_and_sampled(log, 200, np.zeros(16, np.float32))
    log.close()
    for stream, stem in (("records", "audit"), ("samples", "samples")):
        rotated = rotated_files(tmp_path, stem)
        assert len(rotated) == 3
        assert log.stats()[stream].files_deleted > 10
        ids = [r["id"] for r in iter_records(tmp_path, stem)]
        assert ids == [f"r{i}" for i in range(200 - len(ids), 200)]  # the newest, contiguous


def test_retention_by_total_bytes(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, rotate_bytes=400, retain_files=0, retain_bytes=1000)
    for i in range(300):
        log.record({"id": f"r{i}", "decision": "accept"})
        log.flush()
    log.close()
    rotated = [p for _, p in rotated_files(tmp_path, "audit")]
    assert sum(p.stat().st_size for p in rotated) <= 1000 and len(rotated) >= 2
    assert log.stats()["records"].files_deleted > 0


def test_rotation_numbers_continue_across_restarts_so_order_holds(tmp_path: Path) -> None:
    for run in range(3):
        log = AuditLog(tmp_path, rotate_bytes=200, retain_files=0)
        for i in range(20):
            log.record({"id": f"run{run}-{i}"})
            log.flush()
        log.close()
    numbers = [n for n, _ in rotated_files(tmp_path, "audit")]
    assert numbers == list(range(1, len(numbers) + 1))
    assert [r["id"] for r in iter_records(tmp_path)] == [f"run{r}-{i}" for r in range(3) for i in range(20)]


def test_a_line_torn_by_a_crash_is_ended_so_the_next_record_stands_alone(tmp_path: Path) -> None:
    (tmp_path / "audit.jsonl").write_bytes(b'{"id": "whole"}\n{"id": "to')
    log = AuditLog(tmp_path)
    log.record({"id": "next"})
    log.close()
    assert [r["id"] for r in iter_records(tmp_path)] == ["whole", "next"]


# ----------------------------------------------------------------------------------- ids and metrics


def test_client_id_is_escaped_and_capped() -> None:
    assert client_id(None) is None and client_id("") is None
    assert client_id("req-42") == "req-42"
    assert client_id("a\nb\x1b[31m") == "a\\x0ab\\x1b[31m"
    long = client_id("x" * 10_000)
    assert long is not None and len(long) == 256 and long.endswith("(truncated)")


def test_audit_numbers_are_exported(small_disk: SmallDisk) -> None:
    small_disk.fill()
    log = AuditLog(small_disk.root / "audit", buffer_bytes=200)
    metrics = SidecarMetrics("m")
    metrics.audit_stats = log.stats
    recorded(log, 10)
    log.flush()
    text = generate_latest(metrics.registry).decode()
    dropped = log.stats()["records"].dropped["buffer_full"]
    assert dropped > 0
    assert (
        f'guardedmodel_audit_records_dropped_total{{model="m",reason="buffer_full",stream="records"}} {dropped}.0'
        in text
    )
    assert 'guardedmodel_audit_write_errors_total{model="m",stream="records"} 1.0' in text
    assert f'guardedmodel_audit_pending_lines{{model="m",stream="records"}} {10 - dropped}.0' in text
    assert 'guardedmodel_audit_files_deleted_total{model="m",stream="samples"} 0.0' in text


def test_a_full_volume_is_flagged_until_a_write_succeeds_again(small_disk: SmallDisk) -> None:
    log = AuditLog(small_disk.root / "audit")
    metrics = SidecarMetrics("m")
    metrics.volumes_full = lambda: {"audit": log.no_space}

    def flagged() -> str:
        text = generate_latest(metrics.registry).decode()
        return next(line for line in text.splitlines() if line.startswith("guardedmodel_volume_full{"))

    recorded(log, 3, prefix="ok-")
    log.flush()
    assert flagged() == 'guardedmodel_volume_full{model="m",volume="audit"} 0.0'
    small_disk.fill()
    recorded(log, 200, prefix="full-")  # more than the room left in the file's last page
    log.flush()
    assert flagged() == 'guardedmodel_volume_full{model="m",volume="audit"} 1.0'
    small_disk.free()
    log.flush()  # the kept lines land: the flag clears with the first write that succeeds
    assert flagged() == 'guardedmodel_volume_full{model="m",volume="audit"} 0.0'
    log.close()
    assert [r["id"] for r in iter_records(small_disk.root / "audit")] == [
        *(f"ok-{i}" for i in range(3)),
        *(f"full-{i}" for i in range(200)),
    ]


def test_another_write_error_is_not_taken_for_a_full_volume(tmp_path: Path) -> None:
    (tmp_path / "audit").write_text("a file where the audit directory should be")
    log = AuditLog(tmp_path / "audit")
    recorded(log, 1)
    log.flush()
    assert log.write_errors == 1 and not log.no_space


def test_a_batch_handed_to_a_writer_that_never_ran_is_written_at_close(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    recorded(log, 3)
    stream = log._records
    assert stream.take() is not None  # its write was cancelled with the flusher before it started
    recorded(log, 2, prefix="s")
    log.close()
    assert [r["id"] for r in iter_records(tmp_path)] == ["r0", "r1", "r2", "s0", "s1"]


def test_bounds_are_configurable_under_tuning_and_checked() -> None:
    from guardedmodel_sidecar.config import ConfigError, parse_config

    base = {"spec": {"model": {"name": "m"}}}
    defaults = parse_config(base).tuning
    assert (defaults.audit_retain_files, defaults.audit_retain_bytes) == (10, 0)
    assert defaults.audit_buffer_bytes == 32 * 1024 * 1024
    tuning = {
        "auditRetainFiles": 0,
        "auditRetainBytes": 10**9,
        "auditBufferBytes": 1024,
        "reviewSpoolMaxItems": 5,
    }
    parsed = parse_config({**base, "tuning": tuning}).tuning
    assert (parsed.audit_retain_files, parsed.audit_retain_bytes, parsed.audit_buffer_bytes) == (
        0,
        10**9,
        1024,
    )
    assert parsed.review_spool_max_items == 5
    with pytest.raises(ConfigError, match=r"tuning\.auditBufferBytes"):
        parse_config({**base, "tuning": {"auditBufferBytes": 0}})
    with pytest.raises(ConfigError, match=r"tuning\.auditRetainFiles"):
        parse_config({**base, "tuning": {"auditRetainFiles": "ten"}})
