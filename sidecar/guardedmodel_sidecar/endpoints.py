"""The v2 endpoints the guard sidecar serves: an allow-list, the same for HTTP and gRPC.

The sidecar is the only door to the model, so it lets through only what a v2 client needs and
nothing that changes Triton or reads other callers' data:

- answered by the sidecar itself: liveness and readiness (readiness is the sidecar's view: Triton and
  every routed version ready);
- guarded: ``infer`` goes through the gate, the model and the scorer;
- forwarded read-only to Triton: server metadata, model metadata, model readiness, model config,
  statistics, the repository index;
- refused (403): model load/unload (the sidecar loads what routing names), logging and trace settings
  (a TENSORS-level trace writes every caller's inputs to files), system and CUDA shared memory (a
  caller's memory regions would bypass the gate), ``generate``/``generate_stream`` (they run the model
  without the gate, the scorer or the audit), and every other path under ``/v2``.

A forwarded request is rebuilt from the validated path; nothing else of the caller's reaches Triton.
"""

from __future__ import annotations

import re

import grpc

from guardedmodel_sidecar.errors import Forbidden, GuardError, InvalidRequest, client_text

# The GuardedModel CRD's rule for spec.model.name, and Triton's numeric versions.
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_VERSION = re.compile(r"[0-9]{1,10}")

LIVE, READY, INFER, FORWARD = 1, 2, 3, 4

LOAD_REFUSED = (
    "model loading is managed by the guard sidecar from the GuardedModel routing; change the "
    "GuardedModel instead of loading or unloading through this endpoint"
)
GENERATE_REFUSED = (
    "generate and generate_stream are refused by the guard sidecar: they would run the model without "
    "the input gate, the confidence scorer and the audit; use .../infer"
)
LOGGING_REFUSED = "Triton's log settings are not reachable through the guard sidecar (server configuration)"
TRACE_REFUSED = (
    "Triton's trace settings are not reachable through the guard sidecar: a TENSORS-level trace would "
    "write every caller's inputs and outputs to files"
)
SHARED_MEMORY_REFUSED = (
    "shared-memory regions are not available through the guard sidecar: tensors in shared memory would "
    "reach the model without passing the input gate; send tensors in the request body"
)


class MethodNotAllowed(GuardError):
    http_status = 405
    grpc_code = grpc.StatusCode.UNIMPLEMENTED


class NoSuchEndpoint(GuardError):
    http_status = 404
    grpc_code = grpc.StatusCode.UNIMPLEMENTED


class Route:
    """What to do with one request: ``kind`` and, for INFER/FORWARD, the model, version, clean path."""

    __slots__ = ("kind", "model", "path", "version")

    def __init__(self, kind: int, path: str = "", model: str = "", version: str = "") -> None:
        self.kind = kind
        self.path = path
        self.model = model
        self.version = version


_LIVE = Route(LIVE)
_READY = Route(READY)
_SERVER_METADATA = Route(FORWARD, "/v2")
_ALL_STATS = Route(FORWARD, "/v2/models/stats")
_INDEX = Route(FORWARD, "/v2/repository/index")
# Per-model actions forwarded read-only ("" is the model metadata).
_MODEL_READ = frozenset(("", "ready", "config", "stats"))


