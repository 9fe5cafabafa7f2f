"""The API server itself refuses bad GuardedModels, with a message that names
the field and says what to write instead. Every case is sent with kubectl to
the real kube-apiserver (server-side dry run: validated, never stored)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from gm_operator_helpers import EXAMPLES, minimal_example

from guardedmodel_testground.cluster import LocalCluster

pytestmark = pytest.mark.integration


def with_change(path: str, value: Any, base: dict[str, Any] | None = None) -> dict[str, Any]:
    manifest = copy.deepcopy(base or minimal_example())
    *parents, last = path.split(".")
    node = manifest
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return manifest


def submit(cluster: LocalCluster, manifest: dict[str, Any]) -> tuple[int, str]:
    result = cluster.kubectl(
        "create", "--dry-run=server", "-n", "default", "-f", "-", input=yaml.safe_dump(manifest), check=False
    )
    return result.returncode, result.stdout + result.stderr


def bucket_model(repository: str, storage: dict[str, Any]) -> dict[str, Any]:
    """The minimal example's spec.model, reading from `repository` with `storage`."""
    return {**minimal_example()["spec"]["model"], "repository": repository, "storage": storage}


INVALID = [
    (
        "spec.spec.model",
        bucket_model("pvc://models", {"secretName": "keys"}),
        ["spec.model.storage applies to s3:// and gs:// repositories only", "s3://models/prod"],
    ),
    (
        "spec.spec.model",
        bucket_model("gs://models/prod", {"endpoint": "http://minio:9000"}),
        ["spec.model.storage.endpoint, region and virtualHostedStyle are for s3://", "key.json"],
    ),
    (
        "spec.spec.model",
        bucket_model("gs://models/prod", {"virtualHostedStyle": True}),
        ["are for s3:// repositories"],
    ),
    (
        "spec.spec.model",
        bucket_model("s3://models/prod", {"secretName": "Models_Keys"}),
        ["spec.model.storage.secretName", "models-s3-credentials"],
    ),
    (
        "spec.spec.model",
        bucket_model("s3://models/prod", {"endpoint": "minio:9000"}),
        ["spec.model.storage.endpoint", "https://minio.storage.svc:9000"],
    ),
    (
        "spec.spec.audit",
        {"export": {"url": "https://audit.example.com/x"}},
        ["spec.audit.export.url", "s3://"],
    ),
    ("spec.spec.audit", {"export": {"url": "s3://"}}, ["spec.audit.export.url", "<bucket>"]),
    ("spec.spec.audit", {"export": {}}, ["spec.audit.export.url: Required value"]),
    (
        "spec.spec.audit",
        {"enabled": False, "export": {"url": "s3://audit/prod"}},
        ["spec.audit.export copies the audit log", "remove spec.audit.export"],
    ),
    (
        "spec.spec.audit",
        {"export": {"url": "gs://audit/prod", "storage": {"region": "eu-west-1"}}},
        ["spec.audit.export.storage.endpoint, region and virtualHostedStyle are for s3://", "key.json"],
    ),
    (
        "spec.spec.audit",
        {"export": {"url": "s3://audit/prod", "storage": {"endpoint": "minio:9000"}}},
        ["spec.audit.export.storage.endpoint", "https://minio.storage.svc:9000"],
    ),
    (
        "spec.spec.audit",
        {"export": {"url": "s3://audit/prod", "storage": {"secretName": "Audit_Keys"}}},
        ["spec.audit.export.storage.secretName", "audit-writer"],
    ),
    ("spec.spec.audit", {"export": {"url": "s3://audit/p", "intervalSeconds": 0}}, ["intervalSeconds"]),
    ("spec.spec.model.version", "v1", ["spec.model.version", 'e.g. version: "3"']),
    ("spec.spec.model.version", "0", ["spec.model.version", "positive integer"]),
    ("spec.spec.model.repository", "ftp://host/models", ["spec.model.repository", "s3://, gs://, pvc://"]),
    ("spec.spec.model.repository", "models/dir", ["spec.model.repository", "schemes"]),
    ("spec.spec.model.repository", "pvc://Bad_Claim/x", ["spec.model.repository", "pvc://<claim-name>"]),
    ("spec.spec.model.repository", "file://relative", ["spec.model.repository", "three"]),
    ("spec.spec.model.name", "../escape", ["spec.model.name", "Triton model directory name"]),
    ("spec.spec.rollout", {"steps": [50, 10, 100]}, ["spec.rollout.steps", "ascending order"]),
    ("spec.spec.rollout", {"steps": [10, 50]}, ["spec.rollout.steps", "must end at 100"]),
    ("spec.spec.rollout", {"steps": [10, 150]}, ["spec.rollout.steps", "less than or equal to 100"]),
    ("spec.spec.rollout", {"steps": [10, 10, 100]}, ["spec.rollout.steps", "Duplicate value"]),
    ("spec.spec.rollout", {"interval": "0s"}, ["spec.rollout.interval", "positive duration"]),
    ("spec.spec.rollout", {"interval": "soon"}, ["spec.rollout.interval", "positive duration"]),
    ("spec.spec.rollout", {"noDataTimeout": "0s"}, ["spec.rollout.noDataTimeout", "positive duration"]),
    ("spec.spec.rollout", {"noDataTimeout": "never"}, ["spec.rollout.noDataTimeout", "positive duration"]),
    ("spec.spec.rollout", {"failureLimit": -1}, ["spec.rollout.failureLimit", "greater than or equal to 0"]),
    ("spec.spec.rollout", {"strategy": "bluegreen"}, ["spec.rollout.strategy", "canary", "instant"]),
    ("spec.spec.rollout", {"thresholds": {"maxOodRate": 1.5}}, ["maxOodRate", "less than or equal to 1"]),
    ("spec.spec.rollout", {"thresholds": {"maxP99LatencyMs": 0}}, ["maxP99LatencyMs", "greater than 0"]),
    ("spec.spec.drift", {"window": "-5m"}, ["spec.drift.window", "positive duration"]),
    ("spec.spec.drift", {"window": 0}, ["spec.drift.window", "row count such as 500"]),
    ("spec.spec.drift", {"window": -200}, ["spec.drift.window", "row count such as 500"]),
    ("spec.spec.drift", {"window": "0"}, ["spec.drift.window", "row count such as 500"]),
    ("spec.spec.drift", {"window": "5 minutes"}, ["spec.drift.window", "positive duration"]),
    ("spec.spec.drift", {"window": "0s"}, ["spec.drift.window", "positive duration"]),
    ("spec.spec.drift", {"alpha": 0}, ["spec.drift.alpha", "greater than 0"]),
    ("spec.spec.drift", {"alpha": 0.6}, ["spec.drift.alpha", "less than or equal to 0.5"]),
    ("spec.spec.drift", {"minSamples": 5}, ["spec.drift.minSamples", "greater than or equal to 10"]),
    (
        "spec.spec.gate",
        {"ood": {"method": "mahalanobis", "alpha": 0.05, "threshold": 42.0}},
        ["spec.gate.ood", "set either alpha (an error rate) or threshold (a raw score), not"],
    ),
    ("spec.spec.sidecar", {"workers": 0}, ["spec.sidecar.workers", "greater than or equal to 1"]),
    (
        "spec.spec.sidecar",
        {"limits": {"headerTimeout": "soon"}},
        ["spec.sidecar.limits.headerTimeout", "positive duration"],
    ),
    (
        "spec.spec.sidecar",
        {"limits": {"maxBodyBytes": 10}},
        ["spec.sidecar.limits.maxBodyBytes", "greater than or equal to 1024"],
    ),
    ("spec.spec.audit", {"retainFiles": -1}, ["spec.audit.retainFiles", "greater than or equal to 0"]),
    ("spec.spec.replicas", {"min": 3, "max": 2}, ["spec.replicas", "must not exceed spec.replicas.max"]),
    (
        "spec.spec.scaling",
        {"idleAfter": "an hour"},
        ["spec.scaling.idleAfter", "such as 30m, 1h", "0s to turn"],
    ),
    ("spec.spec.scaling", {"idleAfter": "-1h"}, ["spec.scaling.idleAfter", "0s to turn idle detection off"]),
    ("spec.spec.scaling", {"idleAfter": "1d"}, ["spec.scaling.idleAfter", "such as 30m, 1h or 24h"]),
    ("spec.spec.replicas", {"min": 0, "max": 2}, ["spec.replicas.min", "greater than or equal to 1"]),
    (
        "spec.spec.confidence",
        {"reviewBelow": 1.2},
        ["spec.confidence.reviewBelow", "less than or equal to 1"],
    ),
    (
        "spec.spec.confidence",
        {"review": {"maxFraction": -0.1}},
        ["maxFraction", "greater than or equal to 0"],
    ),
    ("spec.spec.confidence", {"review": {"webhook": "mailto:x@y"}}, ["webhook", "http:// or https:// URL"]),
    ("spec.spec.audit", {"sampleRate": 2}, ["spec.audit.sampleRate", "less than or equal to 1"]),
    ("spec.spec.gate", {"ood": {"method": "magic"}}, ["spec.gate.ood.method", "mahalanobis"]),
    ("spec.spec.rollout", {"shadow": {"fraction": 0}}, ["spec.rollout.shadow.fraction", "greater than 0"]),
    (
        "spec.spec.rollout",
        {"shadow": {"fraction": 1.5}},
        ["spec.rollout.shadow.fraction", "less than or equal to 1"],
    ),
    ("spec.spec.rollout", {"shadow": {}}, ["spec.rollout.shadow.fraction", "Required value"]),
    (
        "spec.spec.rollout",
        {"replay": {"samples": 0}},
        ["spec.rollout.replay.samples", "greater than or equal to 1"],
    ),
    (
        "spec.spec",
        {
            "model": {"name": "m", "repository": "pvc://models", "version": "1"},
            "rollout": {"replay": {"samples": 100}},
            "audit": {"sampleRate": 0},
        },
        ["spec.rollout.replay", "spec.audit.sampleRate above 0"],
    ),
    (
        "spec.spec",
        {
            "model": {"name": "m", "repository": "pvc://models", "version": "1"},
            "rollout": {"replay": {"samples": 100}},
            "audit": {"enabled": False},
        },
        ["spec.rollout.replay", "spec.audit.enabled true"],
    ),
    ("spec.spec.rollout", {"comparison": {"minAgreement": 1.2}}, ["minAgreement", "less than or equal to 1"]),
    ("spec.spec.rollout", {"comparison": {"minRows": 0}}, ["minRows", "greater than or equal to 1"]),
    (
        "spec.spec.rollout",
        {"comparison": {"maxOodRateShift": -0.1}},
        ["maxOodRateShift", "greater than or equal to 0"],
    ),
    ("spec.spec.gate", {"ood": {"action": "ignore"}}, ["spec.gate.ood.action", "reject"]),
    (
        "spec.spec.gate",
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [4], "min": 1, "max": 0}]},
        ["inputs[0]", "min must not exceed max"],
    ),
    ("spec.spec.gate", {"inputs": [{"name": "x", "datatype": "FLOAT", "shape": [4]}]}, ["datatype", "FP32"]),
    ("spec.spec.scaling", {"targetQueueTimeMs": 0}, ["targetQueueTimeMs", "greater than 0"]),
    ("spec.spec.cost", {"gpuHourPrice": -2.5}, ["spec.cost.gpuHourPrice", "greater than or equal to 0"]),
    ("spec.spec.cost", {"reviewPrice": -0.01}, ["spec.cost.reviewPrice", "greater than or equal to 0"]),
    ("spec.spec.cost", {"gpuHourPrice": "cheap"}, ["spec.cost.gpuHourPrice", "number"]),
    ("spec.spec.cost", {"currency": ""}, ["spec.cost.currency"]),
    ("spec.spec.triton", {"shmSize": "lots"}, ["spec.triton.shmSize", "positive quantity"]),
    ("spec.metadata.name", "Has_Upper", []),  # the API server's own name rule
    ("spec.metadata.name", "x" * 60, ["metadata.name", "at most 52 characters"]),
]


