from __future__ import annotations

import copy
from typing import Any

import kopf
import pytest

from guardedmodel_operator.diffbase import SlimDiffBaseStorage
from guardedmodel_operator.labels import GROUP

MANAGED_FIELDS = [{"manager": "kube-controller-manager", "operation": "Update", "fieldsV1": {"f:status": {}}}]
DEPLOYMENT: dict[str, Any] = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {
        "name": "m",
        "namespace": "ns",
        "uid": "u-1",
        "resourceVersion": "42",
        "generation": 3,
        "labels": {"app.kubernetes.io/managed-by": "guardedmodel-operator"},
        "annotations": {
            "guardedmodel.io/spec-hash": "abc",
            "kubectl.kubernetes.io/last-applied-configuration": "{}",
            f"{GROUP}/last-handled-configuration": "{}",
            "other.io/kopf-managed": "yes",
            "other.io/last-handled-configuration": "{}",
        },
        "ownerReferences": [{"kind": "GuardedModel", "name": "m", "uid": "u-0"}],
        "managedFields": MANAGED_FIELDS,
    },
    "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "triton", "image": "t"}]}}},
    "status": {"replicas": 2, "readyReplicas": 1, "conditions": [{"type": "Available", "status": "True"}]},
}
REPLICASET = {
    **DEPLOYMENT,
    "kind": "ReplicaSet",
    "metadata": {**DEPLOYMENT["metadata"], "ownerReferences": [{"kind": "Deployment", "name": "m"}]},
}
MODEL = {
    "apiVersion": "guardedmodel.io/v1alpha1",
    "kind": "GuardedModel",
    "metadata": {"name": "m", "namespace": "ns", "generation": 1},
    "spec": {"model": {"name": "m", "repository": "s3://b/m", "version": "1"}},
    "status": {"phase": "Ready", "stableVersion": "1"},
}
BARE = {"kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "v"}}


@pytest.mark.parametrize("body", [DEPLOYMENT, REPLICASET, MODEL, BARE], ids=lambda b: b["kind"])
@pytest.mark.parametrize("extra_fields", [None, ["status.phase"], ["metadata.uid"]])
def test_the_essence_is_the_one_kopf_builds(body: dict[str, Any], extra_fields: list[str] | None) -> None:
    kopfs = kopf.AnnotationsDiffBaseStorage(prefix=GROUP).build(
        body=kopf.Body(copy.deepcopy(body)), extra_fields=extra_fields
    )
    ours = SlimDiffBaseStorage(prefix=GROUP).build(body=kopf.Body(body), extra_fields=extra_fields)
    assert ours == kopfs


def test_the_essence_is_a_copy_that_later_edits_of_the_object_do_not_reach() -> None:
    body = copy.deepcopy(DEPLOYMENT)
    essence = SlimDiffBaseStorage(prefix=GROUP).build(body=kopf.Body(body))
    body["spec"]["template"]["spec"]["containers"][0]["image"] = "edited"
    body["metadata"]["labels"]["new"] = "x"
    assert essence["spec"]["template"]["spec"]["containers"][0]["image"] == "t"
    assert "new" not in essence["metadata"]["labels"]
