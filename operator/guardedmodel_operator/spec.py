"""Parse a GuardedModel spec into typed values, with the CRD's defaults applied.

The API server already applies the CRD's defaults, so in a cluster this adds
nothing; it matters for objects stored before a default existed and for every
pure function that is handed a hand-written spec. `DEFAULTS` mirrors the CRD
and a unit test keeps the two identical.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEFAULTS: dict[str, Any] = {
    "triton": {
        "resources": {"limits": {"nvidia.com/gpu": "1"}},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "shmSize": "1Gi",
    },
    "sidecar": {
        "logLevel": "info",
        "workers": 1,
        "microBatching": {"enabled": False, "maxBatch": 64, "maxInflight": 2},
        "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
    },
    "replicas": {"min": 1, "max": 1},
    "scaling": {"targetQueueTimeMs": 50, "idleAfter": "1h"},
    "gate": {"ood": {"method": "energy", "action": "reject"}, "batchPolicy": "perRow"},
    "confidence": {"reviewBelow": 0.5, "review": {"maxFraction": 0.1}},
    "audit": {"enabled": True, "sampleRate": 0.01, "retainFiles": 10, "export": {"intervalSeconds": 60}},
    "drift": {"window": "5m", "alpha": 0.001, "minSamples": 100},
    "cost": {"currency": "USD"},
    "rollout": {
        "strategy": "canary",
        "steps": [10, 50, 100],
        "interval": "30s",
        "failureLimit": 1,
        "noDataTimeout": "10m",
        "minRequests": 20,
        "autoRollback": True,
        "continuousGuard": True,
        "thresholds": {"maxOodRate": 0.25, "maxErrorRate": 0.05},
        "comparison": {
            "minRows": 100,
            "minAgreement": 0.9,
            "maxConfidenceShift": 0.1,
            "maxOodRateShift": 0.05,
        },
    },
}

# Defaults the CRD declares on the object as a whole (its properties have no defaults of their own):
# a value the user gives replaces them entirely, so `triton.resources: {requests: {cpu: "1"}}`
# means no GPU, exactly as the API server stores it.
WHOLE_VALUE_DEFAULTS = frozenset({("triton", "resources"), ("sidecar", "resources")})
# Optional objects: absent stays absent (the CRD gives them no default of their own), and a given
# one gets its properties' defaults.
GIVEN_ONLY_DEFAULTS = frozenset({("cost",), ("audit", "export")})

REPOSITORY_SCHEMES = ("s3", "gs", "pvc", "http", "https", "file")
_REPOSITORY = re.compile(r"^(?P<scheme>[a-z0-9]+)://(?P<rest>\S+)$")


class SpecError(ValueError):
    """A spec the operator cannot act on. The CRD refuses these at admission;
    this exists for objects that predate a validation rule."""


def with_defaults(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of `spec` with every missing defaulted field filled in.

    Like the API server, a default only fills a field that is absent: a list
    given by the user replaces the default list, it is not merged into it.
    """
    return _merge(copy.deepcopy(DEFAULTS), copy.deepcopy(dict(spec)), ())


