from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from guardedmodel_fit.data import DataError, check_compatible, load_dataset, stratified_split


def test_npz_with_any_of_the_usual_keys(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", x=np.ones((4, 2, 2), np.uint8), y=np.array([0, 1, 1, 0]))
    ds = load_dataset(tmp_path / "a.npz")
    assert ds.inputs.dtype == np.float32 and ds.sample_shape == (2, 2)
    assert ds.labels is not None and ds.labels.tolist() == [0, 1, 1, 0]
    np.savez(tmp_path / "b.npz", inputs=np.zeros((3, 5)))
    assert load_dataset(tmp_path / "b.npz").labels is None


def test_callables_by_reference_and_by_object() -> None:
    ds = load_dataset("fit_callables:labelled_pair")
    assert len(ds) == 12 and ds.sample_shape == (1, 4, 4)
    mapped = load_dataset("fit_callables:as_mapping")
    assert mapped.labels is not None and mapped.labels.tolist() == [0, 1, 0, 1, 1]
    assert len(load_dataset(lambda: np.zeros((2, 3)), name="inline")) == 2
    with pytest.raises(DataError, match=r"inputs must be \(samples, \.\.\.\)"):
        load_dataset("fit_callables:not_a_callable_result")
    with pytest.raises(DataError, match="has no callable named 'missing'"):
        load_dataset("fit_callables:missing")
    with pytest.raises(DataError, match="cannot import module 'no_such_module_xyz'"):
        load_dataset("no_such_module_xyz:f")


def test_image_folder_with_class_subfolders(tmp_path: Path) -> None:
    for cls, value in (("cat", 10), ("dog", 200)):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(np.full((6, 5), value + i, np.uint8)).save(tmp_path / cls / f"{i}.png")
    ds = load_dataset(tmp_path)
    assert ds.sample_shape == (1, 6, 5)
    assert ds.labels is not None and ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.inputs[3].max() == pytest.approx(200 / 255)
    reordered = load_dataset(tmp_path, class_names=["dog", "cat"])
    assert reordered.labels is not None and reordered.labels.tolist() == [1, 1, 1, 0, 0, 0]


def test_image_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        load_dataset(tmp_path / "empty")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(mixed / "a.png")
    Image.fromarray(np.zeros((5, 4), np.uint8)).save(mixed / "b.png")
    with pytest.raises(DataError, match=r"b\.png has shape \(1, 5, 4\) but a\.png has \(1, 4, 4\)"):
        load_dataset(mixed)


def test_clear_errors_for_bad_data(tmp_path: Path) -> None:
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 3)))
    with pytest.raises(DataError, match=r"empty\.npz: the data set is empty"):
        load_dataset(tmp_path / "empty.npz")
    bad = np.ones((6, 3))
    bad[4, 1] = np.nan
    np.savez(tmp_path / "nan.npz", x=bad)
    with pytest.raises(DataError, match=r"1 sample\(s\) contain NaN or infinity \(first at index 4\)"):
        load_dataset(tmp_path / "nan.npz")
    np.savez(tmp_path / "count.npz", x=np.ones((6, 3)), y=np.zeros(5, int))
    with pytest.raises(DataError, match="6 inputs but 5 labels"):
        load_dataset(tmp_path / "count.npz")
    np.savez(tmp_path / "nokey.npz", pixels=np.ones((6, 3)))
    with pytest.raises(DataError, match="no inputs array; expected one of inputs, x"):
        load_dataset(tmp_path / "nokey.npz")
    np.savez(tmp_path / "frac.npz", x=np.ones((2, 3)), y=np.array([0.5, 1.0]))
    with pytest.raises(DataError, match="labels must be integer class indices"):
        load_dataset(tmp_path / "frac.npz")
    with pytest.raises(DataError, match="no such file or folder"):
        load_dataset(tmp_path / "absent.npz")
    (tmp_path / "data.csv").write_text("1,2\n")
    with pytest.raises(DataError, match=r"unsupported file type '\.csv'"):
        load_dataset(tmp_path / "data.csv")


def test_shape_and_class_checks_against_the_model() -> None:
    ds = load_dataset(lambda: (np.zeros((4, 784)), np.array([0, 1, 2, 9])), name="flat")
    check_compatible(ds, sample_shape=(1, 28, 28))  # same size: reshaped at extraction
    with pytest.raises(
        DataError, match=r"flat: samples have shape \(784,\) but the model takes \(3, 32, 32\)"
    ):
        check_compatible(ds, sample_shape=(3, 32, 32))
    with pytest.raises(DataError, match="label 9 is out of range for a model with 8 classes"):
        check_compatible(ds, sample_shape=None, num_classes=8)


def test_stratified_split_keeps_class_shares() -> None:
    labels = np.repeat([0, 1, 2], [100, 50, 10])
    first, second = stratified_split(labels, len(labels), 0.5, seed=0)
    assert len(np.intersect1d(first, second)) == 0 and len(first) + len(second) == 160
    assert np.bincount(labels[second]).tolist() == [50, 25, 5]
