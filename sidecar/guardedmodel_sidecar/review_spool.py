"""The review spool on disk, as the writer thread sees it: items written durably, listed oldest first.

Each item goes to a temporary file (0600, in a 0700 directory), is fsynced, then renamed into the
spool, so a crash leaves either a whole item or none. ``review.ReviewSink`` runs these functions on its
one writer thread and keeps the counts.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import orjson

from guardedmodel_sidecar.private_files import ensure_private_dir, open_private


class SpoolBatch:
    """Items handed to the writer thread; ``written`` grows as each lands, ``finished`` at the end."""

    __slots__ = ("error", "finished", "items", "written")

    def __init__(self, items: list[tuple[str, bytes]]) -> None:
        self.items = items
        self.written = 0
        self.finished = False
        self.error: OSError | None = None


def write_items(spool_dir: Path, batch: SpoolBatch) -> None:
    """Writer thread: each item to a temporary file, fsync, then renamed into the spool."""
    try:
        ensure_private_dir(spool_dir)
        for name, body in batch.items[batch.written :]:
            tmp = spool_dir / f".{name}.tmp"
            try:
                fd = open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                try:
                    view = memoryview(body)
                    while view:
                        view = view[os.write(fd, view) :]
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.rename(tmp, spool_dir / name)
            except OSError:
                with contextlib.suppress(OSError):
                    tmp.unlink(missing_ok=True)
                raise
            batch.written += 1
        _fsync_dir(spool_dir)
    except OSError as exc:
        batch.error = exc
    finally:
        batch.finished = True


_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}")


def item_key(body: bytes, path: Path) -> str:
    """The item's idempotency key: its ``id`` (the audit record's), the same on every attempt and after
    a restart; the spool file's name, itself stable, for an item without a usable id."""
    try:
        item = orjson.loads(body)
    except orjson.JSONDecodeError:
        return path.stem
    value = item.get("id") if isinstance(item, dict) else None
    return value if isinstance(value, str) and _KEY.fullmatch(value) else path.stem


def list_spool(spool_dir: Path) -> list[tuple[Path, int]]:
    """Writer thread: spooled items, oldest first, with their sizes (other workers' included)."""
    try:
        entries = list(os.scandir(spool_dir))
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for entry in entries:
        if entry.name.endswith(".json") and not entry.name.startswith("."):
            with contextlib.suppress(FileNotFoundError):
                found.append((Path(entry.path), entry.stat().st_size))
    return sorted(found)


def _fsync_dir(path: Path) -> None:
    """Make the renames durable; best effort (some filesystems refuse a directory fsync)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
