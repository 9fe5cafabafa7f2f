"""Loading the data sets a guard is fitted and evaluated on, with errors a person can act on.

A data set is named on the command line in one of three ways:

- ``path/to/set.npz``: arrays ``inputs`` (or ``x``/``images``/``X``/``data``) and optionally
  ``labels`` (or ``y``/``targets``);
- ``path/to/folder/``: image files, either in one sub-folder per class (labels follow the sorted
  sub-folder names, or ``class_names`` when given) or all in the folder itself (no labels);
  pixel values are scaled to [0, 1];
- ``package.module:function``: a callable returning ``(inputs, labels)``, ``inputs`` alone, or a
  mapping with the keys above;
- ``path/to/set.parquet``, ``s3://…``, ``gs://…``: a data set file of reviewed requests written by
  `guardedmodel dataset` (dataset_file.py): its labelled rows, or its OOD rows (``ood_rows``).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

INPUT_KEYS = ("inputs", "x", "images", "X", "data")
LABEL_KEYS = ("labels", "y", "targets", "Y")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
_CALLABLE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class DataError(ValueError):
    """A data set cannot be used as given; the message names the set and what to fix."""


@dataclass(frozen=True, eq=False)
class Dataset:
    name: str  # how the user named it, for messages
    inputs: np.ndarray  # (n, *sample_shape) float32
    labels: np.ndarray | None  # (n,) int64
    input_name: str | None = None  # the model input the rows were sent as, when the set says so
    input_datatype: str | None = None  # and its v2 datatype (before the conversion to float32)

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.inputs.shape[1:])

    def subset(self, index: np.ndarray, name: str | None = None) -> Dataset:
        labels = None if self.labels is None else self.labels[index]
        return Dataset(name or self.name, self.inputs[index], labels, self.input_name, self.input_datatype)


def load_dataset(
    spec: str | Path | Callable[[], Any],
    *,
    name: str | None = None,
    class_names: Sequence[str] | None = None,
    ood_rows: bool = False,
) -> Dataset:
    """Load a data set from an npz file, an image folder, a callable or a data set file (see the
    module doc); ``ood_rows``: a data set file's OOD rows instead of its labelled ones."""
    label = name or (getattr(spec, "__name__", None) if callable(spec) else str(spec)) or "data"
    if callable(spec):
        return _from_object(spec(), label)
    text = str(spec)
    from .dataset_file import is_dataset_file, load_dataset_file  # pyarrow, for these files only

    if is_dataset_file(text):
        return load_dataset_file(text, name=label, ood_rows=ood_rows)
    path = Path(text).expanduser()
    if path.is_dir():
        return _from_image_folder(path, label, class_names)
    if path.is_file():
        if path.suffix != ".npz":
            raise DataError(f"{label}: unsupported file type {path.suffix!r}; give an .npz file or a folder")
        return _from_npz(path, label)
    if _CALLABLE.match(text):
        return _from_object(_import_callable(text, label)(), label)
    raise DataError(f"{label}: no such file or folder, and not a 'module:function' reference")


def _import_callable(text: str, label: str) -> Callable[[], Any]:
    module_name, func_name = text.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise DataError(f"{label}: cannot import module {module_name!r}: {exc}") from exc
    func = getattr(module, func_name, None)
    if not callable(func):
        raise DataError(f"{label}: {module_name!r} has no callable named {func_name!r}")
    return func


def _from_npz(path: Path, label: str) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"{label}: cannot read {path}: {exc}") from exc
    return _from_object(arrays, label)


def _from_object(obj: Any, label: str) -> Dataset:
    inputs: Any
    labels: Any = None
    if isinstance(obj, Mapping):
        key = next((k for k in INPUT_KEYS if k in obj), None)
        if key is None:
            raise DataError(
                f"{label}: no inputs array; expected one of {', '.join(INPUT_KEYS)}, found {', '.join(obj)}"
            )
        inputs = obj[key]
        label_key = next((k for k in LABEL_KEYS if k in obj), None)
        labels = obj[label_key] if label_key else None
    elif isinstance(obj, tuple | list) and len(obj) in (1, 2):
        inputs = obj[0]
        labels = obj[1] if len(obj) == 2 else None
    else:
        inputs = obj
    x = _to_array(inputs, label, "inputs")
    y = None if labels is None else _to_array(labels, label, "labels")
    return validated(label, x, y)


def _to_array(value: Any, label: str, what: str) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor from a user callable
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{label}: {what} cannot be turned into an array: {exc}") from exc


def validated(
    label: str,
    x: np.ndarray,
    y: np.ndarray | None,
    input_name: str | None = None,
    input_datatype: str | None = None,
) -> Dataset:
    """A Dataset of ``x`` (as float32) and ``y`` (as int64 class indices), refusing what cannot be fitted."""
    if x.ndim < 2:
        raise DataError(f"{label}: inputs must be (samples, ...), got shape {x.shape}")
    if x.shape[0] == 0:
        raise DataError(f"{label}: the data set is empty")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise DataError(f"{label}: inputs must be numeric, got dtype {x.dtype}")
    x = x.astype(np.float32, copy=False)
    bad = ~np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise DataError(
            f"{label}: {rows.size} sample(s) contain NaN or infinity (first at index {int(rows[0])}); "
            "clean or drop them before fitting"
        )
    labels = None
    if y is not None:
        y = y.reshape(-1)
        if y.shape[0] != x.shape[0]:
            raise DataError(f"{label}: {x.shape[0]} inputs but {y.shape[0]} labels")
        integral = np.issubdtype(y.dtype, np.integer) or (
            np.issubdtype(y.dtype, np.floating) and bool(np.all(y == np.round(y)))
        )
        if not integral:
            raise DataError(f"{label}: labels must be integer class indices, got dtype {y.dtype}")
        labels = y.astype(np.int64)
        if labels.min() < 0:
            raise DataError(f"{label}: labels must be >= 0, found {int(labels.min())}")
    return Dataset(label, x, labels, input_name, input_datatype)


