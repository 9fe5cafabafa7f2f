"""Samples joined with labels into data set rows: row slicing per datatype, de-duplication, the
latest label, and counts of whatever could not be joined."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest
from loop_exports import ExportedRequest, at, bytes_tensor, labels_table, samples_table, tensor

from guardedmodel_cli.dataset_join import (
    JoinError,
    LabelRow,
    SampleTensor,
    join,
    labels_from_table,
    latest_labels,
    row_slice,
    samples_from_table,
    unique_samples,
)
from guardedmodel_cli.loop_layout import LayoutError, labels_folder, sample_objects, samples_folder, selected
from guardedmodel_fit.dataset_file import InputSpec
from guardedmodel_sidecar.protocol.datatypes import deserialize_bytes_elements

DAY = date(2026, 3, 1)


def as_tensor(entry: dict[str, object]) -> SampleTensor:
    return samples_from_table(samples_table([ExportedRequest("x", at(DAY), [entry])]))[0].inputs[0]


@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.int64])
@pytest.mark.parametrize("row_shape", [(), (3,), (1, 2, 3)])
def test_each_row_of_a_numeric_batch_is_sliced_out_byte_for_byte(
    dtype: type, row_shape: tuple[int, ...]
) -> None:
    rng = np.random.default_rng(0)
    batch = (rng.random((4, *row_shape)) * 200).astype(dtype)
    t = as_tensor(tensor("INPUT", batch))
    for row in range(4):
        got = np.frombuffer(row_slice(t, row, "x"), dtype=np.dtype(dtype).newbyteorder("<"))
        assert np.array_equal(got.reshape(row_shape), batch[row])


def test_a_bytes_row_keeps_its_length_prefixed_elements() -> None:
    elements = [f"text {i}".encode() * (i + 1) for i in range(6)]
    t = as_tensor(bytes_tensor("TEXT", elements, [3, 2]))
    assert [deserialize_bytes_elements(row_slice(t, r, "x")) for r in range(3)] == [
        elements[0:2],
        elements[2:4],
        elements[4:6],
    ]


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        (
            {"name": "I", "datatype": "FP32", "shape": [2, 3], "data": b"\0" * 20},
            "holds 20 bytes, its shape says 24",
        ),
        ({"name": "I", "datatype": "BYTES", "shape": [2], "data": b"\1\0\0\0a"}, "holds 1 BYTES elements"),
        ({"name": "I", "datatype": "BYTES", "shape": [2], "data": b"\x09\0\0\0a"}, "truncated"),
        ({"name": "I", "datatype": "FP8", "shape": [2], "data": b"\0\0"}, "unknown datatype 'FP8'"),
        ({"name": "I", "datatype": "FP32", "shape": [], "data": b"\0" * 4}, "scalar"),
    ],
)
def test_a_tensor_that_does_not_match_its_shape_is_named(entry: dict[str, object], words: str) -> None:
    with pytest.raises(JoinError) as error:
        row_slice(as_tensor(entry), 0, "req-7")
    assert "request 'req-7': input 'I'" in str(error.value) and words in str(error.value)


def label(
    record_id: str,
    row: int,
    value: int | None,
    *,
    ts: int | None = None,
    source: str = "a",
    line: int = 0,
    ood: bool = False,
) -> LabelRow:
    stamp = None if ts is None else datetime(2026, 3, 1, tzinfo=UTC) + timedelta(seconds=ts)
    return LabelRow(record_id, row, value, ood, stamp, source, line)


def test_the_latest_label_wins_by_time_then_object_name_then_line() -> None:
    winners, superseded = latest_labels(
        [
            label("r", 0, 1, ts=5, source="b"),
            label("r", 0, 2, ts=9, source="a"),  # latest time wins over a later name
            label("r", 0, 3, ts=None, source="z"),  # no time: oldest
            label("r", 1, 4, ts=5, source="a"),
            label("r", 1, 5, ts=5, source="b"),  # same time: later name
            label("r", 2, 6, ts=5, source="a", line=0),
            label("r", 2, 7, ts=5, source="a", line=1),  # same object: later line
            label("s", 0, 8),
        ]
    )
    assert sorted((w.id, w.row, w.label) for w in winners) == [
        ("r", 0, 2),
        ("r", 1, 5),
        ("r", 2, 7),
        ("s", 0, 8),
    ]
    assert superseded == 4


def test_samples_are_kept_once_per_id() -> None:
    table = samples_table(
        [
            ExportedRequest(i, at(DAY), [tensor("INPUT", np.full((1, 2), n, np.float32))])
            for n, i in enumerate("abac")
        ]
    )
    kept, dropped = unique_samples(samples_from_table(table))
    assert sorted(kept) == ["a", "b", "c"] and dropped == 1
    assert np.frombuffer(kept["a"].inputs[0].data, "<f4").tolist() == [0.0, 0.0]  # the first one seen


def batch(record_id: str, rows: int, *, name: str = "INPUT", width: int = 3) -> ExportedRequest:
    data = np.arange(rows * width, dtype=np.float32).reshape(rows, width) + 100 * ord(record_id[0])
    return ExportedRequest(record_id, at(DAY), [tensor(name, data)])


def test_join_makes_one_row_per_winning_label_and_counts_what_it_could_not_join() -> None:
    samples = samples_from_table(samples_table([batch("a", 3), batch("b", 2), batch("a", 3)]))
    labels = labels_from_table(
        labels_table(
            [
                {"id": "a", "row": 2, "label": 1},
                {"id": "a", "row": 0, "label": None, "ood": True},
                {"id": "b", "row": 1, "label": 0},
                {"id": "b", "row": 1, "label": 4, "ts": at(DAY, 13)},  # supersedes the one above
                {"id": "b", "row": 5, "label": 0},  # the batch has 2 rows
                {"id": "gone", "row": 0, "label": 0},  # no such sample
            ]
        ),
        "labels/model=m/x.parquet",
    )
    spec, rows, counts = join(samples, labels)
    assert spec == InputSpec("INPUT", "FP32", (3,))
    assert [(r.id, r.row, r.label, r.ood) for r in rows] == [
        ("a", 0, None, True),
        ("a", 2, 1, False),
        ("b", 1, 4, False),
    ]
    assert np.frombuffer(rows[1].input, "<f4").tolist() == [100 * ord("a") + v for v in (6.0, 7.0, 8.0)]
    assert (counts.samples_read, counts.duplicate_samples, counts.labels_read, counts.labels_superseded) == (
        3,
        1,
        6,
        1,
    )
    assert (counts.labelled_rows, counts.ood_rows) == (2, 1)
    assert (counts.labels_without_sample, counts.labels_outside_batch) == (1, 1)
    text = "\n".join(counts.lines())
    assert (
        "labels without sample  1 (e.g. gone)" in text and "labels outside batch   1 (e.g. b row 5)" in text
    )


def test_a_request_with_several_inputs_needs_input_named() -> None:
    two = ExportedRequest("a", at(DAY), [batch("a", 2).inputs[0], batch("a", 2, name="MASK").inputs[0]])
    samples = samples_from_table(samples_table([two]))
    labels = [label("a", 1, 0)]
    with pytest.raises(JoinError, match="has inputs INPUT, MASK: name one with --input"):
        join(samples, labels)
    spec, rows, _ = join(samples, labels, "MASK")
    assert spec is not None and spec.name == "MASK" and len(rows) == 1
    with pytest.raises(JoinError, match="has no input 'IMAGE'"):
        join(samples, labels, "IMAGE")


def test_rows_of_different_shapes_cannot_share_a_data_set() -> None:
    samples = samples_from_table(samples_table([batch("a", 2, width=3), batch("b", 2, width=4)]))
    with pytest.raises(JoinError) as error:
        join(samples, [label("a", 0, 1), label("b", 0, 1)])
    assert (
        "request 'b'" in str(error.value) and "[4]" in str(error.value) and "request 'a'" in str(error.value)
    )


@pytest.mark.parametrize(
    "row",
    [
        {"id": "", "row": 0, "label": 1},
        {"id": "a", "row": -1, "label": 1},
        {"id": "a", "row": 0, "label": None},
    ],
)
def test_a_labels_object_written_wrong_is_named(row: dict[str, object]) -> None:
    with pytest.raises(JoinError, match=r"labels object labels/model=m/bad.parquet, row 1"):
        labels_from_table(
            labels_table([{"id": "ok", "row": 0, "label": 0}, row]), "labels/model=m/bad.parquet"
        )


def test_sample_objects_are_found_by_partition_and_filtered_by_version_and_date() -> None:
    names = [
        "samples/model=m/version=1/date=2026-03-01/pod-a-f1-0.parquet",
        "samples/model=m/version=2/date=2026-03-02/pod-a-f1-0.parquet",
        "samples/model=m/version=2/date=2026-03-03/pod-b-f2-10.parquet",
        "samples/model=m/version=2/date=2026-03-03/_SUCCESS",
        "samples/model=mm/version=2/date=2026-03-03/pod-b-f2-10.parquet",
    ]
    objects = sample_objects(names, "m")
    assert [(o.version, o.day.day) for o in objects] == [("1", 1), ("2", 2), ("2", 3)]
    assert [o.day.day for o in selected(objects, ("2",))] == [2, 3]
    assert [o.day.day for o in selected(objects, since=date(2026, 3, 2), until=date(2026, 3, 2))] == [2]
    assert [o.day.day for o in selected(objects, ("1", "2"), since=date(2026, 3, 1))] == [1, 2, 3]
    with pytest.raises(LayoutError, match=r"samples/model=m/x\.parquet"):
        sample_objects(["samples/model=m/x.parquet"], "m")


def test_a_table_without_the_contract_columns_is_named() -> None:
    with pytest.raises(JoinError, match=r"samples object s/x\.parquet lacks column\(s\) inputs"):
        samples_from_table(pa.table({"id": ["a"]}), "s/x.parquet")
    with pytest.raises(JoinError, match=r"labels object l/y\.parquet lacks column\(s\) row, label"):
        labels_from_table(pa.table({"id": ["a"], "ood": [True]}), "l/y.parquet")


def test_partition_values_are_escaped_as_the_exporter_escapes_them() -> None:
    assert samples_folder("fashion-mnist") == "samples/model=fashion-mnist"
    assert labels_folder("a/b=c%") == "labels/model=a%2Fb%3Dc%25"
    names = ["samples/model=a%2Fb/version=v%3D1/date=2026-03-01/w-f-0.parquet"]
    assert [o.version for o in sample_objects(names, "a/b")] == ["v=1"]
