"""Routing: exact canary weights, status parsing that keeps what it lacks, the local config reader."""

from __future__ import annotations

from pathlib import Path

from guardedmodel_sidecar.config import Routing
from guardedmodel_sidecar.model_loader import local_model_config
from guardedmodel_sidecar.routing import Router
from guardedmodel_sidecar.status_watch import routing_from_status


def test_canary_weight_is_exact_not_random() -> None:
    router = Router(Routing("1", "2", 10))
    picks = [router.choose() for _ in range(1000)]
    assert picks.count("2") == 100
    assert picks[:10].count("2") == 1


def test_previous_stable_stays_loaded_after_a_promotion() -> None:
    router = Router(Routing("1", "2", 50))
    assert router.update(Routing("2"))
    assert router.versions_to_load() == ("2", "1")
    assert not router.update(Routing("2"))
    assert [router.choose() for _ in range(3)] == ["2", "2", "2"]


def test_routing_from_status() -> None:
    last = Routing("1", "2", 20)
    assert routing_from_status(None, last) == last
    assert routing_from_status({"stableVersion": "3"}, last) == Routing("3", None, 0)
    assert routing_from_status({"stableVersion": "1", "canaryVersion": "2"}, last) == last
    assert routing_from_status(
        {"stableVersion": "1", "canaryVersion": "4", "canaryWeight": 250}, last
    ) == Routing("1", "4", 100)


def test_local_model_config_reads_config_pbtxt_as_triton_json(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.pbtxt").write_text(
        'backend: "python"\nmax_batch_size: 8\ninput [{ name: "X", data_type: TYPE_FP32, dims: [ 4 ] }]\n'
        'output [{ name: "Y", data_type: TYPE_FP32, dims: [ 2 ] }]\n'
    )
    config = local_model_config(tmp_path, "m")
    assert config is not None
    assert config["name"] == "m" and config["max_batch_size"] == 8
    assert config["input"][0]["name"] == "X" and config["input"][0]["data_type"] == "TYPE_FP32"
    assert [int(d) for d in config["input"][0]["dims"]] == [4]  # int64 comes out as JSON strings
    assert local_model_config(tmp_path, "absent") is None
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.pbtxt").write_text("backend: [")
    assert local_model_config(tmp_path, "bad") is None
