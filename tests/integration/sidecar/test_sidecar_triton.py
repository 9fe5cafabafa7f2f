"""The sidecar in front of a real Triton, driven by unchanged tritonclient (HTTP and gRPC)."""

from __future__ import annotations

import concurrent.futures
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from conftest import SidecarProcess, WebhookReceiver, launch_sidecar, sidecar_config
from prometheus_client.parser import text_string_to_metric_families
from sidecar_toy import MODEL, reference_outputs, toy_data
from tritonclient.utils import InferenceServerException

from guardedmodel_sidecar.audit_file import iter_records
from guardedmodel_testground.triton import TritonServer

pytestmark = pytest.mark.integration


def guard_outputs_of(parameters: dict[str, Any]) -> list[str]:
    """The guard outputs a response asked for in full carries: this stack scores OOD (Mahalanobis),
    and a guard with conformal calibration also gives p-values (then summarised in the parameters)."""
    names = ["GUARD_DECISION", "GUARD_CONFIDENCE", "GUARD_OOD_SCORE"]
    return [*names, "GUARD_OOD_P_VALUE"] if "guard_ood_p_value" in parameters else names


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, toy_repository: Path
) -> Iterator[tuple[TritonServer, SidecarProcess, WebhookReceiver]]:
    """One Triton (explicit model control) and one sidecar for the read-mostly tests of this module."""
    work = tmp_path_factory.mktemp("stack")
    receiver = WebhookReceiver().start()
    triton = TritonServer(toy_repository, model_control_mode="explicit", log_dir=work / "logs")
    triton.start()
    config = sidecar_config(
        triton,
        toy_repository,
        work,
        spec={"confidence": {"reviewBelow": 0.8, "review": {"webhook": receiver.url, "maxFraction": 1.0}}},
        tuning={"tritonMetricsInterval": "0.2s"},
    )
    proc = launch_sidecar(config, work, "sidecar")
    try:
        proc.wait_ready()
        yield triton, proc, receiver
    finally:
        proc.stop()
        triton.stop()
        receiver.stop()


def http_infer(url: str, x: np.ndarray, *, binary: bool = True, outputs: list[str] | None = None, **kw: Any):
    client = httpclient.InferenceServerClient(url)
    inp = httpclient.InferInput("INPUT", list(x.shape), httpclient.np_to_triton_dtype(x.dtype))
    inp.set_data_from_numpy(x, binary_data=binary)
    requested = (
        None if outputs is None else [httpclient.InferRequestedOutput(o, binary_data=binary) for o in outputs]
    )
    return client.infer(MODEL, [inp], outputs=requested, **kw)


def grpc_infer(url: str, x: np.ndarray, *, outputs: list[str] | None = None, **kw: Any):
    client = grpcclient.InferenceServerClient(url)
    inp = grpcclient.InferInput("INPUT", list(x.shape), grpcclient.np_to_triton_dtype(x.dtype))
    inp.set_data_from_numpy(x)
    requested = None if outputs is None else [grpcclient.InferRequestedOutput(o) for o in outputs]
    return client.infer(MODEL, [inp], outputs=requested, **kw)


def records_with_prefix(directory: Path, prefix: str) -> list[dict[str, Any]]:
    return (
        [r for r in iter_records(directory) if str(r.get("client_id") or "").startswith(prefix)]
        if directory.exists()
        else []
    )


