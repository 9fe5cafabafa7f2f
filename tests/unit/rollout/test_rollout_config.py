"""The operator configuration carries what the rollout controller needs."""

from __future__ import annotations

import pytest

from guardedmodel_operator.config import ConfigError, OperatorConfig
from guardedmodel_operator.prometheus import PrometheusSettings, settings_from


def test_prometheus_settings_from_the_environment() -> None:
    config = OperatorConfig.from_env(
        {
            "GUARDEDMODEL_PROMETHEUS_URL": "http://prometheus.monitoring:9090",
            "GUARDEDMODEL_PROMETHEUS_NAME_LABEL": "gm",
            "GUARDEDMODEL_ROLLOUT_MIN_WINDOW_S": "15",
            "GUARDEDMODEL_PROMETHEUS_TIMEOUT_S": "2.5",
        }
    )
    assert settings_from(config) == PrometheusSettings(
        url="http://prometheus.monitoring:9090",
        namespace_label="namespace",
        name_label="gm",
        timeout_s=2.5,
        min_window_s=15.0,
    )


def test_no_prometheus_means_no_metrics_source() -> None:
    assert settings_from(OperatorConfig()) is None


def test_a_prometheus_url_without_scheme_is_refused() -> None:
    with pytest.raises(ConfigError, match="http:// or https://"):
        OperatorConfig(prometheus_url="prometheus:9090")


def test_a_prometheus_timeout_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="Prometheus timeout must be positive"):
        OperatorConfig(prometheus_timeout_s=0)
