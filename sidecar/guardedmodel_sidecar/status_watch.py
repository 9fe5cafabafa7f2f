"""Following the GuardedModel's routing status (and its live spec fields) through the Kubernetes API.

``GuardedModelWatcher`` follows ``status.stableVersion / canaryVersion / canaryWeight /
lastGoodVersion / shadow`` of the GuardedModel through the Kubernetes API (in-cluster service account or a kubeconfig: ``kube_credentials``). It runs off the
hot path and keeps the last routing whenever the API server is unreachable (fail-static), retrying with
a jittered, capped exponential backoff: every pod of every model lost the API server at the same moment,
and they must not all come back at that same moment against an API server and etcd that are only just
up again. A watch that ends (the server's timeout) or expires (``410 Gone``: the resourceVersion is older
than what a restarted API server keeps) is re-established after the shortest pause: that is not a
failure. The sidecar reads the
status itself (``routing_from_status``) rather than importing the operator's reader: the two packages
stay independent, and this copy reads only the routing fields.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import orjson

from guardedmodel_sidecar.config import Routing, Shadow, parse_shadow
from guardedmodel_sidecar.config_values import ConfigError
from guardedmodel_sidecar.kube_credentials import ApiServer

log = logging.getLogger(__name__)


def routing_from_status(status: Mapping[str, Any] | None, fallback: Routing) -> Routing:
    """Routing from a GuardedModel status; the stable and the canary's weight it lacks keep their
    last value. ``lastGoodVersion`` and ``shadow`` are read as they are: absent means none."""
    if not status:
        return fallback
    stable = status.get("stableVersion") or fallback.stable_version
    canary = status.get("canaryVersion") or None
    weight = status.get("canaryWeight")
    if weight is None:
        weight = fallback.canary_weight if canary == fallback.canary_version else 0
    try:
        weight = max(0, min(100, int(weight)))
    except (TypeError, ValueError):
        weight = 0
    if not canary:
        weight = 0
    last_good = status.get("lastGoodVersion") or None
    return Routing(
        str(stable),
        None if canary is None else str(canary),
        weight,
        None if last_good is None else str(last_good),
        _shadow(status.get("shadow"), fallback.shadow),
    )


def _shadow(value: Any, last: Shadow | None) -> Shadow | None:
    """status.shadow; one the API server should have refused keeps the last shadow, with a warning."""
    try:
        return parse_shadow(value, "status.shadow")
    except ConfigError as exc:
        log.warning("%s; keeping shadow %s", exc, last)
        return last


def retry_delay(
    failures: int, first_s: float, max_s: float, draw: Callable[[], float] = random.random
) -> float:
    """Seconds to wait after ``failures`` failed attempts in a row: ``first_s`` doubling up to ``max_s``,
    each drawn from the upper half of that span, so that pods that failed together spread out."""
    ceiling = min(max_s, first_s * 2 ** max(0, failures - 1))
    return ceiling * (0.5 + 0.5 * draw())


class WatchExpired(Exception):
    """The API server no longer has the watched resourceVersion (410 Gone): read the object again."""


class GuardedModelWatcher:
    """Follows one GuardedModel's routing status; calls ``on_routing`` with each new routing, and
    ``on_spec`` with the spec of every version of the object it reads."""

    GROUP_PATH = "/apis/guardedmodel.io/v1alpha1"

    def __init__(
        self,
        api: ApiServer,
        namespace: str,
        name: str,
        on_routing: Callable[[Routing], Awaitable[None]],
        current: Callable[[], Routing],
        *,
        on_spec: Callable[[Mapping[str, Any]], None] | None = None,
        retry_first_s: float = 0.5,
        retry_max_s: float = 5.0,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.on_routing = on_routing
        self.current = current
        # Spec fields the pod follows live (spec.cost): editing them rolls no pod.
        self.on_spec = on_spec
        self.retry_first_s = retry_first_s
        self.retry_max_s = retry_max_s
        self.connected = False
        self.errors = 0
        self.failures = 0  # failed attempts since the last successful read

    def state(self) -> tuple[bool, int]:
        """(following the GuardedModel now, failed attempts so far), for the sidecar's metrics."""
        return self.connected, self.errors

    @property
    def _collection(self) -> str:
        return f"{self.api.host}{self.GROUP_PATH}/namespaces/{self.namespace}/guardedmodels"

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=330)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                # Not zero even when nothing failed: a server that ends every watch at once must not
                # turn this loop into a busy one.
                delay = retry_delay(1, self.retry_first_s, self.retry_max_s)
                try:
                    version = await self._get(session)
                    await self._watch(session, version)
                except asyncio.CancelledError:
                    raise
                except WatchExpired as exc:
                    log.info("GuardedModel %s/%s: %s; reading it again", self.namespace, self.name, exc)
                except Exception as exc:
                    self.connected = False
                    self.errors += 1
                    self.failures += 1
                    delay = retry_delay(self.failures, self.retry_first_s, self.retry_max_s)
                    log.warning(
                        "GuardedModel %s/%s: API server unreachable or refused (%s); keeping routing %s, "
                        "retrying in %.1fs",
                        self.namespace,
                        self.name,
                        exc,
                        self.current(),
                        delay,
                    )
                await asyncio.sleep(delay)

    async def _get(self, session: aiohttp.ClientSession) -> str:
        url = f"{self._collection}/{self.name}"
        async with session.get(url, headers=self.api.headers(), ssl=self.api.ssl_context) as resp:
            if resp.status != 200:
                raise RuntimeError(f"GET GuardedModel: HTTP {resp.status}: {(await resp.text())[:200]}")
            obj = await resp.json(loads=orjson.loads)
        if self.failures:
            log.info(
                "GuardedModel %s/%s: API server reachable again after %d failed attempts",
                self.namespace,
                self.name,
                self.failures,
            )
        self.connected, self.failures = True, 0
        await self._apply(obj)
        return str(obj.get("metadata", {}).get("resourceVersion", ""))

    async def _watch(self, session: aiohttp.ClientSession, resource_version: str) -> None:
        params = {
            "watch": "1",
            "fieldSelector": f"metadata.name={self.name}",
            "resourceVersion": resource_version,
            "timeoutSeconds": "300",
            "allowWatchBookmarks": "true",
        }
        async with session.get(
            self._collection, params=params, headers=self.api.headers(), ssl=self.api.ssl_context
        ) as resp:
            if resp.status != 200:
                raise RuntimeError(f"watch GuardedModel: HTTP {resp.status}")
            async for line in resp.content:
                if not line.strip():
                    continue
                event = orjson.loads(line)
                kind = event.get("type")
                if kind == "ERROR":
                    status = event.get("object") or {}
                    if status.get("code") == 410:
                        raise WatchExpired(f"watch expired: {status.get('message')}")
                    raise RuntimeError(f"watch error: {status.get('message')}")
                if kind in ("ADDED", "MODIFIED"):
                    await self._apply(event.get("object") or {})

    async def _apply(self, obj: Mapping[str, Any]) -> None:
        if self.on_spec is not None:
            self.on_spec(obj.get("spec") or {})
        routing = routing_from_status(obj.get("status"), self.current())
        if routing != self.current():
            await self.on_routing(routing)
