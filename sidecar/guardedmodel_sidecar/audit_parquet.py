"""Audit JSONL lines as Parquet tables, one per (model, version, date) partition. Pure: lines in, bytes out.

Two tables (docs/audit-export.md): ``records``, one row per audit record (one request, or a shadow
comparison), its nested per-row values as lists and the whole original line in ``record`` so a field
added to records later is never lost; ``samples``, one row per sampled request, each input's tensor in
its v2 binary form. The partition columns (model, version, date) come from the object's path (Hive
style), not from the file. ``date`` is the UTC date of the line's ``ts``.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

STREAMS = ("records", "samples")
UNKNOWN = "unknown"  # a partition value a line does not carry (a record from before the field existed)
_TS = pa.timestamp("us", tz="UTC")

RECORDS_SCHEMA = pa.schema(
    [
        ("id", pa.string(), False),
        ("kind", pa.string(), False),
        ("client_id", pa.string()),
        ("ts", _TS, False),
        ("status", pa.int32()),
        ("decision", pa.string()),
        ("decisions", pa.list_(pa.string())),
        ("predicted", pa.list_(pa.int64())),
        ("confidence", pa.list_(pa.float64())),
        ("ood_score", pa.list_(pa.float64())),
        ("ood_p_value", pa.list_(pa.float64())),
        ("ood_threshold", pa.float64()),
        ("ood_method", pa.string()),
        ("rows_review", pa.int32()),
        ("rows_rejected", pa.int32()),
        ("batch", pa.int32()),
        ("input_digest", pa.string()),
        ("reasons", pa.list_(pa.string())),
        ("record", pa.string(), False),
    ]
)
INPUT_TYPE = pa.struct(
    [("name", pa.string()), ("datatype", pa.string()), ("shape", pa.list_(pa.int64())), ("data", pa.binary())]
)
SAMPLES_SCHEMA = pa.schema([("id", pa.string(), False), ("ts", _TS, False), ("inputs", pa.list_(INPUT_TYPE))])


@dataclass(frozen=True, order=True)
class Partition:
    model: str
    version: str
    date: str  # YYYY-MM-DD, UTC

    def path(self, stream: str) -> str:
        """``<stream>/model=<m>/version=<v>/date=<d>``; values escaped as Hive escapes them."""
        return f"{stream}/model={partition_value(self.model)}/version={partition_value(self.version)}/date={self.date}"


@dataclass
class Converted:
    """One batch of lines as tables per partition, and the lines that could not be converted."""

    tables: dict[Partition, pa.Table] = field(default_factory=dict)
    rows: int = 0
    bad_lines: int = 0  # not JSON (torn by a crash) or without id/ts: logged and counted as lost


def record_kind(record: Mapping[str, Any]) -> str:
    """scored | comparison | failure | undecodable, from the fields each kind of record carries
    (audit_records.py)."""
    if "shadow_of" in record:
        return "comparison"
    if record.get("stage") == "decode":
        return "undecodable"
    if "stage" in record or "error" in record:
        return "failure"
    return "scored"


def partition_of(record: Mapping[str, Any]) -> Partition:
    """A comparison record names its version ``candidate`` (it has no served ``version``)."""
    version = record.get("version") or record.get("candidate")
    day = datetime.fromtimestamp(float(record["ts"]), UTC).strftime("%Y-%m-%d")
    return Partition(_text(record.get("model")) or UNKNOWN, _text(version) or UNKNOWN, day)


def convert(stream: str, lines: Iterable[bytes]) -> Converted:
    """Lines of one stream (``records`` or ``samples``) as Arrow tables per partition."""
    row_of = _record_row if stream == "records" else _sample_row
    schema = RECORDS_SCHEMA if stream == "records" else SAMPLES_SCHEMA
    rows: dict[Partition, list[dict[str, Any]]] = defaultdict(list)
    out = Converted()
    for line in lines:
        try:
            parsed = orjson.loads(line)
            if not isinstance(parsed, dict) or not isinstance(parsed.get("id"), str):
                raise ValueError("no id")
            ts = float(parsed["ts"])
            if not math.isfinite(ts):
                raise ValueError("ts not finite")
            partition = partition_of(parsed)
            rows[partition].append(row_of(parsed, line, ts))
        except (orjson.JSONDecodeError, ValueError, TypeError, KeyError, OverflowError, OSError) as exc:
            out.bad_lines += 1
            log.warning("audit %s: a line cannot be exported (%s): %.200r", stream, exc, line)
    for partition, part_rows in sorted(rows.items()):
        out.tables[partition] = pa.Table.from_pylist(part_rows, schema=schema)
        out.rows += len(part_rows)
    return out


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return bytes(sink.getvalue().to_pybytes())


def object_name(stream: str, partition: Partition, writer: str, file_id: str, offset: int) -> str:
    """Deterministic per exported line range: a retried batch overwrites its object, never adds one."""
    return f"{partition.path(stream)}/{partition_value(writer)}-{partition_value(file_id)}-{offset}.parquet"


# ------------------------------------------------------------------------------------- rows


def _record_row(record: dict[str, Any], line: bytes, ts: float) -> dict[str, Any]:
    return {
        "id": record["id"],
        "kind": record_kind(record),
        "client_id": _text(record.get("client_id")),
        "ts": _micros(ts),
        "status": _int32(record.get("status")),
        "decision": _text(record.get("decision")),
        "decisions": _list(record.get("decisions"), _text),
        "predicted": _list(record.get("predicted"), _int64),
        "confidence": _list(record.get("confidence"), _float),
        "ood_score": _list(record.get("ood_score"), _float),
        "ood_p_value": _list(record.get("ood_p_value"), _float),
        "ood_threshold": _float(record.get("ood_threshold")),
        "ood_method": _text(record.get("ood_method")),
        "rows_review": _int32(record.get("rows_review")),
        "rows_rejected": _int32(record.get("rows_rejected")),
        "batch": _int32(record.get("batch")),
        "input_digest": _text(record.get("input_digest")),
        "reasons": _list(record.get("reasons"), _text),
        "record": line.rstrip(b"\n").decode("utf-8", "replace"),
    }


def _sample_row(sample: dict[str, Any], line: bytes, ts: float) -> dict[str, Any]:
    inputs = sample.get("inputs")
    if not isinstance(inputs, list):
        raise ValueError("a sample without inputs")
    decoded = []
    for tensor in inputs:
        try:
            data = base64.b64decode(tensor["b64"], validate=True)
        except (binascii.Error, KeyError, TypeError) as exc:
            raise ValueError(f"input {tensor.get('name')!r} has no base64 data: {exc}") from exc
        shape = tensor.get("shape")
        decoded.append(
            {
                "name": _text(tensor.get("name")),
                "datatype": _text(tensor.get("datatype")),
                "shape": [int(d) for d in shape] if isinstance(shape, list) else None,
                "data": data,
            }
        )
    return {"id": sample["id"], "ts": _micros(ts), "inputs": decoded}


def _micros(ts: float) -> datetime:
    return datetime.fromtimestamp(round(ts * 1_000_000) / 1_000_000, UTC)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int64(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not -(2**63) <= value < 2**63:
        return None
    return value


def _int32(value: Any) -> int | None:
    number = _int64(value)
    return number if number is not None and -(2**31) <= number < 2**31 else None


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _list(value: Any, element: Callable[[Any], Any]) -> list[Any] | None:
    """A list column's value; a value of another shape stays only in ``record`` (nothing is lost)."""
    if not isinstance(value, list):
        return None
    return [element(v) for v in value]


def partition_value(value: str) -> str:
    """A value as it stands in an object's path: Hive's partition escaping (percent-encoding of '/', '=', '%', control characters...)."""
    return quote(value, safe="-_.~+@:,")
