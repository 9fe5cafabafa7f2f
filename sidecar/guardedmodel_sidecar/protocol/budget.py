"""The decode budget: what one request may make the sidecar decode, checked before anything is decoded.

A v2 request declares each tensor's shape before its data, so the element count is known from a few
integers. ``DecodeBudget.admit`` checks it (with an early exit: a shape of 2^40 elements costs as little
as one of 4) before a byte of the tensor is converted, copied or allocated, against three limits:

- per input, the most a valid request can hold: the gate's declared shape times ``tuning.maxBatch``
  (a ``-1`` dimension, or an input the spec does not declare, falls back to the request limit);
- per request, ``limits.maxElements`` over all inputs;
- per input sent as values (JSON data, typed gRPC contents), a sixteenth of ``maxElements``: each
  such element costs a Python object and ~50 ns, a raw numeric one a few bytes of memcpy. Raw numeric
  tensors (binary extension, ``raw_input_contents``) are the way to send more;
- per BYTES input, a sixty-fourth of ``maxElements``: each element is a Python object wherever it
  comes from, and costs ~250 ns to check and serialize.

Over a limit is ``PayloadTooLarge`` (413 / RESOURCE_EXHAUSTED) naming the input, its count and the limit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from guardedmodel_sidecar.errors import InvalidRequest, PayloadTooLarge, client_repr
from guardedmodel_sidecar.limits import Limits

if TYPE_CHECKING:
    from guardedmodel_sidecar.config import InputSpec

# numpy 1.x arrays have at most 32 dimensions; Triton's shapes are int64.
MAX_DIMS = 32
MAX_DIM = 2**63 - 1
# What a value element (JSON value, typed gRPC content) and a BYTES element cost against a raw numeric one.
VALUE_ELEMENT_SHARE = 16
BYTES_ELEMENT_SHARE = 64

_DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class DecodeBudget:
    max_elements: int = _DEFAULT_LIMITS.max_elements
    max_value_elements: int = _DEFAULT_LIMITS.max_elements // VALUE_ELEMENT_SHARE
    max_bytes_elements: int = _DEFAULT_LIMITS.max_elements // BYTES_ELEMENT_SHARE
    # Nesting of a JSON document (object > inputs > input > data > nested data ...).
    max_json_depth: int = _DEFAULT_LIMITS.max_json_depth
    # The JSON part of a body, the header of a binary-extension body included.
    max_json_bytes: int = _DEFAULT_LIMITS.max_json_body_bytes
    # Element cap of each declared input (declared shape x max batch); others get max_elements.
    per_input: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    max_inputs: int = 1024
    max_outputs: int = 1024
    max_parameters: int = 128
    # Tensor names, request ids, datatypes and parameter keys (they reach logs and the audit trail).
    max_name_chars: int = 1024

    def admit(self, name: str, datatype: str, shape: tuple[int, ...], *, raw: bool, spent: int) -> int:
        """The element count of input ``name``; PayloadTooLarge when over a limit. ``raw``: its data
        comes as bytes (binary extension, raw_input_contents), not as values; ``spent``: the elements
        of the request's inputs admitted before this one."""
        cap = self.per_input.get(name, self.max_elements)
        how = " for this input"
        if datatype == "BYTES":
            if self.max_bytes_elements < cap:
                cap, how = self.max_bytes_elements, " for a BYTES input"
        elif not raw and self.max_value_elements < cap:
            cap = self.max_value_elements
            how = " for an input sent as values (send it as binary data or raw_input_contents)"
        left = self.max_elements - spent
        count = elements_within(shape, cap if cap < left else left)
        if count >= 0:
            return count
        exact = _product(shape)  # <= 32 dimensions below 2^63: a cheap big integer, only on refusal
        if 0 in shape:
            raise PayloadTooLarge(
                f"input {client_repr(name)}: shape {client_repr(list(shape))} is empty, but its other "
                f"dimensions multiply to {exact}, above the limit of {min(cap, left)}"
            )
        if exact > cap:
            raise PayloadTooLarge(
                f"input {client_repr(name)}: shape {client_repr(list(shape))} holds {exact} elements, "
                f"above the limit of {cap}{how}"
            )
        raise PayloadTooLarge(
            f"input {client_repr(name)}: its {exact} elements bring the request to {spent + exact}, "
            f"above the limit of {self.max_elements} elements per request"
        )


DEFAULT_BUDGET = DecodeBudget()


def budget_for(inputs: Iterable[InputSpec], max_batch: int, limits: Limits) -> DecodeBudget:
    """The budget for a model whose gate declares ``inputs`` (shapes without the batch dimension)."""
    per_input: dict[str, int] = {}
    for spec in inputs:
        cap = limits.max_elements
        if all(d >= 0 for d in spec.shape):
            cap = min(cap, (0 if 0 in spec.shape else _product(spec.shape)) * max(max_batch, 1))
        per_input[spec.name] = cap
    return DecodeBudget(
        max_elements=limits.max_elements,
        max_value_elements=max(1, limits.max_elements // VALUE_ELEMENT_SHARE),
        max_bytes_elements=max(1, limits.max_elements // BYTES_ELEMENT_SHARE),
        max_json_depth=limits.max_json_depth,
        max_json_bytes=limits.max_json_body_bytes,
        per_input=MappingProxyType(per_input),
    )


def elements_within(shape: tuple[int, ...], limit: int) -> int:
    """The product of ``shape``, or -1 as soon as the product of its non-zero dimensions passes
    ``limit``: [0, 2^62] holds no element, but numpy cannot even shape an empty array like it."""
    count = 1
    for dim in shape:
        if dim:
            count *= dim
            if count > limit:
                return -1
    return 0 if 0 in shape else count


def _product(shape: Iterable[int]) -> int:
    """The product of the non-zero dimensions."""
    count = 1
    for dim in shape:
        if dim:
            count *= dim
    return count


class Subject:
    """What an error message is about ("input 'X'"), quoted only when a message is built: the names
    of valid requests are never run through ``client_repr``."""

    __slots__ = ("kind", "name")

    def __init__(self, kind: str, name: object = None) -> None:
        self.kind = kind
        self.name = name

    def __str__(self) -> str:
        return self.kind if self.name is None else f"{self.kind} {client_repr(self.name)}"


def checked_shape(value: Any, what: object) -> tuple[int, ...]:
    """A declared shape as a tuple of ints: a list (or protobuf repeated field) of at most 32
    non-negative integers below 2^63. ``what`` names the input in the error."""
    if not isinstance(value, list):
        if value is None or isinstance(value, str | bytes | dict | int | float):
            raise InvalidRequest(
                f"{what}: 'shape' must be a list of non-negative integers, got {client_repr(value)}"
            )
        value = list(value)  # a protobuf repeated field: ints by construction
    if len(value) > MAX_DIMS:
        raise InvalidRequest(f"{what}: shape has {len(value)} dimensions; at most {MAX_DIMS} are supported")
    for dim in value:
        # bool is an int subclass and a JSON true is no dimension; so is 2.0
        if type(dim) is not int or dim < 0 or dim > MAX_DIM:
            raise InvalidRequest(
                f"{what}: 'shape' must be a list of non-negative integers, got {client_repr(value)}"
            )
    return tuple(value)
