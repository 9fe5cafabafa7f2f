"""Labels and annotations the operator puts on everything it creates.

The `app.kubernetes.io/*` set follows the Kubernetes recommended labels so
that generic tooling (kubectl, dashboards, Helm) groups the objects; the
`guardedmodel.io/*` keys are what the operator itself selects on.
"""

from __future__ import annotations

GROUP = "guardedmodel.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "GuardedModel"
PLURAL = "guardedmodels"

FIELD_MANAGER = "guardedmodel-operator"
MANAGED_BY = "guardedmodel-operator"

# Selecting children by these two labels is how watch events on a child find
# the GuardedModel that owns it without reading owner references.
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
OWNER_NAME_LABEL = f"{GROUP}/name"

# The hash of everything a child was built from: on a child's metadata it tells a
# hand edit (hash unchanged, content differs) from a spec change.
SPEC_HASH_ANNOTATION = f"{GROUP}/spec-hash"
# The hash of what the pods are built from (the spec without the model version and the
# operator's own policy), on the pod template: a change rolls the pods, a version change does not.
POD_HASH_ANNOTATION = f"{GROUP}/pod-hash"


def selector_labels(name: str) -> dict[str, str]:
    """The immutable subset used in Deployment/Service/NetworkPolicy selectors.

    Only the instance identity goes here: selectors of a Deployment cannot be
    changed later, so nothing that can change (such as the model version) may
    be part of them.
    """
    return {
        "app.kubernetes.io/name": "guardedmodel",
        "app.kubernetes.io/instance": name,
    }


def standard_labels(name: str, component: str, model_version: str | None = None) -> dict[str, str]:
    labels = {
        **selector_labels(name),
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "guardedmodel",
        MANAGED_BY_LABEL: MANAGED_BY,
        OWNER_NAME_LABEL: name,
    }
    if model_version is not None:
        labels["app.kubernetes.io/version"] = model_version
    return labels
