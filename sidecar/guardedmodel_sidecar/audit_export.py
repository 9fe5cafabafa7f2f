"""Export of the audit log's files (records and payload samples) to a bucket as Parquet.

The exporter reads the JSONL FILES the audit log writes (rotated ones, then the current one), never
the request path's buffers, in a thread of its own: a slow or failing bucket never delays a request.

- Position: per stream, a checkpoint ``export-checkpoint.json`` in the audit directory (written
  atomically) holds (file id, byte offset, lines before it). A file's id is its first record's id
  (unique), so a rotation's rename keeps it.
- Batches: every ``interval_s`` (spec.audit.export.intervalSeconds, 60 s), or at once when
  ``max_bytes`` wait; at most ``max_rows`` lines and ``max_bytes`` per batch, from one file. A batch
  is split by partition (model, version, UTC date) and each part stored as
  ``<stream>/model=../version=../date=../<writer>-<file id>-<start offset>.parquet``
  (``audit_parquet.py``). The checkpoint moves only when every part of the batch is stored. A crash in
  between repeats the batch from the same offset under the same names: objects are overwritten, not
  duplicated, and readers de-duplicate by ``id`` anyway (at-least-once).
- Failures: a batch that cannot be stored is retried after 1 s, doubling up to 5 minutes; requests are
  served meanwhile and the lines wait on disk (the audit volume's retention bounds them).
- Loss is counted, never silent: lines of a file that retention deleted before it was exported, and
  lines that are not JSON records (torn by a crash), in ``guardedmodel_audit_export_lost_lines_total``.
- Stop: after the audit log wrote its last lines, ``drain`` exports what is left, within a time bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from guardedmodel_sidecar.audit_file import rotated_files
from guardedmodel_sidecar.audit_parquet import STREAMS, convert, object_name, parquet_bytes
from guardedmodel_sidecar.config import SidecarConfig
from guardedmodel_sidecar.config_values import ConfigError
from guardedmodel_sidecar.object_store import BucketWriter, ObjectStoreError, StoreSettings
from guardedmodel_sidecar.private_files import ensure_private_dir, open_private

log = logging.getLogger(__name__)

CHECKPOINT = "export-checkpoint.json"
STEMS = {"records": "audit", "samples": "samples"}  # stream -> file stem (audit_file.py)
DEFAULT_INTERVAL_S = 60.0
DEFAULT_MAX_ROWS = 50_000
DEFAULT_MAX_BYTES = 32 * 1024 * 1024
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 300.0
TICK_S = 1.0
_ID_PREFIX = re.compile(rb'^\{"id":"([^"\\]{1,200})"')
_HEAD_BYTES = 4096


def backoff_delay(failures: int, first: float = BACKOFF_FIRST_S, cap: float = BACKOFF_MAX_S) -> float:
    """Seconds to wait after ``failures`` failed attempts in a row (1 s, 2 s, 4 s ... 5 min)."""
    if failures <= 0:
        return 0.0
    return min(cap, first * 2.0 ** min(failures - 1, 64))


def writer_name(environ: Mapping[str, str], worker_index: int, workers: int) -> str:
    """Who wrote an object: the pod (POD_NAME, else the host name), and the worker of several."""
    pod = environ.get("POD_NAME") or socket.gethostname()
    return f"{pod}-w{worker_index}" if workers > 1 else pod


class ObjectSink(Protocol):
    """Where objects go: a bucket (``object_store.BucketWriter``)."""

    def put(self, name: str, data: bytes) -> None: ...


@dataclass(frozen=True)
class Position:
    file_id: str
    offset: int = 0  # bytes of the file exported
    line: int = 0  # lines before ``offset``


@dataclass
class ExportStats:
    rows: int = 0
    objects: int = 0
    errors: int = 0
    lost_lines: int = 0
    pending_bytes: int = 0


@dataclass
class _File:
    path: Path
    file_id: str
    size: int


@dataclass
class _Seen:
    """Newlines counted in a file not yet exported, so a file deleted before export is counted as lost."""

    counted_to: int = 0
    lines: int = 0


@dataclass
class _StreamState:
    position: Position | None = None
    seen: dict[str, _Seen] = field(default_factory=dict)


def head_id(head: bytes) -> str | None:
    """A file's id from its first bytes: the first record's id (unique), or a digest of the first line
    when it does not start with one; None while no complete first line is there to identify it."""
    match = _ID_PREFIX.match(head)
    if match:
        return match.group(1).decode("ascii", "replace")
    if b"\n" not in head:
        return None
    return "h" + hashlib.sha256(head.split(b"\n", 1)[0]).hexdigest()[:24]


def file_id(path: Path) -> str | None:
    try:
        with path.open("rb") as fh:
            return head_id(fh.read(_HEAD_BYTES))
    except FileNotFoundError:
        return None


def stream_files(directory: Path, stem: str) -> list[_File]:
    """The stream's files oldest first (rotated by number, then the current one), with their ids."""
    found = []
    for path in [*(p for _, p in rotated_files(directory, stem)), directory / f"{stem}.jsonl"]:
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            continue
        ident = file_id(path)
        if ident is not None:
            found.append(_File(path, ident, size))
    return found


