"""Audit lines as Parquet: every record kind, nested lists, unknown fields kept, partitions, names."""

from __future__ import annotations

import base64
import io
from datetime import UTC, datetime

import numpy as np
import orjson
import pyarrow.parquet as pq
import pytest

from guardedmodel_sidecar.audit_parquet import (
    RECORDS_SCHEMA,
    SAMPLES_SCHEMA,
    Partition,
    convert,
    object_name,
    parquet_bytes,
    record_kind,
)

TS = datetime(2026, 12, 2, 23, 59, 59, 123456, tzinfo=UTC).timestamp()
NEXT_DAY = TS + 1.0

SCORED = {
    "id": "a-1",
    "client_id": "c1",
    "ts": TS,
    "model": "digits",
    "version": "2",
    "status": 200,
    "decision": "review",
    "decisions": ["accept", "review"],
    "rows_review": 1,
    "rows_rejected": 0,
    "confidence": [0.9, 0.4],
    "predicted": [3, 7],
    "ood_method": "mahalanobis",
    "ood_score": [1.5, 2.5],
    "ood_p_value": [0.5, 0.01],
    "ood_threshold": 3.0,
    "reasons": ["low confidence"],
    "batch": 2,
    "input_digest": "abc",
    "review": "spooled",
    "sampled": True,
    "a_field_added_later": {"nested": [1, 2]},
}
COMPARISON = {
    "id": "a-2",
    "shadow_of": "a-1",
    "source": "shadow",
    "ts": TS,
    "model": "digits",
    "candidate": "3",
    "baseline": "2",
    "batch": 2,
    "agreements": 1,
    "confidence": [0.8, 0.6],
    "predicted": [3, 1],
    "ood_score": None,
    "ood": [False, True],
}
FAILURE = {
    "id": "a-3",
    "client_id": None,
    "ts": TS,
    "model": "digits",
    "version": "2",
    "status": 422,
    "decision": "reject",
    "stage": "gate",
    "error": "INPUT: shape [3] is not [784]",
    "batch": 1,
    "input_digest": "def",
}
UNDECODABLE = {
    "id": "a-4",
    "client_id": None,
    "ts": TS,
    "model": "digits",
    "version": None,
    "status": 400,
    "decision": "reject",
    "stage": "decode",
    "error": "not JSON",
    "batch": 0,
    "input_digest": "0123",
}


def line(record: dict[str, object]) -> bytes:
    return orjson.dumps(record) + b"\n"


@pytest.mark.parametrize(
    ("record", "kind"),
    [(SCORED, "scored"), (COMPARISON, "comparison"), (FAILURE, "failure"), (UNDECODABLE, "undecodable")],
)
def test_every_record_kind_keeps_its_values_and_its_whole_line(record: dict[str, object], kind: str) -> None:
    converted = convert("records", [line(record)])
    assert converted.rows == 1 and converted.bad_lines == 0
    (partition, table), *_ = converted.tables.items()
    assert table.schema == RECORDS_SCHEMA
    row = table.to_pylist()[0]
    assert record_kind(record) == kind and row["kind"] == kind
    assert row["id"] == record["id"]
    assert row["ts"] == datetime.fromtimestamp(TS, UTC)
    assert orjson.loads(row["record"]) == record  # nothing lost, unknown fields included
    for column in ("status", "decision", "decisions", "predicted", "confidence", "ood_score", "batch"):
        assert row[column] == record.get(column)
    version = record.get("version") or record.get("candidate") or "unknown"
    assert partition == Partition("digits", str(version), "2026-12-02")


def test_nested_lists_are_typed_lists() -> None:
    table = next(iter(convert("records", [line(SCORED)]).tables.values()))
    assert str(table.schema.field("predicted").type) == "list<item: int64>"
    assert table.column("confidence").to_pylist() == [[0.9, 0.4]]
    assert table.column("ood_p_value").to_pylist() == [[0.5, 0.01]]
    assert table.column("reasons").to_pylist() == [["low confidence"]]


