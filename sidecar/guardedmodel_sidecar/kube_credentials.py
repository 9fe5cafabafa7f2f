"""Where the sidecar reaches the Kubernetes API server, and with which credentials.

Two sources, as client-go reads them:

* **In a pod**: ``https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`` (an address, so no
  cluster DNS is needed), the CA and the token from the service-account directory. The operator
  mounts a projected token there that the kubelet rotates (``expirationSeconds`` 3600), so the
  token file is read again for every request rather than once at start.
* **Elsewhere** (tests, the demo's local processes): a kubeconfig, ``--kubeconfig`` or
  ``$KUBECONFIG`` or ``~/.kube/config``; its current context's server, CA, and a bearer token
  (``token`` / ``tokenFile``) or a client certificate. Exec and auth-provider plugins are
  refused with a message: the sidecar only ever needs a service account's token.

This replaces the ``kubernetes`` client package (about 120 MB of generated API code in the
image) for the only thing the sidecar used it for; it also fixes the header that package's
in-cluster loader led to (its token value carries a lower-case ``bearer`` prefix).
"""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class CredentialsError(ValueError):
    """No usable API server address or credentials; the message says what is missing."""


@dataclass(frozen=True)
class ApiServer:
    """Where and how to reach the Kubernetes API server."""

    host: str  # https://10.96.0.1:443, no trailing slash
    ssl_context: ssl.SSLContext | bool  # False: plain http
    token: str | None = None
    token_file: Path | None = None  # read for every request: projected tokens rotate

    def headers(self) -> dict[str, str]:
        token = self.token
        if self.token_file is not None:
            token = self.token_file.read_text().strip()
        return {"Authorization": f"Bearer {token}"} if token else {}

    @classmethod
    def from_environment(cls, kubeconfig: str | None = None) -> ApiServer:
        """The pod's service account when in a pod (and no ``kubeconfig`` is given), else a kubeconfig."""
        if not kubeconfig:
            in_pod = in_cluster(os.environ, SERVICE_ACCOUNT_DIR)
            if in_pod is not None:
                return in_pod
        return from_kubeconfig(kubeconfig_path(kubeconfig, os.environ))


def in_cluster(environ: Any, account_dir: Path) -> ApiServer | None:
    """The in-pod API server, or None outside a pod (no service env, or no mounted token)."""
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    token = account_dir / "token"
    if not host or not port or not token.exists():
        return None
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    context = ssl.create_default_context(cafile=str(account_dir / "ca.crt"))
    return ApiServer(f"https://{host}:{port}", context, token_file=token)


def kubeconfig_path(explicit: str | None, environ: Any) -> Path:
    if explicit:
        return Path(explicit)
    listed = environ.get("KUBECONFIG")
    if listed:
        return Path(listed.split(os.pathsep)[0])
    return Path.home() / ".kube" / "config"


def from_kubeconfig(path: Path) -> ApiServer:
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise CredentialsError(f"no kubeconfig at {path} ({exc.strerror}) and not in a pod") from exc
    base = path.parent

    def named(section: str, name: str) -> dict[str, Any]:
        for entry in config.get(section) or []:
            if entry.get("name") == name:
                return dict(entry.get(section.rstrip("s")) or {})
        raise CredentialsError(f"kubeconfig {path}: no {section.rstrip('s')} named {name!r}")

    current = config.get("current-context")
    if not current:
        raise CredentialsError(f"kubeconfig {path}: no current-context")
    context = named("contexts", current)
    cluster = named("clusters", context.get("cluster", ""))
    user = named("users", context.get("user", "")) if context.get("user") else {}
    for plugin in ("exec", "auth-provider"):
        if plugin in user:
            raise CredentialsError(
                f"kubeconfig {path}: user {context.get('user')!r} uses an {plugin} plugin, which the sidecar "
                "does not run; give it a token, a tokenFile or a client certificate"
            )
    server = str(cluster.get("server") or "").rstrip("/")
    if not server:
        raise CredentialsError(f"kubeconfig {path}: cluster {context.get('cluster')!r} has no server")
    ssl_context: ssl.SSLContext | bool = False
    if server.startswith("https"):
        ssl_context = _tls_context(cluster, user, base)
    token_file = _path(user.get("tokenFile"), base)
    return ApiServer(server, ssl_context, token=user.get("token"), token_file=token_file)


def _path(value: Any, base: Path) -> Path | None:
    """A kubeconfig's relative paths are relative to the kubeconfig's own directory."""
    return None if not value else base / Path(str(value)).expanduser()


def _tls_context(cluster: dict[str, Any], user: dict[str, Any], base: Path) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if cluster.get("insecure-skip-tls-verify"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif cluster.get("certificate-authority-data"):
        context.load_verify_locations(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
    elif cluster.get("certificate-authority"):
        context.load_verify_locations(cafile=str(_path(cluster["certificate-authority"], base)))
    certificate = _material(user, "client-certificate", base)
    key = _material(user, "client-key", base)
    if certificate and key:
        context.load_cert_chain(str(certificate), str(key))
    return context


def _material(user: dict[str, Any], field: str, base: Path) -> Path | None:
    """A client certificate or key as a file: ssl loads key pairs from files only, so inline data
    is written once to a file only this user can read."""
    if user.get(f"{field}-data"):
        handle, name = tempfile.mkstemp(prefix="guardedmodel-kube-", suffix=".pem")
        with os.fdopen(handle, "wb") as out:  # mkstemp creates it 0600
            out.write(base64.b64decode(user[f"{field}-data"]))
        return Path(name)
    return _path(user.get(field), base)
