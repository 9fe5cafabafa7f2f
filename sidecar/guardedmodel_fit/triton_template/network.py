"""Numpy forward pass of the example CNN, read from ``weights.npz`` next to this file.

conv3x3(1->c1) relu maxpool2 -> conv3x3(c1->c2) relu maxpool2 -> flatten -> fc(hidden) relu
[= FEATURES] -> fc(classes) [= LOGITS]. Input (n, 1, 28, 28) float32 pixel values in [0, 1].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def conv3x3_same(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = sliding_window_view(padded, (3, 3), axis=(2, 3))  # type: ignore[call-overload]
    out = np.tensordot(windows, weight, axes=([1, 4, 5], [1, 2, 3]))  # (n, h, w, o)
    out += bias
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def maxpool2(x: np.ndarray) -> np.ndarray:
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


class Network:
    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        self.w = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
        self.fc1_t = np.ascontiguousarray(self.w["fc1.weight"].T)
        self.fc2_t = np.ascontiguousarray(self.w["fc2.weight"].T)

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w = self.w
        x = np.asarray(batch, dtype=np.float32).reshape(-1, 1, 28, 28)
        x = maxpool2(np.maximum(conv3x3_same(x, w["conv1.weight"], w["conv1.bias"]), 0.0))
        x = maxpool2(np.maximum(conv3x3_same(x, w["conv2.weight"], w["conv2.bias"]), 0.0))
        features = np.maximum(x.reshape(x.shape[0], -1) @ self.fc1_t + w["fc1.bias"], 0.0)
        logits = features @ self.fc2_t + w["fc2.bias"]
        return logits.astype(np.float32, copy=False), features.astype(np.float32, copy=False)


def load(version_dir: Path) -> Network:
    with np.load(Path(version_dir) / "weights.npz", allow_pickle=False) as npz:
        return Network({k: npz[k] for k in npz.files})