def wait_records(directory: Path, prefix: str, expected: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The audit records of this test's requests only: the writer is asynchronous, so an earlier
    test's records may still be landing when this one starts, and counting lines would mix them in."""
    deadline = time.monotonic() + timeout
    records = records_with_prefix(directory, prefix)
    while len(records) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
        records = records_with_prefix(directory, prefix)
    return records


# ------------------------------------------------------------------------------------- same answers


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("outputs", [None, ["LOGITS"], ["FEATURES", "LOGITS"]], ids=["all", "logits", "both"])
def test_http_outputs_equal_direct_triton(stack, binary: bool, outputs: list[str] | None) -> None:
    triton, sidecar, _ = stack
    x = toy_data().sample(5, seed=3)[0]
    direct = http_infer(triton.http_url, x, binary=binary, outputs=outputs)
    guarded = http_infer(sidecar.http_url, x, binary=binary, outputs=outputs)
    names = [o["name"] for o in direct.get_response()["outputs"]]
    # Asked for every output, the caller also gets the guard's per-row results after the model's.
    guard_names = guard_outputs_of(guarded.get_response()["parameters"]) if outputs is None else []
    assert [o["name"] for o in guarded.get_response()["outputs"]] == names + guard_names
    for name in names:
        np.testing.assert_array_equal(guarded.as_numpy(name), direct.as_numpy(name))
    logits, _ = reference_outputs(x)
    np.testing.assert_allclose(guarded.as_numpy("LOGITS"), logits, rtol=1e-5)
    params = guarded.get_response()["parameters"]
    assert params["model_version"] == "1" and params["guard_decision"] in ("accept", "review")
    assert 0.0 < params["guard_confidence"] <= 1.0 and "guard_ood_score" in params


@pytest.mark.parametrize("outputs", [None, ["LOGITS"]], ids=["all", "logits"])
def test_grpc_outputs_equal_direct_triton(stack, outputs: list[str] | None) -> None:
    triton, sidecar, _ = stack
    x = toy_data().sample(4, seed=4)[0]
    direct = grpc_infer(triton.grpc_url, x, outputs=outputs)
    guarded = grpc_infer(sidecar.grpc_url, x, outputs=outputs)
    names = [o.name for o in direct.get_response().outputs]
    params = {k: v.WhichOneof("parameter_choice") for k, v in guarded.get_response().parameters.items()}
    guard_names = guard_outputs_of(params) if outputs is None else []
    assert [o.name for o in guarded.get_response().outputs] == names + guard_names
    for name in names:
        np.testing.assert_array_equal(guarded.as_numpy(name), direct.as_numpy(name))
    params = guarded.get_response().parameters
    assert params["guard_decision"].string_param in ("accept", "review")
    assert params["model_version"].string_param == "1"
    assert 0.0 < params["guard_confidence"].double_param <= 1.0


@pytest.mark.parametrize("compression", ["gzip", "deflate"])
def test_grpc_compressed_calls_with_a_deadline_answer_as_triton_does(stack, compression: str) -> None:
    triton, sidecar, _ = stack
    x = toy_data().sample(3, seed=5)[0]
    kw = {"compression_algorithm": compression, "client_timeout": 30.0}
    direct = grpc_infer(triton.grpc_url, x, outputs=["LOGITS"], **kw)
    guarded = grpc_infer(sidecar.grpc_url, x, outputs=["LOGITS"], **kw)
    np.testing.assert_array_equal(guarded.as_numpy("LOGITS"), direct.as_numpy("LOGITS"))


def test_health_and_metadata_match_triton(stack) -> None:
    triton, sidecar, _ = stack
    direct, guarded = (
        httpclient.InferenceServerClient(triton.http_url),
        httpclient.InferenceServerClient(sidecar.http_url),
    )
    assert guarded.is_server_live() and guarded.is_server_ready() and guarded.is_model_ready(MODEL)
    assert guarded.get_model_metadata(MODEL) == direct.get_model_metadata(MODEL)
    assert guarded.get_model_config(MODEL) == direct.get_model_config(MODEL)
    assert guarded.get_server_metadata()["name"] == direct.get_server_metadata()["name"]
    gdirect, gguarded = (
        grpcclient.InferenceServerClient(triton.grpc_url),
        grpcclient.InferenceServerClient(sidecar.grpc_url),
    )
    assert gguarded.is_server_live() and gguarded.is_server_ready() and gguarded.is_model_ready(MODEL)
    assert gguarded.get_model_metadata(MODEL, as_json=True) == gdirect.get_model_metadata(MODEL, as_json=True)
    with pytest.raises(InferenceServerException, match="managed by the guard sidecar"):
        guarded.unload_model(MODEL)
    with pytest.raises(InferenceServerException, match="managed by the guard sidecar"):
        gguarded.load_model(MODEL)
    assert direct.is_model_ready(MODEL)


# ------------------------------------------------------------------------------------- the gate


GARBAGE = [
    ("wrong dtype", lambda x: x.astype(np.float64), "datatype FP64 given, the model takes FP32"),
    ("wrong shape", lambda x: x[:, :5], r"does not match \[batch, 8\]"),
    ("NaN", lambda x: np.where(np.arange(8) == 2, np.nan, x).astype(np.float32), "value\\(s\\) are NaN"),
    ("infinite", lambda x: np.where(np.arange(8) == 0, np.inf, x).astype(np.float32), "infinite"),
    ("unscaled pixels", lambda x: (x * 255).astype(np.float32), r"outside the allowed range \[0.0, 1.0\]"),
    (
        "corrupted value",
        lambda x: np.where(np.arange(8) == 7, -3e7, x).astype(np.float32),
        "outside the allowed range",
    ),
]


@pytest.mark.parametrize(("what", "corrupt", "message"), GARBAGE, ids=[g[0] for g in GARBAGE])
def test_garbage_is_refused_with_a_reason_over_http_and_grpc(stack, what, corrupt, message) -> None:
    _, sidecar, _ = stack
    x = corrupt(toy_data().sample(2, seed=5)[0])
    prefix = f"garbage-{what.replace(' ', '-')}-"
    with pytest.raises(InferenceServerException) as http_error:
        http_infer(sidecar.http_url, x, request_id=prefix + "binary")
    assert http_error.value.status() == "400"
    assert "INPUT" in http_error.value.message() and re.search(message, http_error.value.message())
    with pytest.raises(InferenceServerException) as json_error:
        http_infer(sidecar.http_url, x, binary=False, request_id=prefix + "json")
    assert json_error.value.status() == "400" and re.search(message, json_error.value.message())
    with pytest.raises(InferenceServerException) as grpc_error:
        grpc_infer(sidecar.grpc_url, x, request_id=prefix + "grpc")
    assert grpc_error.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "INPUT" in grpc_error.value.message()
    records = wait_records(sidecar.audit_dir, prefix, 3)
    assert sorted(r["client_id"] for r in records) == [prefix + "binary", prefix + "grpc", prefix + "json"]
    assert [r["decision"] for r in records] == ["reject"] * 3
    assert all(r["status"] == 400 and "INPUT" in r["error"] for r in records)


def test_unknown_input_and_model_are_refused(stack) -> None:
    _, sidecar, _ = stack
    client = httpclient.InferenceServerClient(sidecar.http_url)
    wrong = httpclient.InferInput("PIXELS", [1, 8], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 8), np.float32))
    with pytest.raises(InferenceServerException, match="'PIXELS' is not an input"):
        client.infer(MODEL, [wrong])
    with pytest.raises(InferenceServerException, match="this sidecar guards 'toy'") as error:
        client.infer("other", [wrong])
    assert error.value.status() == "404"


