"""Joining exported samples with reviewers' labels into data set rows (pure: tables in, rows out).

A sample holds a whole request, a batch; a label names one row of it. Each labelled row becomes one
data set row whose input is that row sliced out of the request's v2 binary tensor. Samples are
de-duplicated by id (the export is at least once); of several labels for one (id, row) the latest
wins (by ts, then object name, then line). Whatever cannot be joined is counted, never dropped
silently.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pyarrow as pa

from guardedmodel_fit.dataset_file import DatasetRow, InputSpec
from guardedmodel_sidecar.errors import InvalidRequest
from guardedmodel_sidecar.protocol.datatypes import (
    BYTES,
    NUMPY_DTYPES,
    deserialize_bytes_elements,
    element_count,
    serialize_bytes_elements,
)


class JoinError(ValueError):
    """Samples that cannot make one data set; the message names the request and what differs."""


@dataclass(frozen=True)
class SampleTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: bytes


@dataclass(frozen=True)
class Sample:
    id: str
    inputs: tuple[SampleTensor, ...]


@dataclass(frozen=True)
class LabelRow:
    id: str
    row: int
    label: int | None
    ood: bool
    ts: datetime | None
    source: str  # the labels object it came from
    line: int  # its index there


@dataclass
class JoinCounts:
    samples_read: int = 0
    duplicate_samples: int = 0
    labels_read: int = 0
    labels_superseded: int = 0
    labelled_rows: int = 0
    ood_rows: int = 0
    labels_without_sample: int = 0
    labels_outside_batch: int = 0
    examples: dict[str, str] = field(default_factory=dict)  # the first id of each kind of miss

    def lines(self) -> list[str]:
        def example(kind: str) -> str:
            return f" (e.g. {self.examples[kind]})" if kind in self.examples else ""

        return [
            f"samples read           {self.samples_read}",
            f"duplicates dropped     {self.duplicate_samples}",
            f"labels read            {self.labels_read} ({self.labels_superseded} superseded by later ones)",
            f"labelled rows          {self.labelled_rows}",
            f"OOD rows               {self.ood_rows}",
            f"labels without sample  {self.labels_without_sample}{example('without_sample')}",
            f"labels outside batch   {self.labels_outside_batch}{example('outside_batch')}",
        ]


def samples_from_table(table: pa.Table, source: str = "samples") -> list[Sample]:
    """The samples table's rows (id, inputs list<struct<name, datatype, shape, data>>)."""
    missing = [name for name in ("id", "inputs") if name not in table.column_names]
    if missing:
        raise JoinError(f"samples object {source} lacks column(s) {', '.join(missing)}")
    return [
        Sample(
            str(record_id),
            tuple(
                SampleTensor(t["name"], t["datatype"], tuple(int(d) for d in t["shape"]), bytes(t["data"]))
                for t in inputs or ()
            ),
        )
        for record_id, inputs in zip(
            table.column("id").to_pylist(), table.column("inputs").to_pylist(), strict=True
        )
    ]


def labels_from_table(table: pa.Table, source: str) -> list[LabelRow]:
    """The labels table's rows; one a review tool wrote wrong (no id, a negative row, neither a
    label nor ood) is an error naming the object and the row."""
    missing = [name for name in ("id", "row", "label", "ood") if name not in table.column_names]
    if missing:
        raise JoinError(f"labels object {source} lacks column(s) {', '.join(missing)}")
    columns: dict[str, list[Any]] = {
        name: table.column(name).to_pylist() for name in ("id", "row", "label", "ood")
    }
    stamps = table.column("ts").to_pylist() if "ts" in table.column_names else [None] * table.num_rows
    out = []
    for line, (i, r, lab, o, ts) in enumerate(
        zip(columns["id"], columns["row"], columns["label"], columns["ood"], stamps, strict=True)
    ):
        if not i or r is None or r < 0 or (lab is None and not o) or (lab is not None and lab < 0):
            raise JoinError(
                f"labels object {source}, row {line}: id {i!r}, row {r!r}, label {lab!r}, ood {o!r} is not "
                "a label (an id, a row >= 0, and a class index >= 0 or ood true)"
            )
        out.append(LabelRow(i, int(r), None if lab is None else int(lab), bool(o), ts, source, line))
    return out


def unique_samples(samples: Iterable[Sample]) -> tuple[dict[str, Sample], int]:
    """One sample per id (the first seen) and how many duplicates were dropped."""
    kept: dict[str, Sample] = {}
    dropped = 0
    for sample in samples:
        if sample.id in kept:
            dropped += 1
        else:
            kept[sample.id] = sample
    return kept, dropped