@pytest.mark.parametrize(
    ("path", "value", "expected"), INVALID, ids=[f"{p}={v!r}"[:60] for p, v, _ in INVALID]
)
def test_invalid_manifest_is_refused_with_a_helpful_message(
    cluster: LocalCluster, path: str, value: Any, expected: list[str]
) -> None:
    manifest = with_change(path.removeprefix("spec."), value)
    code, output = submit(cluster, manifest)
    assert code != 0, f"accepted: {manifest}"
    assert "is invalid" in output or "Invalid value" in output, output
    for fragment in expected:
        assert fragment in output, f"{fragment!r} not in: {output}"


def test_missing_required_fields_are_named(cluster: LocalCluster) -> None:
    manifest = minimal_example()
    del manifest["spec"]["model"]["version"]
    code, output = submit(cluster, manifest)
    assert code != 0 and "spec.model.version: Required value" in output, output


VALID = [
    (
        "spec.model",
        bucket_model(
            "s3://models/prod",
            {
                "secretName": "models-s3",
                "endpoint": "http://minio.storage:9000",
                "region": "eu-west-1",
                "virtualHostedStyle": False,
            },
        ),
    ),
    ("spec.model", bucket_model("gs://models/prod", {"secretName": "models-gcs"})),
    ("spec.model", bucket_model("s3://models/prod", {})),  # workload identity: the default chain
    ("spec.model.repository", "s3://bucket/models"),
    ("spec.audit", {"export": {"url": "s3://ml-audit/guardedmodel/prod"}}),  # the default chain
    ("spec.audit", {"export": {"url": "gs://ml-audit", "storage": {"secretName": "audit-writer"}}}),
    (
        "spec.audit",
        {
            "sampleRate": 0.1,
            "export": {
                "url": "s3://ml-audit/prod",
                "intervalSeconds": 30,
                "storage": {
                    "secretName": "audit-writer",
                    "endpoint": "http://minio:9000",
                    "region": "eu-west-1",
                },
            },
        },
    ),
    ("spec.model.repository", "gs://bucket/models"),
    ("spec.model.repository", "https://models.example.com/repo"),
    ("spec.model.repository", "file:///srv/models"),
    ("spec.model.repository", "pvc://models"),
    ("spec.model.version", "12"),
    ("spec.rollout", {"steps": [100]}),
    ("spec.rollout", {"steps": [0, 1, 99, 100], "interval": "1h30m"}),
    ("spec.rollout", {"noDataTimeout": "90s"}),
    ("spec.rollout", {"interval": "5m", "noDataTimeout": "24h"}),
    ("spec.replicas", {"min": 2, "max": 2}),
    ("spec.scaling", {"idleAfter": "0s"}),  # idle detection off
    ("spec.scaling", {"idleAfter": "24h"}),
    ("spec.cost", {}),  # prices default to none; currency to USD
    ("spec.cost", {"currency": "EUR", "gpuHourPrice": 0, "reviewPrice": 0.08}),
    ("spec.scaling", {"idleAfter": "1h30m", "targetQueueTimeMs": 20}),
    ("spec.confidence", {"reviewBelow": 0, "review": {"maxFraction": 1}}),
    ("spec.gate", {"ood": {"method": "none"}, "inputs": [{"name": "x", "datatype": "BYTES", "shape": [-1]}]}),
    ("spec.gate", {"ood": {"method": "mahalanobis", "alpha": 0.05}}),
    ("spec.gate", {"ood": {"method": "mahalanobis", "threshold": 42.0}}),
    ("spec.drift", {"window": 500}),  # a row count
    ("spec.drift", {"window": "500"}),  # a row count, as a string of digits
    ("spec.drift", {"window": "5m"}),
    ("spec.drift", {"window": "1h30m", "alpha": 0.05, "minSamples": 10}),
    ("spec.rollout", {"shadow": {"fraction": 1}}),
    ("spec.rollout", {"shadow": {"fraction": 0.05}, "replay": {"samples": 500}}),
    ("spec.rollout", {"replay": {"samples": 1}, "comparison": {"minRows": 1, "minAgreement": 0}}),
]