def test_a_value_of_an_unexpected_type_is_null_in_its_column_and_kept_in_the_record() -> None:
    odd = {**SCORED, "status": "teapot", "predicted": "3,7", "confidence": [0.5, "x"], "batch": 2**40}
    row = next(iter(convert("records", [line(odd)]).tables.values())).to_pylist()[0]
    assert row["status"] is None and row["predicted"] is None and row["batch"] is None
    assert row["confidence"] == [0.5, None]
    assert orjson.loads(row["record"])["predicted"] == "3,7"


def test_lines_split_by_version_and_by_utc_date() -> None:
    lines = [
        line({**SCORED, "id": "v2-today"}),
        line({**SCORED, "id": "v3-today", "version": "3"}),
        line({**SCORED, "id": "v2-tomorrow", "ts": NEXT_DAY}),
        line({**SCORED, "id": "v2-today-2"}),
    ]
    converted = convert("records", lines)
    ids = {p: t.column("id").to_pylist() for p, t in converted.tables.items()}
    assert ids == {
        Partition("digits", "2", "2026-12-02"): ["v2-today", "v2-today-2"],
        Partition("digits", "3", "2026-12-02"): ["v3-today"],
        Partition("digits", "2", "2026-12-03"): ["v2-tomorrow"],
    }
    assert converted.rows == 4


def test_torn_or_idless_lines_are_counted_not_exported() -> None:
    converted = convert("records", [b'{"id": "x", "ts": 1', b'{"ts": 1.0}\n', b"[]\n", line(SCORED)])
    assert converted.bad_lines == 3 and converted.rows == 1


def test_samples_decode_to_the_bytes_sent() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    text = b"".join(len(s).to_bytes(4, "little") + s for s in (b"ab", b""))
    sample = {
        "id": "a-1",
        "ts": TS,
        "model": "digits",
        "version": "2",
        "inputs": [
            {"name": "X", "datatype": "FP32", "shape": [2, 3], "b64": base64.b64encode(x.tobytes()).decode()},
            {"name": "T", "datatype": "BYTES", "shape": [2], "b64": base64.b64encode(text).decode()},
        ],
    }
    converted = convert("samples", [line(sample), line({**sample, "inputs": [{"name": "X", "b64": "%%"}]})])
    assert converted.bad_lines == 1
    (partition, table), *_ = converted.tables.items()
    assert partition == Partition("digits", "2", "2026-12-02") and table.schema == SAMPLES_SCHEMA
    inputs = table.to_pylist()[0]["inputs"]
    assert np.frombuffer(inputs[0]["data"], np.float32).reshape(inputs[0]["shape"]).tolist() == x.tolist()
    assert inputs[1] == {"name": "T", "datatype": "BYTES", "shape": [2], "data": text}


def test_samples_from_before_model_and_version_were_recorded_land_in_unknown() -> None:
    sample = {"id": "s", "ts": TS, "inputs": []}
    assert list(convert("samples", [line(sample)]).tables) == [Partition("unknown", "unknown", "2026-12-02")]


def test_parquet_round_trip_keeps_schema_and_rows() -> None:
    table = next(iter(convert("records", [line(SCORED), line(FAILURE)]).tables.values()))
    back = pq.read_table(io.BytesIO(parquet_bytes(table)))
    assert back.schema.equals(RECORDS_SCHEMA) and back.to_pylist() == table.to_pylist()


def test_object_names_are_deterministic_hive_paths() -> None:
    partition = Partition("digits", "2", "2026-12-02")
    name = object_name("records", partition, "pod-7f", "a-1", 4096)
    assert name == "records/model=digits/version=2/date=2026-12-02/pod-7f-a-1-4096.parquet"
    assert name == object_name("records", partition, "pod-7f", "a-1", 4096)
    odd = object_name("samples", Partition("a/b=c", "1", "2026-12-02"), "w", "f", 0)
    assert odd.startswith("samples/model=a%2Fb%3Dc/version=1/")
