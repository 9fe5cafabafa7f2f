"""A small async Kubernetes client for the writes the operator makes.

kopf watches; this writes (server-side apply of children, merge patches of
status). It reuses kopf's login functions so that the operator authenticates
exactly as kopf does — in-cluster service account first, then kubeconfig —
and it keeps one connection pool for all writes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import ssl
import tempfile
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import kopf

from .labels import GROUP, PLURAL, VERSION

# kind → (plural, namespaced). Only the kinds this operator writes.
_PLURALS = {
    "ConfigMap": "configmaps",
    "Service": "services",
    "ServiceAccount": "serviceaccounts",
    "Deployment": "deployments",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "NetworkPolicy": "networkpolicies",
    "GuardedModel": PLURAL,
}


# The API server's answer to a write whose precondition (a resourceVersion) no longer holds.
CONFLICT = 409


class PatchStatus(Protocol):
    """KubeClient.patch_status as the per-model controllers receive it, so tests can pass a fake."""

    def __call__(
        self, namespace: str, name: str, patch: Mapping[str, Any], *, resource_version: str | None = None
    ) -> Awaitable[dict[str, Any]]: ...


class ApiError(Exception):
    """The API server refused a request; the message is the server's own."""

    def __init__(self, status: int, method: str, path: str, body: str) -> None:
        try:
            message = json.loads(body).get("message", body)
        except ValueError:
            message = body
        super().__init__(f"{method} {path} → HTTP {status}: {message}")
        self.status = status


def object_path(api_version: str, kind: str, namespace: str, name: str, subresource: str = "") -> str:
    prefix = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    path = f"{prefix}/namespaces/{namespace}/{_PLURALS[kind]}/{name}"
    return f"{path}/{subresource}" if subresource else path


def login() -> kopf.ConnectionInfo:
    settings = kopf.OperatorSettings()
    info = in_cluster_login(settings) or kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        raise kopf.LoginError("no in-cluster service account and no kubeconfig (set KUBECONFIG)")
    return info


def in_cluster_login(settings: kopf.OperatorSettings) -> kopf.ConnectionInfo | None:
    """The pod's service account, at the API server's address as the kubelet gives it."""
    info = kopf.login_with_service_account(settings=settings)
    return None if info is None else at_service_host(info, os.environ)


def at_service_host(info: kopf.ConnectionInfo, environ: Mapping[str, str]) -> kopf.ConnectionInfo:
    """``info`` pointed at KUBERNETES_SERVICE_HOST:KUBERNETES_SERVICE_PORT when the kubelet set them.

    kopf dials https://kubernetes.default.svc, which needs cluster DNS; client-go (and so every
    controller in the cluster) uses these variables instead, which work without it. The API
    server's certificate names the Service IP too.
    """
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        return info
    host = f"[{host}]" if ":" in host else host  # an IPv6 address
    return dataclasses.replace(info, server=f"https://{host}:{port}")


def _ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    if info.insecure:
        return False
    context = ssl.create_default_context(cafile=info.ca_path)
    if info.ca_data:
        ca = info.ca_data
        context.load_verify_locations(cadata=ca.decode() if isinstance(ca, bytes) else ca)
    cert_path, key_path = info.certificate_path, info.private_key_path
    temporary: list[str] = []
    try:
        # ssl can only load client certificates from files; inline kubeconfig
        # data goes through private temporary files removed right after loading.
        for data, attr in ((info.certificate_data, "cert"), (info.private_key_data, "key")):
            if data:
                fd, path = tempfile.mkstemp(prefix=f"guardedmodel-{attr}-")
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data if isinstance(data, bytes) else data.encode())
                temporary.append(path)
                if attr == "cert":
                    cert_path = path
                else:
                    key_path = path
        if cert_path:
            context.load_cert_chain(cert_path, key_path)
    finally:
        for path in temporary:
            os.unlink(path)
    return context


