"""Per-row guard answers: each row's decision, the refused rows blanked (NaN or zero) and the rest
left as Triton sent it, the GUARD_* outputs on every wire form, the batch policies, review and audit
per row."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from guardedmodel_sidecar.audit_records import review_item, scored_record
from guardedmodel_sidecar.decision import DecisionPolicy, decide
from guardedmodel_sidecar.gate import InputGate
from guardedmodel_sidecar.guard.conformal import ConformalReference
from guardedmodel_sidecar.protocol.datatypes import (
    NUMPY_DTYPES,
    deserialize_bytes_elements,
    serialize_bytes_elements,
)
from guardedmodel_sidecar.protocol.grpc_codec import response_to_proto
from guardedmodel_sidecar.protocol.guard_outputs import (
    GUARD_OUTPUTS,
    RowResults,
    guard_tensors,
    masked_rows,
)
from guardedmodel_sidecar.protocol.http_codec import encode_infer_response
from guardedmodel_sidecar.protocol.model import (
    InferRequest,
    InferResponse,
    OutputTensor,
    RequestedOutput,
    Tensor,
)
from guardedmodel_sidecar.response_scoring import Scores
from guardedmodel_sidecar.row_answers import guarded_response, review_rows, summary
from guardedmodel_sidecar.version_guard import VersionGuard
from guardedmodel_sidecar.version_metrics import VersionMetrics

POLICY = DecisionPolicy(review_below=0.6, ood_method="mahalanobis", ood_threshold=10.0, ood_action="reject")
ROWS = 6
# Rows 1 and 4 are out of distribution, row 2 is unsure; the others are fine.
CONFIDENCE = np.array([0.9, 0.95, 0.4, 0.99, 0.97, 0.8])
OOD = np.array([1.0, 50.0, 2.0, 3.0, 11.0, 9.9])
REFUSED = np.array([False, True, False, False, True, False])


# ----------------------------------------------------------------------------------- decisions


def test_each_row_is_decided_on_its_own_and_the_summary_is_the_worst_row() -> None:
    d = decide(CONFIDENCE, OOD, [], POLICY)
    assert d.per_sample == ("accept", "reject", "review", "accept", "reject", "accept")
    assert d.codes.tolist() == [0, 2, 1, 0, 2, 0] and not d.codes.flags.writeable
    assert (d.decision, d.rows, d.rows_rejected, d.rows_review) == ("reject", 6, 2, 1)
    assert d.confidence == 0.4 and d.ood_score == 50.0 and not d.all_rejected
    assert d.row_confidence is CONFIDENCE and d.row_ood is OOD  # the scores, not copies


def test_the_fast_path_shares_read_only_codes_and_counts_nothing() -> None:
    one = decide(np.array([0.9]), np.array([1.0]), [], POLICY)
    again = decide(np.array([0.8]), np.array([2.0]), [], POLICY)
    assert one.codes is again.codes and one.codes.tolist() == [0] and not one.codes.flags.writeable
    assert (one.decision, one.rows, one.rows_rejected, one.rows_review) == ("accept", 1, 0, 0)
    batch = decide(np.full(32, 0.9), np.ones(32), [], POLICY)
    assert batch.codes.tolist() == [0] * 32 and batch.per_sample == ("accept",) * 32


def test_every_row_refused_is_said_so() -> None:
    d = decide(np.array([0.9, 0.9]), np.array([20.0, 30.0]), [], POLICY)
    assert d.all_rejected and d.rows_rejected == 2


def test_a_conformal_threshold_names_its_alpha() -> None:
    policy = DecisionPolicy(None, "mahalanobis", 10.0, "reject", ood_alpha=0.05)
    d = decide(np.array([0.9]), np.array([20.0]), [], policy)
    assert "alpha 0.05" in d.reasons[0] and d.decision == "reject"


# ----------------------------------------------------------------------------------- blanking rows


@pytest.mark.parametrize("datatype", ["FP16", "FP32", "FP64"])
def test_refused_rows_of_float_outputs_are_nan_and_the_others_keep_their_bytes(datatype: str) -> None:
    values = np.random.default_rng(1).normal(size=(ROWS, 3, 2)).astype(NUMPY_DTYPES[datatype])
    out = masked_rows(OutputTensor("Y", datatype, values.shape, values.tobytes()), REFUSED)
    got = out.as_numpy()
    assert np.isnan(got[REFUSED]).all()
    assert got[~REFUSED].tobytes() == values[~REFUSED].tobytes()
    assert out.shape == values.shape and len(out.raw) == values.nbytes


def test_refused_rows_of_bf16_outputs_are_bf16_nan() -> None:
    bits = np.arange(ROWS * 4, dtype="<u2").reshape(ROWS, 4)
    out = masked_rows(OutputTensor("Y", "BF16", (ROWS, 4), bits.tobytes()), REFUSED)
    got = np.frombuffer(out.raw, "<u2").reshape(ROWS, 4)
    # bfloat16 is the top half of a float32: these bits widen to a float32 NaN.
    widened = (got[REFUSED].astype(np.uint32) << 16).view(np.float32)
    assert np.isnan(widened).all() and (got[~REFUSED] == bits[~REFUSED]).all()


@pytest.mark.parametrize("datatype", ["INT64", "UINT8", "BOOL"])
def test_refused_rows_of_other_outputs_are_zero(datatype: str) -> None:
    values = (np.arange(ROWS * 2).reshape(ROWS, 2) % 2 + 1).astype(NUMPY_DTYPES[datatype])
    got = masked_rows(OutputTensor("Y", datatype, (ROWS, 2), values.tobytes()), REFUSED).as_numpy()
    assert not got[REFUSED].any() and (got[~REFUSED] == values[~REFUSED]).all()


def test_refused_rows_of_bytes_outputs_are_empty() -> None:
    labels = [f"label-{i}-{j}".encode() for i in range(ROWS) for j in range(2)]
    out = masked_rows(OutputTensor("Y", "BYTES", (ROWS, 2), serialize_bytes_elements(labels)), REFUSED)
    got = np.array(deserialize_bytes_elements(out.raw), dtype=object).reshape(ROWS, 2)
    assert (got[REFUSED] == b"").all()
    assert (
        got[~REFUSED].ravel().tolist()
        == np.array(labels, dtype=object).reshape(ROWS, 2)[~REFUSED].ravel().tolist()
    )


# ----------------------------------------------------------------------------------- guard tensors


def test_guard_tensors_carry_each_rows_results() -> None:
    p_values = np.linspace(0.01, 0.5, ROWS)
    rows = RowResults(("accept", "reject", "review", "accept", "reject", "accept"), CONFIDENCE, OOD, p_values)
    by_name = {t.name: t for t in guard_tensors(rows, GUARD_OUTPUTS)}
    assert list(by_name) == list(GUARD_OUTPUTS)
    assert by_name["GUARD_DECISION"].datatype == "BYTES" and by_name["GUARD_DECISION"].shape == (ROWS,)
    assert [e.decode() for e in by_name["GUARD_DECISION"].as_numpy()] == list(rows.decisions)
    for name, values in (
        ("GUARD_CONFIDENCE", CONFIDENCE),
        ("GUARD_OOD_SCORE", OOD),
        ("GUARD_OOD_P_VALUE", p_values),
    ):
        tensor = by_name[name]
        assert tensor.datatype == "FP32" and tensor.shape == (ROWS,)
        np.testing.assert_array_equal(np.frombuffer(tensor.raw, "<f4"), values.astype(np.float32))
    without_ood = RowResults(("accept",), np.array([0.5]), None, None)
    assert [t.name for t in guard_tensors(without_ood, GUARD_OUTPUTS)] == [
        "GUARD_DECISION",
        "GUARD_CONFIDENCE",
    ]


@pytest.mark.parametrize("value", [0.1, 1 / 3, 1e-40, 3.5e38, 1e300, -1e300, float("nan")])
def test_one_row_is_cast_to_fp32_as_numpy_casts_a_batch(value: float) -> None:
    one = guard_tensors(RowResults(("accept",), np.array([value]), None, None), ["GUARD_CONFIDENCE"])[0]
    with np.errstate(over="ignore"):
        expected = np.array([value, value]).astype("<f4")[:1].tobytes()
    assert one.raw == expected or (value != value and np.isnan(struct.unpack("<f", one.raw)[0]))


# ----------------------------------------------------------------------------------- the answer


def _response(extra: list[OutputTensor] | None = None) -> InferResponse:
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(ROWS, 4)).astype(np.float32)
    features = rng.normal(size=(ROWS, 8)).astype(np.float32)
    outputs = [
        OutputTensor("LOGITS", "FP32", logits.shape, logits.tobytes()),
        OutputTensor("FEATURES", "FP32", features.shape, features.tobytes()),
        *(extra or []),
    ]
    return InferResponse("m", "1", "rid", {}, outputs)


def _request(outputs: list[str] | None, *, binary: bool = True) -> InferRequest:
    x = np.zeros((ROWS, 2), np.float32)
    requested = None if outputs is None else [RequestedOutput(n, binary) for n in outputs]
    return InferRequest("m", "", "rid", {}, [Tensor("X", "FP32", x.shape, x.tobytes(), x)], requested, binary)


def _scores(p_values: np.ndarray | None = None) -> Scores:
    return Scores(CONFIDENCE, np.zeros(ROWS, np.int64), OOD, None, p_values)


def _answer(outputs: list[str] | None, policy: str = "perRow", extra: list[OutputTensor] | None = None):
    response = _response(extra)
    decision = decide(CONFIDENCE, OOD, [], POLICY)
    answered, refusal, shadowed = guarded_response(response, _request(outputs), decision, _scores(), policy)
    return response, answered, refusal, shadowed


def test_per_row_answers_blank_refused_rows_and_add_every_guard_output() -> None:
    original, answered, refusal, shadowed = _answer(None)
    assert refusal is None and not shadowed
    names = [o.name for o in answered.outputs]
    assert names == ["LOGITS", "FEATURES", "GUARD_DECISION", "GUARD_CONFIDENCE", "GUARD_OOD_SCORE"]
    for before, after in zip(original.outputs, answered.outputs[:2], strict=True):
        got, sent = after.as_numpy(), before.as_numpy()
        assert np.isnan(got[REFUSED]).all() and got[~REFUSED].tobytes() == sent[~REFUSED].tobytes()
    decisions = [e.decode() for e in answered.output("GUARD_DECISION").as_numpy()]
    assert [d == "reject" for d in decisions] == REFUSED.tolist()


def test_named_outputs_get_only_the_guard_outputs_named() -> None:
    original, answered, refusal, _ = _answer(["LOGITS", "GUARD_DECISION"])
    assert refusal is None
    assert [o.name for o in answered.outputs] == ["LOGITS", "FEATURES", "GUARD_DECISION"]
    # FEATURES was fetched for the guard only: it is not returned, so it is left as it came.
    assert answered.outputs[1] is original.outputs[1]
    _, plain, _, _ = _answer(["LOGITS"])
    assert [o.name for o in plain.outputs] == ["LOGITS", "FEATURES"]


def test_whole_request_policy_and_all_rows_refused_refuse_the_request() -> None:
    _, _, refusal, _ = _answer(None, policy="wholeRequest")
    assert refusal is not None and refusal.startswith("input refused as out of distribution: ")
    assert "mahalanobis OOD score 50 is above the threshold 10 (2 of 6 samples" in refusal
    decision = decide(np.array([0.9, 0.9]), np.array([20.0, 30.0]), [], POLICY)
    scores = Scores(np.array([0.9, 0.9]), np.zeros(2, np.int64), np.array([20.0, 30.0]), None)
    logits = OutputTensor("LOGITS", "FP32", (2, 1), np.zeros(2, np.float32).tobytes())
    response = InferResponse("m", "1", "", {}, [logits])
    _, refusal, _ = guarded_response(response, _request(None), decision, scores, "perRow")
    assert refusal is not None and "2 of 2" in refusal


def test_an_output_that_cannot_carry_nan_refuses_unless_the_caller_reads_the_decision() -> None:
    labels = np.arange(ROWS, dtype=np.int64)
    label = OutputTensor("LABEL", "INT64", (ROWS,), labels.tobytes())
    _, _, refusal, _ = _answer(None, extra=[label])
    assert refusal is not None and "output 'LABEL' (INT64) cannot mark them with NaN" in refusal
    assert "name GUARD_DECISION in the request's outputs" in refusal and "2 of 6 rows" in refusal
    _, answered, refusal, _ = _answer(["LABEL", "GUARD_DECISION"], extra=[label])
    assert refusal is None
    got = answered.output("LABEL").as_numpy()
    assert (got[REFUSED] == 0).all() and (got[~REFUSED] == labels[~REFUSED]).all()
    # An integer output the caller did not ask for (the guard fetched it) does not stand in the way.
    _, _, refusal, _ = _answer(["LOGITS"], extra=[label])
    assert refusal is None


def test_an_output_without_a_row_per_input_refuses() -> None:
    total = OutputTensor("TOTAL", "FP32", (1,), np.zeros(1, np.float32).tobytes())
    _, _, refusal, _ = _answer(None, extra=[total])
    assert refusal is not None and "'TOTAL' (shape [1]) has no row per input" in refusal


def test_a_model_output_with_a_guard_name_wins() -> None:
    own = OutputTensor("GUARD_DECISION", "FP32", (ROWS,), np.ones(ROWS, np.float32).tobytes())
    _, answered, refusal, shadowed = _answer(None, extra=[own])
    assert refusal is None and shadowed == ("GUARD_DECISION",)
    decisions = [o for o in answered.outputs if o.name == "GUARD_DECISION"]
    assert len(decisions) == 1 and decisions[0].datatype == "FP32"


def test_nothing_refused_leaves_the_response_as_triton_sent_it() -> None:
    response = _response()
    decision = decide(np.full(ROWS, 0.9), np.ones(ROWS), [], POLICY)
    scores = Scores(np.full(ROWS, 0.9), np.zeros(ROWS, np.int64), np.ones(ROWS), None)
    answered, refusal, _ = guarded_response(response, _request(["LOGITS"]), decision, scores, "perRow")
    assert answered is response and refusal is None


# ----------------------------------------------------------------------------------- on the wire


def _answered_with_p_values(outputs: list[str] | None, *, binary: bool = True):
    p_values = ConformalReference(np.arange(1.0, 20.0)).p_values(OOD)
    request = _request(outputs, binary=binary)
    decision = decide(CONFIDENCE, OOD, [], POLICY)
    response, refusal, _ = guarded_response(_response(), request, decision, _scores(p_values), "perRow")
    assert refusal is None
    parameters, _ = summary(decision, _scores(p_values), "1", "id-1")
    return request, response, parameters, p_values


def _check_client_view(result, p_values: np.ndarray, *, text: bool) -> None:
    decisions = [
        d.decode() if isinstance(d, bytes) else d for d in result.as_numpy("GUARD_DECISION").tolist()
    ]
    assert decisions == ["accept", "reject", "review", "accept", "reject", "accept"]
    np.testing.assert_array_equal(result.as_numpy("GUARD_CONFIDENCE"), CONFIDENCE.astype(np.float32))
    np.testing.assert_array_equal(result.as_numpy("GUARD_OOD_SCORE"), OOD.astype(np.float32))
    np.testing.assert_array_equal(result.as_numpy("GUARD_OOD_P_VALUE"), p_values.astype(np.float32))
    logits = result.as_numpy("LOGITS")
    assert np.isnan(logits[REFUSED]).all() and not np.isnan(logits[~REFUSED]).any()
    assert text or isinstance(result.as_numpy("GUARD_DECISION")[0], bytes)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("outputs", [None, ["LOGITS", *GUARD_OUTPUTS]], ids=["all", "named"])
def test_http_callers_read_guard_outputs_with_tritonclient(binary: bool, outputs: list[str] | None) -> None:
    request, response, parameters, p_values = _answered_with_p_values(outputs, binary=binary)
    chunks, header_length = encode_infer_response(response, request, parameters)
    body = b"".join(bytes(c) for c in chunks)
    result = httpclient.InferResult.from_response_body(body, header_length=header_length)
    _check_client_view(result, p_values, text=not binary)
    got = result.get_response()["parameters"]
    assert (got["guard_rows"], got["guard_rows_rejected"], got["guard_rows_review"]) == (6, 2, 1)
    assert got["guard_ood_p_value"] == pytest.approx(p_values.min())


@pytest.mark.parametrize("outputs", [None, ["LOGITS", *GUARD_OUTPUTS]], ids=["all", "named"])
def test_grpc_callers_read_guard_outputs_with_tritonclient(outputs: list[str] | None) -> None:
    request, response, parameters, p_values = _answered_with_p_values(outputs)
    proto = response_to_proto(response, parameters, request)
    result = grpcclient.InferResult(proto)
    _check_client_view(result, p_values, text=False)
    assert proto.parameters["guard_rows_rejected"].int64_param == 2


# ----------------------------------------------------------------------------------- review and audit


def test_a_review_item_names_its_rows_and_carries_only_their_inputs() -> None:
    x = np.arange(ROWS * 2, dtype=np.float32).reshape(ROWS, 2)
    request = InferRequest("m", "", "client-7", {}, [Tensor("X", "FP32", x.shape, x.tobytes(), x)], None)
    decision = decide(CONFIDENCE, OOD, [], POLICY)
    scores = _scores(np.full(ROWS, 0.5))
    record = scored_record(request, "id-7", "m", _guard(), decision, scores, answered=True)
    assert record["status"] == 200 and record["decision"] == "reject"
    assert (record["rows_rejected"], record["rows_review"]) == (2, 1) and record["decisions"][2] == "review"
    assert record["ood_p_value"] is scores.ood_p_value
    item = review_item(record, request, review_rows(decision))
    assert item["review_rows"] == [2]
    assert item["inputs"][0]["shape"] == (1, 2) and item["inputs"][0]["data"].tolist() == [[4.0, 5.0]]
    whole = review_item(record, request)
    assert whole["review_rows"] == list(range(ROWS)) and whole["inputs"][0]["shape"] == (ROWS, 2)
    refused = scored_record(request, "id-8", "m", _guard(), decision, _scores(), answered=False)
    assert refused["status"] == 422 and "ood_p_value" not in refused


def _guard() -> VersionGuard:
    metrics = VersionMetrics(
        model="m", version="1", method="mahalanobis", ood_threshold=10.0, drift=None, feature_dim=0
    )
    return VersionGuard("1", InputGate((), max_batch=64), 1.0, None, POLICY, "LOGITS", None, False, metrics)
