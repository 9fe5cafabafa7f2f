"""Restricted Pod Security, checked by the real API server's PodSecurity admission (on by default):
the GuardedModel pod as the operator builds it and the chart's operator pod are admitted in a
namespace that enforces `restricted`; a pod that breaks one rule is refused, so these tests can fail.
Pods are submitted with a server-side dry run: admission runs in full and nothing is stored.

The operator refuses a file:// model (a hostPath volume) in such a namespace up front, on the
GuardedModel, instead of leaving a Deployment whose ReplicaSet can create no pod."""

from __future__ import annotations

import copy
import itertools
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from gm_operator_helpers import REPO, Namespace, OperatorProcess, condition, eventually, minimal_example

from guardedmodel_operator.builders import build_context, build_deployment
from guardedmodel_operator.config import OperatorConfig
from guardedmodel_operator.pod_security import ENFORCE_LABEL
from guardedmodel_operator.spec import parse_spec
from guardedmodel_testground.cluster import LocalCluster

pytestmark = pytest.mark.integration

CHART = str(REPO / "charts" / "guardedmodel")
CONFIG = OperatorConfig(triton_image="triton:test", sidecar_image="sidecar:test")
# What the test ground gives Triton on a node without a GPU (docs/pod-security.md).
CPU_ONLY = {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}
_counter = itertools.count()


@pytest.fixture
def restricted(cluster: LocalCluster) -> Iterator[Namespace]:
    name = f"gm-restricted-{int(time.time()) % 100000}-{next(_counter)}"
    manifest = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "labels": {ENFORCE_LABEL: "restricted", f"{ENFORCE_LABEL}-version": "latest"},
        },
    }
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))
    yield Namespace(cluster, name)
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def submit_pod(namespace: Namespace, pod_spec: dict[str, Any], name: str) -> Any:
    """Create a pod with this spec as a server-side dry run: every admission plugin runs."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": pod_spec}
    return namespace.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False)


def stored_model(namespace: Namespace, spec_changes: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """The minimal example, changed, as the API server would store it (its CRD defaults applied)."""
    body = minimal_example()
    spec_changes(body["spec"])
    result = namespace.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(body))
    stored: dict[str, Any] = json.loads(result.stdout)
    stored["metadata"].setdefault("uid", "0000-1111")
    return stored


def operator_pod(model: dict[str, Any]) -> dict[str, Any]:
    ctx = build_context(model, parse_spec(model["spec"]), CONFIG)
    pod: dict[str, Any] = build_deployment(ctx)["spec"]["template"]["spec"]
    return pod


def served_over_http_on_a_cpu_node(spec: dict[str, Any]) -> None:
    spec["model"]["repository"] = "http://models.guardedmodel-system.svc/repository"
    spec["triton"] = {"resources": CPU_ONLY}


def test_the_guardedmodel_pod_is_admitted_under_restricted(restricted: Namespace) -> None:
    model = stored_model(restricted, served_over_http_on_a_cpu_node)
    # the API server keeps the override as given: no GPU was defaulted back in
    assert model["spec"]["triton"]["resources"] == CPU_ONLY
    pod = operator_pod(model)
    assert [c["name"] for c in pod["initContainers"]] == ["fetch-model"]
    # no container asks for a GPU (the default toleration of the GPU taint stays: it lets the pod
    # onto a tainted GPU node and keeps it off no node)
    assert not any("nvidia.com/gpu" in json.dumps(c["resources"]) for c in pod["containers"])
    restricted.kubectl("create", "serviceaccount", pod["serviceAccountName"])

    admitted = submit_pod(restricted, pod, "classifier")
    assert admitted.returncode == 0, admitted.stderr
    assert "violate" not in admitted.stderr

    # one rule broken in one container (the init container): refused, and the message says which
    lax = copy.deepcopy(pod)
    lax["initContainers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    refused = submit_pod(restricted, lax, "classifier-lax")
    assert refused.returncode != 0
    assert 'violates PodSecurity "restricted:latest"' in refused.stderr
    assert "allowPrivilegeEscalation" in refused.stderr and "fetch-model" in refused.stderr


def test_a_file_repository_pod_would_be_refused_under_restricted(restricted: Namespace) -> None:
    """Why the operator refuses file:// there (next test): the API server would refuse its pods."""
    model = stored_model(restricted, lambda spec: spec["model"].update(repository="file:///srv/models"))
    pod = operator_pod(model)
    restricted.kubectl("create", "serviceaccount", pod["serviceAccountName"])
    refused = submit_pod(restricted, pod, "classifier")
    assert refused.returncode != 0 and 'uses restricted volume type "hostPath"' in refused.stderr, (
        refused.stderr
    )
    # baseline refuses it too, which is why the operator refuses file:// under either level
    restricted.cluster.kubectl(
        "label", "namespace", restricted.name, f"{ENFORCE_LABEL}=baseline", "--overwrite"
    )
    refused = submit_pod(restricted, pod, "classifier")
    assert (
        refused.returncode != 0
        and 'violates PodSecurity "baseline:latest": hostPath volumes' in refused.stderr
    )


