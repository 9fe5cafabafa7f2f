"""Files only the sidecar's user may read: 0600 files in 0700 directories, whatever the umask.

Audit records, payload samples and review items carry model inputs and decisions. The modes are set
explicitly (``os.open`` with the mode, then ``fchmod``/``chmod``) because ``os.open``'s mode is masked by
the process umask, and because a file or directory left by an earlier version may have wider modes.
A directory the sidecar does not own (a volume's root) cannot be chmod-ed: that is logged, not fatal.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

FILE_MODE = 0o600
DIR_MODE = 0o700
# A volume out of space or quota: the operator frees it; the sidecar keeps the data in memory meanwhile.
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_no_space(exc: OSError | None) -> bool:
    """Whether a failed write failed because its volume is full (space or quota)."""
    return exc is not None and exc.errno in _NO_SPACE


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` and make it 0700. Missing parents are created 0700 as well (``mkdir -p`` would
    leave them to the umask); existing parents are not the sidecar's to change."""
    missing = [parent for parent in (path, *path.parents) if not parent.exists()]
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another worker made it meanwhile
            directory.mkdir(mode=DIR_MODE)
            os.chmod(directory, DIR_MODE)
    st = path.stat()
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))
    try:
        if st.st_mode & 0o777 != DIR_MODE:
            os.chmod(path, DIR_MODE)
    except PermissionError as exc:
        log.warning("cannot make %s private (0700): %s; its files stay 0600", path, exc)


def open_private(path: Path, flags: int) -> int:
    """``os.open`` a file that is 0600 once this returns (a new one or one left with wider modes)."""
    fd = os.open(path, flags | os.O_CLOEXEC, FILE_MODE)
    try:
        if os.fstat(fd).st_mode & 0o777 != FILE_MODE:
            os.fchmod(fd, FILE_MODE)
    except PermissionError as exc:
        log.warning("cannot make %s private (0600): %s", path, exc)
    except BaseException:
        os.close(fd)
        raise
    return fd
