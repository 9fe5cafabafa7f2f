"""How clients reach the local cluster: the admin token in `system:masters` and the kubeconfig.

A static token is the simplest credential the API server accepts and is fine on loopback; the
service-account key pair signs the tokens of the pods' service accounts.
"""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path

import yaml


def write_credentials(pki: Path) -> str:
    """The service-account key pair and the admin token (reused when already written); returns the token."""
    pki.mkdir(exist_ok=True)
    key = pki / "sa.key"
    if not key.exists():
        subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
        subprocess.run(
            ["openssl", "rsa", "-in", str(key), "-pubout", "-out", str(pki / "sa.pub")],
            check=True,
            capture_output=True,
        )
    tokens = pki / "tokens.csv"
    if tokens.exists():
        token = tokens.read_text().split(",", 1)[0]
    else:
        token = secrets.token_hex(24)
        tokens.write_text(f'{token},admin,admin-uid,"system:masters"\n')
        tokens.chmod(0o600)
    return token


def write_kubeconfig(path: Path, server_url: str, token: str, ca_file: Path) -> None:
    """A kubeconfig for the admin token, readable only by its owner."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "guardedmodel-local",
                "cluster": {"server": server_url, "certificate-authority": str(ca_file)},
            }
        ],
        "users": [{"name": "admin", "user": {"token": token}}],
        "contexts": [
            {"name": "guardedmodel-local", "context": {"cluster": "guardedmodel-local", "user": "admin"}}
        ],
        "current-context": "guardedmodel-local",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