def _from_image_folder(folder: Path, label: str, class_names: Sequence[str] | None) -> Dataset:
    from PIL import Image  # a dependency of matplotlib; only needed for image folders

    def images_in(directory: Path) -> list[Path]:
        return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)

    subfolders = sorted(p for p in folder.iterdir() if p.is_dir())
    files: list[Path]
    labels: list[int] | None
    if subfolders:
        names = list(class_names) if class_names else [p.name for p in subfolders]
        files, labels = [], []
        for sub in subfolders:
            if sub.name not in names:
                raise DataError(f"{label}: sub-folder {sub.name!r} is not a known class ({', '.join(names)})")
            found = images_in(sub)
            files += found
            labels += [names.index(sub.name)] * len(found)
    else:
        files, labels = images_in(folder), None
    if not files:
        raise DataError(f"{label}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    arrays = []
    first_shape: tuple[int, ...] | None = None
    for path in files:
        try:
            with Image.open(path) as img:
                mode = "L" if img.mode in ("1", "L", "I", "I;16", "P") else "RGB"
                arr = np.asarray(img.convert(mode), dtype=np.float32) / 255.0
        except OSError as exc:
            raise DataError(f"{label}: cannot read image {path}: {exc}") from exc
        arr = arr[None, :, :] if arr.ndim == 2 else np.transpose(arr, (2, 0, 1))  # channels first
        if first_shape is None:
            first_shape = arr.shape
        elif arr.shape != first_shape:
            raise DataError(
                f"{label}: image {path} has shape {arr.shape} but {files[0].name} has {first_shape}; "
                "resize the images to one size first"
            )
        arrays.append(arr)
    y = None if labels is None else np.asarray(labels, dtype=np.int64)
    return validated(label, np.stack(arrays), y)


def concatenate(sets: Sequence[Dataset], name: str) -> Dataset:
    """Several sets as one (``--data`` given more than once); their samples must have one shape."""
    if len(sets) == 1:
        return sets[0]
    first = sets[0]
    for other in sets[1:]:
        if other.sample_shape != first.sample_shape:
            raise DataError(
                f"{name}: {other.name} has samples of shape {other.sample_shape} but {first.name} has "
                f"{first.sample_shape}; give sets of one input shape"
            )
        if (other.labels is None) != (first.labels is None):
            has, lacks = (first, other) if other.labels is None else (other, first)
            raise DataError(f"{name}: {has.name} has labels but {lacks.name} has none")
        if other.input_name and first.input_name and other.input_name != first.input_name:
            raise DataError(
                f"{name}: {other.name} holds input {other.input_name!r} but {first.name} {first.input_name!r}"
            )
    labels = (
        None if first.labels is None else np.concatenate([s.labels for s in sets if s.labels is not None])
    )
    input_name = next((s.input_name for s in sets if s.input_name), None)
    datatypes = {s.input_datatype for s in sets if s.input_datatype}
    if len(datatypes) > 1:
        raise DataError(f"{name}: the sets hold inputs of datatypes {', '.join(sorted(datatypes))}; give one")
    inputs = np.concatenate([s.inputs for s in sets])
    return Dataset(name, inputs, labels, input_name, next(iter(datatypes), None))


def check_compatible(
    dataset: Dataset,
    *,
    sample_shape: Sequence[int] | None,
    num_classes: int | None = None,
    input_name: str | None = None,
    input_datatype: str | None = None,
) -> None:
    """Raise DataError when ``dataset`` does not fit the model's input (name, datatype, shape) or class
    count; a name or datatype is compared only when both the set and the model declare it."""
    if input_name is not None and dataset.input_name is not None and dataset.input_name != input_name:
        raise DataError(
            f"{dataset.name}: the rows were sent as input {dataset.input_name!r} but the model's input is "
            f"{input_name!r}; pick the input with `guardedmodel dataset --input`"
        )
    if input_datatype is not None and dataset.input_datatype not in (None, input_datatype):
        # Converting, say, UINT8 pixels to the FP32 a model takes would change their scale unseen.
        raise DataError(
            f"{dataset.name}: the rows are {dataset.input_datatype} but the model's input is "
            f"{input_datatype}; give requests that were sent to this model"
        )
    if sample_shape is not None:
        want = tuple(int(s) for s in sample_shape)
        got = dataset.sample_shape
        if got != want and int(np.prod(got)) != int(np.prod(want)):
            raise DataError(f"{dataset.name}: samples have shape {got} but the model takes {want}")
    if num_classes is not None and dataset.labels is not None and dataset.labels.max() >= num_classes:
        raise DataError(
            f"{dataset.name}: label {int(dataset.labels.max())} is out of range for a model with "
            f"{num_classes} classes"
        )


def stratified_split(
    labels: np.ndarray | None, n: int, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (first, second) with ``fraction`` of each class in the second part (seeded)."""
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if labels is None else [np.flatnonzero(labels == c) for c in np.unique(labels)]
    first, second = [], []
    for idx in groups:
        idx = rng.permutation(idx)
        cut = round(len(idx) * (1.0 - fraction))
        first.append(idx[:cut])
        second.append(idx[cut:])
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(second))