@dataclass
class KubeClient:
    session: aiohttp.ClientSession
    server: str
    field_manager: str

    @classmethod
    def connect(cls, info: kopf.ConnectionInfo, *, field_manager: str, timeout_s: float = 30.0) -> KubeClient:
        headers = {"Accept": "application/json", "User-Agent": "guardedmodel-operator"}
        auth = None
        if info.token:
            headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
        elif info.username and info.password:
            auth = aiohttp.BasicAuth(info.username, info.password)
        connector = aiohttp.TCPConnector(ssl=_ssl_context(info), limit=50)
        session = aiohttp.ClientSession(
            connector=connector, headers=headers, auth=auth, timeout=aiohttp.ClientTimeout(total=timeout_s)
        )
        return cls(session, info.server.rstrip("/"), field_manager)

    async def close(self) -> None:
        await self.session.close()

    async def _request(
        self, method: str, path: str, body: Any, content_type: str, **params: str
    ) -> dict[str, Any]:
        async with self.session.request(
            method,
            self.server + path,
            params=params,
            data=None if body is None else json.dumps(body),
            headers={"Content-Type": content_type},
        ) as response:
            text = await response.text()
            if response.status >= 400:
                raise ApiError(response.status, method, path, text)
            return json.loads(text) if text else {}

    async def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply, forcing ownership of the fields we set: a hand
        edit of one of them is overwritten, which is the point."""
        meta = manifest["metadata"]
        path = object_path(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"])
        return await self._request(
            "PATCH",
            path,
            manifest,
            "application/apply-patch+yaml",
            fieldManager=self.field_manager,
            force="true",
        )

    async def namespace_labels(self, namespace: str) -> dict[str, str] | None:
        """The namespace's labels, or None when this identity may not read namespaces (a
        namespaced install without cluster-wide RBAC): the caller then decides without them."""
        try:
            found = await self._request("GET", f"/api/v1/namespaces/{namespace}", None, "application/json")
        except ApiError as error:
            if error.status == 403:
                return None
            raise
        return dict(found.get("metadata", {}).get("labels") or {})

    async def list_pods(self, namespace: str, selector: Mapping[str, str]) -> list[dict[str, Any]] | None:
        """The pods matching `selector`, or None when this identity may not list pods (a chart
        from before the ModelFetched condition): the caller then goes without them."""
        params = {"labelSelector": ",".join(f"{k}={v}" for k, v in sorted(selector.items()))}
        try:
            found = await self._request(
                "GET", f"/api/v1/namespaces/{namespace}/pods", None, "application/json", **params
            )
        except ApiError as error:
            if error.status == 403:
                return None
            raise
        return list(found.get("items") or [])

    async def list_models(self, namespaces: tuple[str, ...] = (), page: int = 500) -> list[dict[str, Any]]:
        """Every GuardedModel in `namespaces` (all when empty), read from etcd (a consistent list, not
        the API server's watch cache), in pages of `page`; each item carries its kind."""
        prefix = f"/apis/{GROUP}/{VERSION}"
        paths = [f"{prefix}/namespaces/{ns}/{PLURAL}" for ns in namespaces] or [f"{prefix}/{PLURAL}"]
        items: list[dict[str, Any]] = []
        for path in paths:
            token = ""
            while True:
                params = {"limit": str(page), **({"continue": token} if token else {})}
                found = await self._request("GET", path, None, "application/json", **params)
                items.extend({"apiVersion": f"{GROUP}/{VERSION}", "kind": "GuardedModel", **item}
                             for item in found.get("items") or [])  # fmt: skip
                token = (found.get("metadata") or {}).get("continue") or ""
                if not token:
                    break
        return items

    async def patch_status(
        self, namespace: str, name: str, patch: Mapping[str, Any], *, resource_version: str | None = None
    ) -> dict[str, Any]:
        """A merge patch of the status. With `resource_version`, that of the copy the patch was computed
        from, the server refuses it (ApiError, status CONFLICT) when the object has changed since: a
        merge patch replaces a list (history, conditions) whole, so one computed from an old copy would
        drop what was written in between (e.g. by an operator process that was replaced)."""
        path = object_path(f"{GROUP}/{VERSION}", "GuardedModel", namespace, name, "status")
        body: dict[str, Any] = {"status": patch}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        return await self._request(
            "PATCH", path, body, "application/merge-patch+json", fieldManager=self.field_manager
        )
