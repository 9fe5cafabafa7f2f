"""One audit stream's lines on their way to disk: the in-memory buffer, batches, retries and drops.

The event loop appends lines; a writer thread writes one batch at a time through the stream's file
(``audit_file.py``). A failed write keeps its lines for a retry with backoff (0.1 s doubling to 5 s);
past ``buffer_bytes`` new lines are dropped and counted, never silently.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from guardedmodel_sidecar.audit_file import RotatingJsonlFile
from guardedmodel_sidecar.private_files import is_no_space

log = logging.getLogger(__name__)

DROP_REASONS = ("buffer_full", "shutdown", "closed", "unencodable")
_RETRY_MIN_S = 0.1
_RETRY_MAX_S = 5.0
_DROP_LOG_INTERVAL_S = 10.0


@dataclass(frozen=True)
class StreamStats:
    """One stream's numbers, read at scrape time."""

    written: int  # lines on disk
    pending_lines: int  # in memory: waiting or being written
    pending_bytes: int
    write_errors: int
    files_deleted: int  # rotated files removed by retention
    dropped: dict[str, int]  # reason -> lines


class _Batch:
    """Lines handed to the writer; ``done`` and ``error`` are set by whoever writes them."""

    __slots__ = ("done", "error", "lines", "nbytes")

    def __init__(self, lines: list[bytes], nbytes: int) -> None:
        self.lines = lines
        self.nbytes = nbytes
        self.done = False
        self.error: OSError | None = None


class AuditStream:
    """One JSONL stream. The buffer and counters belong to the event loop thread; the file (fd, size,
    rotation, retention) to whoever holds ``_io``: the writer thread, or ``flush_now``/``close``."""

    def __init__(
        self,
        directory: Path,
        stem: str,
        *,
        rotate_bytes: int,
        retain_files: int,
        retain_bytes: int,
        buffer_bytes: int,
    ) -> None:
        self.directory = directory
        self.stem = stem
        self.path = directory / f"{stem}.jsonl"
        self.buffer_bytes = buffer_bytes
        self._file = RotatingJsonlFile(
            directory, stem, rotate_bytes=rotate_bytes, retain_files=retain_files, retain_bytes=retain_bytes
        )
        self._pending: list[bytes] = []
        self._pending_bytes = 0  # waiting and in flight
        self._inflight: _Batch | None = None
        self._closed = False
        self._retry_at = 0.0
        self._retry_delay = _RETRY_MIN_S
        self._io = threading.Lock()
        self.written = 0
        self.write_errors = 0  # failed batches (loop thread)
        self.no_space = False  # the latest write failed for lack of space (loop thread)
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        self._drop_logged_at = -math.inf
        self._drops_since_log = 0

    @property
    def io_errors(self) -> int:
        """Failed fsync/rotation/retention, no line lost (writer side)."""
        return self._file.io_errors

    @property
    def files_deleted(self) -> int:
        return self._file.files_deleted

    # ------------------------------------------------------------------ event loop thread

    def append(self, line: bytes) -> bool:
        if self._closed:
            self.drop("closed", 1)
            return False
        size = len(line)
        # One line always fits in an empty buffer: a large sample is bounded by the request limits.
        if self._pending_bytes and self._pending_bytes + size > self.buffer_bytes:
            self.drop("buffer_full", 1)
            return False
        self._pending.append(line)
        self._pending_bytes += size
        return True

    def drop(self, reason: str, count: int) -> None:
        self.dropped[reason] += count
        self._drops_since_log += count
        now = time.monotonic()
        if now - self._drop_logged_at >= _DROP_LOG_INTERVAL_S:
            since = (
                "" if math.isinf(self._drop_logged_at) else f" in the last {now - self._drop_logged_at:.0f} s"
            )
            log.error(
                "audit %s: %d line(s) dropped%s (latest: %s); %d lines (%d bytes) wait in memory for %s "
                "(guardedmodel_audit_records_dropped_total counts every drop)",
                self.stem,
                self._drops_since_log,
                since,
                reason,
                self.pending_lines,
                self._pending_bytes,
                self.path,
            )
            self._drop_logged_at = now
            self._drops_since_log = 0

    @property
    def pending_lines(self) -> int:
        return len(self._pending) + (len(self._inflight.lines) if self._inflight is not None else 0)

    def take(self, *, force: bool = False) -> _Batch | None:
        """The waiting lines as a batch to write, unless one is in flight or a retry is not due."""
        if self._inflight is not None or not self._pending or self._closed:
            return None
        if not force and time.monotonic() < self._retry_at:
            return None
        # Nothing is in flight, so the byte count is the waiting lines'.
        batch = _Batch(self._pending, self._pending_bytes)
        self._pending = []
        self._inflight = batch
        return batch

    def settle(self, batch: _Batch) -> None:
        """Account for a written batch, or put it back in front of newer lines for a retry."""
        if self._inflight is not batch or not batch.done:
            return  # still being written (close() settles it), or settled already
        self._inflight = None
        self.no_space = is_no_space(batch.error)
        if batch.error is None:
            self.written += len(batch.lines)
            self._pending_bytes -= batch.nbytes
            self._retry_at, self._retry_delay = 0.0, _RETRY_MIN_S
            return
        self.write_errors += 1
        self._pending[:0] = batch.lines
        self._retry_at = time.monotonic() + self._retry_delay
        log.error(
            "cannot write %s: %s; %d lines (%d bytes) kept in memory, next try in %.1f s",
            self.path,
            batch.error,
            self.pending_lines,
            self._pending_bytes,
            self._retry_delay,
        )
        self._retry_delay = min(self._retry_delay * 2, _RETRY_MAX_S)

    def flush_now(self) -> None:
        """Write the waiting lines now, on the calling thread (tests, tools)."""
        batch = self.take(force=True)
        if batch is not None:
            self.write(batch)
            self.settle(batch)

    def close(self, timeout_s: float) -> None:
        """Write everything left (waiting for a write in flight) and close the file."""
        if self._closed:
            return
        if not self._io.acquire(timeout=timeout_s):
            self._closed = True
            lost = len(self._pending)
            self._pending, self._pending_bytes = [], 0
            log.error("audit %s: a write is stuck for %.0f s; giving up on the rest", self.path, timeout_s)
            self.drop("shutdown", lost)
            return
        try:
            self._closed = True
            batch = self._inflight
            if batch is not None:
                if batch.done:
                    self.settle(batch)
                else:  # handed to the writer thread, which never started it: write it below
                    self._inflight = None
                    self._pending[:0] = batch.lines
            if self._pending:
                lines, self._pending = self._pending, []
                self._pending_bytes = 0
                error = self._file.write(b"".join(lines))
                if error is None:
                    self.written += len(lines)
                else:
                    self.write_errors += 1
                    log.error("cannot write %s at shutdown: %s", self.path, error)
                    self.drop("shutdown", len(lines))
            self._file.close(sync=True)
        finally:
            self._io.release()

    def stats(self) -> StreamStats:
        return StreamStats(
            written=self.written,
            pending_lines=self.pending_lines,
            pending_bytes=self._pending_bytes,
            write_errors=self.write_errors + self.io_errors,
            files_deleted=self.files_deleted,
            dropped=dict(self.dropped),
        )

    # ------------------------------------------------------------------ writer (holds _io)

    def write(self, batch: _Batch) -> None:
        with self._io:
            if self._inflight is not batch or batch.done:
                return  # close() took it back
            batch.error = self._file.write(b"".join(batch.lines))
            batch.done = True
