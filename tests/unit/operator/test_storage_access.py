"""spec.model.storage: parsed with the CRD's rules, and turned into what the pod's containers read."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from guardedmodel_operator.builders import build_context, build_deployment
from guardedmodel_operator.builders.configmap import render_sidecar_config
from guardedmodel_operator.builders.storage import (
    AUDIT_EXPORT_CREDENTIALS_DIR,
    AUDIT_EXPORT_VOLUME,
    STORAGE_CREDENTIALS_DIR,
)
from guardedmodel_operator.config import OperatorConfig
from guardedmodel_operator.spec import SpecError, Storage, parse_spec
from guardedmodel_sidecar.config import parse_config

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


def with_export(body: dict[str, Any], export: dict[str, Any]) -> dict[str, Any]:
    body = copy.deepcopy(body)
    body["spec"]["audit"] = {"export": export}
    return body


@pytest.mark.parametrize("url", ["s3://ml-audit/prod", "gs://ml-audit/prod"])
def test_the_export_secret_is_mounted_into_the_sidecar_only(minimal_body: dict[str, Any], url: str) -> None:
    body = with_export(
        with_storage(minimal_body, "s3://models/prod", {"secretName": "model-keys"}),
        {"url": url, "storage": {"secretName": "audit-writer"}},
    )
    containers, pod_spec = pod(body)
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    assert volumes[AUDIT_EXPORT_VOLUME] == {
        "name": AUDIT_EXPORT_VOLUME,
        "secret": {"secretName": "audit-writer"},
    }
    for name, container in containers.items():
        mounts = {m["name"]: m for m in container.get("volumeMounts", [])}
        if name == "sidecar":
            assert mounts[AUDIT_EXPORT_VOLUME] == {
                "name": AUDIT_EXPORT_VOLUME,
                "mountPath": AUDIT_EXPORT_CREDENTIALS_DIR,
                "readOnly": True,
            }
        else:
            assert AUDIT_EXPORT_VOLUME not in mounts, f"{name} must not see the export's credentials"
        # The export's Secret never becomes environment: that holds the model's keys.
        assert "audit-writer" not in str(container.get("env", []))
    ctx = build_context(body, parse_spec(body["spec"]), CONFIG, None)
    config = render_sidecar_config(ctx)
    assert config["auditExportCredentialsDir"] == AUDIT_EXPORT_CREDENTIALS_DIR
    assert config["spec"]["audit"]["export"] == {
        "url": url,
        "storage": {"secretName": "audit-writer"},
        "intervalSeconds": 60,
    }
    sidecar_config = parse_config(config)
    assert sidecar_config.spec.export is not None and sidecar_config.spec.export.url == url
    assert sidecar_config.audit_export_credentials == Path(AUDIT_EXPORT_CREDENTIALS_DIR)


@pytest.mark.parametrize("export", [None, {"url": "s3://ml-audit/prod"}])
def test_without_an_export_secret_nothing_is_mounted(
    minimal_body: dict[str, Any], export: dict[str, Any] | None
) -> None:
    body = minimal_body if export is None else with_export(minimal_body, export)
    containers, pod_spec = pod(body)
    assert AUDIT_EXPORT_VOLUME not in {v["name"] for v in pod_spec["volumes"]}
    assert all(AUDIT_EXPORT_CREDENTIALS_DIR not in str(c.get("volumeMounts")) for c in containers.values())
    config = render_sidecar_config(build_context(body, parse_spec(body["spec"]), CONFIG, None))
    assert "auditExportCredentialsDir" not in config
    assert ("export" in config["spec"]["audit"]) == (export is not None)
