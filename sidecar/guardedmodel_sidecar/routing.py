"""Which model version serves a request, and keeping those versions loaded in Triton.

``Router.choose`` splits traffic between stable and canary by weight with a credit counter rather
than a random draw, so 10 % means exactly every tenth request (reproducible in tests and canaries).

``ensure_loaded`` makes Triton hold every version routing needs (stable, canary and the previous
stable, so that a rollback is a routing flip, not a reload) by loading the model through the
repository API with a ``version_policy: specific`` override of its own configuration.

``GuardedModelWatcher`` follows ``status.stableVersion / canaryVersion / canaryWeight`` of the
GuardedModel through the Kubernetes API (in-cluster service account or a kubeconfig). It runs off the
hot path and keeps the last routing whenever the API server is unreachable.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from guardedmodel_sidecar.config import Routing
from guardedmodel_sidecar.upstream import TritonHttp

log = logging.getLogger(__name__)


class Router:
    def __init__(self, routing: Routing) -> None:
        self.routing = routing
        self.previous_stable: str | None = None
        self._credit = 0

    def update(self, routing: Routing) -> bool:
        """Adopt new routing; True when it changed."""
        if routing == self.routing:
            return False
        if routing.stable_version != self.routing.stable_version:
            self.previous_stable = self.routing.stable_version
        self.routing = routing
        self._credit = 0
        return True

    def choose(self) -> str:
        routing = self.routing
        if routing.canary_version and routing.canary_weight:
            self._credit += routing.canary_weight
            if self._credit >= 100:
                self._credit -= 100
                return routing.canary_version
        return routing.stable_version

    def versions_to_load(self) -> tuple[str, ...]:
        versions = list(self.routing.versions())
        if self.previous_stable and self.previous_stable not in versions:
            versions.append(self.previous_stable)
        return tuple(versions)


def routing_from_status(status: Mapping[str, Any] | None, fallback: Routing) -> Routing:
    """Routing from a GuardedModel status; fields it lacks keep their last value."""
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
    return Routing(str(stable), None if canary is None else str(canary), weight)


class LoadError(RuntimeError):
    """Triton refused to load a version routing needs; the message carries Triton's reason."""


def local_model_config(repository: Path | None, model: str) -> dict[str, Any] | None:
    """The model's config.pbtxt as Triton's JSON config, when the repository is readable here."""
    if repository is None:
        return None
    path = Path(repository) / model / "config.pbtxt"
    try:
        text = path.read_text()
    except OSError:
        return None
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    try:
        message = text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        log.warning("%s is not a valid model config (%s); Triton's own view is used", path, exc)
        return None
    config: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    config.setdefault("name", model)
    return config


async def ensure_loaded(
    triton: TritonHttp,
    model: str,
    versions: tuple[str, ...],
    local_config: dict[str, Any] | None = None,
) -> bool:
    """Load ``versions`` of ``model`` in Triton (explicit model control mode) if any is not ready.

    Returns True when a load was needed. The configuration sent is Triton's current one for the
    model, else the repository's config.pbtxt read locally, else (first load, no local copy) the one
    Triton reads with a plain load; in each case with the version policy replaced.
    """
    ready = [await _version_ready(triton, model, v) for v in versions]
    if all(ready):
        return False
    status, config = await triton.get_json(f"/v2/models/{model}/config")
    if status != 200 or not isinstance(config, dict):
        config = local_config
    if config is None:
        status, body = await triton.post_json(f"/v2/repository/models/{model}/load", {}, timeout_s=300)
        if status != 200:
            raise LoadError(f"Triton cannot load model '{model}': {_error(body, status)}")
        status, config = await triton.get_json(f"/v2/models/{model}/config")
        if status != 200 or not isinstance(config, dict):
            raise LoadError(
                f"Triton loaded '{model}' but does not return its config: {_error(config, status)}"
            )
    config = dict(config)
    config["version_policy"] = {"specific": {"versions": sorted({int(v) for v in versions})}}
    payload = {"parameters": {"config": orjson.dumps(config).decode()}}
    status, body = await triton.post_json(f"/v2/repository/models/{model}/load", payload, timeout_s=300)
    if status != 200:
        raise LoadError(
            f"Triton cannot load versions {', '.join(versions)} of '{model}': {_error(body, status)}"
        )
    missing = [v for v in versions if not await _version_ready(triton, model, v)]
    if missing:
        raise LoadError(f"Triton loaded '{model}' but versions {', '.join(missing)} are not ready")
    return True


