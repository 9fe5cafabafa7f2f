"""What the pod's containers need to read an s3:// or gs:// repository (spec.model.storage).

The operator only names the Secret in the pod; the kubelet hands its keys to the fetch-model init
container and to the sidecar (which fetches versions published after the pod started). The operator
itself never reads it, so its RBAC holds no right on Secrets. Without a Secret, nothing is added:
the client's default chain finds the credentials of the pod's service account (IRSA or EKS Pod
Identity on AWS, workload identity on GKE).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..spec import GuardedModelSpec

#: Where a gs:// repository's service-account key (the Secret's key.json) is mounted.
STORAGE_CREDENTIALS_DIR = "/var/run/secrets/guardedmodel/storage"
GCS_KEY = "key.json"
S3_SECRET_KEYS = (("AWS_ACCESS_KEY_ID", False), ("AWS_SECRET_ACCESS_KEY", False), ("AWS_SESSION_TOKEN", True))
VOLUME = "storage-credentials"


@dataclass(frozen=True)
class StorageAccess:
    env: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)
    volumes: list[dict[str, Any]] = field(default_factory=list)


def storage_access(spec: GuardedModelSpec) -> StorageAccess:
    storage, scheme = spec.storage, spec.repository.scheme
    if scheme == "s3":
        env: list[dict[str, Any]] = [
            {"name": name, "value": value}
            for name, value in (
                ("AWS_ENDPOINT_URL", storage.endpoint),
                ("AWS_REGION", storage.region),
                (
                    "AWS_VIRTUAL_HOSTED_STYLE_REQUEST",
                    None
                    if storage.virtual_hosted_style is None
                    else str(storage.virtual_hosted_style).lower(),
                ),
            )
            if value is not None
        ]
        if storage.secret_name:
            # Key by key rather than envFrom: a Secret's other keys stay out of the pod, and a
            # missing key is named by the kubelet (CreateContainerConfigError).
            env += [
                {
                    "name": key,
                    "valueFrom": {
                        "secretKeyRef": {
                            "name": storage.secret_name,
                            "key": key,
                            **({"optional": True} if optional else {}),
                        }
                    },
                }
                for key, optional in S3_SECRET_KEYS
            ]
        return StorageAccess(env=env)
    if scheme == "gs" and storage.secret_name:
        return StorageAccess(
            env=[{"name": "GOOGLE_SERVICE_ACCOUNT_PATH", "value": f"{STORAGE_CREDENTIALS_DIR}/{GCS_KEY}"}],
            mounts=[{"name": VOLUME, "mountPath": STORAGE_CREDENTIALS_DIR, "readOnly": True}],
            volumes=[
                {
                    "name": VOLUME,
                    "secret": {
                        "secretName": storage.secret_name,
                        "items": [{"key": GCS_KEY, "path": GCS_KEY}],
                    },
                }
            ],
        )
    return StorageAccess()


#: Where spec.audit.export.storage's Secret is mounted, in the sidecar only.
AUDIT_EXPORT_CREDENTIALS_DIR = "/var/run/secrets/guardedmodel/audit-export"
AUDIT_EXPORT_VOLUME = "audit-export-credentials"


def audit_export_secret(spec: GuardedModelSpec) -> str | None:
    """The Secret spec.audit.export.storage names, if any (the export's own credentials)."""
    export = spec.raw.get("audit", {}).get("export") or {}
    name = (export.get("storage") or {}).get("secretName")
    return str(name) if name else None


def audit_export_access(spec: GuardedModelSpec) -> StorageAccess:
    """The export bucket's Secret as files in the SIDECAR (never Triton, never fetch-model), which
    builds that bucket's client from them explicitly: the environment already holds the model's keys.
    The whole Secret is mounted (no items), so an absent optional AWS_SESSION_TOKEN is no error."""
    secret = audit_export_secret(spec)
    if secret is None:
        return StorageAccess()
    return StorageAccess(
        mounts=[{"name": AUDIT_EXPORT_VOLUME, "mountPath": AUDIT_EXPORT_CREDENTIALS_DIR, "readOnly": True}],
        volumes=[{"name": AUDIT_EXPORT_VOLUME, "secret": {"secretName": secret}}],
    )
