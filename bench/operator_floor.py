"""The floor under the operator's scale: its children written with no operator at all.

For each GuardedModel as `kubectl create` returned it, the child objects the operator would write
(its own pure builders, so they are the same objects, owner references included) are applied with
its own write client (server-side apply), in its write stages, at most ``concurrency`` models at a
time: what any controller must write to get there. The floor is the time until every Deployment
has rolled out (its pods Ready on the kwok nodes), the operator's own Ready criterion without the
status it reports. What the operator takes beyond it is what watching, deciding and reporting cost.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from guardedmodel_operator.builders import build_children, build_context
from guardedmodel_operator.config import OperatorConfig
from guardedmodel_operator.kube import KubeClient, login
from guardedmodel_operator.reconcile import WRITE_STAGES
from guardedmodel_operator.spec import parse_spec
from guardedmodel_testground.cluster import LocalCluster

FIELD_MANAGER = "guardedmodel-floor"
# generation, observedGeneration, spec.replicas, replicas, updated, ready, available
_ROLLOUT_COLUMNS = (
    "{.metadata.generation} {.status.observedGeneration} {.spec.replicas} {.status.replicas} "
    "{.status.updatedReplicas} {.status.readyReplicas} {.status.availableReplicas}"
)


def rolled_out(columns: list[str]) -> bool:
    """`kubectl rollout status` done, from the columns of _ROLLOUT_COLUMNS (absent ones read 0). Pure."""
    generation, observed, desired, replicas, updated, ready, available = (
        int(c) if c.isdigit() else 0 for c in (columns + [""] * 7)[:7]
    )
    return (
        observed >= generation
        and updated >= desired
        and replicas == updated
        and available >= desired
        and ready >= desired
    )


def rolled_out_count(cluster: LocalCluster, namespace: str) -> int:
    out = cluster.kubectl(
        "get",
        "deployments",
        "-n",
        namespace,
        "-o",
        "jsonpath={range .items[*]}" + _ROLLOUT_COLUMNS + "{'\\n'}{end}",
        timeout=120,
    ).stdout
    return sum(rolled_out(line.split(" ")) for line in out.splitlines() if line.strip())


@dataclass
class FloorWriter:
    """Applies every submitted model's children from a thread of its own, so the caller's
    `kubectl create` batches and these writes overlap as the operator's do."""

    kubeconfig: str
    concurrency: int
    config: OperatorConfig = field(default_factory=OperatorConfig)
    writes: int = 0
    cpu_s: float = 0.0  # this writer thread's own CPU time
    _loop: asyncio.AbstractEventLoop = field(init=False)
    _thread: threading.Thread = field(init=False)
    _client: KubeClient | None = None
    _slots: asyncio.Semaphore | None = None
    _pending: list[Future[None]] = field(default_factory=list)

    def __enter__(self) -> FloorWriter:
        self._loop = asyncio.new_event_loop()
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), name="floor-writer", daemon=True)
        self._thread.start()
        started.wait()
        asyncio.run_coroutine_threadsafe(self._connect(), self._loop).result(timeout=30)
        return self

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        started.set()
        self._loop.run_forever()
        self.cpu_s = time.thread_time()

    async def _connect(self) -> None:
        # kopf's kubeconfig login reads $KUBECONFIG, as the operator's does.
        previous = os.environ.get("KUBECONFIG")
        os.environ["KUBECONFIG"] = self.kubeconfig
        try:
            self._client = KubeClient.connect(login(), field_manager=FIELD_MANAGER)
        finally:
            if previous is None:
                os.environ.pop("KUBECONFIG", None)
            else:
                os.environ["KUBECONFIG"] = previous
        self._slots = asyncio.Semaphore(self.concurrency)

    def submit(self, model: Mapping[str, Any]) -> None:
        self._pending.append(asyncio.run_coroutine_threadsafe(self._write(model), self._loop))

    async def _write(self, model: Mapping[str, Any]) -> None:
        assert self._client is not None and self._slots is not None
        async with self._slots:
            children = build_children(build_context(model, parse_spec(model["spec"]), self.config))
            for stage in WRITE_STAGES:
                await asyncio.gather(*(self._client.apply(c) for c in children if c["kind"] in stage))
            self.writes += len(children)

    def failures(self) -> list[str]:
        """The errors of the writes finished so far (a floor with a failed write is no floor)."""
        return [str(f.exception()) for f in self._pending if f.done() and f.exception() is not None]

    def __exit__(self, *exc: object) -> None:
        for pending in self._pending:
            pending.cancel()
        if self._client is not None:
            asyncio.run_coroutine_threadsafe(self._client.close(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()