def test_grey_level_shift_is_flagged_for_review_with_the_reason(stack) -> None:
    _, sidecar, _ = stack
    x = np.clip(toy_data().sample(1, seed=6)[0] + 0.35, 0, 1).astype(np.float32)
    result = http_infer(sidecar.http_url, x)
    params = result.get_response()["parameters"]
    assert params["guard_decision"] == "review"
    assert "brightness/scale shift" in params["guard_reasons"]


def test_ood_inputs_are_flagged(stack) -> None:
    _, sidecar, _ = stack
    data = toy_data()
    far = data.far_ood(4, seed=1)
    result = http_infer(sidecar.http_url, far)
    params = result.get_response()["parameters"]
    assert params["guard_decision"] == "review"
    assert "mahalanobis OOD score" in params["guard_reasons"]
    assert params["guard_decisions"].split(",") == ["review"] * 4
    ok = http_infer(sidecar.http_url, data.sample(1, seed=2)[0]).get_response()["parameters"]
    assert params["guard_ood_score"] > 10 * ok["guard_ood_score"]
    grpc_params = grpc_infer(sidecar.grpc_url, far).get_response().parameters
    assert grpc_params["guard_decision"].string_param == "review"


# ------------------------------------------------------------------------------------- review, audit, metrics


def test_low_confidence_goes_to_the_webhook_and_the_caller_hears_review(stack) -> None:
    _, sidecar, receiver = stack
    x = toy_data().ambiguous(1, seed=9)
    result = http_infer(sidecar.http_url, x, request_id="ambiguous-1")
    params = result.get_response()["parameters"]
    assert params["guard_decision"] == "review" and params["guard_confidence"] < 0.8
    assert "below reviewBelow 0.8" in params["guard_reasons"]
    deadline = time.monotonic() + 10
    while (
        not any(item["client_id"] == "ambiguous-1" for item in receiver.received)
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    item = next(item for item in receiver.received if item["client_id"] == "ambiguous-1")
    assert item["decision"] == "review" and item["version"] == "1"
    assert item["confidence"][0] == pytest.approx(params["guard_confidence"])
    np.testing.assert_allclose(np.asarray(item["inputs"][0]["data"], np.float32), x)


def test_audit_records_equal_requests_under_concurrency(stack) -> None:
    _, sidecar, _ = stack
    data = toy_data()
    good = data.sample(1, seed=10)[0]
    bad = np.full((1, 8), np.nan, np.float32)
    prefix = "concurrent-"

    def one(i: int) -> str:
        x = bad if i % 5 == 0 else good
        try:
            if i % 2:
                response = grpc_infer(sidecar.grpc_url, x, request_id=f"{prefix}{i}").get_response()
                return response.parameters["guard_decision"].string_param
            return http_infer(sidecar.http_url, x, request_id=f"{prefix}{i}").get_response()["parameters"][
                "guard_decision"
            ]
        except InferenceServerException:
            return "refused"

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(one, range(400)))
    assert outcomes.count("refused") == 80
    assert len(wait_records(sidecar.audit_dir, prefix, 400)) == 400
    time.sleep(0.3)  # nothing more than one record per request either
    records = records_with_prefix(sidecar.audit_dir, prefix)
    assert sorted(r["client_id"] for r in records) == sorted(f"{prefix}{i}" for i in range(400))
    assert len({r["id"] for r in records}) == 400  # the sidecar's own ids, unique
    refused = {r["client_id"] for r in records if r["decision"] == "reject"}
    assert refused == {f"{prefix}{i}" for i in range(0, 400, 5)}
    samples = list(iter_records(sidecar.audit_dir, "samples"))
    assert samples and all("b64" in s["inputs"][0] for s in samples)


