"""The sidecar's configuration file, rendered from the spec."""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any

import yaml

from ..labels import SPEC_HASH_ANNOTATION
from .common import (
    CONFIG_FILE,
    GRPC_PORT,
    HTTP_PORT,
    METRICS_PORT,
    MODEL_REPOSITORY_PATH,
    STATE_DIR,
    TRITON_GRPC_PORT,
    TRITON_HTTP_PORT,
    TRITON_METRICS_PORT,
    TRITON_RESTRICTED_HEADER,
    BuildContext,
)
from .storage import AUDIT_EXPORT_CREDENTIALS_DIR, audit_export_secret


def render_sidecar_config(ctx: BuildContext) -> dict[str, Any]:
    """The `sidecar.yaml` document the sidecar reads at start-up.

    The routing here is only the starting point: the sidecar then follows the
    GuardedModel's status (stableVersion/canaryVersion/canaryWeight) live.
    """
    config: dict[str, Any] = {
        "guardedModel": {"namespace": ctx.owner.namespace, "name": ctx.owner.name},
        "spec": ctx.spec.raw,
        "routing": ctx.routing.as_dict(),
        "triton": {
            "httpUrl": f"127.0.0.1:{TRITON_HTTP_PORT}",
            "grpcUrl": f"127.0.0.1:{TRITON_GRPC_PORT}",
            # Triton's queue time, republished by the sidecar for the scaler.
            "metricsUrl": f"127.0.0.1:{TRITON_METRICS_PORT}",
            "restrictedHeader": {"name": TRITON_RESTRICTED_HEADER, "value": ctx.owner.triton_key()},
        },
        "modelRepository": MODEL_REPOSITORY_PATH,
        "listen": {"host": "0.0.0.0", "http": HTTP_PORT, "grpc": GRPC_PORT, "metrics": METRICS_PORT},
        "auditDir": f"{STATE_DIR}/audit",
        "spoolDir": f"{STATE_DIR}/review-spool",
        "tuning": {
            "microBatching": dict(ctx.spec.raw["sidecar"]["microBatching"]),
            "workers": ctx.spec.raw["sidecar"]["workers"],
            "auditRetainFiles": ctx.spec.raw["audit"]["retainFiles"],
            "auditRetainBytes": ctx.spec.raw["audit"].get("retainBytes") or 0,
        },
        # Only the limits the user set: the sidecar owns the defaults (guardedmodel_sidecar.limits).
        "limits": dict(ctx.spec.raw["sidecar"].get("limits") or {}),
    }
    if audit_export_secret(ctx.spec) is not None:
        config["auditExportCredentialsDir"] = AUDIT_EXPORT_CREDENTIALS_DIR
    if ctx.spec.repository.is_remote:
        # The pod holds a copy fetched at start; a version published later is fetched from here
        # when routing names it, so that a version change never needs a new pod.
        config["modelSource"] = ctx.spec.repository.url
    return config


@functools.lru_cache(maxsize=4096)
def _yaml_document(config_json: str) -> str:
    # Every reconcile builds the ConfigMap, and YAML is slow to write: the same config (as JSON, key
    # order kept, which is what YAML keeps too) is rendered once.
    return yaml.safe_dump(json.loads(config_json), sort_keys=False, default_flow_style=False)


def build_configmap(ctx: BuildContext) -> dict[str, Any]:
    document = _yaml_document(json.dumps(render_sidecar_config(ctx)))
    metadata = ctx.metadata(ctx.names.configmap, "sidecar-config")
    # Unlike the pod, the ConfigMap does carry the routing, so its hash covers it too: a routing
    # change is an update the operator makes, not a hand edit it has to restore.
    routing = json.dumps(ctx.routing.as_dict(), sort_keys=True)
    digest = hashlib.sha256(f"{ctx.spec_hash}:{routing}".encode()).hexdigest()[:16]
    metadata["annotations"] = {**metadata["annotations"], SPEC_HASH_ANNOTATION: digest}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata,
        "data": {CONFIG_FILE: document},
    }