def read_lines(path: Path, ident: str, offset: int, max_rows: int, max_bytes: int) -> list[bytes] | None:
    """Whole lines from ``offset``: at most ``max_rows`` lines and ``max_bytes`` bytes (but at least one
    line, however long). None when ``path`` is no longer the file ``ident`` (rotated since the listing)."""
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        return None
    with fh:
        if head_id(fh.read(_HEAD_BYTES)) != ident:
            return None
        fh.seek(offset)
        data = fh.read(max_bytes)
        end = data.rfind(b"\n")
        while end < 0:  # one line longer than max_bytes: read on to its end
            more = fh.read(max_bytes)
            if not more:
                return []
            data += more
            end = data.rfind(b"\n")
    return data[: end + 1].splitlines(keepends=True)[:max_rows]


class Checkpoint:
    """``export-checkpoint.json``: the position of each stream, replaced atomically."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / CHECKPOINT

    def load(self) -> dict[str, Position]:
        try:
            data = json.loads(self.path.read_text())
            return {
                stream: Position(str(p["file"]), int(p["offset"]), int(p.get("line", 0)))
                for stream, p in data.items()
                if stream in STREAMS
            }
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.error(
                "cannot read the export checkpoint %s (%s): exporting every audit file again "
                "(objects are overwritten; readers de-duplicate by id)",
                self.path,
                exc,
            )
            return {}

    def save(self, positions: dict[str, Position]) -> None:
        data = {s: {"file": p.file_id, "offset": p.offset, "line": p.line} for s, p in positions.items()}
        ensure_private_dir(self.path.parent)
        tmp = self.path.with_suffix(".tmp")
        fd = open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            os.write(fd, json.dumps(data).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)


class AuditExporter:
    """Exports one audit directory's streams to ``bucket``. ``cycle``/``drain`` run on one thread at a
    time (a lock); ``run`` drives them from the event loop."""

    def __init__(
        self,
        directory: Path,
        bucket: ObjectSink,
        writer: str,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        max_rows: int = DEFAULT_MAX_ROWS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = directory
        self.bucket = bucket
        self.writer = writer
        self.interval_s = interval_s
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.clock = clock
        self.checkpoint = Checkpoint(directory)
        saved = self.checkpoint.load()
        self._state = {s: _StreamState(saved.get(s)) for s in STREAMS}
        self.stats = {s: ExportStats() for s in STREAMS}
        self.last_success: float | None = None  # wall-clock time of the latest complete export
        self.failures = 0  # failed cycles in a row
        self._next_at = clock() + interval_s
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ what waits

    def scan(self) -> None:
        """Count what waits (pending bytes, lines per file) and the lines of files deleted unexported."""
        for stream in STREAMS:
            self._scan(stream, stream_files(self.directory, STEMS[stream]))

    def _scan(self, stream: str, files: list[_File]) -> int:
        """Index of the first file to export (the checkpoint's, or the oldest when it is gone)."""
        state, stats = self._state[stream], self.stats[stream]
        ids = [f.file_id for f in files]
        position = state.position
        if position is not None and position.file_id not in ids:
            self._lost(stream, position.file_id, position.line, "was deleted before it was exported")
            state.position = position = None
        start = ids.index(position.file_id) if position is not None else 0
        live = set(ids[start:])
        for gone in [ident for ident in state.seen if ident not in live]:
            self._lost(stream, gone, 0, "was deleted before it was exported")
        pending = 0
        for f in files[start:]:
            pending += max(0, f.size - (position.offset if position and f.file_id == position.file_id else 0))
            seen = state.seen.setdefault(f.file_id, _Seen())
            if f.size > seen.counted_to:
                with contextlib.suppress(FileNotFoundError), f.path.open("rb") as fh:
                    if head_id(fh.read(_HEAD_BYTES)) == f.file_id:
                        fh.seek(seen.counted_to)
                        chunk = fh.read(f.size - seen.counted_to)
                        seen.counted_to += len(chunk)
                        seen.lines += chunk.count(b"\n")
        stats.pending_bytes = pending
        return start

    def _lost(self, stream: str, ident: str, exported_lines: int, why: str) -> None:
        seen = self._state[stream].seen.pop(ident, None)
        if seen is None:
            log.error("audit export %s: file %s %s; its unexported lines are unknown", stream, ident, why)
            return
        lost = max(0, seen.lines - exported_lines)
        if lost:
            self.stats[stream].lost_lines += lost
            log.error(
                "audit export %s: file %s %s: %d line(s) lost (raise tuning.auditRetainFiles/Bytes, or "
                "fix the export so it keeps up)",
                stream,
                ident,
                why,
                lost,
            )

    # ------------------------------------------------------------------ export

    def due(self) -> bool:
        now = self.clock()
        if now < self._next_at:
            return sum(s.pending_bytes for s in self.stats.values()) >= self.max_bytes and self.failures == 0
        return True

    def cycle(self, deadline: float | None = None) -> bool:
        """Export everything that waits now (until ``deadline`` on ``clock``). True when all was stored;
        a failure is counted, logged and scheduled for a retry with backoff."""
        with self._lock:
            stream = STREAMS[0]
            try:
                for stream in STREAMS:
                    self._export_stream(stream, deadline)
            except Exception as exc:
                self.failures += 1
                delay = backoff_delay(self.failures)
                self._next_at = self.clock() + delay
                if isinstance(exc, ObjectStoreError):
                    log.error(
                        "audit export failed (%s); next try in %.0f s, the lines wait on disk", exc, delay
                    )
                else:  # not the bucket: a file that cannot be read, a line Arrow refuses (a bug)
                    self.stats[stream].errors += 1
                    log.exception(
                        "audit export of %s failed; next try in %.0f s, the lines wait on disk", stream, delay
                    )
                return False
            self.failures = 0
            self._next_at = self.clock() + self.interval_s
            self.last_success = time.time()
            return True

    def _export_stream(self, stream: str, deadline: float | None) -> None:
        state, stats = self._state[stream], self.stats[stream]
        while deadline is None or self.clock() < deadline:
            files = stream_files(self.directory, STEMS[stream])
            start = self._scan(stream, files)
            if start >= len(files):
                return
            current = files[start]
            position = state.position or Position(current.file_id)
            lines = read_lines(current.path, current.file_id, position.offset, self.max_rows, self.max_bytes)
            if lines is None:
                continue  # rotated or deleted since the listing: list again
            if not lines:
                if start == len(files) - 1 or current.path.name == f"{STEMS[stream]}.jsonl":
                    return  # the newest file, all exported
                # A rotated file exported to its end: the next file starts at 0. Bytes after its last
                # newline are a line torn by a crash, never to be completed.
                if current.size > position.offset:
                    stats.lost_lines += 1
                    log.warning("audit export %s: %s ends in a torn line; skipped", stream, current.path.name)
                state.seen.pop(current.file_id, None)
                state.position = Position(files[start + 1].file_id)
                self._save()
                continue
            converted = convert(stream, lines)
            for partition, table in converted.tables.items():
                try:
                    self.bucket.put(
                        object_name(stream, partition, self.writer, current.file_id, position.offset),
                        parquet_bytes(table),
                    )
                except ObjectStoreError:
                    stats.errors += 1
                    raise
                stats.objects += 1
            stats.rows += converted.rows
            if converted.bad_lines:
                stats.lost_lines += converted.bad_lines
            size = sum(len(line) for line in lines)
            state.position = Position(current.file_id, position.offset + size, position.line + len(lines))
            self._save()
            stats.pending_bytes = max(0, stats.pending_bytes - size)

    def _save(self) -> None:
        positions = {s: st.position for s, st in self._state.items() if st.position is not None}
        try:
            self.checkpoint.save(positions)
        except OSError as exc:
            # The objects are stored; an unsaved position only repeats them (overwritten) after a restart.
            log.error("cannot write the export checkpoint %s: %s", self.checkpoint.path, exc)

    def drain(self, timeout_s: float) -> bool:
        """The final export at stop: what the audit log wrote last, within ``timeout_s``."""
        deadline = self.clock() + timeout_s
        if not self._lock.acquire(timeout=timeout_s):
            log.error("audit export: a batch is stuck; %s left unexported at stop", self.directory)
            return False
        self._lock.release()
        done = self.cycle(deadline)
        if any(s.pending_bytes for s in self.stats.values()):
            log.error(
                "audit export: stopped after %.0f s with lines left; they export at the next start", timeout_s
            )
        return done

    async def run(self) -> None:
        """Export on a daemon thread until cancelled: a bucket that hangs a write never holds up the
        event loop, nor the process's exit (a pool thread would be joined at exit)."""
        stop = threading.Event()
        thread = threading.Thread(target=self._loop, args=(stop,), name="audit-export", daemon=True)
        thread.start()
        try:
            await asyncio.Event().wait()
        finally:
            stop.set()

    def _loop(self, stop: threading.Event) -> None:
        """Every second: count what waits; export when the interval is up or enough waits."""
        # The first count comes at once: lines are only known lost if they were counted before
        # retention deleted their file.
        while True:
            try:
                with self._lock:
                    self.scan()
                if self.due():
                    self.cycle()
            except Exception:  # a file that cannot be read now; the next tick tries again
                log.exception("audit export: cannot read the audit files in %s", self.directory)
            if stop.wait(TICK_S):
                return

    def drain_bounded(self, timeout_s: float) -> threading.Event:
        """``drain`` on a daemon thread; the event is set when it ends (the caller waits at most
        ``timeout_s`` plus a little: a write hung in the client may outlast the deadline)."""
        done = threading.Event()

        def run() -> None:
            try:
                self.drain(timeout_s)
            except Exception:
                log.exception("audit export: the final export at stop failed")
            finally:
                done.set()

        threading.Thread(target=run, name="audit-export-drain", daemon=True).start()
        return done


def exporter_for(config: SidecarConfig) -> AuditExporter | None:
    """The exporter spec.audit.export asks for (None without it, or with the audit log off)."""
    export = config.spec.export
    if export is None or not config.spec.audit_enabled:
        return None
    settings = StoreSettings(
        endpoint=export.endpoint,
        region=export.region,
        virtual_hosted_style=export.virtual_hosted_style,
        credentials_dir=config.audit_export_credentials,
        secret_field="spec.audit.export.storage.secretName",
    )
    try:
        bucket = BucketWriter(export.url, timeout=60.0, settings=settings)
    except ObjectStoreError as exc:
        raise ConfigError(f"spec.audit.export: {exc}") from exc
    tuning = config.tuning
    return AuditExporter(
        config.audit_dir,
        bucket,
        writer_name(os.environ, tuning.worker_index, tuning.workers),
        interval_s=export.interval_s,
    )
