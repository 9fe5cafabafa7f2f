"""Per-row guard answers in front of a real Triton, on the worked Fashion-MNIST example.

Batch 32 of the example's own validation rows with out-of-distribution rows (held-out classes) mixed
in, sent with unchanged tritonclient calls over HTTP JSON, the HTTP binary extension, gRPC and gRPC
streaming: the accepted rows are bit-identical to a direct Triton call on the same rows, the refused
rows are NaN, the GUARD_* outputs agree with each other and with the request's summary parameters,
``wholeRequest`` refuses, a batch of refused rows only is refused, subsets of outputs work, and with
micro-batching on every caller gets its own rows' decisions.

The test fixes the OOD threshold itself (``spec.gate.ood.threshold``) and picks rows well inside or
well outside it, so which rows are refused is known before the sidecar is asked.
"""

from __future__ import annotations

import concurrent.futures
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from conftest import SidecarProcess, WebhookReceiver, copy_example_version, launch_sidecar
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from guardedmodel_fit.example import DEFAULT_OUT, ExampleBuild, build_example
from guardedmodel_fit.example_data import NEAR_OOD_SET
from guardedmodel_fit.example_network import INPUT_NAME, MODEL_NAME
from guardedmodel_sidecar.audit_file import iter_records
from guardedmodel_sidecar.guard.artifact import GuardArtifact, load_artifact
from guardedmodel_sidecar.guard.scoring import calibrated_confidence, make_ood_scorer
from guardedmodel_testground.sidecar_config import sidecar_config
from guardedmodel_testground.triton import TritonServer

pytestmark = pytest.mark.integration

BATCH = 32
OOD_ROWS = (3, 11, 20, 29)  # where the out-of-distribution rows sit in the batch
REVIEW_BELOW = 0.6
METHOD = "mahalanobis"
GUARD = ["GUARD_DECISION", "GUARD_CONFIDENCE", "GUARD_OOD_SCORE"]


@dataclass(frozen=True)
class Rows:
    """Rows whose guard decision is known: far from the threshold and from reviewBelow."""

    threshold: float
    accepted: np.ndarray  # in distribution, confident
    unsure: np.ndarray  # in distribution, calibrated confidence well below reviewBelow
    ood: np.ndarray  # far above the threshold, within the gate's per-sample statistics

    def batch(self, ood_rows: tuple[int, ...] = OOD_ROWS, unsure_rows: tuple[int, ...] = (7,)) -> np.ndarray:
        x = self.accepted[:BATCH].copy()
        for i, row in enumerate(ood_rows):
            x[row] = self.ood[i % len(self.ood)]
        for i, row in enumerate(unsure_rows):
            x[row] = self.unsure[i % len(self.unsure)]
        return x


def expected_decisions(
    ood_rows: tuple[int, ...] = OOD_ROWS, unsure_rows: tuple[int, ...] = (7,)
) -> list[str]:
    decisions = ["accept"] * BATCH
    for row in unsure_rows:
        decisions[row] = "review"
    for row in ood_rows:
        decisions[row] = "reject"
    return decisions


# ----------------------------------------------------------------------------------- the stack


@pytest.fixture(scope="module")
def example() -> ExampleBuild:
    return build_example(DEFAULT_OUT, versions=("1",), progress=False)


