"""The data set file of the data loop: reviewed rows of served requests, as `guardedmodel dataset`
writes them and `guardedmodel fit --data` / `--ood NAME=` reads them.

One Parquet file, one row per input row::

    id string      the audit record's id of the request the row came from
    row int32      the row's index in that request's batch
    label int64?   the reviewer's class index (null: the input is not a valid input = OOD)
    ood bool       true: the reviewer said the input is not a valid input for this model
    input binary   the row's tensor in the v2 binary form (little-endian, row-major)

with the schema metadata key ``guardedmodel.input`` = JSON ``{"name", "datatype", "shape"}`` (the
per-row shape). ``--data`` takes the labelled rows, ``--ood`` the ``ood`` ones. Nothing here needs
torch: the dataset command writes with it as well.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from guardedmodel_sidecar.protocol.datatypes import BYTES, NUMPY_DTYPES

from .data import DataError, Dataset, validated

INPUT_METADATA_KEY = b"guardedmodel.input"
SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("row", pa.int32(), nullable=False),
        pa.field("label", pa.int64()),
        pa.field("ood", pa.bool_(), nullable=False),
        pa.field("input", pa.binary(), nullable=False),
    ]
)
BUCKET_SCHEMES = ("s3", "gs")


@dataclass(frozen=True)
class InputSpec:
    """The model input a data set's rows hold."""

    name: str
    datatype: str
    shape: tuple[int, ...]  # per row

    def to_json(self) -> bytes:
        return json.dumps({"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}).encode()


@dataclass(frozen=True)
class DatasetRow:
    id: str
    row: int
    label: int | None
    ood: bool
    input: bytes


def dataset_table(spec: InputSpec, rows: Sequence[DatasetRow]) -> pa.Table:
    columns = {
        "id": [r.id for r in rows],
        "row": [r.row for r in rows],
        "label": [r.label for r in rows],
        "ood": [r.ood for r in rows],
        "input": [r.input for r in rows],
    }
    schema = SCHEMA.with_metadata({INPUT_METADATA_KEY: spec.to_json()})
    return pa.Table.from_pydict(columns, schema=schema)


def is_dataset_file(spec: str) -> bool:
    """Whether a ``--data``/``--ood`` argument names a data set file (rather than npz, folder, callable)."""
    return urlparse(spec).scheme in BUCKET_SCHEMES or spec.endswith(".parquet")


def load_dataset_file(spec: str, *, name: str, ood_rows: bool = False) -> Dataset:
    """The labelled rows (or, ``ood_rows``, the OOD rows) of a data set file, local or s3:// / gs://."""
    source = pa.BufferReader(_download(spec)) if urlparse(spec).scheme in BUCKET_SCHEMES else spec
    try:
        table = pq.read_table(source)
    except (OSError, pa.ArrowException) as error:
        raise DataError(f"{name}: cannot read {spec} as a data set file: {error}") from error
    return dataset_from_table(table, name=name, ood_rows=ood_rows)


def dataset_from_table(table: pa.Table, *, name: str, ood_rows: bool = False) -> Dataset:
    spec = input_spec(table, name)
    missing = [field.name for field in SCHEMA if field.name not in table.column_names]
    if missing:
        raise DataError(f"{name}: the data set file lacks column(s) {', '.join(missing)}")
    if spec.datatype == BYTES:
        raise DataError(
            f"{name}: input {spec.name!r} is BYTES; a guard is fitted on numeric tensors, so give a "
            "model whose input is numeric (or decode the bytes into one before fitting)"
        )
    dtype = NUMPY_DTYPES.get(spec.datatype)
    if dtype is None:
        raise DataError(f"{name}: unknown datatype {spec.datatype!r} in the data set's input metadata")
    ood = np.asarray(table.column("ood").to_numpy(zero_copy_only=False), dtype=bool)
    chosen = np.flatnonzero(ood if ood_rows else ~ood)
    kind = "ood" if ood_rows else "labelled"
    if chosen.size == 0:
        raise DataError(f"{name}: no {kind} rows among the data set's {table.num_rows} rows")
    blobs = table.column("input").take(pa.array(chosen)).to_pylist()
    per_row = int(np.prod(spec.shape, dtype=np.int64)) * dtype.itemsize
    short = next((i for i, blob in enumerate(blobs) if len(blob) != per_row), None)
    if short is not None:
        row_id = table.column("id")[int(chosen[short])].as_py()
        raise DataError(
            f"{name}: the input of request {row_id!r} holds {len(blobs[short])} bytes, but a "
            f"{spec.datatype} row of shape {list(spec.shape)} is {per_row} bytes"
        )
    # A copy: frombuffer's view of the joined bytes is read-only, and torch wants to own its inputs.
    inputs = np.frombuffer(b"".join(blobs), dtype=dtype).reshape(len(blobs), *spec.shape).copy()
    labels = None
    if not ood_rows:
        label_column = table.column("label").take(pa.array(chosen))
        if label_column.null_count:
            raise DataError(f"{name}: {label_column.null_count} labelled row(s) have no label")
        labels = np.asarray(label_column.to_numpy(), dtype=np.int64)
    return validated(name, inputs, labels, input_name=spec.name, input_datatype=spec.datatype)


def input_spec(table: pa.Table, name: str) -> InputSpec:
    raw = (table.schema.metadata or {}).get(INPUT_METADATA_KEY)
    if raw is None:
        raise DataError(
            f"{name}: the Parquet file has no {INPUT_METADATA_KEY.decode()} metadata; "
            "write data set files with `guardedmodel dataset`"
        )
    try:
        meta = json.loads(raw)
        return InputSpec(str(meta["name"]), str(meta["datatype"]), tuple(int(s) for s in meta["shape"]))
    except (ValueError, KeyError, TypeError) as error:
        raise DataError(
            f"{name}: unreadable {INPUT_METADATA_KEY.decode()} metadata {raw!r}: {error}"
        ) from error


def _download(url: str) -> bytes:
    # Imported here: only a data set in a bucket needs the object store client.
    from guardedmodel_sidecar.object_store import ObjectStoreError, object_at

    try:
        bucket, name = object_at(url)
        return bucket.read(name)
    except ObjectStoreError as error:
        raise DataError(str(error)) from error
