"""`guardedmodel labels put`'s reading and checking of label lines (JSON lines and CSV)."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import pyarrow.parquet as pq
import pytest

from guardedmodel_cli.labels import (
    SCHEMA,
    LabelError,
    label_from,
    labels_table,
    looks_like_csv,
    object_name,
    parse_labels,
)
from guardedmodel_sidecar.audit_parquet import parquet_bytes

NOW = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)


def test_json_lines_and_csv_give_the_same_labels() -> None:
    jsonl = (
        '{"id": "r1", "row": 0, "label": 3}\n'
        "\n"
        '{"id": "r1", "row": 2, "label": null, "ood": true, "reviewer": "ana", "ts": "2026-03-01T10:00:00Z"}\n'
        '{"id": "r2", "row": 1, "label": 0, "ood": false, "ts": 1772359200}\n'
    )
    csv_text = (
        "id,row,label,ood,reviewer,ts\n"
        "r1,0,3,,,\n"
        "r1,2,,true,ana,2026-03-01T10:00:00+00:00\n"
        "r2,1,0,no,,2026-03-01T10:00:00\n"
    )
    from_json = parse_labels(jsonl, csv_format=False)
    from_csv = parse_labels(csv_text, csv_format=True)
    assert [(x.id, x.row, x.label, x.ood, x.reviewer) for x in from_json] == [
        ("r1", 0, 3, False, None),
        ("r1", 2, None, True, "ana"),
        ("r2", 1, 0, False, None),
    ]
    assert from_csv == from_json
    assert from_json[1].ts == datetime(2026, 3, 1, 10, tzinfo=UTC)  # naive CSV time is UTC, as is epoch


@pytest.mark.parametrize(
    ("record", "field", "words"),
    [
        ({"row": 0, "label": 1}, "id", "non-empty id"),
        ({"id": " ", "row": 0, "label": 1}, "id", "non-empty id"),
        ({"id": "r", "label": 1}, "row", ">= 0"),
        ({"id": "r", "row": -1, "label": 1}, "row", ">= 0"),
        ({"id": "r", "row": "two", "label": 1}, "row", "integer"),
        ({"id": "r", "row": True, "label": 1}, "row", "integer"),
        ({"id": "r", "row": 1.5, "label": 1}, "row", "integer"),
        ({"id": "r", "row": 0}, "label", "ood true"),
        ({"id": "r", "row": 0, "label": -2}, "label", ">= 0"),
        ({"id": "r", "row": 0, "label": "cat"}, "label", "integer"),
        ({"id": "r", "row": 0, "label": 1, "ood": True}, "label", "empty when ood is true"),
        ({"id": "r", "row": 0, "ood": "maybe"}, "ood", "true or false"),
        ({"id": "r", "row": 0, "label": 1, "ts": "yesterday"}, "ts", "ISO 8601"),
        ({"id": "r", "row": 0, "label": 1, "reviewer": 7}, "reviewer", "text"),
        ({"id": "r", "row": 0, "label": 1, "comment": "x"}, "comment", "unknown field"),
    ],
)
def test_each_bad_field_is_named_with_its_line(record: dict[str, object], field: str, words: str) -> None:
    good = '{"id": "ok", "row": 0, "label": 0}'
    with pytest.raises(LabelError) as error:
        parse_labels(good + "\n" + json.dumps(record) + "\n", csv_format=False)
    assert f"line 2, field {field!r}: " in str(error.value)
    assert words in str(error.value)
    assert "line 1" not in str(error.value)


def test_every_bad_line_is_reported_at_once() -> None:
    text = "id,row,label\nr,0,1\n,0,1\nr,-1,1\nr,0\nr,0,1,extra\n"
    with pytest.raises(LabelError) as error:
        parse_labels(text, csv_format=True)
    message = str(error.value)
    assert message.startswith("4 bad label line(s)")
    for line in ("line 3, field 'id'", "line 4, field 'row'", "line 5, field 'label'", "line 6: more values"):
        assert line in message


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("row,label\n0,1\n", "lacks id"),
        ("id,row\nr,0\n", "lacks label or ood"),
        ("", "lacks id"),
    ],
)
def test_a_csv_header_without_the_needed_columns_is_refused(text: str, words: str) -> None:
    with pytest.raises(LabelError, match=words):
        parse_labels(text, csv_format=True)


def test_json_that_is_not_an_object_per_line_is_refused() -> None:
    with pytest.raises(LabelError) as error:
        parse_labels('{"id": "r", "row": 0, "label": 1}\n[1, 2]\n{oops\n', csv_format=False)
    assert "line 2: must be a JSON object" in str(error.value)
    assert "line 3: not JSON" in str(error.value)


def test_no_labels_at_all_is_an_error() -> None:
    with pytest.raises(LabelError, match="no labels"):
        parse_labels("\n\n", csv_format=False)


@pytest.mark.parametrize(
    ("text", "name", "is_csv"),
    [
        ("{}", "labels.csv", True),
        ("id,row", "labels.jsonl", False),
        ('{"id": 1}', "-", False),
        ("id,row,label", "-", True),
        ("id,row,label", "labels.txt", True),
        ('  {"id": 1}', None, False),
    ],
)
def test_the_format_follows_the_suffix_then_the_content(text: str, name: str | None, is_csv: bool) -> None:
    assert looks_like_csv(text, name) is is_csv


def test_the_table_follows_the_contract_and_a_missing_time_is_the_put_time() -> None:
    labels = [label_from({"id": "r", "row": 3, "label": 2}), label_from({"id": "r", "row": 4, "ood": "true"})]
    table = pq.read_table(io.BytesIO(parquet_bytes(labels_table(labels, NOW))))
    assert table.schema.equals(SCHEMA)
    assert table.to_pylist() == [
        {"id": "r", "row": 3, "label": 2, "ood": False, "reviewer": None, "ts": NOW},
        {"id": "r", "row": 4, "label": None, "ood": True, "reviewer": None, "ts": NOW},
    ]


def test_object_names_are_unique_sort_by_time_and_lie_in_the_model_partition() -> None:
    names = {object_name("fashion-mnist", NOW) for _ in range(50)}
    assert len(names) == 50
    assert all(n.startswith("labels/model=fashion-mnist/20260304T050607890123Z-") for n in names)
    assert object_name("m", NOW.replace(year=2027)) > max(names).replace("fashion-mnist", "m")
