"""Versions published after the pod started: fetched into the pod's copy of a remote repository.

A remote repository (s3://, gs://, http(s)://) is copied into the pod by the ``fetch-model`` init container, so
the copy holds the versions that existed then. Routing may later name a newer one (a canary, a
shadow candidate); rather than a new pod, the sidecar adds that version folder to the copy before it
asks Triton to load it. A failed fetch is retried at most every ``retry_s``: the health monitor asks
again every half second, and a version that is not in the repository must not turn into a download
loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from guardedmodel_sidecar.fetch import FetchError, add_versions

log = logging.getLogger(__name__)


@dataclass
class VersionFetcher:
    source: str  # the repository URL the pod's copy came from
    model: str
    local: Path  # the pod's copy of the repository
    retry_s: float = 30.0
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    _failed: dict[tuple[str, ...], tuple[float, str]] = field(default_factory=dict, repr=False)

    def missing(self, versions: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(v for v in versions if not (self.local / self.model / v).is_dir())

    async def ensure(self, versions: tuple[str, ...]) -> list[str]:
        """Fetch the versions the local copy lacks; returns those added. Raises FetchError."""
        missing = self.missing(versions)
        if not missing:
            return []
        now = self.clock()
        failed = self._failed.get(missing)
        if failed is not None and now - failed[0] < self.retry_s:
            raise FetchError(f"{failed[1]} (next try in {self.retry_s - (now - failed[0]):.0f}s)")
        try:
            added = await asyncio.to_thread(add_versions, self.source, self.model, self.local, missing)
        except FetchError as exc:
            self._failed[missing] = (now, str(exc))
            raise
        self._failed.pop(missing, None)
        log.info("fetched versions %s of '%s' from %s", ", ".join(added), self.model, self.source)
        return added
