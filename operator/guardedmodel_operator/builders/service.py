"""The Service clients use: the sidecar's ports only, never Triton's."""

from __future__ import annotations

from typing import Any

from ..labels import selector_labels
from .common import GRPC_PORT, HTTP_PORT, METRICS_PORT, BuildContext


def build_service(ctx: BuildContext) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": ctx.metadata(ctx.names.service, "inference"),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(ctx.owner.name),
            "ports": [
                {
                    "name": "http",
                    "port": HTTP_PORT,
                    "targetPort": "http",
                    "protocol": "TCP",
                    "appProtocol": "http",
                },
                {
                    "name": "grpc",
                    "port": GRPC_PORT,
                    "targetPort": "grpc",
                    "protocol": "TCP",
                    "appProtocol": "grpc",
                },
                {
                    "name": "metrics",
                    "port": METRICS_PORT,
                    "targetPort": "metrics",
                    "protocol": "TCP",
                    "appProtocol": "http",
                },
            ],
        },
    }
