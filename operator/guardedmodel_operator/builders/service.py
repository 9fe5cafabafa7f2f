"""The Service clients use: the sidecar's ports only, never Triton's."""

from __future__ import annotations

from typing import Any

from ..labels import selector_labels
from .common import SIDECAR_PORTS, BuildContext


def build_service(ctx: BuildContext) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": ctx.metadata(ctx.names.service, "inference"),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(ctx.owner.name),
            "ports": [
                {"name": name, "port": port, "targetPort": name, "protocol": "TCP", "appProtocol": protocol}
                for name, port, protocol in SIDECAR_PORTS
            ],
        },
    }