def latest_labels(labels: Iterable[LabelRow]) -> tuple[list[LabelRow], int]:
    """The winning label of each (id, row) — latest ts (a label without one is oldest), then object
    name, then line — and how many were superseded."""
    winners: dict[tuple[str, int], LabelRow] = {}
    count = 0
    for label in labels:
        count += 1
        key = (label.id, label.row)
        held = winners.get(key)
        if held is None or _order(label) > _order(held):
            winners[key] = label
    return list(winners.values()), count - len(winners)


def _order(label: LabelRow) -> tuple[bool, datetime | None, str, int]:
    return (label.ts is not None, label.ts, label.source, label.line)


def choose_tensor(sample: Sample, input_name: str | None) -> SampleTensor:
    """The sample's tensor named ``input_name``, or its only one."""
    names = [t.name for t in sample.inputs]
    if input_name is None:
        if len(sample.inputs) != 1:
            raise JoinError(
                f"request {sample.id!r} has inputs {', '.join(names) or 'none'}: name one with --input"
            )
        return sample.inputs[0]
    for tensor in sample.inputs:
        if tensor.name == input_name:
            return tensor
    raise JoinError(
        f"request {sample.id!r} has no input {input_name!r} (it has {', '.join(names) or 'none'})"
    )


def batch_size(tensor: SampleTensor) -> int:
    return tensor.shape[0] if tensor.shape else 0


def row_slice(tensor: SampleTensor, row: int, record_id: str) -> bytes:
    """Row ``row`` of a batched tensor in the v2 binary form (BYTES: its length-prefixed elements)."""
    if not tensor.shape:
        raise JoinError(f"request {record_id!r}: input {tensor.name!r} is a scalar, it has no rows")
    per_row = element_count(tensor.shape[1:])
    total = element_count(tensor.shape)
    what = f"request {record_id!r}: input {tensor.name!r} ({tensor.datatype} {list(tensor.shape)})"
    if tensor.datatype == BYTES:
        try:
            elements = deserialize_bytes_elements(tensor.data)
        except InvalidRequest as error:
            raise JoinError(f"{what}: {error.message}") from error
        if len(elements) != total:
            raise JoinError(f"{what} holds {len(elements)} BYTES elements, its shape says {total}")
        return serialize_bytes_elements(elements[row * per_row : (row + 1) * per_row])
    dtype = NUMPY_DTYPES.get(tensor.datatype)
    if dtype is None:
        raise JoinError(f"{what}: unknown datatype {tensor.datatype!r}")
    if len(tensor.data) != total * dtype.itemsize:
        raise JoinError(f"{what} holds {len(tensor.data)} bytes, its shape says {total * dtype.itemsize}")
    size = per_row * dtype.itemsize
    return tensor.data[row * size : (row + 1) * size]


def join(
    samples: Sequence[Sample], labels: Sequence[LabelRow], input_name: str | None = None
) -> tuple[InputSpec | None, list[DatasetRow], JoinCounts]:
    """Data set rows of every winning label whose sample and row exist, ordered by (id, row)."""
    counts = JoinCounts(samples_read=len(samples), labels_read=len(labels))
    by_id, counts.duplicate_samples = unique_samples(samples)
    winners, counts.labels_superseded = latest_labels(labels)
    spec: InputSpec | None = None
    spec_from = ""
    rows: list[DatasetRow] = []
    for label in sorted(winners, key=lambda lab: (lab.id, lab.row)):
        sample = by_id.get(label.id)
        if sample is None:
            counts.labels_without_sample += 1
            counts.examples.setdefault("without_sample", label.id)
            continue
        tensor = choose_tensor(sample, input_name)
        if label.row >= batch_size(tensor):
            counts.labels_outside_batch += 1
            counts.examples.setdefault("outside_batch", f"{label.id} row {label.row}")
            continue
        row_spec = InputSpec(tensor.name, tensor.datatype, tensor.shape[1:])
        if spec is None:
            spec, spec_from = row_spec, sample.id
        elif row_spec != spec:
            raise JoinError(
                f"request {sample.id!r} sent input {tensor.name!r} as {row_spec.datatype} rows of shape "
                f"{list(row_spec.shape)}, but request {spec_from!r} as {spec.datatype} "
                f"{list(spec.shape)}: one data set holds one kind of row (choose --version or dates)"
            )
        rows.append(
            DatasetRow(label.id, label.row, label.label, label.ood, row_slice(tensor, label.row, sample.id))
        )
        if label.ood:
            counts.ood_rows += 1
        else:
            counts.labelled_rows += 1
    return spec, rows, counts
