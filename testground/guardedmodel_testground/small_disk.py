"""A real filesystem that runs out of space: a small tmpfs, filled by a file that can be freed.

Writes to it fail with the kernel's own ENOSPC (a short write first when a page has room left), as on a
node whose volume is full. Mounting needs root (CAP_SYS_ADMIN); ``mount`` raises ``SmallDiskUnavailable``
with the reason where it cannot, so a test can skip with it.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_CHUNK = b"\0" * 4096


class SmallDiskUnavailable(RuntimeError):
    """This machine cannot mount a tmpfs here (not root, or no mount namespace rights)."""


class SmallDisk:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.filler = root / "filler"

    def fill(self) -> None:
        """Take every free block, so the next write to this filesystem fails with ENOSPC."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            while True:
                os.write(fd, _CHUNK)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
        finally:
            os.close(fd)

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def is_full(self) -> bool:
        return shutil.disk_usage(self.root).free < len(_CHUNK)


@contextmanager
def small_disk(root: Path, size: str = "256k") -> Iterator[SmallDisk]:
    """A tmpfs of ``size`` mounted on ``root`` (created if missing), unmounted on exit."""
    if os.geteuid() != 0:
        raise SmallDiskUnavailable("mounting a tmpfs needs root (CI runs these tests as root)")
    root.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(root)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        raise SmallDiskUnavailable(f"cannot mount a tmpfs on {root}: {mounted.stderr.decode().strip()}")
    try:
        yield SmallDisk(root)
    finally:
        # Lazy: a process that still has a file open there (a sidecar being stopped) cannot block it.
        subprocess.run(["umount", "-l", str(root)], check=False)
