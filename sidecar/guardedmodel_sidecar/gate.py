"""The input gate: checks a request against the spec before it reaches the model.

Hard failures (unknown or missing input, wrong datatype or shape, NaN/Inf, values outside the spec's
min/max, oversized batch) refuse the request with an ``InputRefused`` that names the input and the
reason. Soft findings (a per-sample mean or spread outside what the artifact saw in validation, the
signature of a grey-level shift or a rescaled sensor) do not refuse: they come back as flags that the
decision turns into ``review``.

Cost matters here (it runs on every request): one min and one max reduction per numeric input, and a
sum plus a dot product per input that has a reference. Errors are described only after the cheap check
has failed, so the common path allocates nothing beyond those reductions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from guardedmodel_sidecar.config import InputSpec
from guardedmodel_sidecar.errors import InputRefused
from guardedmodel_sidecar.guard.artifact import InputReference
from guardedmodel_sidecar.protocol.datatypes import FLOAT_DATATYPES
from guardedmodel_sidecar.protocol.model import InferRequest, Tensor

_minimum = np.minimum.reduce
_maximum = np.maximum.reduce
_ONES: dict[tuple[int, str], np.ndarray] = {}


def _ones(n: int, dtype: np.dtype) -> np.ndarray:
    key = (n, dtype.char)  # a one-letter string hashes faster than a dtype
    ones = _ONES.get(key)
    if ones is None:
        if len(_ONES) > 64:  # inputs with a free dimension come in many sizes; keep a few
            _ONES.clear()
        ones = _ONES[key] = np.ones(n, dtype=dtype)
    return ones


@dataclass(frozen=True)
class _CompiledInput:
    spec: InputSpec
    is_float: bool
    reference: InputReference | None


class InputGate:
    def __init__(
        self,
        inputs: Sequence[InputSpec],
        *,
        max_batch: int,
        references: Sequence[InputReference] = (),
    ) -> None:
        by_name = {r.name: r for r in references}
        self._inputs = {
            spec.name: _CompiledInput(spec, spec.datatype in FLOAT_DATATYPES, by_name.get(spec.name))
            for spec in inputs
        }
        self._required = tuple(self._inputs)
        self.max_batch = max_batch

    @property
    def specs(self) -> tuple[InputSpec, ...]:
        return tuple(c.spec for c in self._inputs.values())

    def check(self, request: InferRequest) -> list[str]:
        """Refuse (raise InputRefused) or return flags, each a sentence saying what looked unusual."""
        flags: list[str] = []
        if not self._inputs:
            return flags
        seen = 0
        batch = -1
        for tensor in request.inputs:
            compiled = self._inputs.get(tensor.name)
            if compiled is None:
                raise InputRefused(
                    f"input '{tensor.name}' is not an input of model '{request.model_name}' "
                    f"(expected: {', '.join(self._required)})"
                )
            seen += 1
            b = self._check_schema(tensor, compiled.spec)
            if batch == -1:
                batch = b
            elif b != batch:
                raise InputRefused(
                    f"input '{tensor.name}' has batch size {b} but the other inputs have {batch}"
                )
            if tensor.array is not None and tensor.array.size:
                self._check_values(tensor, compiled, flags)
        if seen != len(self._required):
            given = {t.name for t in request.inputs}
            missing = [n for n in self._required if n not in given]
            if missing:
                raise InputRefused(f"missing input(s) {', '.join(repr(m) for m in missing)}")
            raise InputRefused("an input is given more than once")
        return flags

    def _check_schema(self, tensor: Tensor, spec: InputSpec) -> int:
        if tensor.datatype != spec.datatype:
            raise InputRefused(
                f"input '{tensor.name}': datatype {tensor.datatype} given, the model takes {spec.datatype}"
            )
        shape = tensor.shape
        if len(shape) != len(spec.shape) + 1:
            raise InputRefused(
                f"input '{tensor.name}': shape {list(shape)} has {len(shape)} dimensions, expected "
                f"[batch, {', '.join(str(d) for d in spec.shape)}]".replace(", ]", "]")
            )
        for got, want in zip(shape[1:], spec.shape, strict=True):
            if want != -1 and got != want:
                raise InputRefused(
                    f"input '{tensor.name}': shape {list(shape)} does not match [batch, "
                    f"{', '.join(str(d) for d in spec.shape)}]"
                )
        batch = shape[0]
        if batch < 1:
            raise InputRefused(f"input '{tensor.name}': batch size is 0; send at least one sample")
        if batch > self.max_batch:
            raise InputRefused(
                f"input '{tensor.name}': batch size {batch} is above the limit of {self.max_batch}"
            )
        return batch

    def _check_values(self, tensor: Tensor, compiled: _CompiledInput, flags: list[str]) -> None:
        array = tensor.array
        assert array is not None
        spec = compiled.spec
        if not (compiled.is_float or spec.min is not None or spec.max is not None):
            return  # an integer input without a range: nothing to check (and no reference)
        # NaN propagates through min/max, so two reductions cover NaN, Inf and the range.
        # The ufuncs' own reduce skips ndarray.min's Python wrapper (a third of its cost here).
        flat = array.reshape(-1)
        low = float(_minimum(flat))
        high = float(_maximum(flat))
        if compiled.is_float and not (math.isfinite(low) and math.isfinite(high)):
            raise InputRefused(self._describe_non_finite(tensor.name, array))
        if (spec.min is not None and low < spec.min) or (spec.max is not None and high > spec.max):
            raise InputRefused(self._describe_range(tensor.name, array, spec))
        reference = compiled.reference
        if reference is not None and compiled.is_float:
            self._check_reference(tensor.name, array, flat, reference, flags)

    def _check_reference(
        self, name: str, array: np.ndarray, flat: np.ndarray, reference: InputReference, flags: list[str]
    ) -> None:
        m_lo, m_hi = reference.sample_mean_range
        s_lo, s_hi = reference.sample_std_range
        if array.shape[0] == 1:
            # One sample: two dot products and Python floats beat a dozen numpy calls on tiny
            # arrays (a dot with ones is a sum at BLAS speed, ~2.5x cheaper than ndarray.sum).
            n = flat.shape[0]
            if flat.dtype.itemsize < 4:  # FP16 would sum in FP16: 65504 is its largest value
                flat = flat.astype(np.float32)
            mean = float(np.dot(flat, _ones(n, flat.dtype))) / n
            std = math.sqrt(max(float(np.dot(flat, flat)) / n - mean * mean, 0.0))
            if m_lo <= mean <= m_hi and s_lo <= std <= s_hi:
                return
            means, stds = np.asarray([mean]), np.asarray([std])
        else:
            rows = array.reshape(array.shape[0], -1)
            n = rows.shape[1]
            means = rows.sum(axis=1, dtype=np.float64) / n
            squares = np.einsum("ij,ij->i", rows, rows, dtype=np.float64) / n
            stds = np.sqrt(np.maximum(squares - means * means, 0.0))
            if m_lo <= means.min() and means.max() <= m_hi and s_lo <= stds.min() and stds.max() <= s_hi:
                return
        bad_mean = (means < m_lo) | (means > m_hi)
        bad_std = (stds < s_lo) | (stds > s_hi)
        flags.append(self._describe_shift(name, means, stds, bad_mean, bad_std, reference))

    @staticmethod
    def _describe_non_finite(name: str, array: np.ndarray) -> str:
        nans = int(np.isnan(array).sum())
        infs = int(np.isinf(array).sum())
        parts = [f"{nans} value(s) are NaN"] if nans else []
        if infs:
            parts.append(f"{infs} value(s) are infinite")
        first = np.argwhere(~np.isfinite(array))[0].tolist()
        return f"input '{name}': {' and '.join(parts)} (first at index {first})"

    @staticmethod
    def _describe_range(name: str, array: np.ndarray, spec: InputSpec) -> str:
        below = int((array < spec.min).sum()) if spec.min is not None else 0
        above = int((array > spec.max).sum()) if spec.max is not None else 0
        return (
            f"input '{name}': {below + above} value(s) outside the allowed range "
            f"[{spec.min}, {spec.max}] (min {float(array.min()):g}, max {float(array.max()):g})"
        )

    @staticmethod
    def _describe_shift(
        name: str,
        means: np.ndarray,
        stds: np.ndarray,
        bad_mean: np.ndarray,
        bad_std: np.ndarray,
        ref: InputReference,
    ) -> str:
        parts = []
        if bad_mean.any():
            i = int(np.argmax(bad_mean))
            parts.append(
                f"{int(bad_mean.sum())} sample(s) have a mean outside the validation range "
                f"[{ref.sample_mean_range[0]:.4g}, {ref.sample_mean_range[1]:.4g}] (sample {i}: {means[i]:.4g})"
            )
        if bad_std.any():
            i = int(np.argmax(bad_std))
            parts.append(
                f"{int(bad_std.sum())} sample(s) have a spread outside the validation range "
                f"[{ref.sample_std_range[0]:.4g}, {ref.sample_std_range[1]:.4g}] (sample {i}: {stds[i]:.4g})"
            )
        return f"input '{name}': " + "; ".join(parts) + " - a brightness/scale shift?"