async def _version_ready(triton: TritonHttp, model: str, version: str) -> bool:
    response = await triton.request("GET", f"/v2/models/{model}/versions/{version}/ready", timeout_s=5)
    return response.status == 200


def _error(body: Any, status: int) -> str:
    if isinstance(body, dict) and body.get("error"):
        return str(body["error"])
    return f"HTTP {status}"


@dataclass(frozen=True)
class ApiServer:
    """Where and how to reach the Kubernetes API server."""

    host: str
    headers: dict[str, str]
    ssl_context: ssl.SSLContext | bool

    @classmethod
    def from_environment(cls, kubeconfig: str | None = None) -> ApiServer:
        """In-cluster service account, else the kubeconfig (``kubeconfig`` or $KUBECONFIG)."""
        from kubernetes import client, config  # imported lazily: only the watcher needs it

        configuration = client.Configuration()
        try:
            if kubeconfig:
                raise config.ConfigException("kubeconfig given")
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        headers: dict[str, str] = {}
        token = configuration.api_key.get("authorization") or configuration.api_key.get("BearerToken")
        if token:
            prefix = configuration.api_key_prefix.get("authorization", "")
            headers["Authorization"] = (
                token if token.startswith("Bearer") else f"{prefix or 'Bearer'} {token}"
            )
        context: ssl.SSLContext | bool = False
        if configuration.host.startswith("https"):
            context = (
                ssl.create_default_context(cafile=configuration.ssl_ca_cert)
                if configuration.verify_ssl
                else False
            )
            if isinstance(context, ssl.SSLContext) and configuration.cert_file:
                context.load_cert_chain(configuration.cert_file, configuration.key_file)
            if context is False:
                insecure = ssl.create_default_context()
                insecure.check_hostname = False
                insecure.verify_mode = ssl.CERT_NONE
                context = insecure
        return cls(configuration.host.rstrip("/"), headers, context)


class GuardedModelWatcher:
    """Follows one GuardedModel's routing status; calls ``on_routing`` with each new routing."""

    GROUP_PATH = "/apis/guardedmodel.io/v1alpha1"

    def __init__(
        self,
        api: ApiServer,
        namespace: str,
        name: str,
        on_routing: Callable[[Routing], Awaitable[None]],
        current: Callable[[], Routing],
        *,
        retry_s: float = 2.0,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.on_routing = on_routing
        self.current = current
        self.retry_s = retry_s
        self.connected = False
        self.errors = 0

    @property
    def _collection(self) -> str:
        return f"{self.api.host}{self.GROUP_PATH}/namespaces/{self.namespace}/guardedmodels"

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=330)
        async with aiohttp.ClientSession(headers=self.api.headers, timeout=timeout) as session:
            while True:
                try:
                    version = await self._get(session)
                    await self._watch(session, version)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.connected = False
                    self.errors += 1
                    log.warning(
                        "GuardedModel %s/%s: API server unreachable or refused (%s); keeping routing %s",
                        self.namespace,
                        self.name,
                        exc,
                        self.current(),
                    )
                await asyncio.sleep(self.retry_s)

    async def _get(self, session: aiohttp.ClientSession) -> str:
        async with session.get(f"{self._collection}/{self.name}", ssl=self.api.ssl_context) as resp:
            if resp.status != 200:
                raise RuntimeError(f"GET GuardedModel: HTTP {resp.status}: {(await resp.text())[:200]}")
            obj = await resp.json(loads=orjson.loads)
        self.connected = True
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
        async with session.get(self._collection, params=params, ssl=self.api.ssl_context) as resp:
            if resp.status != 200:
                raise RuntimeError(f"watch GuardedModel: HTTP {resp.status}")
            async for line in resp.content:
                if not line.strip():
                    continue
                event = orjson.loads(line)
                kind = event.get("type")
                if kind == "ERROR":
                    raise RuntimeError(f"watch error: {event.get('object', {}).get('message')}")
                if kind in ("ADDED", "MODIFIED"):
                    await self._apply(event.get("object") or {})

    async def _apply(self, obj: Mapping[str, Any]) -> None:
        routing = routing_from_status(obj.get("status"), self.current())
        if routing != self.current():
            await self.on_routing(routing)
