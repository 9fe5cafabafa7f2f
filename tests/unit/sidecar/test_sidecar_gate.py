"""The input gate refuses garbage with a reason and flags brightness/scale shifts; whatever a decoder
lets through, it answers with flags or an InputRefused, never another exception."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guardedmodel_sidecar.config import InputSpec
from guardedmodel_sidecar.errors import InputRefused
from guardedmodel_sidecar.gate import InputGate
from guardedmodel_sidecar.guard.artifact import InputReference
from guardedmodel_sidecar.protocol.datatypes import (
    BYTES,
    KNOWN_DATATYPES,
    NUMPY_DTYPES,
    element_count,
    serialize_bytes_elements,
)
from guardedmodel_sidecar.protocol.model import InferRequest, Tensor

SPEC = InputSpec("INPUT", "FP32", (4,), 0.0, 1.0)
REFERENCE = InputReference(
    name="INPUT",
    shape=(4,),
    minimum=0.0,
    maximum=1.0,
    mean=0.5,
    std=0.1,
    sample_mean_range=(0.3, 0.7),
    sample_std_range=(0.01, 0.3),
)


def request(*tensors: tuple[str, str, np.ndarray]) -> InferRequest:
    inputs = [Tensor(n, d, a.shape, a.tobytes(), a) for n, d, a in tensors]
    return InferRequest("m", "", "", {}, inputs, None)


def normal_batch(b: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.clip(0.5 + rng.normal(0, 0.1, (b, 4)), 0, 1).astype(np.float32)


@pytest.fixture
def gate() -> InputGate:
    return InputGate([SPEC], max_batch=8, references=[REFERENCE])


def test_normal_inputs_pass_without_flags(gate: InputGate) -> None:
    for b in (1, 5):
        assert gate.check(request(("INPUT", "FP32", normal_batch(b)))) == []


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ((("OTHER", "FP32", np.zeros((1, 4), np.float32)),), "'OTHER' is not an input"),
        ((("INPUT", "FP64", np.zeros((1, 4), np.float64)),), "datatype FP64 given, the model takes FP32"),
        ((("INPUT", "FP32", np.zeros((1, 5), np.float32)),), r"shape \[1, 5\] does not match \[batch, 4\]"),
        ((("INPUT", "FP32", np.zeros((4,), np.float32)),), "has 1 dimensions"),
        ((("INPUT", "FP32", np.zeros((9, 4), np.float32)),), "batch size 9 is above the limit of 8"),
        ((("INPUT", "FP32", np.zeros((0, 4), np.float32)),), "batch size is 0"),
    ],
)
def test_schema_violations_are_refused_naming_the_input(gate: InputGate, tensors, message: str) -> None:
    with pytest.raises(InputRefused, match=message):
        gate.check(request(*tensors))


def test_nan_and_inf_are_refused_with_counts_and_position(gate: InputGate) -> None:
    x = normal_batch(2)
    x[1, 2] = np.nan
    x[0, 0] = np.inf
    with pytest.raises(InputRefused) as info:
        gate.check(request(("INPUT", "FP32", x)))
    assert "1 value(s) are NaN and 1 value(s) are infinite" in info.value.message
    assert "first at index [0, 0]" in info.value.message


def test_values_out_of_range_are_refused(gate: InputGate) -> None:
    x = normal_batch(1)
    x[0, 3] = 255.0  # a pixel sent unscaled
    with pytest.raises(InputRefused, match=r"1 value\(s\) outside the allowed range \[0.0, 1.0\].*max 255"):
        gate.check(request(("INPUT", "FP32", x)))


def test_missing_and_duplicated_inputs_are_refused() -> None:
    gate = InputGate([SPEC, InputSpec("MASK", "INT32", (-1,))], max_batch=8)
    with pytest.raises(InputRefused, match="missing input"):
        gate.check(request(("INPUT", "FP32", normal_batch(1))))
    mask = np.ones((1, 7), np.int32)  # -1 = any length
    assert gate.check(request(("INPUT", "FP32", normal_batch(1)), ("MASK", "INT32", mask))) == []
    with pytest.raises(InputRefused, match="batch size 2 but the other inputs have 1"):
        gate.check(request(("INPUT", "FP32", normal_batch(1)), ("MASK", "INT32", np.ones((2, 3), np.int32))))


@pytest.mark.parametrize("b", [1, 4])
def test_grey_level_shift_is_flagged_not_refused(gate: InputGate, b: int) -> None:
    x = np.clip(normal_batch(b) + 0.3, 0, 1)  # brighter: every value still in range
    flags = gate.check(request(("INPUT", "FP32", x)))
    assert len(flags) == 1
    assert "mean outside the validation range [0.3, 0.7]" in flags[0]
    assert "brightness/scale shift" in flags[0]


def test_flat_inputs_are_flagged_for_their_spread(gate: InputGate) -> None:
    flags = gate.check(request(("INPUT", "FP32", np.full((1, 4), 0.5, np.float32))))
    assert flags and "spread outside the validation range" in flags[0]


def test_without_a_spec_nothing_is_checked() -> None:
    assert (
        InputGate([], max_batch=8).check(request(("ANY", "FP32", np.full((1, 3), np.nan, np.float32)))) == []
    )


# ------------------------------------------------------------------------------------ weird but decodable


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (("INPUT", "FP32", np.zeros((), np.float32)), r"shape \[\] has 0 dimensions, expected \[batch, 4\]"),
        (("INPUT", "FP32", np.zeros((0, 4), np.float32)), "batch size is 0"),
        (("INPUT", "FP32", np.zeros((1, 4, 1), np.float32)), "has 3 dimensions"),
        (("INPUT", "FP32", np.zeros((1, 0), np.float32)), r"shape \[1, 0\] does not match"),
        (("INPUT", "INT32", np.zeros((1, 4), np.int32)), "datatype INT32 given, the model takes FP32"),
        (("INPUT", "BYTES", None), "datatype BYTES given, the model takes FP32"),
    ],
)
def test_weird_but_decodable_tensors_are_refused_by_name(gate: InputGate, tensor, message: str) -> None:
    name, datatype, array = tensor
    shape = (1, 4) if array is None else array.shape
    raw = b"" if array is None else array.tobytes()
    with pytest.raises(InputRefused, match=message):
        gate.check(InferRequest("m", "", "", {}, [Tensor(name, datatype, shape, raw, array)], None))


def test_free_dimensions_of_zero_length_and_bytes_inputs_pass_the_schema() -> None:
    gate = InputGate(
        [InputSpec("MASK", "INT32", (-1,)), InputSpec("TEXT", "BYTES", (1,), 0.0, 1.0)], max_batch=4
    )
    mask = np.zeros((2, 0), np.int32)
    text = Tensor("TEXT", "BYTES", (2, 1), serialize_bytes_elements([b"a", b"b"]), None)
    assert (
        gate.check(InferRequest("m", "", "", {}, [Tensor("MASK", "INT32", (2, 0), b"", mask), text], None))
        == []
    )


def test_fp16_statistics_do_not_overflow_in_fp16() -> None:
    reference = InputReference("X", (-1,), 0.0, 1.0, 0.5, 0.1, (0.3, 0.7), (0.01, 0.3))
    gate = InputGate([InputSpec("X", "FP16", (-1,))], max_batch=4, references=[reference])
    x = np.full((1, 40_000), 0.5, np.float16)  # sums to 20000 in FP32, to inf-ish error in FP16
    flags = gate.check(request(("X", "FP16", x)))
    assert len(flags) == 1 and "mean" not in flags[0] and "spread" in flags[0]


# ------------------------------------------------------------------------------------ property

GATE_DATATYPES = st.sampled_from(sorted(KNOWN_DATATYPES))
# A few hundred cases under `make test`; the fuzz profile's count under HYPOTHESIS_PROFILE=fuzz.
_CASES = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
if os.environ.get("HYPOTHESIS_PROFILE") != "fuzz":
    _CASES = settings(_CASES, max_examples=300)


@st.composite
def gate_tensors(draw: st.DrawFn) -> Tensor:
    """A tensor as a decoder makes it: raw bytes and a matching array (None for BYTES)."""
    name = draw(st.sampled_from(["INPUT", "MASK", "X"]))
    datatype = draw(GATE_DATATYPES)
    shape = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
    count = element_count(shape)
    if datatype == BYTES:
        return Tensor(name, datatype, shape, serialize_bytes_elements([b"x"] * count), None)
    dtype = NUMPY_DTYPES[datatype]
    if datatype.startswith("FP"):
        values = st.floats(width=16)  # NaN, infinities and the FP16 extremes
    elif datatype == "BOOL":
        values = st.booleans()
    else:
        values = st.integers(int(np.iinfo(dtype).min), int(np.iinfo(dtype).max))
    array = np.asarray(draw(st.lists(values, min_size=count, max_size=count)), dtype=dtype).reshape(shape)
    return Tensor(name, datatype, shape, array.tobytes(), array)


@given(
    specs=st.lists(
        st.builds(
            InputSpec,
            st.sampled_from(["INPUT", "MASK"]),
            GATE_DATATYPES,
            st.lists(st.integers(-1, 3), max_size=2).map(tuple),
            st.none() | st.floats(-2, 0),
            st.none() | st.floats(0, 2),
        ),
        max_size=2,
        unique_by=lambda s: s.name,
    ),
    tensors=st.lists(gate_tensors(), min_size=1, max_size=3),
    max_batch=st.integers(1, 4),
)
@_CASES
def test_the_gate_answers_any_decodable_request_with_flags_or_a_refusal(
    specs: list[InputSpec], tensors: list[Tensor], max_batch: int
) -> None:
    references = [InputReference(s.name, s.shape, 0.0, 1.0, 0.5, 0.1, (0.3, 0.7), (0.01, 0.3)) for s in specs]
    gate = InputGate(specs, max_batch=max_batch, references=references)
    try:
        flags = gate.check(InferRequest("m", "", "", {}, tensors, None))
    except InputRefused as exc:
        assert exc.http_status == 400 and len(exc.message) <= 1024
        return
    assert all(isinstance(f, str) for f in flags)
