"""Pure builders: (GuardedModel identity, parsed spec, operator config) → manifests.

Nothing here talks to the API server; every function returns plain dicts, so
each child object can be checked in a unit test field by field.
"""

from __future__ import annotations

from ..status import Routing
from .common import BuildContext, Owner, build_context, child_names, status_inputs
from .configmap import build_configmap, render_sidecar_config
from .deployment import build_deployment
from .networkpolicy import build_networkpolicy
from .rbac import build_role, build_rolebinding, build_serviceaccount
from .service import build_service


def build_children(ctx: BuildContext) -> list[dict]:
    """Every child object of one GuardedModel, in the order they should be written:
    what the pod needs (identity, permissions, config) before the Deployment."""
    return [
        build_serviceaccount(ctx),
        build_role(ctx),
        build_rolebinding(ctx),
        build_configmap(ctx),
        build_service(ctx),
        build_networkpolicy(ctx),
        build_deployment(ctx),
    ]


__all__ = [
    "BuildContext",
    "Owner",
    "Routing",
    "build_children",
    "build_configmap",
    "build_context",
    "build_deployment",
    "build_networkpolicy",
    "build_role",
    "build_rolebinding",
    "build_service",
    "build_serviceaccount",
    "child_names",
    "render_sidecar_config",
    "status_inputs",
]
