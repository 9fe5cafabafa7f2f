"""Temperature scaling (Guo et al., 2017): one scalar T that minimises held-out NLL of softmax(z / T)."""

from __future__ import annotations

import numpy as np
import torch


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *, max_iter: int = 200) -> float:
    """Temperature minimising the NLL of ``labels`` under softmax(logits / T); T > 0.

    Optimises log T with L-BFGS so T stays positive without constraints; the NLL is convex in
    1/T, so the optimum is unique and L-BFGS finds it in a few dozen steps.
    """
    z = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    if z.ndim != 2 or y.shape != (z.shape[0],):
        raise ValueError(f"logits (n, C) and labels (n,) expected, got {tuple(z.shape)} and {tuple(y.shape)}")
    if z.shape[0] == 0:
        raise ValueError("cannot fit a temperature on an empty set")
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS(
        [log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-10
    )

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / torch.exp(log_t), y)
        loss.backward()
        return loss

    optimiser.step(closure)
    t = float(torch.exp(log_t).detach())
    if not np.isfinite(t) or t <= 0:
        raise ArithmeticError(f"temperature scaling diverged (T={t}); are the labels right?")
    return t
