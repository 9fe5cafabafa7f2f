"""Routing, OOD rejection, micro-batching and standalone mode against a real Triton."""

from __future__ import annotations

import concurrent.futures
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from conftest import sidecar_config
from sidecar_toy import MODEL, reference_outputs, toy_data
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.integration


def infer(url: str, x: np.ndarray, version: str = "", **kw):
    client = httpclient.InferenceServerClient(url)
    inp = httpclient.InferInput("INPUT", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(MODEL, [inp], model_version=version, **kw)


def test_canary_weight_splits_traffic_and_each_version_has_its_own_guard(
    tmp_path: Path, toy_repository: Path, toy_triton, sidecar_factory
) -> None:
    config = sidecar_config(
        toy_triton,
        toy_repository,
        tmp_path,
        routing={"stableVersion": "1", "canaryVersion": "2", "canaryWeight": 25},
    )
    sidecar = sidecar_factory(config)
    x = toy_data().sample(1, seed=21)[0]
    versions = Counter(
        infer(sidecar.http_url, x).get_response()["parameters"]["model_version"] for _ in range(40)
    )
    assert versions == {"1": 30, "2": 10}
    # both versions are loaded in Triton side by side (explicit mode, loaded by the sidecar)
    direct = httpclient.InferenceServerClient(toy_triton.http_url)
    assert direct.is_model_ready(MODEL, "1") and direct.is_model_ready(MODEL, "2")
    # an explicit version is honoured and answered by that version's model and guard
    two = infer(sidecar.http_url, x, version="2")
    np.testing.assert_allclose(two.as_numpy("LOGITS"), reference_outputs(x, "2")[0], rtol=1e-5)
    assert two.get_response()["model_version"] == "2"
    one = infer(sidecar.http_url, x, version="1").get_response()["parameters"]
    assert one["guard_ood_score"] != two.get_response()["parameters"]["guard_ood_score"]
    with pytest.raises(InferenceServerException, match="version 3 of 'toy' is not served") as error:
        infer(sidecar.http_url, x, version="3")
    assert error.value.status() == "404"


def test_ood_action_reject_refuses_with_422_and_invalid_argument(
    tmp_path: Path, toy_repository: Path, toy_triton, sidecar_factory
) -> None:
    config = sidecar_config(
        toy_triton,
        toy_repository,
        tmp_path,
        spec={
            "gate": {
                "inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [8], "min": 0.0, "max": 1.0}],
                "ood": {"method": "energy", "action": "reject"},
            }
        },
    )
    sidecar = sidecar_factory(config)
    data = toy_data()
    accepted = infer(sidecar.http_url, data.sample(1, seed=22)[0]).get_response()["parameters"]
    assert accepted["guard_decision"] == "accept"
    far = data.far_ood(1, seed=5)
    with pytest.raises(InferenceServerException) as error:
        infer(sidecar.http_url, far)
    assert error.value.status() == "422"
    assert "out of distribution" in error.value.message() and "energy OOD score" in error.value.message()
    client = grpcclient.InferenceServerClient(sidecar.grpc_url)
    inp = grpcclient.InferInput("INPUT", [1, 8], "FP32")
    inp.set_data_from_numpy(far)
    with pytest.raises(InferenceServerException) as grpc_error:
        client.infer(MODEL, [inp])
    assert grpc_error.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_micro_batching_gives_every_caller_its_own_answer(
    tmp_path: Path, toy_repository: Path, toy_triton, sidecar_factory
) -> None:
    config = sidecar_config(
        toy_triton, toy_repository, tmp_path, tuning={"microBatching": {"enabled": True, "maxBatch": 16}}
    )
    sidecar = sidecar_factory(config)
    data = toy_data()
    xs = [data.sample(1 + i % 3, seed=100 + i)[0] for i in range(120)]

    def one(x: np.ndarray) -> tuple[np.ndarray, str]:
        result = infer(sidecar.http_url, x)
        return result.as_numpy("LOGITS"), result.get_response()["parameters"][
            "guard_decisions" if len(x) > 1 else "guard_decision"
        ]

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, xs))
    for x, (logits, decisions) in zip(xs, results, strict=True):
        np.testing.assert_allclose(logits, reference_outputs(x)[0], rtol=1e-5)
        assert len(decisions.split(",")) == len(x)
    metrics = sidecar.metrics()
    assert (
        'guardedmodel_samples_total{model="toy",version="1"} ' + f"{float(sum(len(x) for x in xs))}"
        in metrics
    )


def test_standalone_against_a_triton_that_loads_everything_itself(
    tmp_path: Path, toy_repository: Path, triton_server_factory, sidecar_factory
) -> None:
    """model-control-mode none: the repository API cannot load, yet the versions are there to serve."""
    triton = triton_server_factory(toy_repository)
    config = sidecar_config(triton, toy_repository, tmp_path, routing={"stableVersion": "2"})
    sidecar = sidecar_factory(config)
    x = toy_data().sample(2, seed=30)[0]
    result = infer(sidecar.http_url, x)
    assert result.get_response()["parameters"]["model_version"] == "2"
    np.testing.assert_allclose(result.as_numpy("LOGITS"), reference_outputs(x, "2")[0], rtol=1e-5)
