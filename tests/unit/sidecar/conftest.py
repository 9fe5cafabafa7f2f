"""Fixtures shared by the sidecar's unit tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from guardedmodel_testground.small_disk import SmallDisk, SmallDiskUnavailable
from guardedmodel_testground.small_disk import small_disk as mount_small_disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A 256 KiB tmpfs that ``fill()`` makes refuse writes with ENOSPC and ``free()`` frees."""
    with contextlib.ExitStack() as stack:
        try:
            disk = stack.enter_context(mount_small_disk(tmp_path / "disk"))
        except SmallDiskUnavailable as exc:
            pytest.skip(str(exc))
        yield disk