def test_triton_queue_time_is_republished_per_version(stack) -> None:
    """The operator's scaler reads Triton's queue time from the sidecar's metrics port."""
    _, sidecar, _ = stack

    def served() -> tuple[float, float]:
        values = {
            (s.name, s.labels.get("version")): s.value
            for f in text_string_to_metric_families(sidecar.metrics())
            for s in f.samples
        }
        return (
            values.get(("guardedmodel_triton_requests_total", "1"), 0.0),
            values.get(("guardedmodel_triton_queue_seconds_total", "1"), -1.0),
        )

    before, _ = served()
    for i in range(5):
        http_infer(sidecar.http_url, toy_data().sample(1, seed=30 + i)[0])
    deadline = time.monotonic() + 10
    while served()[0] < before + 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    completed, queue_seconds = served()
    assert completed >= before + 5
    assert 0.0 <= queue_seconds < completed  # cumulative seconds: well under a second per request here


def test_metrics_are_exposed_and_parseable(stack) -> None:
    _, sidecar, _ = stack
    http_infer(sidecar.http_url, toy_data().sample(3, seed=11)[0])
    families = {f.name: f for f in text_string_to_metric_families(sidecar.metrics())}
    for name in (
        "guardedmodel_requests",
        "guardedmodel_confidence",
        "guardedmodel_ood_score",
        "guardedmodel_estimated_accuracy",
        "guardedmodel_drift_score",
        "guardedmodel_stage_seconds",
        "guardedmodel_review_items",
        "guardedmodel_audit_records",
        "guardedmodel_triton_ready",
        "guardedmodel_gate_refusals",
    ):
        assert name in families, name
    requests = {s.labels["decision"]: s.value for s in families["guardedmodel_requests"].samples}
    assert requests["accept"] + requests["review"] >= 1
    stages = {s.labels["stage"] for s in families["guardedmodel_stage_seconds"].samples}
    assert stages == {"gate", "model", "scorer", "total"}
    assert families["guardedmodel_triton_ready"].samples[0].value == 1.0
    deadline = time.monotonic() + 5  # the drift window is 2 s in this stack
    while time.monotonic() < deadline:
        families = {f.name: f for f in text_string_to_metric_families(sidecar.metrics())}
        accuracy = families["guardedmodel_estimated_accuracy"].samples[0].value
        if accuracy == accuracy:  # not NaN: a window with traffic has closed
            break
        http_infer(sidecar.http_url, toy_data().sample(3, seed=12)[0])
        time.sleep(0.2)
    assert 0.0 < accuracy <= 1.0
    drift = {s.labels["statistic"]: s.value for s in families["guardedmodel_drift_score"].samples}
    assert {"score", "confidence_psi", "confidence_ks", "class_psi"} <= set(drift)


