"""Protocol-neutral v2 inference request and response, shared by the HTTP and gRPC adapters.

Tensors keep their v2 binary serialization (``raw``) next to a numpy view of it, so an input the
caller sent in binary goes upstream without being re-encoded, and an output Triton returned in binary
goes back to the caller as the very same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from guardedmodel_sidecar.errors import UpstreamError
from guardedmodel_sidecar.protocol.datatypes import BYTES, NUMPY_DTYPES, deserialize_bytes_elements


@dataclass(slots=True)
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    raw: bytes | memoryview
    # Numeric tensors only (None for BYTES): a zero-copy view of ``raw`` with the tensor's shape.
    array: np.ndarray | None
    parameters: dict[str, Any] | None = None


@dataclass(slots=True)
class RequestedOutput:
    name: str
    binary: bool
    parameters: dict[str, Any] | None = None


@dataclass(slots=True)
class InferRequest:
    model_name: str
    model_version: str  # "" lets routing choose
    id: str
    parameters: dict[str, Any]
    inputs: list[Tensor]
    # None: the caller wants every output the model has, as Triton would return them.
    outputs: list[RequestedOutput] | None
    # HTTP: the request-level "binary_data_output" parameter; gRPC always answers in raw form.
    binary_output_default: bool = False
    # Event-loop time by which the caller stops waiting (a gRPC deadline); None: the upstream
    # request timeout alone bounds the Triton call.
    deadline: float | None = None

    def batch_size(self) -> int:
        return self.inputs[0].shape[0] if self.inputs and self.inputs[0].shape else 1


@dataclass(slots=True)
class OutputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    raw: bytes | memoryview
    _array: np.ndarray | None = field(default=None, repr=False)

    def as_numpy(self) -> np.ndarray:
        if self._array is None:
            if self.datatype not in NUMPY_DTYPES and self.datatype != BYTES:
                # Passed through as bytes (BF16, say); only the guard's own use of it fails.
                raise UpstreamError(
                    f"output '{self.name}' has datatype {self.datatype}, which the guard cannot read", 502
                )
            if self.datatype == BYTES:
                elements = deserialize_bytes_elements(self.raw)
                self._array = np.array(elements, dtype=np.object_).reshape(self.shape)
            else:
                self._array = np.frombuffer(self.raw, dtype=NUMPY_DTYPES[self.datatype]).reshape(self.shape)
        return self._array


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    id: str
    parameters: dict[str, Any]
    outputs: list[OutputTensor]

    def output(self, name: str) -> OutputTensor | None:
        for out in self.outputs:
            if out.name == name:
                return out
        return None
