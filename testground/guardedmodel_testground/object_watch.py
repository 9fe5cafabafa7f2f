"""Every version of one Kubernetes object the API server sends, as it arrives (kubectl get --watch).

Polling with `kubectl get` misses the states an object passes through between two polls; a test
that asserts what was never written (a canary never at 50 %), or counts the writes of a phase, reads
the watch instead.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .cluster import LocalCluster


@dataclass(frozen=True)
class Seen:
    at: float  # when it arrived, on the watch's clock (time.monotonic unless told)
    resource_version: str
    status: dict[str, Any]


class ObjectWatch:
    """Started once the object exists (kubectl watches one named object only then); stop() ends it."""

    def __init__(
        self,
        cluster: LocalCluster,
        resource: str,
        name: str,
        namespace: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        assert cluster.binaries is not None
        self.clock = clock
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        # One line per event: the resourceVersion, a space, the status as JSON (empty without one).
        template = '{.metadata.resourceVersion}{" "}{.status}{"\\n"}'
        self.process = subprocess.Popen(
            [
                str(cluster.binaries.kubectl),
                f"--kubeconfig={cluster.kubeconfig}",
                *("get", resource, name, "-n", namespace, "--watch", "-o", f"jsonpath={template}"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            version, _, status = line.strip().partition(" ")
            seen = Seen(self.clock(), version, json.loads(status) if status else {})
            with self.lock:
                self.seen.append(seen)

    def statuses(self) -> list[dict[str, Any]]:
        with self.lock:
            return [s.status for s in self.seen]

    def latest(self) -> dict[str, Any]:
        with self.lock:
            return self.seen[-1].status if self.seen else {}

    def first(self, ok: Callable[[dict[str, Any]], bool], after: Seen | None = None) -> Seen | None:
        """The first version whose status is `ok` (after `after`, when given), or None yet."""
        with self.lock:
            return next((s for s in self.seen if ok(s.status) and (after is None or s.at > after.at)), None)

    def writes_between(self, start: Seen, end: Seen) -> int:
        """How many versions were stored after `start` and before `end`."""
        with self.lock:
            return len(
                {s.resource_version for s in self.seen if start.at < s.at < end.at} - {start.resource_version}
            )

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
