from __future__ import annotations

import argparse

import pytest

from guardedmodel_operator.config import ConfigError, OperatorConfig, add_arguments


def test_env_sets_every_kind_of_field() -> None:
    config = OperatorConfig.from_env(
        {
            "GUARDEDMODEL_NAMESPACES": "ml, prod,ml",
            "GUARDEDMODEL_LOG_FORMAT": "json",
            "GUARDEDMODEL_METRICS_PORT": "0",
            "GUARDEDMODEL_WATCH_SERVER_TIMEOUT_S": "120",
            "GUARDEDMODEL_EXTRA_LABELS": "team=ml,env=prod",
            "UNRELATED": "x",
        }
    )
    assert config.namespaces == ("ml", "prod")
    assert not config.clusterwide
    assert (config.log_format, config.metrics_port, config.watch_server_timeout_s) == ("json", 0, 120)
    assert config.extra_labels == {"team": "ml", "env": "prod"}


@pytest.mark.parametrize("raw", ["", "*", " , "])
def test_empty_or_star_means_all_namespaces(raw: str) -> None:
    assert OperatorConfig.from_env({"GUARDEDMODEL_NAMESPACES": raw}).clusterwide


def test_flags_override_env_only_when_given() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = OperatorConfig.from_env({"GUARDEDMODEL_WORKER_LIMIT": "7", "GUARDEDMODEL_LOG_FORMAT": "json"})
    config = base.with_args(
        parser.parse_args(["--namespace", "a,b", "--namespace", "c", "--worker-limit", "3"])
    )
    assert config.namespaces == ("a", "b", "c")
    assert config.worker_limit == 3
    assert config.log_format == "json"  # not given as a flag: the environment's value stays


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GUARDEDMODEL_LOG_FORMAT": "xml"}, "log format"),
        ({"GUARDEDMODEL_WORKER_LIMIT": "0"}, "worker limit"),
        ({"GUARDEDMODEL_METRICS_PORT": "many"}, "GUARDEDMODEL_METRICS_PORT"),
        ({"GUARDEDMODEL_WATCH_CLIENT_TIMEOUT_S": "10"}, "client timeout must exceed"),
        ({"GUARDEDMODEL_IDLE_INTERVAL_S": "0"}, "idle check interval must be positive"),
        ({"GUARDEDMODEL_CLUSTER_SCANNING": "flase"}, "GUARDEDMODEL_CLUSTER_SCANNING='flase' is not valid"),
    ],
)
def test_bad_values_are_refused_with_a_reason(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        OperatorConfig.from_env(env)


def test_replicas_draw_their_own_peering_priority_unless_one_is_configured() -> None:
    """kopf pauses every replica whose peers tie with it at the highest priority: identical replicas
    must not all run with the same one."""
    drawn = {OperatorConfig(peering_name="p").with_priority_drawn().priority for _ in range(20)}
    assert len(drawn) > 1 and all(1 <= p <= 2**15 for p in drawn)
    assert OperatorConfig(peering_name="p").with_priority_drawn(lambda: 7).priority == 7
    assert OperatorConfig.from_env({"GUARDEDMODEL_PRIORITY": "0"}).with_priority_drawn().priority == 0
    assert OperatorConfig.from_env({"GUARDEDMODEL_PRIORITY": "250"}).with_priority_drawn().priority == 250


@pytest.mark.parametrize(("raw", "scanning"), [("false", False), ("0", False), ("True", True), ("on", True)])
def test_cluster_scanning_is_set_by_env_or_flag(raw: str, scanning: bool) -> None:
    assert OperatorConfig().cluster_scanning  # kopf follows namespaces and CRDs unless told not to
    assert OperatorConfig.from_env({"GUARDEDMODEL_CLUSTER_SCANNING": raw}).cluster_scanning is scanning
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    flagged = OperatorConfig().with_args(parser.parse_args([f"--cluster-scanning={raw}"]))
    assert flagged.cluster_scanning is scanning
