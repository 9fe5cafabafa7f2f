"""The worked example's data: Fashion-MNIST with two classes held out, and the far-OOD sets.

Classes 8 (bag) and 9 (ankle boot) are held out of training: they are the near-OOD set. Far-OOD
sets are another data set (scikit-learn's handwritten digits) and corruptions of in-distribution
images (noise, grey-level shift, blur, inversion, corrupted pixel values). ``prepare_data`` writes
them all as ``<name>.npz`` for the fit and the demo.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
)
HELD_OUT_CLASSES = (8, 9)
IN_CLASSES = tuple(c for c in range(10) if c not in HELD_OUT_CLASSES)
NUM_CLASSES = len(IN_CLASSES)
FAR_OOD_SETS = ("digits", "noise", "grey-shift", "blur", "inverted", "corrupted")
NEAR_OOD_SET = "held-out-classes"


def read_idx(path: Path) -> np.ndarray:
    """An idx file (the MNIST format), gzipped."""
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load_fashion_mnist(root: Path = FASHION_MNIST_DIR) -> dict[str, np.ndarray]:
    names = {
        "train_x": "train-images-idx3-ubyte.gz",
        "train_y": "train-labels-idx1-ubyte.gz",
        "test_x": "t10k-images-idx3-ubyte.gz",
        "test_y": "t10k-labels-idx1-ubyte.gz",
    }
    missing = [n for n in names.values() if not (root / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{root}: Fashion-MNIST files missing ({', '.join(missing)}); apt install dataset-fashion-mnist"
        )
    return {key: read_idx(root / name) for key, name in names.items()}


def _pixels(images: np.ndarray) -> np.ndarray:
    return (images.astype(np.float32) / 255.0)[:, None, :, :]


def _remap(labels: np.ndarray) -> np.ndarray:
    lookup = np.full(10, -1, dtype=np.int64)
    lookup[list(IN_CLASSES)] = np.arange(NUM_CLASSES)
    return lookup[labels]


def _gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    radius = int(3 * sigma)
    t = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (t / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(x, ((0, 0), (0, 0), (radius, radius), (radius, radius)), mode="constant")
    rows = np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="valid"), 2, padded)
    return np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="valid"), 3, rows).astype(np.float32)


def far_ood_sets(in_dist: np.ndarray, seed: int, size: int = 1000) -> dict[str, np.ndarray]:
    """Another data set and corruptions of in-distribution images, ``size`` samples each."""
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(seed)
    base = in_dist[rng.choice(in_dist.shape[0], size=size, replace=False)]
    digits = load_digits().images[:size].astype(np.float32) / 16.0  # 8x8 -> 24x24 -> pad to 28x28
    digits = np.pad(np.kron(digits, np.ones((3, 3), np.float32)), ((0, 0), (2, 2), (2, 2)))[:, None]
    corrupted = base.copy()
    mask = rng.random(base.shape) < 0.25
    corrupted[mask] = rng.integers(0, 2, size=int(mask.sum())).astype(np.float32)
    return {
        "digits": digits,
        "noise": rng.random(base.shape, dtype=np.float32),
        "grey-shift": np.clip(base * 0.6 + 0.4, 0.0, 1.0),
        "blur": _gaussian_blur(base, sigma=2.5),
        "inverted": 1.0 - base,
        "corrupted": corrupted,
    }


def prepare_data(data_dir: Path, seed: int = 0) -> None:
    raw = load_fashion_mnist()
    test_x, test_y = _pixels(raw["test_x"]), raw["test_y"]
    train_x, train_y = _pixels(raw["train_x"]), raw["train_y"]
    in_test = np.isin(test_y, IN_CLASSES)
    in_train = np.flatnonzero(np.isin(train_y, IN_CLASSES))
    rng = np.random.default_rng(seed)
    fit_idx = np.sort(rng.choice(in_train, size=12000, replace=False))
    data_dir.mkdir(parents=True, exist_ok=True)
    sets = {
        "validation": {"inputs": test_x[in_test], "labels": _remap(test_y[in_test])},
        "fit": {"inputs": train_x[fit_idx], "labels": _remap(train_y[fit_idx])},
        NEAR_OOD_SET: {"inputs": test_x[~in_test]},
        **{name: {"inputs": x} for name, x in far_ood_sets(test_x[in_test], seed).items()},
    }
    for name, arrays in sets.items():
        np.savez(data_dir / f"{name}.npz", **arrays)
