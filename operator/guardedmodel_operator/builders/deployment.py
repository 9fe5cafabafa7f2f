"""The Deployment: Triton (GPU, loopback only) plus the guard sidecar in one pod.

The pod follows the Kubernetes "restricted" pod security standard: non-root,
read-only root filesystem, no privilege escalation, all capabilities dropped,
RuntimeDefault seccomp. Everything that must be writable is an emptyDir. The one
exception a spec can choose is a file:// repository (hostPath), which the operator
refuses in namespaces that enforce baseline or restricted (pod_security.py).
"""

from __future__ import annotations

from typing import Any

from ..labels import POD_HASH_ANNOTATION, selector_labels, standard_labels
from .common import (
    CONFIG_DIR,
    CONFIG_FILE,
    HTTP_PORT,
    METRICS_PORT,
    MODEL_REPOSITORY_PATH,
    RUN_AS_USER,
    SIDECAR_PORTS,
    STATE_DIR,
    TRITON_GRPC_PORT,
    TRITON_HTTP_PORT,
    TRITON_METRICS_PORT,
    TRITON_RESTRICTED_APIS,
    TRITON_RESTRICTED_HEADER,
    BuildContext,
)
from .storage import audit_export_access, storage_access

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
# A rollout that makes no progress for this long is reported as Degraded.
PROGRESS_DEADLINE_S = 600


def triton_args(ctx: BuildContext) -> list[str]:
    # Explicit model control: Triton loads nothing by itself; the sidecar loads
    # exactly the versions the routing names, so stable and canary can both
    # stay loaded and a rollback is a routing flip instead of a reload.
    restricted = f"{','.join(TRITON_RESTRICTED_APIS)}:{TRITON_RESTRICTED_HEADER}={ctx.owner.triton_key()}"
    return [
        f"--model-repository={MODEL_REPOSITORY_PATH}",
        "--model-control-mode=explicit",
        "--http-address=127.0.0.1",
        f"--http-port={TRITON_HTTP_PORT}",
        "--grpc-address=127.0.0.1",
        f"--grpc-port={TRITON_GRPC_PORT}",
        "--metrics-address=127.0.0.1",
        f"--metrics-port={TRITON_METRICS_PORT}",
        # Defence in depth behind the sidecar's allow-list: model load/unload, logging, trace and
        # shared memory need a header that only the sidecar's own management calls carry.
        f"--http-restricted-api={restricted}",
        f"--grpc-restricted-protocol={restricted}",
        *ctx.spec.triton_args,
    ]


def desired_replicas(ctx: BuildContext) -> int:
    """The scaler's count when it made one, else the current count; either clamped
    into min..max (a spec edit of the range applies at once)."""
    if ctx.scaled_replicas is not None:
        wanted = ctx.scaled_replicas
    elif ctx.current_replicas is not None:
        wanted = ctx.current_replicas
    else:
        wanted = ctx.spec.replicas_min
    return max(ctx.spec.replicas_min, min(ctx.spec.replicas_max, wanted))


def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _model_volume(ctx: BuildContext) -> tuple[dict[str, Any], dict[str, Any]]:
    """The volume holding the model repository and how both containers mount it."""
    repo = ctx.spec.repository
    mount: dict[str, Any] = {"name": "models", "mountPath": MODEL_REPOSITORY_PATH, "readOnly": True}
    if repo.scheme == "pvc":
        if repo.sub_path:
            mount["subPath"] = repo.sub_path
        return {"name": "models", "persistentVolumeClaim": {"claimName": repo.claim, "readOnly": True}}, mount
    if repo.scheme == "file":
        return {"name": "models", "hostPath": {"path": repo.host_path, "type": "Directory"}}, mount
    # Remote repositories are copied into the pod by an init container, so
    # Triton and the sidecar read the same bytes from one local path.
    return {"name": "models", "emptyDir": {}}, mount


