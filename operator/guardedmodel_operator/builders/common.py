"""What every builder shares: the owner, names, metadata and the spec hash."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config import OperatorConfig
from ..labels import API_VERSION, KIND, SPEC_HASH_ANNOTATION, standard_labels
from ..spec import GuardedModelSpec
from ..status import Routing

# Ports of the sidecar inside the pod; the ConfigMap tells the sidecar to use them.
HTTP_PORT = 8080
GRPC_PORT = 8081
METRICS_PORT = 9090
# The same three as (name, port, appProtocol): the container, its Service and the NetworkPolicy
# expose exactly these.
SIDECAR_PORTS = (("http", HTTP_PORT, "http"), ("grpc", GRPC_PORT, "grpc"), ("metrics", METRICS_PORT, "http"))
# Triton listens on loopback only: nothing but the sidecar may reach it.
TRITON_HTTP_PORT = 8000
TRITON_GRPC_PORT = 8001
TRITON_METRICS_PORT = 8002
# Triton's control APIs answer only requests that carry this header (its restricted-API options);
# the sidecar adds it to its own management calls and never to a caller's forwarded request.
TRITON_RESTRICTED_APIS = ("model-repository", "logging", "trace", "shared-memory")
TRITON_RESTRICTED_HEADER = "guardedmodel-sidecar-key"

MODEL_REPOSITORY_PATH = "/models"
CONFIG_DIR = "/etc/guardedmodel"
CONFIG_FILE = "sidecar.yaml"
STATE_DIR = "/var/lib/guardedmodel"
RUN_AS_USER = 1000


@dataclass(frozen=True)
class Owner:
    namespace: str
    name: str
    uid: str

    def triton_key(self) -> str:
        """The value of TRITON_RESTRICTED_HEADER for this GuardedModel's pods.

        Not a secret from whoever can read the Deployment: Triton listens on loopback only, so the key
        does not keep out other pods; it makes the sidecar the only caller of Triton's control APIs, so
        a request the sidecar forwards can never reach them, whatever its path.
        """
        return hashlib.sha256(f"guardedmodel:{self.namespace}/{self.name}:{self.uid}".encode()).hexdigest()[
            :32
        ]

    def reference(self) -> dict[str, Any]:
        # controller=True makes the garbage collector delete the children with
        # the GuardedModel, so the operator needs no finalizer for cleanup.
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


@dataclass(frozen=True)
class ChildNames:
    deployment: str
    service: str
    configmap: str
    serviceaccount: str
    role: str
    rolebinding: str
    networkpolicy: str


def child_names(name: str) -> ChildNames:
    sidecar = f"{name}-sidecar"
    return ChildNames(name, name, sidecar, sidecar, sidecar, sidecar, name)


@dataclass(frozen=True)
class BuildContext:
    owner: Owner
    spec: GuardedModelSpec
    config: OperatorConfig
    routing: Routing
    # The Deployment's current replica count, so that a scaling decision made
    # elsewhere (within min..max) is kept rather than reset on every reconcile.
    current_replicas: int | None = None
    # What the scaler asked for (status.scaling.desiredReplicas); wins over the current count.
    scaled_replicas: int | None = None
    names: ChildNames = field(init=False)
    spec_hash: str = field(init=False)
    pod_hash: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", child_names(self.owner.name))
        object.__setattr__(self, "spec_hash", compute_spec_hash(self.spec, self.config))
        object.__setattr__(self, "pod_hash", compute_pod_hash(self.spec, self.config))

    @property
    def triton_image(self) -> str:
        return self.spec.triton_image or self.config.triton_image

    @property
    def sidecar_image(self) -> str:
        return self.spec.sidecar_image or self.config.sidecar_image

    def metadata(self, name: str, component: str) -> dict[str, Any]:
        labels = {
            **self.config.extra_labels,
            **standard_labels(self.owner.name, component, self.spec.model_version),
        }
        return {
            "name": name,
            "namespace": self.owner.namespace,
            "labels": labels,
            "annotations": {SPEC_HASH_ANNOTATION: self.spec_hash},
            "ownerReferences": [self.owner.reference()],
        }


def build_context(
    body: Mapping[str, Any],
    spec: GuardedModelSpec,
    config: OperatorConfig,
    current_replicas: int | None = None,
) -> BuildContext:
    meta = body["metadata"]
    owner = Owner(namespace=meta["namespace"], name=meta["name"], uid=meta["uid"])
    routing, scaled = status_inputs(body.get("status"), spec)
    return BuildContext(owner, spec, config, routing, current_replicas, scaled)


def status_inputs(status: Mapping[str, Any] | None, spec: GuardedModelSpec) -> tuple[Routing, int | None]:
    """What of a GuardedModel's status its children are built from: the routing (the sidecar's
    starting point) and the replica count the scaler asked for. A status write that leaves these as
    they were leaves every child as it was. Pure."""
    routing = Routing.from_status(status).or_stable(spec.model_version)
    scaled = ((status or {}).get("scaling") or {}).get("desiredReplicas")
    return routing, scaled if isinstance(scaled, int) else None


# Parts of the spec that no container reads, so editing them must not restart a pod:
# - model.version: versions move through routing (status → sidecar → Triton's repository API);
#   a canary start, a promotion or a rollback loads or flips versions in the running pods;
# - rollout, replicas, scaling: the operator's own policy (the replica count is the Deployment's);
# - cost: the sidecar follows spec.cost live through its watch of the GuardedModel (a new price
#   applies to the work after it), and the operator reads it for status.cost.
POD_INDEPENDENT_SPEC = (("model", "version"), ("rollout",), ("replicas",), ("scaling",), ("cost",))


def compute_spec_hash(spec: GuardedModelSpec, config: OperatorConfig) -> str:
    """A short, stable digest of the whole spec: on a child's metadata it tells a hand edit (hash
    unchanged, content differs) from a spec change."""
    return _digest(spec.raw, config, spec)


def compute_pod_hash(spec: GuardedModelSpec, config: OperatorConfig) -> str:
    """A short, stable digest of what the pods are built from: the pod template carries it, so a
    change rolls the pods (the sidecar reads its configuration once, at start).

    Routing and the model version are deliberately left out: the sidecar follows routing live from
    the GuardedModel status and loads the versions it names, so no version change restarts a pod.
    """
    return _digest(pod_relevant_spec(spec.raw), config, spec)


def pod_relevant_spec(raw: Mapping[str, Any]) -> dict[str, Any]:
    """`raw` without POD_INDEPENDENT_SPEC. Pure."""
    kept: dict[str, Any] = json.loads(json.dumps(raw))
    for path in POD_INDEPENDENT_SPEC:
        parent = kept
        for key in path[:-1]:
            parent = parent.get(key) or {}
        parent.pop(path[-1], None)
    return kept


def _digest(material_spec: Mapping[str, Any], config: OperatorConfig, spec: GuardedModelSpec) -> str:
    material = {
        "spec": material_spec,
        "tritonImage": spec.triton_image or config.triton_image,
        "sidecarImage": spec.sidecar_image or config.sidecar_image,
    }
    digest = hashlib.sha256(json.dumps(material, sort_keys=True, separators=(",", ":")).encode())
    return digest.hexdigest()[:16]
