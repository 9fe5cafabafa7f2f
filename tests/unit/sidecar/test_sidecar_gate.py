"""The input gate refuses garbage with a reason and flags brightness/scale shifts."""

from __future__ import annotations

import numpy as np
import pytest

from guardedmodel_sidecar.config import InputSpec
from guardedmodel_sidecar.errors import InputRefused
from guardedmodel_sidecar.gate import InputGate
from guardedmodel_sidecar.guard.artifact import InputReference
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
