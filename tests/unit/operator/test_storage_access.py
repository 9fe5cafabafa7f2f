"""spec.model.storage: parsed with the CRD's rules, and turned into what the pod's containers read."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from guardedmodel_operator.builders import build_context, build_deployment
from guardedmodel_operator.builders.storage import STORAGE_CREDENTIALS_DIR
from guardedmodel_operator.config import OperatorConfig
from guardedmodel_operator.spec import SpecError, Storage, parse_spec

CONFIG = OperatorConfig(triton_image="triton:test", sidecar_image="sidecar:test")


def with_storage(body: dict[str, Any], repository: str, storage: dict[str, Any] | None) -> dict[str, Any]:
    body = copy.deepcopy(body)
    body["spec"]["model"]["repository"] = repository
    if storage is not None:
        body["spec"]["model"]["storage"] = storage
    return body


def pod(body: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    deployment = build_deployment(build_context(body, parse_spec(body["spec"]), CONFIG, None))
    pod_spec = deployment["spec"]["template"]["spec"]
    every = pod_spec["containers"] + pod_spec.get("initContainers", [])
    return {c["name"]: c for c in every}, pod_spec


def env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_s3_settings_and_secret_keys_reach_fetch_model_and_the_sidecar(minimal_body: dict[str, Any]) -> None:
    body = with_storage(
        minimal_body,
        "s3://models/prod",
        {
            "secretName": "s3-keys",
            "endpoint": "http://minio.storage:9000",
            "region": "eu-west-1",
            "virtualHostedStyle": False,
        },
    )
    containers, pod_spec = pod(body)
    for name in ("fetch-model", "sidecar"):
        got = env(containers[name])
        assert got["AWS_ENDPOINT_URL"] == "http://minio.storage:9000"
        assert got["AWS_REGION"] == "eu-west-1"
        assert got["AWS_VIRTUAL_HOSTED_STYLE_REQUEST"] == "false"
        assert got["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "s3-keys", "key": "AWS_ACCESS_KEY_ID"}}
        assert got["AWS_SECRET_ACCESS_KEY"] == {
            "secretKeyRef": {"name": "s3-keys", "key": "AWS_SECRET_ACCESS_KEY"}
        }
        assert got["AWS_SESSION_TOKEN"] == {
            "secretKeyRef": {"name": "s3-keys", "key": "AWS_SESSION_TOKEN", "optional": True}
        }
    assert "env" not in containers["triton"] or not any(
        e["name"].startswith("AWS_") for e in containers["triton"]["env"]
    )
    assert not any("secret" in v for v in pod_spec["volumes"])  # S3 keys travel as env, no volume
    assert containers["fetch-model"]["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_gcs_key_file_is_mounted_for_fetch_model_and_the_sidecar_only(minimal_body: dict[str, Any]) -> None:
    containers, pod_spec = pod(with_storage(minimal_body, "gs://models/prod", {"secretName": "gcs-key"}))
    (volume,) = [v for v in pod_spec["volumes"] if "secret" in v]
    assert volume["secret"] == {"secretName": "gcs-key", "items": [{"key": "key.json", "path": "key.json"}]}
    for name in ("fetch-model", "sidecar"):
        assert env(containers[name])["GOOGLE_SERVICE_ACCOUNT_PATH"] == f"{STORAGE_CREDENTIALS_DIR}/key.json"
        mount = [m for m in containers[name]["volumeMounts"] if m["name"] == volume["name"]]
        assert mount == [{"name": volume["name"], "mountPath": STORAGE_CREDENTIALS_DIR, "readOnly": True}]
    assert all(m["name"] != volume["name"] for m in containers["triton"]["volumeMounts"])


@pytest.mark.parametrize("repository", ["s3://models/prod", "gs://models/prod"])
@pytest.mark.parametrize("storage", [None, {}])
def test_without_a_secret_the_pod_uses_its_service_accounts_identity(
    minimal_body: dict[str, Any], repository: str, storage: dict[str, Any] | None
) -> None:
    containers, pod_spec = pod(with_storage(minimal_body, repository, storage))
    for name in ("fetch-model", "sidecar"):
        assert not [k for k in env(containers[name]) if k.startswith(("AWS_", "GOOGLE_"))]
    assert not any("secret" in v for v in pod_spec["volumes"])
    assert parse_spec(with_storage(minimal_body, repository, storage)["spec"]).storage == Storage()


@pytest.mark.parametrize(
    ("repository", "storage", "message"),
    [
        ("pvc://models", {"secretName": "keys"}, "applies to s3:// and gs:// repositories only"),
        ("https://models.example.com/r", {}, "applies to s3:// and gs:// repositories only"),
        ("gs://models/prod", {"endpoint": "http://x:9000"}, "are for s3:// repositories"),
        ("gs://models/prod", {"region": "eu-west-1"}, "are for s3:// repositories"),
        ("gs://models/prod", {"virtualHostedStyle": True}, "are for s3:// repositories"),
        ("s3://models/prod", {"endpoint": "minio:9000"}, "must be an http(s) URL"),
        ("s3://models/prod", {"endpoint": "https://"}, "must be an http(s) URL"),
    ],
)
def test_storage_that_cannot_apply_is_refused_with_what_to_write(
    minimal_body: dict[str, Any], repository: str, storage: dict[str, Any], message: str
) -> None:
    with pytest.raises(SpecError, match=r"spec\.model\.storage") as error:
        parse_spec(with_storage(minimal_body, repository, storage)["spec"])
    assert message in str(error.value)
