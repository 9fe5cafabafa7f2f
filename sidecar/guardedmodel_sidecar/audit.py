"""Append-only JSONL audit log of every decision, with rotation and payload sampling for retraining.

``record`` only encodes a line into an in-memory buffer (no syscall on the hot path); a background
task writes the buffer every ``flush_interval`` seconds with one ``write``, and ``close`` writes the
rest. A failed write keeps the lines and retries on the next flush instead of dropping them, so the
number of audit records always equals the number of requests.

Files in ``directory``: ``audit.jsonl`` (current), ``audit-<UTC time>-<n>.jsonl`` (rotated),
``samples.jsonl`` / ``samples-<UTC time>-<n>.jsonl`` (sampled payloads: request id, and each input's
name, datatype, shape and base64 of its v2 binary form).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from guardedmodel_sidecar.protocol.model import Tensor

log = logging.getLogger(__name__)


class _RotatingJsonl:
    def __init__(self, directory: Path, stem: str, rotate_bytes: int) -> None:
        self.directory = directory
        self.stem = stem
        self.rotate_bytes = rotate_bytes
        self.path = directory / f"{stem}.jsonl"
        self._pending: list[bytes] = []
        self._fd = -1
        self._size = 0
        self._rotations = 0
        self.write_errors = 0

    def append(self, line: bytes) -> None:
        self._pending.append(line)

    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._size = os.fstat(self._fd).st_size

    def flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        try:
            if self._fd < 0:
                self._open()
            data = b"".join(pending)
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            self._size += len(data)
            if self._size >= self.rotate_bytes:
                self._rotate()
        except OSError as exc:
            # Keep the lines: they are written on the next flush once the disk recovers.
            self.write_errors += 1
            self._pending[:0] = pending
            log.error("cannot write %s (%d lines kept for retry): %s", self.path, len(self._pending), exc)

    def _rotate(self) -> None:
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        self._rotations += 1
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        os.rename(self.path, self.directory / f"{self.stem}-{stamp}-{self._rotations}.jsonl")

    def close(self) -> None:
        self.flush()
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1


class AuditLog:
    def __init__(
        self,
        directory: Path,
        *,
        enabled: bool = True,
        sample_rate: float = 0.0,
        rotate_bytes: int = 100 * 1024 * 1024,
        flush_interval: float = 0.1,
    ) -> None:
        self.enabled = enabled
        self.sample_rate = sample_rate
        self.flush_interval = flush_interval
        self._records = _RotatingJsonl(directory, "audit", rotate_bytes)
        self._samples = _RotatingJsonl(directory, "samples", rotate_bytes)
        # A deterministic accumulator instead of random(): exactly sample_rate of requests are kept.
        self._sample_credit = 0.0
        self.records_written = 0
        self.samples_written = 0

    @property
    def directory(self) -> Path:
        return self._records.directory

    @property
    def write_errors(self) -> int:
        return self._records.write_errors + self._samples.write_errors

    def record(self, entry: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._records.append(
            orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_SERIALIZE_NUMPY)
        )
        self.records_written += 1

    def maybe_sample(self, request_id: str, inputs: Sequence[Tensor]) -> bool:
        if not self.enabled or self.sample_rate <= 0.0:
            return False
        self._sample_credit += self.sample_rate
        if self._sample_credit < 1.0 - 1e-9:  # tolerate float accumulation (10 x 0.1 < 1.0)
            return False
        self._sample_credit -= 1.0
        entry = {
            "id": request_id,
            "ts": time.time(),
            "inputs": [
                {
                    "name": t.name,
                    "datatype": t.datatype,
                    "shape": t.shape,
                    "b64": base64.b64encode(t.raw).decode("ascii"),
                }
                for t in inputs
            ],
        }
        self._samples.append(orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE))
        self.samples_written += 1
        return True

    def flush(self) -> None:
        self._records.flush()
        self._samples.flush()

    async def run_flusher(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            self.flush()

    def close(self) -> None:
        self._records.close()
        self._samples.close()


def iter_records(directory: Path, stem: str = "audit") -> Iterator[dict[str, Any]]:
    """Every record in rotation order (oldest rotated file first, the current file last)."""
    rotated = sorted(directory.glob(f"{stem}-*.jsonl"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    for path in [*rotated, directory / f"{stem}.jsonl"]:
        if path.exists():
            with path.open("rb") as fh:
                for line in fh:
                    yield orjson.loads(line)