def test_the_operator_refuses_a_file_repository_in_a_restricted_namespace(
    restricted: Namespace, start_operator: Callable[..., OperatorProcess]
) -> None:
    start_operator(restricted.name)
    body = minimal_example()
    body["spec"]["model"]["repository"] = "file:///srv/models"
    restricted.apply(body)
    gm = eventually(
        "the PodSecurity refusal on the GuardedModel",
        lambda: (g := restricted.get("guardedmodel", "classifier")) and condition(g, "Degraded") and g,
    )
    degraded = condition(gm, "Degraded")
    assert gm["status"]["phase"] == "Failed"
    assert degraded["reason"] == "PodSecurity"
    assert "spec.model.repository" in degraded["message"] and "pvc://" in degraded["message"]
    assert restricted.get("deployment", "classifier") is None
    events = json.loads(restricted.kubectl("get", "events", "-o", "json").stdout)["items"]
    assert any(e["reason"] == "PodSecurity" and e["type"] == "Warning" for e in events)

    # the fix the message names: a pvc:// repository is built at once
    body["spec"]["model"]["repository"] = "pvc://models/classifiers"
    restricted.apply(body)
    eventually(
        "the Deployment once the repository is admitted", lambda: restricted.get("deployment", "classifier")
    )


def chart_operator_pod(cluster: LocalCluster, namespace: str) -> dict[str, Any]:
    rendered = cluster.helm(
        "template", "gm", CHART, "--namespace", namespace, "-f", f"{CHART}/ci/minimal-values.yaml"
    ).stdout
    deployment = next(d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Deployment")
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return pod


def test_the_charts_operator_pod_is_admitted_under_restricted(restricted: Namespace) -> None:
    pod = chart_operator_pod(restricted.cluster, restricted.name)
    restricted.kubectl("create", "serviceaccount", pod["serviceAccountName"])
    admitted = submit_pod(restricted, pod, "operator")
    assert admitted.returncode == 0, admitted.stderr
    assert "violate" not in admitted.stderr

    lax = copy.deepcopy(pod)
    del lax["securityContext"]["seccompProfile"]
    refused = submit_pod(restricted, lax, "operator-lax")
    assert refused.returncode != 0 and "seccompProfile" in refused.stderr, refused.stderr


@pytest.mark.parametrize(
    ("repository", "storage"),
    [
        (
            "s3://models/prod",
            {"secretName": "models-s3", "endpoint": "http://minio.storage:9000", "region": "eu-west-1"},
        ),
        ("gs://models/prod", {"secretName": "models-gcs"}),
    ],
)
def test_a_bucket_pod_with_its_credentials_is_admitted_under_restricted(
    restricted: Namespace, repository: str, storage: dict[str, Any]
) -> None:
    def from_bucket(spec: dict[str, Any]) -> None:
        served_over_http_on_a_cpu_node(spec)
        spec["model"].update(repository=repository, storage=storage)

    model = stored_model(restricted, from_bucket)
    assert model["spec"]["model"]["storage"] == storage  # kept as given, nothing pruned
    pod = operator_pod(model)
    restricted.kubectl("create", "serviceaccount", pod["serviceAccountName"], check=False)
    admitted = submit_pod(restricted, pod, f"classifier-{repository[:2]}")
    assert admitted.returncode == 0, admitted.stderr
    assert "violate" not in admitted.stderr
