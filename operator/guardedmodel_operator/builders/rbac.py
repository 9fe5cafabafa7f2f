"""The sidecar's identity: it may read and watch its own GuardedModel, nothing else.

`resourceNames` pins the Role to one object; list/watch with a
`metadata.name` field selector is allowed under it, which is how the sidecar
follows its routing without seeing other models.
"""

from __future__ import annotations

from typing import Any

from ..labels import GROUP, PLURAL
from .common import BuildContext


def build_serviceaccount(ctx: BuildContext) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": ctx.metadata(ctx.names.serviceaccount, "sidecar-identity"),
        # The sidecar talks to the API server, so the token must be mounted;
        # the pod asks for it explicitly (projected, short-lived).
        "automountServiceAccountToken": False,
    }


def build_role(ctx: BuildContext) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": ctx.metadata(ctx.names.role, "sidecar-identity"),
        "rules": [
            {
                "apiGroups": [GROUP],
                # The status (its routing) comes with the object on get and watch.
                "resources": [PLURAL],
                "resourceNames": [ctx.owner.name],
                "verbs": ["get", "list", "watch"],
            }
        ],
    }


def build_rolebinding(ctx: BuildContext) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": ctx.metadata(ctx.names.rolebinding, "sidecar-identity"),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": ctx.names.role},
        "subjects": [
            {"kind": "ServiceAccount", "name": ctx.names.serviceaccount, "namespace": ctx.owner.namespace}
        ],
    }