@pytest.fixture(scope="module")
def repository(example: ExampleBuild, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Version 1 and its guard, copied: the cached example may be refitted while this module runs."""
    return copy_example_version(example.model_dir, tmp_path_factory.mktemp("fashion") / "models")


@pytest.fixture(scope="module")
def triton(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    server = TritonServer(repository, model_control_mode="explicit", log_dir=tmp_path_factory.mktemp("logs"))
    server.start()
    try:
        httpclient.InferenceServerClient(server.http_url).load_model(MODEL_NAME)
        yield server
    finally:
        server.stop()


def direct_outputs(triton: TritonServer, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    logits, features = [], []
    for start in range(0, len(x), 64):
        result = http_infer(triton.http_url, x[start : start + 64])
        logits.append(result.as_numpy("LOGITS"))
        features.append(result.as_numpy("FEATURES"))
    return np.concatenate(logits), np.concatenate(features)


@pytest.fixture(scope="module")
def rows(example: ExampleBuild, repository: Path, triton: TritonServer) -> Rows:
    """Validation rows and held-out-class rows scored by the version's own guard maths on Triton's
    outputs; the threshold is the 90th percentile of the validation scores."""
    artifact = load_artifact(repository / MODEL_NAME / "1" / "guard")
    scorer = make_ood_scorer(METHOD, artifact)
    validation = example.dataset("validation").inputs[:1024].astype(np.float32)
    near = example.dataset(NEAR_OOD_SET).inputs[:1024].astype(np.float32)
    logits, features = direct_outputs(triton, validation)
    scores = scorer.score(logits, features)
    confidence, _ = calibrated_confidence(logits, artifact.temperature)
    threshold = float(np.quantile(scores, 0.9))
    inside = (scores < np.quantile(scores, 0.5)) & within_gate_statistics(validation, artifact)
    accepted = validation[inside & (confidence > REVIEW_BELOW + 0.15)]
    unsure = validation[inside & (confidence < REVIEW_BELOW - 0.1)]
    near_logits, near_features = direct_outputs(triton, near)
    far_above = scorer.score(near_logits, near_features) > 2 * threshold
    ood = near[far_above & within_gate_statistics(near, artifact)]
    assert len(accepted) >= 64 and len(unsure) >= 2 and len(ood) >= 8, (len(accepted), len(unsure), len(ood))
    return Rows(threshold, accepted, unsure, ood)


def within_gate_statistics(x: np.ndarray, artifact: GuardArtifact) -> np.ndarray:
    """Rows the input gate does not flag (a flag would send the whole request to review)."""
    reference = artifact.input_reference
    assert reference is not None
    flat = x.reshape(len(x), -1)
    mean, std = flat.mean(axis=1), flat.std(axis=1)
    (m_lo, m_hi), (s_lo, s_hi) = reference.sample_mean_range, reference.sample_std_range
    margin = 0.1 * (m_hi - m_lo)
    return (mean > m_lo + margin) & (mean < m_hi - margin) & (std > s_lo * 1.1) & (std < s_hi * 0.9)


def fashion_spec(threshold: float, batch_policy: str, webhook: str | None = None) -> dict[str, Any]:
    return {
        "model": {"name": MODEL_NAME, "version": "1"},
        "gate": {
            "inputs": [
                {"name": INPUT_NAME, "datatype": "FP32", "shape": [1, 28, 28], "min": 0.0, "max": 1.0}
            ],
            "ood": {"method": METHOD, "threshold": threshold, "action": "reject"},
            "batchPolicy": batch_policy,
        },
        "confidence": {"reviewBelow": REVIEW_BELOW, "review": {"webhook": webhook, "maxFraction": 1.0}},
        "audit": {"enabled": True, "sampleRate": 0.0},
        "drift": {"window": "60s"},
    }


@dataclass
class Stack:
    triton: TritonServer
    per_row: SidecarProcess  # perRow, micro-batching on, review webhook
    whole: SidecarProcess  # wholeRequest
    receiver: WebhookReceiver
    rows: Rows


@pytest.fixture(scope="module")
def stack(
    repository: Path, triton: TritonServer, rows: Rows, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("per-row")
    receiver = WebhookReceiver().start()
    started: list[SidecarProcess] = []
    try:
        for name, policy, tuning in (
            ("per-row", "perRow", {"microBatching": {"enabled": True, "maxBatch": 64, "maxInflight": 1}}),
            ("whole", "wholeRequest", {}),
        ):
            config = sidecar_config(
                fashion_spec(rows.threshold, policy, receiver.url if policy == "perRow" else None),
                triton=triton,
                repository=repository,
                workdir=work / name,
                tuning=tuning,
            )
            started.append(launch_sidecar(config, work, name))
        for proc in started:
            proc.wait_ready()
        yield Stack(triton, started[0], started[1], receiver, rows)
    finally:
        for proc in started:
            proc.stop()
        receiver.stop()


# ----------------------------------------------------------------------------------- clients


def http_infer(
    url: str, x: np.ndarray, *, binary: bool = True, outputs: list[tuple[str, bool]] | None = None, **kw: Any
) -> Any:
    client = httpclient.InferenceServerClient(url)
    inp = httpclient.InferInput(INPUT_NAME, list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    requested = (
        None if outputs is None else [httpclient.InferRequestedOutput(n, binary_data=b) for n, b in outputs]
    )
    return client.infer(MODEL_NAME, [inp], outputs=requested, **kw)


def grpc_input(x: np.ndarray) -> Any:
    inp = grpcclient.InferInput(INPUT_NAME, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


def grpc_infer(url: str, x: np.ndarray, outputs: list[str] | None = None, **kw: Any) -> Any:
    requested = None if outputs is None else [grpcclient.InferRequestedOutput(n) for n in outputs]
    return grpcclient.InferenceServerClient(url).infer(MODEL_NAME, [grpc_input(x)], outputs=requested, **kw)


def grpc_stream(url: str, batches: list[np.ndarray], outputs: list[str] | None = None) -> list[Any]:
    """One stream, one request per batch, each sent once the one before is answered (so the
    micro-batcher has nothing to stack it with); each answer (a result or an
    InferenceServerException) in request order."""
    answers: dict[str, Any] = {}
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(
        callback=lambda result, error: answers.__setitem__(_id(result, error), error or result)
    )
    requested = None if outputs is None else [grpcclient.InferRequestedOutput(n) for n in outputs]
    for i, x in enumerate(batches):
        client.async_stream_infer(MODEL_NAME, [grpc_input(x)], request_id=f"s{i}", outputs=requested)
        deadline = time.monotonic() + 30
        while f"s{i}" not in answers and time.monotonic() < deadline:
            time.sleep(0.01)
    client.stop_stream()
    return [answers[f"s{i}"] for i in range(len(batches))]


def _id(result: Any, error: Any) -> str:
    if error is not None:  # the sidecar leads a refused stream request's message with its id
        return str(error.message()).split("[request id: ", 1)[1].split("]", 1)[0]
    return str(result.get_response().id)


def http_parameters(result: Any) -> dict[str, Any]:
    return dict(result.get_response()["parameters"])


def grpc_parameters(result: Any) -> dict[str, Any]:
    return {
        k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in result.get_response().parameters.items()
    }


def decisions_of(result: Any) -> list[str]:
    return [d.decode() if isinstance(d, bytes) else d for d in result.as_numpy("GUARD_DECISION").tolist()]


# ----------------------------------------------------------------------------------- checks


def check_per_row_answer(result: Any, parameters: dict[str, Any], x: np.ndarray, stack: Stack) -> None:
    """Accepted rows bit-identical to Triton, refused rows NaN, guard outputs and summary agreeing."""
    expected = expected_decisions()
    assert decisions_of(result) == expected
    refused = np.array([d == "reject" for d in expected])
    direct = http_infer(stack.triton.http_url, x)
    for name in ("LOGITS", "FEATURES"):
        got, sent = result.as_numpy(name), direct.as_numpy(name)
        assert got.shape == sent.shape and got.dtype == sent.dtype
        assert got[~refused].tobytes() == sent[~refused].tobytes(), name
        assert np.isnan(got[refused]).all(), name
    confidence = result.as_numpy("GUARD_CONFIDENCE")
    scores = result.as_numpy("GUARD_OOD_SCORE")
    assert confidence.dtype == np.float32 and confidence.shape == (BATCH,)
    assert (scores[refused] > stack.rows.threshold).all() and (scores[~refused] <= stack.rows.threshold).all()
    review = np.array([d == "review" for d in expected])
    assert ((confidence < REVIEW_BELOW) == review)[~refused].all()  # a refused row may be unsure too
    assert parameters["guard_decision"] == "reject"
    assert (parameters["guard_rows"], parameters["guard_rows_rejected"], parameters["guard_rows_review"]) == (
        BATCH,
        len(OOD_ROWS),
        1,
    )
    assert parameters["guard_decisions"].split(",") == expected
    # The summary is the lowest confidence and the highest score, kept in float64 (the tensors are FP32).
    assert np.float32(parameters["guard_confidence"]) == confidence.min()
    assert np.float32(parameters["guard_ood_score"]) == scores.max()
    if "guard_ood_p_value" in parameters:  # the version's guard has conformal calibration scores
        p_values = result.as_numpy("GUARD_OOD_P_VALUE")
        assert np.float32(parameters["guard_ood_p_value"]) == p_values.min()
        assert (np.diff(p_values[np.argsort(scores)]) <= 0).all()  # a higher score, a smaller p-value
        assert p_values[refused].max() < 0.1 < p_values[~refused].max()


# ----------------------------------------------------------------------------------- per row


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_http_answers_a_mixed_batch_row_by_row(stack: Stack, binary: bool) -> None:
    x = stack.rows.batch()
    result = http_infer(stack.per_row.http_url, x, binary=binary, request_id=f"http-{binary}")
    check_per_row_answer(result, http_parameters(result), x, stack)
    names = [o["name"] for o in result.get_response()["outputs"]]
    p_value = ["GUARD_OOD_P_VALUE"] if "guard_ood_p_value" in http_parameters(result) else []
    assert names == ["LOGITS", "FEATURES", *GUARD, *p_value]


def test_grpc_answers_a_mixed_batch_row_by_row(stack: Stack) -> None:
    x = stack.rows.batch()
    result = grpc_infer(stack.per_row.grpc_url, x)
    check_per_row_answer(result, grpc_parameters(result), x, stack)


def test_grpc_stream_answers_each_request_row_by_row(stack: Stack) -> None:
    x = stack.rows.batch()
    everything_refused = stack.rows.ood[:4]
    first, refused, again = grpc_stream(stack.per_row.grpc_url, [x, everything_refused, x])
    for result in (first, again):
        check_per_row_answer(result, grpc_parameters(result), x, stack)
    assert isinstance(refused, InferenceServerException) and "out of distribution" in refused.message()


def test_requested_output_subsets_carry_only_what_was_named(stack: Stack) -> None:
    x = stack.rows.batch()
    expected = expected_decisions()
    refused = np.array([d == "reject" for d in expected])
    url = stack.per_row.http_url
    # Mixed forms: LOGITS in binary, the decisions as JSON strings.
    mixed = http_infer(url, x, outputs=[("LOGITS", True), ("GUARD_DECISION", False)])
    assert [o["name"] for o in mixed.get_response()["outputs"]] == ["LOGITS", "GUARD_DECISION"]
    assert decisions_of(mixed) == expected and np.isnan(mixed.as_numpy("LOGITS")[refused]).all()
    assert "data" in mixed.get_response()["outputs"][1]  # JSON, as asked
    only_guard = http_infer(url, x, binary=False, outputs=[("GUARD_CONFIDENCE", False)])
    assert [o["name"] for o in only_guard.get_response()["outputs"]] == ["GUARD_CONFIDENCE"]
    assert only_guard.as_numpy("GUARD_CONFIDENCE").shape == (BATCH,)
    plain = grpc_infer(stack.per_row.grpc_url, x, outputs=["FEATURES"])
    assert [o.name for o in plain.get_response().outputs] == ["FEATURES"]
    assert np.isnan(plain.as_numpy("FEATURES")[refused]).all()
    assert grpc_parameters(plain)["guard_rows_rejected"] == len(OOD_ROWS)
    streamed = grpc_stream(stack.per_row.grpc_url, [x], outputs=["GUARD_DECISION", "LOGITS"])[0]
    assert [o.name for o in streamed.get_response().outputs] == ["LOGITS", "GUARD_DECISION"]
    assert decisions_of(streamed) == expected


def test_p_values_are_given_by_name_when_the_guard_has_calibration_scores(stack: Stack) -> None:
    x = stack.rows.batch()
    full = http_infer(stack.per_row.http_url, x)
    if "guard_ood_p_value" in http_parameters(full):
        named = grpc_infer(stack.per_row.grpc_url, x, outputs=["GUARD_OOD_P_VALUE"])
        assert [o.name for o in named.get_response().outputs] == ["GUARD_OOD_P_VALUE"]
        assert named.as_numpy("GUARD_OOD_P_VALUE").tobytes() == full.as_numpy("GUARD_OOD_P_VALUE").tobytes()
        return
    # A guard fitted without calibration scores cannot give p-values: said before the model runs.
    with pytest.raises(InferenceServerException) as error:
        http_infer(stack.per_row.http_url, x, outputs=[("GUARD_OOD_P_VALUE", True)])
    assert error.value.status() == "400" and "no conformal calibration scores" in error.value.message()


# ----------------------------------------------------------------------------------- refusals


def test_whole_request_policy_refuses_the_mixed_batch_and_answers_a_clean_one(stack: Stack) -> None:
    x = stack.rows.batch()
    with pytest.raises(InferenceServerException) as http_error:
        http_infer(stack.whole.http_url, x)
    assert http_error.value.status() == "422" and "out of distribution" in http_error.value.message()
    with pytest.raises(InferenceServerException) as grpc_error:
        grpc_infer(stack.whole.grpc_url, x)
    assert grpc_error.value.status() == "StatusCode.INVALID_ARGUMENT"
    (streamed,) = grpc_stream(stack.whole.grpc_url, [x])
    assert isinstance(streamed, InferenceServerException) and "out of distribution" in streamed.message()
    clean = stack.rows.batch(ood_rows=())
    result = http_infer(stack.whole.http_url, clean)
    assert decisions_of(result) == expected_decisions(ood_rows=())
    assert (
        result.as_numpy("LOGITS").tobytes()
        == http_infer(stack.triton.http_url, clean).as_numpy("LOGITS").tobytes()
    )


def test_a_batch_of_refused_rows_only_is_refused(stack: Stack) -> None:
    x = stack.rows.ood[:8]
    with pytest.raises(InferenceServerException) as http_error:
        http_infer(stack.per_row.http_url, x, binary=False)
    assert http_error.value.status() == "422" and "8 of 8 samples" in http_error.value.message()
    with pytest.raises(InferenceServerException) as grpc_error:
        grpc_infer(stack.per_row.grpc_url, x)
    assert grpc_error.value.status() == "StatusCode.INVALID_ARGUMENT"


# ----------------------------------------------------------------------------------- micro-batching


def test_micro_batched_callers_get_their_own_rows_decisions(stack: Stack) -> None:
    """Concurrent callers of 4 rows each, with refused rows in different places (all 4 for some):
    stacked into shared Triton calls, scored once, and split back so each caller's decisions follow
    its own rows; a caller whose rows are all refused is refused, the others of its batch answered."""
    placements = [(), (0,), (3,), (1, 2), (0, 3), (0, 1, 2, 3)]
    callers = []
    for i in range(60):
        ood_rows = placements[i % len(placements)]
        x = stack.rows.accepted[(i * 4) % 60 : (i * 4) % 60 + 4].copy()
        for k, row in enumerate(ood_rows):
            x[row] = stack.rows.ood[(i + k) % len(stack.rows.ood)]
        callers.append((x, ood_rows))
    before = triton_requests(stack.triton)

    def one(caller: tuple[np.ndarray, tuple[int, ...]]) -> Any:
        try:
            return http_infer(stack.per_row.http_url, caller[0])
        except InferenceServerException as exc:
            return exc

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        results = list(pool.map(one, callers))
    stacked_calls = triton_requests(stack.triton) - before
    assert stacked_calls < len(callers), "the sidecar did not stack concurrent callers into shared calls"
    for (x, ood_rows), result in zip(callers, results, strict=True):
        if len(ood_rows) == 4:
            assert isinstance(result, InferenceServerException) and result.status() == "422"
            continue
        refused = np.isin(np.arange(4), ood_rows)
        assert decisions_of(result) == ["reject" if r else "accept" for r in refused]
        assert http_parameters(result)["guard_rows_rejected"] == len(ood_rows)
        # Rows computed in a stacked batch may differ from a call of these rows alone in the last bit
        # (the model's matrix products depend on the batch), so the comparison here is numeric.
        direct = http_infer(stack.triton.http_url, x).as_numpy("LOGITS")
        got = result.as_numpy("LOGITS")
        np.testing.assert_allclose(got[~refused], direct[~refused], rtol=1e-5, atol=1e-5)
        assert np.isnan(got[refused]).all()


def triton_requests(triton: TritonServer) -> int:
    """Requests Triton has answered for the model (its own statistics; a stacked call counts once)."""
    stats = httpclient.InferenceServerClient(triton.http_url).get_inference_statistics(MODEL_NAME, "1")
    return int(stats["model_stats"][0]["inference_stats"]["success"]["count"])


# ----------------------------------------------------------------------------------- review and audit


def test_review_items_and_audit_records_are_per_row(stack: Stack) -> None:
    x = stack.rows.batch(unsure_rows=(7, 15))
    rid = "per-row-review-1"
    result = http_infer(stack.per_row.http_url, x, request_id=rid)
    expected = expected_decisions(unsure_rows=(7, 15))
    assert decisions_of(result) == expected
    deadline = time.monotonic() + 10
    while not any(i["client_id"] == rid for i in stack.receiver.received) and time.monotonic() < deadline:
        time.sleep(0.05)
    item = next(i for i in stack.receiver.received if i["client_id"] == rid)
    assert item["review_rows"] == [7, 15] and item["decisions"] == expected
    assert item["inputs"][0]["shape"] == [2, 1, 28, 28]
    np.testing.assert_array_equal(np.asarray(item["inputs"][0]["data"], np.float32), x[[7, 15]])
    records: list[dict[str, Any]] = []
    while not records and time.monotonic() < deadline:
        records = [r for r in iter_records(stack.per_row.audit_dir) if r.get("client_id") == rid]
        time.sleep(0.05)
    (record,) = records
    assert record["status"] == 200 and record["decision"] == "reject" and record["decisions"] == expected
    assert (record["rows_rejected"], record["rows_review"]) == (len(OOD_ROWS), 2)
    assert len(record["ood_score"]) == BATCH and record["review"] == "spooled"


def row_decision_counts(metrics_url: str) -> dict[str, float]:
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "guardedmodel_row_decisions":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    counts[sample.labels["decision"]] = sample.value
    return counts


def test_rows_are_counted_by_their_own_decision_and_requests_by_the_worst_row(stack: Stack) -> None:
    before = row_decision_counts(stack.whole.metrics_url)
    x = stack.rows.batch()
    with pytest.raises(InferenceServerException):
        http_infer(stack.whole.http_url, x)  # refused whole, but every row was scored and decided
    after = row_decision_counts(stack.whole.metrics_url)
    delta = {d: after.get(d, 0.0) - before.get(d, 0.0) for d in ("accept", "review", "reject")}
    assert delta == {"accept": BATCH - len(OOD_ROWS) - 1, "review": 1, "reject": len(OOD_ROWS)}
