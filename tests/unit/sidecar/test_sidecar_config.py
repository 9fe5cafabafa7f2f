"""sidecar.yaml: the agreed keys, defaults, env overrides and errors that name the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from guardedmodel_sidecar.config import ConfigError, SidecarConfig, load_config, parse_config, parse_duration
from guardedmodel_sidecar.limits import Limits, dump_limits


def dump_config(config: SidecarConfig) -> dict[str, Any]:
    """The camelCase YAML form of a config (what the operator renders): parsing it must give the config back."""
    spec = config.spec
    return {
        **(
            {"guardedModel": {"namespace": config.guarded_model[0], "name": config.guarded_model[1]}}
            if config.guarded_model
            else {}
        ),
        "spec": {
            "model": {
                "name": spec.model.name,
                "repository": spec.model.repository,
                "version": spec.model.version,
            },
            "gate": {
                "inputs": [
                    {
                        "name": i.name,
                        "datatype": i.datatype,
                        "shape": list(i.shape),
                        "min": i.min,
                        "max": i.max,
                    }
                    for i in spec.inputs
                ],
                "ood": {
                    "method": spec.ood.method,
                    "threshold": spec.ood.threshold,
                    "action": spec.ood.action,
                },
            },
            "confidence": {
                "reviewBelow": spec.review_below,
                "review": {"webhook": spec.review.webhook, "maxFraction": spec.review.max_fraction},
            },
            "audit": {"enabled": spec.audit_enabled, "sampleRate": spec.sample_rate},
            "drift": {"window": f"{spec.drift.window_s}s"},
        },
        "routing": {
            "stableVersion": config.routing.stable_version,
            "canaryVersion": config.routing.canary_version,
            "canaryWeight": config.routing.canary_weight,
        },
        "triton": {
            "httpUrl": config.triton_http_url,
            "grpcUrl": config.triton_grpc_url,
            **({"metricsUrl": config.triton_metrics_url} if config.triton_metrics_url else {}),
            **(
                {
                    "restrictedHeader": {
                        "name": config.triton_restricted_header[0],
                        "value": config.triton_restricted_header[1],
                    }
                }
                if config.triton_restricted_header
                else {}
            ),
        },
        **({"modelRepository": str(config.model_repository)} if config.model_repository else {}),
        "listen": {
            "host": config.listen.host,
            "http": config.listen.http,
            "grpc": config.listen.grpc,
            "metrics": config.listen.metrics,
        },
        "auditDir": str(config.audit_dir),
        "spoolDir": str(config.spool_dir),
        "tuning": {
            "maxBatch": config.tuning.max_batch,
            "loadVersions": config.tuning.load_versions,
            "microBatching": {
                "enabled": config.tuning.micro_batching.enabled,
                "maxBatch": config.tuning.micro_batching.max_batch,
                "maxInflight": config.tuning.micro_batching.max_inflight,
            },
            "auditRotateBytes": config.tuning.audit_rotate_bytes,
            "reviewRetries": config.tuning.review_retries,
            "auditRetainFiles": config.tuning.audit_retain_files,
            "auditRetainBytes": config.tuning.audit_retain_bytes,
            "auditBufferBytes": config.tuning.audit_buffer_bytes,
            "reviewSpoolMaxItems": config.tuning.review_spool_max_items,
            "reviewSpoolMaxBytes": config.tuning.review_spool_max_bytes,
            "workers": config.tuning.workers,
            "tritonMetricsInterval": f"{config.tuning.triton_metrics_interval_s}s",
        },
        "limits": dump_limits(config.limits),
    }


FULL = {
    "guardedModel": {"namespace": "ns", "name": "n"},
    "spec": {
        "model": {"name": "fashion", "repository": "pvc://models", "version": "3"},
        "gate": {
            "inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 28, 28], "min": 0, "max": 1}],
            "ood": {"method": "mahalanobis", "threshold": 42.0, "action": "reject"},
        },
        "confidence": {"reviewBelow": 0.6, "review": {"webhook": "http://hook", "maxFraction": 0.1}},
        "audit": {"enabled": True, "sampleRate": 0.01},
        "drift": {"window": "5m"},
    },
    "routing": {"stableVersion": "3", "canaryVersion": "4", "canaryWeight": 10},
    "triton": {
        "httpUrl": "127.0.0.1:8000",
        "grpcUrl": "127.0.0.1:8001",
        "metricsUrl": "http://127.0.0.1:8002",
    },
    "modelRepository": "/models",
    "listen": {"host": "0.0.0.0", "http": 8080, "grpc": 8081, "metrics": 9090},
    "auditDir": "/var/lib/guardedmodel/audit",
    "spoolDir": "/var/lib/guardedmodel/review-spool",
}


def test_the_agreed_file_parses_into_one_typed_object() -> None:
    config = parse_config(FULL)
    assert config.guarded_model == ("ns", "n")
    assert config.spec.model.name == "fashion"
    assert config.spec.inputs[0].shape == (1, 28, 28) and config.spec.inputs[0].max == 1.0
    assert (config.spec.ood.method, config.spec.ood.threshold, config.spec.ood.action) == (
        "mahalanobis",
        42.0,
        "reject",
    )
    assert config.spec.review_below == 0.6 and config.spec.review.max_fraction == 0.1
    assert config.spec.drift.window_s == 300.0 and config.spec.sample_rate == 0.01
    assert config.routing.versions() == ("3", "4") and config.routing.canary_weight == 10
    assert config.listen.metrics == 9090 and str(config.model_repository) == "/models"
    assert config.triton_metrics_url == "127.0.0.1:8002" and config.tuning.triton_metrics_interval_s == 5.0
    assert parse_config(dump_config(config)) == config


def test_defaults_make_a_minimal_file_enough() -> None:
    config = parse_config({"spec": {"model": {"name": "m", "version": "2"}}})
    assert config.routing.stable_version == "2" and config.routing.versions() == ("2",)
    assert config.spec.ood.method == "none" and config.spec.review_below is None
    assert config.guarded_model is None and not config.tuning.micro_batching.enabled
    assert config.limits == Limits() and config.triton_restricted_header is None


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"spec": {"model": {}}}, "spec.model.name"),
        ({"spec": {"model": {"name": "m"}, "gate": {"ood": {"method": "lof"}}}}, "spec.gate.ood.method"),
        ({"spec": {"model": {"name": "m"}, "gate": {"ood": {"action": "drop"}}}}, "spec.gate.ood.action"),
        ({"spec": {"model": {"name": "m"}, "confidence": {"reviewBelow": 2}}}, "reviewBelow"),
        ({"spec": {"model": {"name": "m"}, "audit": {"sampleRate": -0.1}}}, "sampleRate"),
        ({"spec": {"model": {"name": "m"}, "drift": {"window": "soon"}}}, "spec.drift.window"),
        (
            {"spec": {"model": {"name": "m"}, "gate": {"inputs": [{"name": "X", "datatype": "FLOAT"}]}}},
            "datatype",
        ),
        ({"spec": {"model": {"name": "m"}, "gate": {"inputs": [{"name": "X", "shape": [-2]}]}}}, "shape"),
        (
            {"spec": {"model": {"name": "m"}, "gate": {"inputs": [{"name": "X", "min": 2, "max": 1}]}}},
            "above max",
        ),
        (
            {"spec": {"model": {"name": "m"}}, "routing": {"canaryVersion": "2", "canaryWeight": 150}},
            "canaryWeight",
        ),
        (
            {"spec": {"model": {"name": "m"}}, "limits": {"maxBodySize": 10}},
            "limits.maxBodySize: not a known",
        ),
        ({"spec": {"model": {"name": "m"}}, "limits": {"maxBodyBytes": -1}}, "limits.maxBodyBytes"),
        ({"spec": {"model": {"name": "m"}}, "limits": {"maxBodyBytes": "1e3"}}, "whole number"),
        ({"spec": {"model": {"name": "m"}}, "limits": {"headerTimeout": "soon"}}, "limits.headerTimeout"),
        (
            {"spec": {"model": {"name": "m"}}, "triton": {"restrictedHeader": {"name": "k"}}},
            "restrictedHeader",
        ),
    ],
)
def test_invalid_configs_name_the_key(patch: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(patch)


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(FULL))
    config = load_config(
        path,
        env={"GUARDEDMODEL_TRITON_HTTP_URL": "http://10.0.0.1:9000/", "GUARDEDMODEL_AUDIT_DIR": "/tmp/a"},
    )
    assert config.triton_http_url == "10.0.0.1:9000" and str(config.audit_dir) == "/tmp/a"
    assert config.triton_grpc_url == "127.0.0.1:8001"


def test_unreadable_files_are_explained(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("spec: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("5m", 300), ("1h", 3600), ("250ms", 0.25), (12, 12)]
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text, "k") == pytest.approx(seconds)


def test_limits_round_trip_through_the_config_file() -> None:
    data = {
        "spec": {"model": {"name": "m"}},
        "limits": {"maxJsonBodyBytes": 4096, "bodyTimeout": "500ms", "maxConcurrentStreams": 8},
        "triton": {"restrictedHeader": {"name": "Guardedmodel-Sidecar-Key", "value": "abc"}},
    }
    config = parse_config(data)
    assert config.limits.max_json_body_bytes == 4096 and config.limits.body_timeout_s == 0.5
    assert config.triton_restricted_header == ("guardedmodel-sidecar-key", "abc")
    assert parse_config(dump_config(config)) == config