# A deleted pod stays in the Service's endpoints until kube-proxy and the clients' resolvers have seen
# it go, a few seconds: the sidecar keeps taking requests that long (a preStop sleep) before its
# SIGTERM, then answers what it accepted (the sidecar's stop grace, 10 s). Triton outlives both, so
# no request the sidecar accepted meets a Triton that is shutting down.
ENDPOINT_REMOVAL_S = 5
SIDECAR_STOP_GRACE_S = 10
TRITON_STOP_DELAY_S = ENDPOINT_REMOVAL_S + SIDECAR_STOP_GRACE_S + 1
TERMINATION_GRACE_S = 30  # Triton's delay, then its own exit (unloading models)


def _sleep_before_stop(seconds: int) -> dict[str, Any]:
    return {"preStop": {"sleep": {"seconds": seconds}}}


def _fetch_container(ctx: BuildContext) -> dict[str, Any]:
    spec = ctx.spec
    access = storage_access(spec)
    return {
        "name": "fetch-model",
        "image": ctx.sidecar_image,
        "command": ["guardedmodel", "fetch-model"],
        "args": [
            f"--repository={spec.repository.url}",
            f"--model={spec.model_name}",
            f"--dest={MODEL_REPOSITORY_PATH}",
        ],
        **({"env": access.env} if access.env else {}),
        # Its last output (the reason a fetch failed: bucket, endpoint, what to fix) becomes the
        # terminated state's message in the pod's status, where `kubectl describe pod` shows it.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": "models", "mountPath": MODEL_REPOSITORY_PATH},
            {"name": "sidecar-tmp", "mountPath": "/tmp"},
            *access.mounts,
        ],
        "securityContext": _container_security(),
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
    }


def _triton_container(ctx: BuildContext, models_mount: dict[str, Any]) -> dict[str, Any]:
    # Triton listens on loopback, which the kubelet cannot reach, so its readiness is the sidecar's
    # (on the sidecar's port), which is true only while Triton serves every routed version. Without
    # a probe of its own, a Triton container the kubelet has just restarted would count as ready at
    # once, and the pod would be Ready again on the sidecar's last result, taken before the crash, up
    # to a probe period before the sidecar has loaded the empty Triton: traffic would come back to a
    # pod that refuses it. With one, the restarted container is not ready until a probe passes.
    return {
        "name": "triton",
        "image": ctx.triton_image,
        "command": ["tritonserver"],
        "args": triton_args(ctx),
        "env": [{"name": "HOME", "value": "/tmp"}],
        "resources": ctx.spec.triton_resources,
        "volumeMounts": [
            models_mount,
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "triton-tmp", "mountPath": "/tmp"},
        ],
        "readinessProbe": _probe("/v2/health/ready", HTTP_PORT, period=2, failures=1),
        "securityContext": _container_security(),
        "lifecycle": _sleep_before_stop(TRITON_STOP_DELAY_S),
    }


