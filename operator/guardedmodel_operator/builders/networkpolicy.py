"""Ingress to the pods only on the sidecar's ports.

Triton already listens on loopback only; the policy is the second wall, and
it keeps working if someone adds `--http-address=0.0.0.0` through
spec.triton.args. Egress stays open: the sidecar needs the API server (its
routing), the review webhook and the model repository, whose addresses the
operator cannot know in advance.
"""

from __future__ import annotations

from typing import Any

from ..labels import selector_labels
from .common import SIDECAR_PORTS, BuildContext


def build_networkpolicy(ctx: BuildContext) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": ctx.metadata(ctx.names.networkpolicy, "network-policy"),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(ctx.owner.name)},
            "policyTypes": ["Ingress"],
            "ingress": [{"ports": [{"protocol": "TCP", "port": port} for _, port, _ in SIDECAR_PORTS]}],
        },
    }
