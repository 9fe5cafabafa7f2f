"""One audit stream's files: append to the current JSONL file, cut a torn batch, rotate, retain.

Retention: after each rotation (every ``tuning.auditRotateBytes``, 100 MiB) the oldest rotated files
beyond ``retain_files`` per stream (``tuning.auditRetainFiles``, 10; 0: no count limit) or beyond
``retain_bytes`` in total (``tuning.auditRetainBytes``, 0: no byte limit) are deleted and counted in
``guardedmodel_audit_files_deleted_total{stream}``. Ship rotated files elsewhere (a log shipper tailing
the directory) if they must be kept longer.

Files in ``directory`` (0700; files 0600, whatever the umask): ``audit.jsonl`` (current),
``audit-<UTC time>-<n>.jsonl`` (rotated; ``n`` continues across restarts, so it orders the files),
``samples.jsonl`` / ``samples-<UTC time>-<n>.jsonl`` (sampled payloads: the record's id, the model and
the version that answered, and each input's name, datatype, shape and base64 of its v2 binary form).
With spec.audit.export the files are also copied to a bucket as Parquet (``audit_export.py``), from
``export-checkpoint.json`` in the same directory.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from guardedmodel_sidecar.private_files import ensure_private_dir, open_private

log = logging.getLogger(__name__)

_ROTATED = r"-\d{8}T\d{6}Z-(\d+)\.jsonl"


class RotatingJsonlFile:
    """The file of one stream (fd, size, rotation, retention). Not thread-safe: the stream calls it only
    while holding its ``_io`` lock (the writer thread, or ``flush_now``/``close``)."""

    def __init__(
        self, directory: Path, stem: str, *, rotate_bytes: int, retain_files: int, retain_bytes: int
    ) -> None:
        self.directory = directory
        self.stem = stem
        self.path = directory / f"{stem}.jsonl"
        self.rotate_bytes = rotate_bytes
        self.retain_files = retain_files
        self.retain_bytes = retain_bytes
        self._fd = -1
        self._size = 0
        self._next_seq: int | None = None
        self.io_errors = 0  # failed fsync/rotation/retention, no line lost
        self.files_deleted = 0  # rotated files removed by retention

    def write(self, data: bytes) -> OSError | None:
        try:
            if self._fd < 0:
                self._open()
        except OSError as exc:
            return exc
        start = self._size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            self._cut(start)
            return exc
        self._size = start + len(data)
        if self._size >= self.rotate_bytes:
            self._rotate()
        return None

    def _open(self) -> None:
        ensure_private_dir(self.directory)
        if self._next_seq is None:
            self._next_seq = max((n for n, _ in rotated_files(self.directory, self.stem)), default=0) + 1
        fd = open_private(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                # A line torn by a crash (or a cut that failed): end it so the next record stands alone.
                os.write(fd, b"\n")
                size += 1
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._size = fd, size

    def _cut(self, start: int) -> None:
        """Remove a partly written batch (it is retried whole) and reopen on the next write."""
        try:
            os.ftruncate(self._fd, start)
        except OSError as exc:
            self.io_errors += 1
            log.error("cannot cut a partly written batch off %s: %s", self.path, exc)
        self.close(sync=False)

    def close(self, *, sync: bool) -> None:
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        try:
            if sync:
                os.fsync(fd)
        except OSError as exc:
            self.io_errors += 1
            log.error("cannot fsync %s: %s", self.path, exc)
        finally:
            os.close(fd)

    def _rotate(self) -> None:
        self.close(sync=True)
        assert self._next_seq is not None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = self.directory / f"{self.stem}-{stamp}-{self._next_seq}.jsonl"
        try:
            os.rename(self.path, target)
        except OSError as exc:
            # The lines are on disk; the current file grows on and the next write tries again.
            self.io_errors += 1
            log.error("cannot rotate %s to %s: %s", self.path, target.name, exc)
            return
        self._next_seq += 1
        self._retain()

    def _retain(self) -> None:
        files: list[tuple[Path, int]] = []
        for _, path in rotated_files(self.directory, self.stem):
            try:
                files.append((path, path.stat().st_size))
            except FileNotFoundError:
                continue
        total = sum(size for _, size in files)
        count = len(files)
        for path, size in files:  # oldest first
            over_count = self.retain_files > 0 and count > self.retain_files
            over_bytes = self.retain_bytes > 0 and total > self.retain_bytes
            if not (over_count or over_bytes):
                break
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                self.io_errors += 1
                log.error("retention: cannot delete %s: %s", path, exc)
                break
            else:
                self.files_deleted += 1
                log.info("retention: deleted %s (%d bytes)", path.name, size)
            count -= 1
            total -= size


def rotated_files(directory: Path, stem: str) -> list[tuple[int, Path]]:
    """Rotated files of ``stem`` as (rotation number, path), oldest first."""
    pattern = re.compile(re.escape(stem) + _ROTATED)
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for name in names:
        match = pattern.fullmatch(name)
        if match:
            found.append((int(match.group(1)), directory / name))
    return sorted(found)


def iter_lines(directory: Path, stem: str = "audit") -> Iterator[tuple[Path, int, bytes]]:
    """(file, line number, line) of every line in rotation order (oldest rotated file first, the
    current file last)."""
    for path in [*(p for _, p in rotated_files(directory, stem)), directory / f"{stem}.jsonl"]:
        try:
            fh = path.open("rb")
        except FileNotFoundError:
            continue  # rotated away or removed by retention since the listing
        with fh:
            for number, line in enumerate(fh, 1):
                yield path, number, line


def iter_records(directory: Path, stem: str = "audit") -> Iterator[dict[str, Any]]:
    """Every record in rotation order. A line torn by a crash is skipped with a warning."""
    for path, number, line in iter_lines(directory, stem):
        record = parse_line(path, number, line)
        if record is not None:
            yield record


def parse_line(path: Path, number: int, line: bytes) -> dict[str, Any] | None:
    try:
        record: dict[str, Any] = orjson.loads(line)
    except orjson.JSONDecodeError:
        log.warning("%s:%d: not a JSON record (torn by a crash?); skipped", path, number)
        return None
    return record