def route(method: str, target: str) -> Route:
    """The route of ``method target`` (target as sent: path and maybe a query); raises the refusal."""
    path = target.split("?", 1)[0].split("#", 1)[0]
    if not path.startswith("/"):
        raise InvalidRequest(
            f"request target {client_text(path, 200)!r} is not a path; send an origin-form target such as "
            "/v2/health/ready"
        )
    if path != "/v2" and not path.startswith("/v2/"):
        raise NoSuchEndpoint(
            f"no endpoint at {client_text(path, 200)}: the guard sidecar serves the KServe v2 protocol "
            "under /v2"
        )
    parts = path.split("/")  # ["", "v2", ...]
    n = len(parts)
    if n == 2:
        return _get_only(method, path, _SERVER_METADATA)
    section = parts[2]
    if section == "health" and n == 4 and parts[3] in ("live", "ready"):
        return _get_only(method, path, _LIVE if parts[3] == "live" else _READY)
    if section == "models" and n >= 4:
        if n == 4 and parts[3] == "stats":
            return _get_only(method, path, _ALL_STATS)
        return _model_route(method, path, parts)
    if section == "repository":
        if n == 4 and parts[3] == "index":
            if method != "POST":
                raise MethodNotAllowed(
                    f"{method} is not allowed on {path}; use POST", headers={"Allow": "POST"}
                )
            return _INDEX
        if n == 6 and parts[3] == "models" and parts[5] in ("load", "unload"):
            raise Forbidden(LOAD_REFUSED)
    elif section == "logging":
        raise Forbidden(LOGGING_REFUSED)
    elif section == "trace":
        raise Forbidden(TRACE_REFUSED)
    elif section in ("systemsharedmemory", "cudasharedmemory"):
        raise Forbidden(SHARED_MEMORY_REFUSED)
    raise Forbidden(_not_served(path))


def _model_route(method: str, path: str, parts: list[str]) -> Route:
    model = parts[3]
    rest = parts[4:]
    version = ""
    if len(rest) >= 2 and rest[0] == "versions":
        version = rest[1]
        rest = rest[2:]
    action = "/".join(rest)
    if action in ("generate", "generate_stream"):
        raise Forbidden(GENERATE_REFUSED)
    if action == "trace/setting":
        raise Forbidden(TRACE_REFUSED)
    if action != "infer" and action not in _MODEL_READ:
        raise Forbidden(_not_served(path))
    if _MODEL_NAME.fullmatch(model) is None:
        raise InvalidRequest(
            f"{client_text(model, 200)!r} is not a Triton model name (letters, digits, '_', '.' and '-', "
            "starting with a letter or digit)"
        )
    if version and _VERSION.fullmatch(version) is None:
        raise InvalidRequest(f"model version {client_text(version, 40)!r} is not a number")
    prefix = f"/v2/models/{model}/versions/{version}" if version else f"/v2/models/{model}"
    if action == "infer":
        if method != "POST":
            raise MethodNotAllowed(f"{method} is not allowed on {path}; use POST", headers={"Allow": "POST"})
        return Route(INFER, prefix + "/infer", model, version)
    if method != "GET":
        raise MethodNotAllowed(f"{method} is not allowed on {path}; use GET", headers={"Allow": "GET"})
    return Route(FORWARD, f"{prefix}/{action}" if action else prefix, model, version)


def _get_only(method: str, path: str, found: Route) -> Route:
    if method != "GET":
        raise MethodNotAllowed(f"{method} is not allowed on {path}; use GET", headers={"Allow": "GET"})
    return found


def _not_served(path: str) -> str:
    return (
        f"{client_text(path, 200)} is not served by the guard sidecar; it serves health, server and model "
        "metadata, model readiness, config and statistics, the repository index, and guarded .../infer"
    )


# ----------------------------------------------------------------------------------------- gRPC
# The same list in GRPCInferenceService method names, for the gRPC adapter.
GRPC_LOCAL = frozenset(("ServerLive", "ServerReady"))
GRPC_GUARDED = frozenset(("ModelInfer", "ModelStreamInfer"))
GRPC_FORWARDED = frozenset(
    ("ServerMetadata", "ModelMetadata", "ModelReady", "ModelConfig", "ModelStatistics", "RepositoryIndex")
)
GRPC_REFUSED = {
    "RepositoryModelLoad": LOAD_REFUSED,
    "RepositoryModelUnload": LOAD_REFUSED,
    "LogSettings": LOGGING_REFUSED,
    "TraceSetting": TRACE_REFUSED,
    "SystemSharedMemoryStatus": SHARED_MEMORY_REFUSED,
    "SystemSharedMemoryRegister": SHARED_MEMORY_REFUSED,
    "SystemSharedMemoryUnregister": SHARED_MEMORY_REFUSED,
    "CudaSharedMemoryStatus": SHARED_MEMORY_REFUSED,
    "CudaSharedMemoryRegister": SHARED_MEMORY_REFUSED,
    "CudaSharedMemoryUnregister": SHARED_MEMORY_REFUSED,
}
