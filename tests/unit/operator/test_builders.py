from __future__ import annotations

import copy
import inspect
from typing import Any

import pytest
import yaml

from guardedmodel_operator.builders import (
    build_children,
    build_configmap,
    build_context,
    build_deployment,
    build_networkpolicy,
    build_role,
    build_rolebinding,
    build_service,
    render_sidecar_config,
    status_inputs,
)
from guardedmodel_operator.builders.deployment import triton_args
from guardedmodel_operator.config import OperatorConfig
from guardedmodel_operator.labels import POD_HASH_ANNOTATION
from guardedmodel_operator.spec import parse_spec
from guardedmodel_sidecar.app import SidecarApp
from guardedmodel_sidecar.config import parse_config
from guardedmodel_sidecar.limits import Limits

CONFIG = OperatorConfig(triton_image="triton:test", sidecar_image="sidecar:test")


def context(
    body: dict[str, Any], current_replicas: int | None = None, config: OperatorConfig = CONFIG
) -> Any:
    return build_context(body, parse_spec(body["spec"]), config, current_replicas)


def containers(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}


def test_every_child_is_owned_by_the_guardedmodel(minimal_body: dict[str, Any]) -> None:
    children = build_children(context(minimal_body))
    assert [c["kind"] for c in children] == [
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Service",
        "NetworkPolicy",
        "Deployment",
    ]
    for child in children:
        (ref,) = child["metadata"]["ownerReferences"]
        assert ref == {
            "apiVersion": "guardedmodel.io/v1alpha1",
            "kind": "GuardedModel",
            "name": "classifier",
            "uid": "0000-1111",
            "controller": True,
            "blockOwnerDeletion": True,
        }
        assert child["metadata"]["namespace"] == "ml"
        assert child["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "guardedmodel-operator"
        assert child["metadata"]["labels"]["guardedmodel.io/name"] == "classifier"


def test_triton_is_on_loopback_in_explicit_mode_with_a_gpu(minimal_body: dict[str, Any]) -> None:
    triton = containers(build_deployment(context(minimal_body)))["triton"]
    assert triton["image"] == "triton:test"
    args = triton["args"]
    for flag in (
        "--model-control-mode=explicit",
        "--http-address=127.0.0.1",
        "--grpc-address=127.0.0.1",
        "--metrics-address=127.0.0.1",
        "--model-repository=/models",
    ):
        assert flag in args
    assert triton["resources"] == {"limits": {"nvidia.com/gpu": "1"}}
    assert "ports" not in triton  # nothing outside the pod may reach Triton
    pod = build_deployment(context(minimal_body))["spec"]["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


def test_user_triton_args_come_after_ours_and_image_override_wins(minimal_body: dict[str, Any]) -> None:
    minimal_body["spec"]["triton"] = {
        "image": "my/triton:1",
        "args": ["--log-verbose=1"],
        "nodeSelector": {"a": "b"},
    }
    deployment = build_deployment(context(minimal_body))
    triton = containers(deployment)["triton"]
    assert triton["image"] == "my/triton:1"
    assert triton["args"][-1] == "--log-verbose=1"
    assert deployment["spec"]["template"]["spec"]["nodeSelector"] == {"a": "b"}


def test_pod_meets_the_restricted_security_standard(minimal_body: dict[str, Any]) -> None:
    pod = build_deployment(context(minimal_body))["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"] + pod.get("initContainers", []):
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"] == {"drop": ["ALL"]}
    # every writable path is a volume, since the root filesystem is read-only
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for c in pod["containers"] for m in c["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Gi"}
    assert "emptyDir" in volumes[mounts["/var/lib/guardedmodel"]]


def test_sidecar_ports_probes_and_api_token(minimal_body: dict[str, Any]) -> None:
    pod = build_deployment(context(minimal_body))["spec"]["template"]["spec"]
    sidecar = {c["name"]: c for c in pod["containers"]}["sidecar"]
    assert {p["name"]: p["containerPort"] for p in sidecar["ports"]} == {
        "http": 8080,
        "grpc": 8081,
        "metrics": 9090,
    }
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert sidecar["args"] == ["--config=/etc/guardedmodel/sidecar.yaml"]
    token_mounts = [m for m in sidecar["volumeMounts"] if m["name"] == "kube-api-access"]
    assert token_mounts and token_mounts[0]["readOnly"]
    triton = {c["name"]: c for c in pod["containers"]}["triton"]
    assert all(m["name"] != "kube-api-access" for m in triton["volumeMounts"])


def test_a_restarted_triton_container_is_not_ready_until_the_sidecar_serves_again(
    minimal_body: dict[str, Any],
) -> None:
    """Triton's readiness is the sidecar's: a container without a probe counts as ready the moment the
    kubelet restarts it, and the pod would rejoin the Service on the sidecar's stale result."""
    containers = {
        c["name"]: c
        for c in build_deployment(context(minimal_body))["spec"]["template"]["spec"]["containers"]
    }
    sidecar_port = {p["name"]: p["containerPort"] for p in containers["sidecar"]["ports"]}["http"]
    triton_probe = containers["triton"]["readinessProbe"]
    assert triton_probe["httpGet"] == {"path": "/v2/health/ready", "port": sidecar_port}
    # no slower to notice, nor more forgiving, than the sidecar's own readiness
    sidecar_probe = containers["sidecar"]["readinessProbe"]
    assert triton_probe["periodSeconds"] <= sidecar_probe["periodSeconds"]
    assert triton_probe["failureThreshold"] == 1
    assert (
        "livenessProbe" not in containers["triton"]
    )  # a hung Triton is the sidecar's to report, not to kill


@pytest.mark.parametrize(
    ("repository", "volume_key", "init_containers"),
    [
        ("pvc://models/classifiers", "persistentVolumeClaim", 0),
        ("file:///srv/models", "hostPath", 0),
        ("s3://b/p", "emptyDir", 1),
    ],
)
def test_model_repository_volume_per_scheme(
    minimal_body: dict[str, Any], repository: str, volume_key: str, init_containers: int
) -> None:
    minimal_body["spec"]["model"]["repository"] = repository
    pod = build_deployment(context(minimal_body))["spec"]["template"]["spec"]
    models = next(v for v in pod["volumes"] if v["name"] == "models")
    assert volume_key in models
    assert len(pod.get("initContainers", [])) == init_containers
    if repository.startswith("pvc://"):
        assert models["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
        triton_mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "models")
        assert triton_mount["subPath"] == "classifiers"


@pytest.mark.parametrize(("current", "expected"), [(None, 2), (1, 2), (3, 3), (9, 4)])
def test_replicas_keep_a_scaling_decision_within_min_max(
    minimal_body: dict[str, Any], current: int | None, expected: int
) -> None:
    minimal_body["spec"]["replicas"] = {"min": 2, "max": 4}
    assert build_deployment(context(minimal_body, current))["spec"]["replicas"] == expected


@pytest.mark.parametrize(("scaled", "current", "expected"), [(3, 2, 3), (9, 2, 4), (1, 3, 2), (None, 3, 3)])
def test_the_scalers_count_wins_within_min_max(
    minimal_body: dict[str, Any], scaled: int | None, current: int, expected: int
) -> None:
    minimal_body["spec"]["replicas"] = {"min": 2, "max": 4}
    minimal_body["status"] = {"scaling": {"desiredReplicas": scaled}} if scaled is not None else {}
    assert build_deployment(context(minimal_body, current))["spec"]["replicas"] == expected


def _template(body: dict[str, Any], config: OperatorConfig | None = None) -> dict[str, Any]:
    ctx = context(body) if config is None else context(body, config=config)
    return dict(build_deployment(ctx)["spec"]["template"])


# Edits no container reads: the pod template, and so every pod, must stay as it is.
POD_INDEPENDENT_EDITS = [
    ("model version", lambda s: s["model"].__setitem__("version", "2")),
    ("rollout steps", lambda s: s.setdefault("rollout", {}).__setitem__("steps", [25, 100])),
    ("rollout interval", lambda s: s.setdefault("rollout", {}).__setitem__("interval", "5s")),
    (
        "rollout thresholds",
        lambda s: s.setdefault("rollout", {}).__setitem__("thresholds", {"maxOodRate": 0.1}),
    ),
    ("replica range", lambda s: s.__setitem__("replicas", {"min": 1, "max": 3})),
    ("scaling target", lambda s: s.__setitem__("scaling", {"targetQueueTimeMs": 20})),
    ("prices set", lambda s: s.__setitem__("cost", {"gpuHourPrice": 2.5, "reviewPrice": 0.08})),
    ("currency", lambda s: s.__setitem__("cost", {"currency": "EUR"})),
]
# Edits a container reads at start: the template must change so that the pods roll.
POD_EDITS = [
    ("gate", lambda s: s.__setitem__("gate", {"ood": {"method": "mahalanobis", "action": "flag"}})),
    ("confidence", lambda s: s.__setitem__("confidence", {"reviewBelow": 0.7})),
    ("drift", lambda s: s.__setitem__("drift", {"window": "1m"})),
    ("audit", lambda s: s.__setitem__("audit", {"sampleRate": 0.5})),
    ("sidecar workers", lambda s: s.__setitem__("sidecar", {"workers": 2})),
    ("triton args", lambda s: s.__setitem__("triton", {"args": ["--log-verbose=1"]})),
    ("repository", lambda s: s["model"].__setitem__("repository", "pvc://other/models")),
    ("model name", lambda s: s["model"].__setitem__("name", "other")),
]


@pytest.mark.parametrize(("what", "edit"), POD_INDEPENDENT_EDITS, ids=[w for w, _ in POD_INDEPENDENT_EDITS])
def test_a_version_or_policy_edit_leaves_the_pod_template_unchanged(
    minimal_body: dict[str, Any], what: str, edit: Any
) -> None:
    edited = copy.deepcopy(minimal_body)
    edit(edited["spec"])
    assert _template(edited) == _template(minimal_body), what
    # ... while the whole-spec hash on the children's metadata still tells the edit from a hand edit
    assert context(edited).spec_hash != context(minimal_body).spec_hash


@pytest.mark.parametrize(("what", "edit"), POD_EDITS, ids=[w for w, _ in POD_EDITS])
def test_an_edit_of_what_the_containers_read_rolls_the_pods(
    minimal_body: dict[str, Any], what: str, edit: Any
) -> None:
    edited = copy.deepcopy(minimal_body)
    edit(edited["spec"])
    before = _template(minimal_body)["metadata"]["annotations"][POD_HASH_ANNOTATION]
    assert _template(edited)["metadata"]["annotations"][POD_HASH_ANNOTATION] != before, what


def test_routing_and_the_version_never_reach_the_pod_template(minimal_body: dict[str, Any]) -> None:
    base = _template(minimal_body)
    assert _template(copy.deepcopy(minimal_body)) == base  # deterministic
    routed = copy.deepcopy(minimal_body) | {
        "status": {"stableVersion": "1", "canaryVersion": "2", "canaryWeight": 10, "lastGoodVersion": "1"}
    }
    assert _template(routed) == base
    assert "app.kubernetes.io/version" not in base["metadata"]["labels"]
    assert "1" not in base["metadata"]["annotations"].values()
    other_image = _template(minimal_body, OperatorConfig(triton_image="triton:next"))
    assert (
        other_image["metadata"]["annotations"][POD_HASH_ANNOTATION]
        != base["metadata"]["annotations"][POD_HASH_ANNOTATION]
    )


def test_configmap_renders_the_sidecar_contract(minimal_body: dict[str, Any]) -> None:
    configmap = build_configmap(context(minimal_body))
    assert configmap["metadata"]["name"] == "classifier-sidecar"
    document = yaml.safe_load(configmap["data"]["sidecar.yaml"])
    assert list(document) == [
        "guardedModel",
        "spec",
        "routing",
        "triton",
        "modelRepository",
        "listen",
        "auditDir",
        "spoolDir",
        "tuning",
        "limits",
    ]
    assert document["tuning"] == {
        "microBatching": {"enabled": False, "maxBatch": 64, "maxInflight": 2},
        "workers": 1,
        "auditRetainFiles": 10,
        "auditRetainBytes": 0,
    }
    assert document["limits"] == {}
    assert document["guardedModel"] == {"namespace": "ml", "name": "classifier"}
    assert document["routing"] == {
        "stableVersion": "1",
        "canaryVersion": None,
        "canaryWeight": 0,
        "lastGoodVersion": None,
        "shadow": None,
    }
    restricted = document["triton"].pop("restrictedHeader")
    assert document["triton"] == {
        "httpUrl": "127.0.0.1:8000",
        "grpcUrl": "127.0.0.1:8001",
        "metricsUrl": "127.0.0.1:8002",
    }
    assert restricted["name"] == "guardedmodel-sidecar-key" and len(restricted["value"]) == 32
    assert document["modelRepository"] == "/models"
    assert document["listen"] == {"host": "0.0.0.0", "http": 8080, "grpc": 8081, "metrics": 9090}
    assert document["auditDir"] == "/var/lib/guardedmodel/audit"
    assert document["spoolDir"] == "/var/lib/guardedmodel/review-spool"
    spec = document["spec"]
    assert spec["model"] == {"name": "classifier", "repository": "pvc://models/classifiers", "version": "1"}
    assert spec["gate"]["ood"] == {"method": "energy", "action": "reject"}  # defaults applied, camelCase
    assert spec["confidence"]["reviewBelow"] == 0.5


def test_micro_batching_from_the_spec_reaches_the_sidecar(minimal_body: dict[str, Any]) -> None:
    minimal_body["spec"]["sidecar"] = {"microBatching": {"enabled": True, "maxInflight": 4}}
    document = yaml.safe_load(build_configmap(context(minimal_body))["data"]["sidecar.yaml"])
    tuning = parse_config(document).tuning.micro_batching
    assert (tuning.enabled, tuning.max_batch, tuning.max_inflight) == (True, 64, 4)


def test_workers_and_limits_from_the_spec_reach_the_sidecar(minimal_body: dict[str, Any]) -> None:
    minimal_body["spec"]["audit"] = {"retainFiles": 3, "retainBytes": 1 << 30}
    minimal_body["spec"]["sidecar"] = {
        "workers": 4,
        "limits": {"maxJsonBodyBytes": 1048576, "headerTimeout": "2s", "maxConcurrentStreams": 32},
    }
    config = parse_config(yaml.safe_load(build_configmap(context(minimal_body))["data"]["sidecar.yaml"]))
    assert config.tuning.workers == 4
    assert (config.tuning.audit_retain_files, config.tuning.audit_retain_bytes) == (3, 1 << 30)
    assert (config.limits.max_json_body_bytes, config.limits.header_timeout_s) == (1048576, 2.0)
    assert config.limits.max_concurrent_streams == 32
    assert config.limits.max_body_bytes == Limits().max_body_bytes  # unset: the sidecar's default


def test_triton_control_apis_answer_only_the_sidecar(minimal_body: dict[str, Any]) -> None:
    ctx = context(minimal_body)
    args = triton_args(ctx)
    document = yaml.safe_load(build_configmap(ctx)["data"]["sidecar.yaml"])
    key = document["triton"]["restrictedHeader"]
    expected = f"model-repository,logging,trace,shared-memory:{key['name']}={key['value']}"
    assert f"--http-restricted-api={expected}" in args
    assert f"--grpc-restricted-protocol={expected}" in args
    other = context({**minimal_body, "metadata": {**minimal_body["metadata"], "uid": "another-uid"}})
    assert build_configmap(other)["data"] != build_configmap(ctx)["data"]  # a key per GuardedModel


def test_configmap_routing_follows_status(minimal_body: dict[str, Any]) -> None:
    """A pod started later begins where the others are: routing, the last good version it keeps
    loaded for a rollback, and the shadow candidate."""
    minimal_body["status"] = {
        "stableVersion": "2",
        "canaryVersion": "3",
        "canaryWeight": 50,
        "lastGoodVersion": "1",
    }
    minimal_body["spec"]["model"]["version"] = "3"
    document = yaml.safe_load(build_configmap(context(minimal_body))["data"]["sidecar.yaml"])
    assert document["routing"] == {
        "stableVersion": "2",
        "canaryVersion": "3",
        "canaryWeight": 50,
        "lastGoodVersion": "1",
        "shadow": None,
    }
    minimal_body["status"] = {
        "stableVersion": "2",
        "lastGoodVersion": "1",
        "shadow": {"version": "3", "fraction": 0.2, "replay": 100},
    }
    document = yaml.safe_load(build_configmap(context(minimal_body))["data"]["sidecar.yaml"])
    assert document["routing"]["shadow"] == {"version": "3", "fraction": 0.2, "replay": 100}


def test_a_remote_repository_is_the_model_source_and_the_sidecar_may_add_versions(
    minimal_body: dict[str, Any],
) -> None:
    local = build_deployment(context(minimal_body))["spec"]["template"]["spec"]
    assert "modelSource" not in yaml.safe_load(build_configmap(context(minimal_body))["data"]["sidecar.yaml"])
    minimal_body["spec"]["model"]["repository"] = "https://models.example.com/repo"
    document = yaml.safe_load(build_configmap(context(minimal_body))["data"]["sidecar.yaml"])
    assert document["modelSource"] == "https://models.example.com/repo"
    pod = build_deployment(context(minimal_body))["spec"]["template"]["spec"]
    mounts = {c["name"]: {m["name"]: m for m in c["volumeMounts"]} for c in pod["containers"]}
    assert mounts["triton"]["models"]["readOnly"] is True
    assert "readOnly" not in mounts["sidecar"]["models"]  # writable (a false readOnly is dropped)
    local_mounts = {c["name"]: {m["name"]: m for m in c["volumeMounts"]} for c in local["containers"]}
    assert local_mounts["sidecar"]["models"]["readOnly"] is True  # a claim's files are never written


# Plain (not pointer) booleans of the pod API with omitempty: the API server stores false as absent.
OMITTED_WHEN_FALSE = {"readOnly", "hostNetwork", "hostPID", "hostIPC", "stdin", "stdinOnce", "tty"}


def _false_omitempty_fields(value: Any, path: str = "") -> list[str]:
    if isinstance(value, dict):
        return [
            found
            for key, item in value.items()
            for found in (
                [f"{path}.{key}"]
                if key in OMITTED_WHEN_FALSE and item is False
                else _false_omitempty_fields(item, f"{path}.{key}")
            )
        ]
    if isinstance(value, list):
        return [
            found for i, item in enumerate(value) for found in _false_omitempty_fields(item, f"{path}[{i}]")
        ]
    return []


@pytest.mark.parametrize(
    "repository",
    ["pvc://models/toy", "s3://bucket/models", "gs://bucket/models", "https://models.example.com/r"],
)
def test_no_child_sets_a_false_the_api_server_drops(minimal_body: dict[str, Any], repository: str) -> None:
    """A false that the API server leaves out would differ from the live object on every reconcile,
    so the operator would write the child again each time (and post a Restored event)."""
    minimal_body["spec"]["model"]["repository"] = repository
    for child in build_children(context(minimal_body)):
        assert _false_omitempty_fields(child) == [], child["kind"]


def test_service_exposes_only_sidecar_ports(minimal_body: dict[str, Any]) -> None:
    service = build_service(context(minimal_body))
    assert sorted(p["port"] for p in service["spec"]["ports"]) == [8080, 8081, 9090]
    assert service["spec"]["selector"] == {
        "app.kubernetes.io/name": "guardedmodel",
        "app.kubernetes.io/instance": "classifier",
    }


def test_rbac_reaches_only_the_own_guardedmodel(minimal_body: dict[str, Any]) -> None:
    ctx = context(minimal_body)
    (rule,) = build_role(ctx)["rules"]
    assert rule["resourceNames"] == ["classifier"]
    assert set(rule["verbs"]) == {"get", "list", "watch"}
    assert rule["apiGroups"] == ["guardedmodel.io"]
    assert rule["resources"] == ["guardedmodels"]
    binding = build_rolebinding(ctx)
    assert binding["roleRef"]["name"] == build_role(ctx)["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "classifier-sidecar", "namespace": "ml"}
    ]


def test_networkpolicy_admits_only_sidecar_ports(minimal_body: dict[str, Any]) -> None:
    policy = build_networkpolicy(context(minimal_body))["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    assert sorted(p["port"] for p in rule["ports"]) == [8080, 8081, 9090]
    assert policy["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "classifier"


def test_every_child_kind_has_a_write_stage(minimal_body: dict[str, Any]) -> None:
    from guardedmodel_operator.reconcile import WRITE_STAGES

    kinds = [c["kind"] for c in build_children(context(minimal_body))]
    stage_of = {kind: i for i, stage in enumerate(WRITE_STAGES) for kind in stage}
    assert set(kinds) == set(stage_of)
    assert stage_of["Role"] < stage_of["RoleBinding"] < stage_of["Deployment"]


def test_a_stopping_pod_answers_what_it_accepted_and_triton_outlives_the_sidecar(
    minimal_body: dict[str, Any],
) -> None:
    """The stop order of a deleted pod: the sidecar takes requests while endpoints drop it, then drains
    them within its grace; Triton stays up through both, and all of it fits the grace period."""
    deployment = build_deployment(context(minimal_body))
    pod = deployment["spec"]["template"]["spec"]
    sidecar, triton = containers(deployment)["sidecar"], containers(deployment)["triton"]
    sidecar_delay = sidecar["lifecycle"]["preStop"]["sleep"]["seconds"]
    triton_delay = triton["lifecycle"]["preStop"]["sleep"]["seconds"]
    stop_grace = inspect.signature(SidecarApp.stop).parameters["grace_s"].default
    assert sidecar_delay >= 3  # endpoints need seconds to forget a pod
    assert triton_delay > sidecar_delay + stop_grace
    assert pod["terminationGracePeriodSeconds"] > triton_delay


def test_the_sidecar_config_carries_spec_cost_with_its_default_currency(minimal_body: dict[str, Any]) -> None:
    priced = copy.deepcopy(minimal_body)
    priced["spec"]["cost"] = {"gpuHourPrice": 2.5}
    rendered = yaml.safe_load(build_configmap(context(priced))["data"]["sidecar.yaml"])
    assert rendered["spec"]["cost"] == {"currency": "USD", "gpuHourPrice": 2.5}
    plain = yaml.safe_load(build_configmap(context(minimal_body))["data"]["sidecar.yaml"])
    assert "cost" not in plain["spec"]  # no prices: the sidecar exports no cost


def test_a_status_write_that_leaves_the_status_inputs_alone_leaves_every_child_alone(
    minimal_body: dict[str, Any],
) -> None:
    """status_inputs is what the children read of the status: statuses that agree on it build the
    same children, whatever else differs (phase, conditions, counts, messages, history)."""
    body = minimal_body
    spec = parse_spec(body["spec"])
    version = spec.model_version
    first = {"phase": "Pending", "observedGeneration": 1}
    variants = [
        {"phase": "Ready", "conditions": [{"type": "Ready", "status": "True"}], "readyReplicas": 1},
        {"phase": "Progressing", "replicas": 3, "rollout": {"message": "waiting"}},
        {"stableVersion": version, "history": [{"version": version, "outcome": "Promoted"}]},
    ]
    children = build_children(context({**body, "status": first}))
    for other in variants:
        assert status_inputs(other, spec) == status_inputs(first, spec)
        assert build_children(context({**body, "status": other})) == children
    # Routing and the scaler's count are read: a write that changes either is not taken as settled.
    for changed in (
        {"stableVersion": "9"},
        {"canaryVersion": "9", "canaryWeight": 10},
        {"lastGoodVersion": "0"},
        {"shadow": {"version": "9", "fraction": 0.1}},
        {"scaling": {"desiredReplicas": 4}},
    ):
        assert status_inputs(changed, spec) != status_inputs(first, spec)


def test_the_sidecar_document_is_the_yaml_of_its_config_whatever_was_rendered_before(
    minimal_body: dict[str, Any],
) -> None:
    """build_configmap renders each distinct config once; the document is always the config's."""
    bodies = [minimal_body]
    for status in ({"stableVersion": "3"}, {"stableVersion": "1", "canaryVersion": "2", "canaryWeight": 10}):
        bodies.append({**minimal_body, "status": status})
    renamed = copy.deepcopy(minimal_body)
    renamed["metadata"] = {**renamed["metadata"], "name": "other", "uid": "2222"}
    bodies.append(renamed)
    documents = set()
    for _ in range(2):  # the second round is served from what the first rendered
        for body in bodies:
            ctx = context(body)
            document = build_configmap(ctx)["data"]["sidecar.yaml"]
            assert document == yaml.safe_dump(
                render_sidecar_config(ctx), sort_keys=False, default_flow_style=False
            )
            assert yaml.safe_load(document) == render_sidecar_config(ctx)
            documents.add(document)
    assert len(documents) == len(bodies)