@pytest.mark.parametrize(("path", "value"), VALID, ids=[f"{p}={v!r}"[:60] for p, v in VALID])
def test_valid_variants_are_accepted(cluster: LocalCluster, path: str, value: Any) -> None:
    code, output = submit(cluster, with_change(path, value))
    assert code == 0, output


def test_examples_are_accepted_and_defaulted(cluster: LocalCluster) -> None:
    for example in (
        "guardedmodel-minimal.yaml",
        "guardedmodel-full.yaml",
        "fashion-mnist.yaml",
        "fashion-mnist-ensemble.yaml",
    ):
        stored = stored_as(cluster, (EXAMPLES / example).read_text())
        # defaults applied by the API server, not by the operator
        assert stored["spec"]["rollout"]["interval"]
        assert stored["spec"]["replicas"]["min"] >= 1
    minimal = stored_as(cluster, (EXAMPLES / "guardedmodel-minimal.yaml").read_text())
    assert minimal["spec"]["triton"]["resources"] == {"limits": {"nvidia.com/gpu": "1"}}
    assert minimal["spec"]["rollout"]["steps"] == [10, 50, 100]
    assert minimal["spec"]["gate"]["ood"] == {"method": "energy", "action": "reject"}
    # the drift defaults: a 5 minute window, tested at a 0.001 false-alarm rate from 100 rows on
    assert minimal["spec"]["drift"] == {"window": "5m", "alpha": 0.001, "minSamples": 100}
    # idle after an hour without requests
    assert minimal["spec"]["scaling"] == {"targetQueueTimeMs": 50, "idleAfter": "1h"}
    # no prices unless given; given ones keep their currency, USD by default
    assert "cost" not in minimal["spec"]
    assert stored_as(cluster, yaml.safe_dump(with_change("spec.cost", {})))["spec"]["cost"] == {
        "currency": "USD"
    }


def test_a_row_count_window_is_stored_as_given(cluster: LocalCluster) -> None:
    for window in (500, "500"):
        stored = stored_as(cluster, yaml.safe_dump(with_change("spec.drift", {"window": window})))
        assert stored["spec"]["drift"]["window"] == window


def stored_as(cluster: LocalCluster, manifest: str) -> dict[str, Any]:
    """The object the API server would store for ``manifest`` (validated and defaulted)."""
    result = cluster.kubectl(
        "create", "--dry-run=server", "-n", "default", "-o", "yaml", "-f", "-", input=manifest
    )
    return dict(yaml.safe_load(result.stdout))
