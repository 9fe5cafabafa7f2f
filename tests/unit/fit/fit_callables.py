"""Data-set callables referenced as 'module:function' by the loader tests."""

from __future__ import annotations

import numpy as np


def labelled_pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((12, 1, 4, 4)).astype(np.float32), np.arange(12) % 3


def as_mapping() -> dict[str, np.ndarray]:
    return {"images": np.zeros((5, 3)), "targets": np.array([0, 1, 0, 1, 1])}


def not_a_callable_result() -> str:
    return "not data"