# ------------------------------------------------------------------------------------- Triton dies


def test_triton_killed_makes_the_sidecar_not_ready_then_it_recovers(stack) -> None:
    triton, sidecar, _ = stack
    x = toy_data().sample(1, seed=13)[0]
    triton.kill()
    sidecar.wait_ready(timeout=10, want=503)
    with pytest.raises(InferenceServerException) as error:
        http_infer(sidecar.http_url, x)
    assert error.value.status() == "503"
    with pytest.raises(InferenceServerException) as grpc_error:
        grpc_infer(sidecar.grpc_url, x)
    assert grpc_error.value.status() == "StatusCode.UNAVAILABLE"
    assert not grpcclient.InferenceServerClient(sidecar.grpc_url).is_server_ready()
    triton.restart()  # explicit mode: Triton comes back empty; the sidecar reloads version 1
    sidecar.wait_ready(timeout=60)
    assert http_infer(sidecar.http_url, x).get_response()["parameters"]["model_version"] == "1"


def test_grpc_stream_infer_is_guarded_too(stack) -> None:
    _, sidecar, _ = stack
    results: list[Any] = []
    errors: list[Any] = []
    client = grpcclient.InferenceServerClient(sidecar.grpc_url)
    client.start_stream(callback=lambda result, error: (errors if error else results).append(error or result))
    good = toy_data().sample(2, seed=14)[0]
    bad = np.full((1, 8), np.nan, np.float32)
    for x in (good, bad, good):
        inp = grpcclient.InferInput("INPUT", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        client.async_stream_infer(MODEL, [inp])
    deadline = time.monotonic() + 10
    while len(results) + len(errors) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    client.stop_stream()
    assert len(results) == 2 and len(errors) == 1
    assert "NaN" in str(errors[0])
    for result in results:
        np.testing.assert_allclose(result.as_numpy("LOGITS"), reference_outputs(good)[0], rtol=1e-5)
        assert result.get_response().parameters["guard_decision"].string_param in ("accept", "review")
