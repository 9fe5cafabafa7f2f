"""The data set file of reviewed rows (`guardedmodel dataset`'s output) as `fit --data`/`--ood` read it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from guardedmodel_fit.data import DataError, Dataset, check_compatible, concatenate, load_dataset
from guardedmodel_fit.dataset_file import (
    INPUT_METADATA_KEY,
    DatasetRow,
    InputSpec,
    dataset_table,
    is_dataset_file,
)
from guardedmodel_fit.extract import _v2_datatype


def write_set(path: Path, spec: InputSpec, rows: list[DatasetRow]) -> Path:
    pq.write_table(dataset_table(spec, rows), path)
    return path


def rows_of(x: np.ndarray, labels: list[int | None]) -> list[DatasetRow]:
    return [
        DatasetRow(f"req-{i}", i % 4, label, label is None, np.ascontiguousarray(x[i]).tobytes())
        for i, label in enumerate(labels)
    ]


@pytest.mark.parametrize(
    ("datatype", "dtype"), [("FP32", "<f4"), ("UINT8", "u1"), ("INT64", "<i8"), ("FP16", "<f2")]
)
def test_labelled_and_ood_rows_are_read_apart_as_float32(tmp_path: Path, datatype: str, dtype: str) -> None:
    x = (np.arange(5 * 2 * 3) % 250).reshape(5, 2, 3).astype(dtype)
    path = write_set(
        tmp_path / "set.parquet", InputSpec("INPUT", datatype, (2, 3)), rows_of(x, [1, None, 0, None, 2])
    )
    labelled = load_dataset(str(path), name="reviewed")
    assert labelled.inputs.dtype == np.float32 and labelled.sample_shape == (2, 3)
    assert np.array_equal(labelled.inputs, x[[0, 2, 4]].astype(np.float32))
    assert labelled.labels is not None and labelled.labels.tolist() == [1, 0, 2]
    assert labelled.input_name == "INPUT" and labelled.input_datatype == datatype
    ood = load_dataset(str(path), name="reviewed-ood", ood_rows=True)
    assert np.array_equal(ood.inputs, x[[1, 3]].astype(np.float32)) and ood.labels is None


def test_a_bytes_input_is_refused_with_the_reason(tmp_path: Path) -> None:
    path = write_set(
        tmp_path / "t.parquet", InputSpec("TEXT", "BYTES", (1,)), [DatasetRow("r", 0, 1, False, b"\1\0\0\0a")]
    )
    with pytest.raises(DataError, match="input 'TEXT' is BYTES; a guard is fitted on numeric tensors"):
        load_dataset(str(path), name="text")


def test_a_row_of_the_wrong_size_is_named(tmp_path: Path) -> None:
    rows = [DatasetRow("good", 0, 1, False, b"\0" * 12), DatasetRow("short", 3, 1, False, b"\0" * 8)]
    path = write_set(tmp_path / "s.parquet", InputSpec("INPUT", "FP32", (3,)), rows)
    with pytest.raises(
        DataError, match=r"request 'short' holds 8 bytes, but a FP32 row of shape \[3\] is 12"
    ):
        load_dataset(str(path))


def test_a_set_without_rows_of_the_kind_asked_for_says_so(tmp_path: Path) -> None:
    path = write_set(
        tmp_path / "l.parquet", InputSpec("INPUT", "FP32", (1,)), [DatasetRow("r", 0, 1, False, b"\0" * 4)]
    )
    with pytest.raises(DataError, match="no ood rows among the data set's 1 rows"):
        load_dataset(str(path), name="near", ood_rows=True)


def test_a_parquet_file_that_is_not_a_data_set_is_refused(tmp_path: Path) -> None:
    pq.write_table(pa.table({"x": [1.0]}), tmp_path / "other.parquet")
    with pytest.raises(DataError, match=r"no guardedmodel.input metadata; write data set files with"):
        load_dataset(str(tmp_path / "other.parquet"))
    table = dataset_table(InputSpec("INPUT", "FP32", (1,)), []).replace_schema_metadata(
        {INPUT_METADATA_KEY: b"{"}
    )
    pq.write_table(table, tmp_path / "bad-meta.parquet")
    with pytest.raises(DataError, match=r"unreadable guardedmodel.input metadata"):
        load_dataset(str(tmp_path / "bad-meta.parquet"))
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match=r"cannot read .*junk.parquet as a data set file"):
        load_dataset(str(tmp_path / "junk.parquet"))


def test_the_metadata_names_input_datatype_and_row_shape(tmp_path: Path) -> None:
    table = dataset_table(InputSpec("IMAGE", "UINT8", (1, 28, 28)), [])
    assert json.loads(table.schema.metadata[INPUT_METADATA_KEY]) == {
        "name": "IMAGE",
        "datatype": "UINT8",
        "shape": [1, 28, 28],
    }
    assert [f.name for f in table.schema] == ["id", "row", "label", "ood", "input"]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("s3://b/set.parquet", True),
        ("gs://b/x", True),
        ("set.parquet", True),
        ("val.npz", False),
        ("mod:fn", False),
    ],
)
def test_data_set_files_are_told_from_the_other_forms(spec: str, expected: bool) -> None:
    assert is_dataset_file(spec) is expected


def test_sets_are_concatenated_only_when_shapes_and_labels_agree() -> None:
    a = Dataset("a.npz", np.zeros((2, 3), np.float32), np.array([0, 1]))
    b = Dataset("b.parquet", np.ones((1, 3), np.float32), np.array([2]), input_name="INPUT")
    both = concatenate([a, b], "validation")
    assert len(both) == 3 and both.labels is not None and both.labels.tolist() == [0, 1, 2]
    assert both.input_name == "INPUT" and both.name == "validation"
    with pytest.raises(DataError, match=r"c.parquet has samples of shape \(4,\) but a.npz has \(3,\)"):
        concatenate([a, Dataset("c.parquet", np.zeros((1, 4), np.float32), np.array([0]))], "validation")
    with pytest.raises(DataError, match=r"a\.npz has labels but d\.npz has none"):
        concatenate([a, Dataset("d.npz", np.zeros((1, 3), np.float32), None)], "validation")
    with pytest.raises(DataError, match=r"holds input 'MASK' but b.parquet 'INPUT'"):
        concatenate(
            [b, Dataset("e.parquet", np.zeros((1, 3), np.float32), np.array([0]), "MASK")], "validation"
        )


def test_the_input_name_must_be_the_models() -> None:
    ds = Dataset("reviewed", np.zeros((1, 3), np.float32), np.array([0]), input_name="IMAGE")
    check_compatible(ds, sample_shape=(3,), input_name="IMAGE")
    check_compatible(
        Dataset("npz", ds.inputs, ds.labels), sample_shape=(3,), input_name="INPUT"
    )  # unnamed set
    with pytest.raises(DataError, match="sent as input 'IMAGE' but the model's input is 'INPUT'"):
        check_compatible(ds, sample_shape=(3,), input_name="INPUT")


def test_the_datatype_must_be_the_models_and_one_across_sets() -> None:
    pixels = Dataset("reviewed", np.zeros((1, 3), np.float32), np.array([0]), "INPUT", "UINT8")
    check_compatible(pixels, sample_shape=(3,), input_name="INPUT", input_datatype="UINT8")
    check_compatible(pixels, sample_shape=(3,), input_name="INPUT")  # a model that does not declare it
    with pytest.raises(DataError, match="the rows are UINT8 but the model's input is FP32"):
        check_compatible(pixels, sample_shape=(3,), input_name="INPUT", input_datatype="FP32")
    floats = Dataset("other", np.zeros((1, 3), np.float32), np.array([0]), "INPUT", "FP32")
    with pytest.raises(DataError, match="datatypes FP32, UINT8; give one"):
        concatenate([pixels, floats], "validation")


@pytest.mark.parametrize(
    ("config_type", "v2"),
    [
        ("TYPE_FP32", "FP32"),
        ("TYPE_UINT8", "UINT8"),
        ("TYPE_INT64", "INT64"),
        ("TYPE_STRING", "BYTES"),
        (None, None),
    ],
)
def test_a_triton_config_type_is_named_as_the_protocol_names_it(
    config_type: str | None, v2: str | None
) -> None:
    assert _v2_datatype(config_type) == v2