def _merge(defaults: dict[str, Any], given: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    for key, default in defaults.items():
        if key not in given:
            if (*path, key) in GIVEN_ONLY_DEFAULTS:
                continue
            if isinstance(default, dict) and (*path, key) not in WHOLE_VALUE_DEFAULTS:
                # An absent object defaults to {} and then to its properties' own defaults, so an
                # optional object inside it (spec.audit.export) stays absent.
                given[key] = _merge(default, {}, (*path, key))
            else:
                given[key] = default
        elif (
            isinstance(default, dict)
            and isinstance(given[key], dict)
            and (*path, key) not in WHOLE_VALUE_DEFAULTS
        ):
            given[key] = _merge(default, given[key], (*path, key))
    return given


@dataclass(frozen=True)
class Repository:
    url: str
    scheme: str
    # pvc:// → the claim and the path inside it; file:// → the host path.
    claim: str | None = None
    sub_path: str = ""
    host_path: str | None = None

    @property
    def is_remote(self) -> bool:
        return self.scheme in ("s3", "gs", "http", "https")


def parse_repository(url: str) -> Repository:
    match = _REPOSITORY.match(url)
    if not match or match["scheme"] not in REPOSITORY_SCHEMES:
        raise SpecError(
            f"spec.model.repository {url!r} must start with one of "
            + ", ".join(f"{s}://" for s in REPOSITORY_SCHEMES)
        )
    scheme, rest = match["scheme"], match["rest"]
    if scheme == "pvc":
        claim, _, sub_path = rest.partition("/")
        return Repository(url, scheme, claim=claim, sub_path=sub_path.strip("/"))
    if scheme == "file":
        if not rest.startswith("/"):
            raise SpecError(
                f"spec.model.repository {url!r}: file:// needs an absolute path (file:///srv/models)"
            )
        return Repository(url, scheme, host_path=rest.rstrip("/") or "/")
    return Repository(url, scheme)


@dataclass(frozen=True)
class Storage:
    """spec.model.storage: how the pod reaches an s3:// or gs:// repository (the operator never
    reads the Secret; the pod's containers do)."""

    secret_name: str | None = None
    endpoint: str | None = None  # s3:// only: an S3-compatible server
    region: str | None = None  # s3:// only
    virtual_hosted_style: bool | None = None  # s3:// only


_S3_ONLY = ("endpoint", "region", "virtualHostedStyle")


def parse_storage(given: Mapping[str, Any] | None, repository: Repository) -> Storage:
    if given is None:
        return Storage()
    if repository.scheme not in ("s3", "gs"):
        raise SpecError(
            "spec.model.storage applies to s3:// and gs:// repositories only; remove it, or point "
            "spec.model.repository at a bucket (e.g. s3://models/prod)"
        )
    if repository.scheme != "s3" and any(key in given for key in _S3_ONLY):
        raise SpecError(
            "spec.model.storage.endpoint, region and virtualHostedStyle are for s3:// repositories; a gs:// "
            "repository needs only secretName (a Secret with key.json) or workload identity"
        )
    endpoint = given.get("endpoint")
    if endpoint is not None and not re.match(r"^https?://[^\s/]+(/.*)?$", str(endpoint)):
        raise SpecError(
            f"spec.model.storage.endpoint {endpoint!r} must be an http(s) URL such as https://minio.storage.svc:9000"
        )
    hosted = given.get("virtualHostedStyle")
    return Storage(
        secret_name=str(given["secretName"]) if given.get("secretName") else None,
        endpoint=str(endpoint) if endpoint else None,
        region=str(given["region"]) if given.get("region") else None,
        virtual_hosted_style=None if hosted is None else bool(hosted),
    )


@dataclass(frozen=True)
class GuardedModelSpec:
    """The parts of the spec the operator's builders use, typed.

    `raw` keeps the whole defaulted spec (camelCase) for the sidecar, which
    reads the gate/confidence/audit/drift sections the operator does not.
    """

    model_name: str
    model_version: str
    repository: Repository
    platform: str | None
    storage: Storage
    triton_image: str | None
    triton_resources: dict[str, Any]
    triton_node_selector: dict[str, str]
    triton_tolerations: list[dict[str, Any]]
    triton_args: list[str]
    triton_shm_size: str
    sidecar_image: str | None
    sidecar_log_level: str
    sidecar_resources: dict[str, Any]
    replicas_min: int
    replicas_max: int
    raw: dict[str, Any]


def parse_spec(spec: Mapping[str, Any]) -> GuardedModelSpec:
    raw = with_defaults(spec)
    model = raw.get("model") or {}
    for key in ("name", "repository", "version"):
        if not model.get(key):
            raise SpecError(f"spec.model.{key} is required")
    version = str(model["version"])
    if not version.isdigit() or version.startswith("0"):
        raise SpecError(f'spec.model.version {version!r} must be a positive integer such as "3"')
    model["version"] = version
    triton, sidecar, replicas = raw["triton"], raw["sidecar"], raw["replicas"]
    if replicas["min"] > replicas["max"]:
        raise SpecError(
            f"spec.replicas.min ({replicas['min']}) must not exceed spec.replicas.max ({replicas['max']})"
        )
    repository = parse_repository(str(model["repository"]))
    return GuardedModelSpec(
        model_name=str(model["name"]),
        model_version=version,
        repository=repository,
        platform=model.get("platform"),
        storage=parse_storage(model.get("storage"), repository),
        triton_image=triton.get("image") or None,
        triton_resources=triton["resources"],
        triton_node_selector=dict(triton.get("nodeSelector") or {}),
        triton_tolerations=list(triton.get("tolerations") or []),
        triton_args=list(triton.get("args") or []),
        triton_shm_size=str(triton["shmSize"]),
        sidecar_image=sidecar.get("image") or None,
        sidecar_log_level=str(sidecar["logLevel"]),
        sidecar_resources=sidecar["resources"],
        replicas_min=int(replicas["min"]),
        replicas_max=int(replicas["max"]),
        raw=raw,
    )
