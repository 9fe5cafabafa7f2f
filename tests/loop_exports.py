"""Exported samples and labels written exactly as the export location's contract lays them out,
for the data loop's readers to be tested against (the sidecar's exporter writes the real ones).

    <url>/samples/model=<m>/version=<v>/date=<YYYY-MM-DD>/<writer>-<fileid>-<offset>.parquet
      id string, ts timestamp[us, UTC],
      inputs list<struct<name string, datatype string, shape list<int64>, data binary>>
    <url>/labels/model=<m>/<name>.parquet
      id string, row int32, label int64?, ood bool, reviewer string?, ts timestamp[us, UTC]?
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

TENSOR = pa.struct(
    [
        pa.field("name", pa.string()),
        pa.field("datatype", pa.string()),
        pa.field("shape", pa.list_(pa.int64())),
        pa.field("data", pa.binary()),
    ]
)
SAMPLES_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("ts", pa.timestamp("us", tz="UTC")),
        pa.field("inputs", pa.list_(TENSOR)),
    ]
)
LABELS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("row", pa.int32()),
        pa.field("label", pa.int64()),
        pa.field("ood", pa.bool_()),
        pa.field("reviewer", pa.string()),
        pa.field("ts", pa.timestamp("us", tz="UTC")),
    ]
)
_V2 = {np.dtype("float32"): "FP32", np.dtype("uint8"): "UINT8", np.dtype("int64"): "INT64"}


def tensor(name: str, array: np.ndarray) -> dict[str, Any]:
    """A numeric tensor in the samples table's form (v2 binary: little-endian, row-major)."""
    return {
        "name": name,
        "datatype": _V2[array.dtype],
        "shape": list(array.shape),
        "data": np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes(),
    }


def bytes_tensor(name: str, elements: Sequence[bytes], shape: Sequence[int]) -> dict[str, Any]:
    data = b"".join(len(e).to_bytes(4, "little") + e for e in elements)
    return {"name": name, "datatype": "BYTES", "shape": list(shape), "data": data}


@dataclass(frozen=True)
class ExportedRequest:
    id: str
    ts: datetime
    inputs: list[dict[str, Any]]


def samples_table(requests: Sequence[ExportedRequest]) -> pa.Table:
    return pa.Table.from_pydict(
        {
            "id": [r.id for r in requests],
            "ts": [r.ts for r in requests],
            "inputs": [r.inputs for r in requests],
        },
        schema=SAMPLES_SCHEMA,
    )


def labels_table(rows: Sequence[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(
        [{"reviewer": None, "ts": None, "label": None, "ood": False, **row} for row in rows],
        schema=LABELS_SCHEMA,
    )


def parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def samples_key(
    prefix: str, model: str, version: str, day: date, writer: str, fileid: str, offset: int
) -> str:
    return (
        f"{prefix.strip('/')}/samples/model={model}/version={version}/date={day.isoformat()}/"
        f"{writer}-{fileid}-{offset}.parquet"
    ).lstrip("/")


def at(day: date, hour: int = 12) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)