def _probe(path: str, port: int | str, *, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def _sidecar_container(ctx: BuildContext, models_mount: dict[str, Any]) -> dict[str, Any]:
    def probe(path: str, period: int, failures: int) -> dict[str, Any]:
        return _probe(path, "http", period=period, failures=failures)

    return {
        "name": "sidecar",
        "image": ctx.sidecar_image,
        "command": ["guardedmodel", "sidecar"],
        "args": [f"--config={CONFIG_DIR}/{CONFIG_FILE}"],
        "ports": [
            {"name": name, "containerPort": port, "protocol": "TCP"} for name, port, _ in SIDECAR_PORTS
        ],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "GUARDEDMODEL_LOG_LEVEL", "value": ctx.spec.sidecar_log_level},
            # The sidecar fetches versions published after the pod started from the same bucket.
            *storage_access(ctx.spec).env,
        ],
        # Readiness is the sidecar's /v2/health/ready, which is false while
        # Triton is not ready: the pod takes traffic only when both are. One failure takes the
        # endpoint out: a killed Triton is restarted by the kubelet within a second and is back,
        # empty, long before three failures in a row, while the sidecar loads the routed versions
        # into it again and refuses meanwhile; a readiness failure only withdraws the endpoint.
        "readinessProbe": probe("/v2/health/ready", 2, 1),
        "livenessProbe": probe("/v2/health/live", 10, 3),
        # Loading a large model can take minutes; liveness must not kill it meanwhile.
        "startupProbe": probe("/v2/health/live", 5, 60),
        "resources": ctx.spec.sidecar_resources,
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            # A fetched copy is writable for the sidecar only: it adds versions published after the
            # pod started (guardedmodel_sidecar.version_fetch); Triton reads it read-only. Writable is
            # readOnly left out, not false: the API server drops a false readOnly, so a false one
            # would differ from the live Deployment on every reconcile and be written again each time.
            _writable(models_mount) if ctx.spec.repository.is_remote else models_mount,
            {"name": "state", "mountPath": STATE_DIR},
            {"name": "sidecar-tmp", "mountPath": "/tmp"},
            {"name": "kube-api-access", "mountPath": SERVICE_ACCOUNT_DIR, "readOnly": True},
            *storage_access(ctx.spec).mounts,
            *audit_export_access(ctx.spec).mounts,
        ],
        "securityContext": _container_security(),
        "lifecycle": _sleep_before_stop(ENDPOINT_REMOVAL_S),
    }


def _writable(mount: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in mount.items() if key != "readOnly"}


def _volumes(ctx: BuildContext, models_volume: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        *storage_access(ctx.spec).volumes,
        *audit_export_access(ctx.spec).volumes,
        {"name": "config", "configMap": {"name": ctx.names.configmap}},
        models_volume,
        {"name": "state", "emptyDir": {}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": ctx.spec.triton_shm_size}},
        {"name": "triton-tmp", "emptyDir": {}},
        {"name": "sidecar-tmp", "emptyDir": {}},
        # The API token goes to the sidecar only (Triton never needs it), as a
        # short-lived projected token instead of the automounted one.
        {
            "name": "kube-api-access",
            "projected": {
                "sources": [
                    {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}},
                    {
                        "configMap": {
                            "name": "kube-root-ca.crt",
                            "items": [{"key": "ca.crt", "path": "ca.crt"}],
                        }
                    },
                    {
                        "downwardAPI": {
                            "items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]
                        }
                    },
                ]
            },
        },
    ]


def build_deployment(ctx: BuildContext) -> dict[str, Any]:
    spec = ctx.spec
    models_volume, models_mount = _model_volume(ctx)
    # No version label or annotation on the pods: the versions a pod serves follow the routing in the
    # status and change without a restart; the GuardedModel's status says which they are.
    pod_labels = standard_labels(ctx.owner.name, "inference")
    pod_spec: dict[str, Any] = {
        "serviceAccountName": ctx.names.serviceaccount,
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_triton_container(ctx, models_mount), _sidecar_container(ctx, models_mount)],
        "volumes": _volumes(ctx, models_volume),
        "terminationGracePeriodSeconds": TERMINATION_GRACE_S,
    }
    if spec.repository.is_remote:
        pod_spec["initContainers"] = [_fetch_container(ctx)]
    if spec.triton_node_selector:
        pod_spec["nodeSelector"] = spec.triton_node_selector
    if spec.triton_tolerations:
        pod_spec["tolerations"] = spec.triton_tolerations
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": ctx.metadata(ctx.names.deployment, "inference"),
        "spec": {
            "replicas": desired_replicas(ctx),
            "selector": {"matchLabels": selector_labels(ctx.owner.name)},
            # A GPU is scarce: surge one pod at a time and never drop below the
            # serving count while rolling.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "revisionHistoryLimit": 5,
            "progressDeadlineSeconds": PROGRESS_DEADLINE_S,
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": {
                        POD_HASH_ANNOTATION: ctx.pod_hash,
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(METRICS_PORT),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": pod_spec,
            },
        },
    }
