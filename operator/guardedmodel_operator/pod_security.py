"""Whether a namespace's Pod Security admission will refuse the pods a spec asks for.

The pod the operator builds meets the "restricted" standard, except for one thing a
spec can choose: a `file://` model repository is a hostPath volume, which both the
"baseline" and the "restricted" standards refuse. The API server would accept the
Deployment and then refuse every pod its ReplicaSet creates, a failure that shows
only on the ReplicaSet. The operator instead refuses such a model up front, on the
GuardedModel itself, naming the field and the fix. Pure: labels in, message out.
"""

from __future__ import annotations

from collections.abc import Mapping

from .spec import Repository

ENFORCE_LABEL = "pod-security.kubernetes.io/enforce"
# The standards that forbid hostPath volumes (everything but "privileged").
HOSTPATH_FORBIDDEN = ("baseline", "restricted")


def hostpath_refusal(repository: Repository, namespace: str, labels: Mapping[str, str]) -> str | None:
    """Why the namespace will refuse this repository's pods, or None when it will not.

    Only what the namespace's own label says counts: a cluster-wide default level set
    in the API server's admission configuration is invisible here (the pods are then
    refused by the API server, and the Deployment's ReplicaFailure condition says so).
    """
    level = labels.get(ENFORCE_LABEL, "")
    if repository.scheme != "file" or level not in HOSTPATH_FORBIDDEN:
        return None
    return (
        f"spec.model.repository {repository.url!r} is a hostPath volume, which namespace "
        f"{namespace!r} refuses ({ENFORCE_LABEL}={level}). Serve the model over http(s):// "
        "(the fetch-model init container copies <model>.tar.gz into the pod) or put it on a volume "
        "claim and use pvc://<claim>/<path>; "
        "file:// is for development clusters whose namespace enforces no Pod Security level "
        "(or privileged)."
    )
