"""The worked example's network: a small CNN trained with torch, served by Triton without torch.

``train`` makes the network for a ``Recipe``; ``export_version`` writes it as one version of the
Triton model (numpy weights run by the Python backend's ``network.py``) and as TorchScript (for
checks). Input ``INPUT`` FP32 [1, 28, 28]; outputs ``LOGITS`` FP32 [8] and ``FEATURES`` FP32 [64].
"""

from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .example_data import IN_CLASSES, NUM_CLASSES, _pixels, _remap, load_fashion_mnist

MODEL_NAME = "fashion-mnist"
INPUT_NAME = "INPUT"
INPUT_SHAPE = (1, 28, 28)
LOGITS_OUTPUT = "LOGITS"
FEATURES_OUTPUT = "FEATURES"
FEATURE_DIM = 64
_TEMPLATE_DIR = Path(__file__).parent / "triton_template"


@dataclass(frozen=True)
class Recipe:
    seed: int
    epochs: int
    train_fraction: float
    channels: tuple[int, int] = (16, 32)
    lr: float = 2e-3
    batch_size: int = 128


RECIPES: dict[str, Recipe] = {
    "1": Recipe(seed=0, epochs=4, train_fraction=1.0),
    "2": Recipe(seed=1, epochs=1, train_fraction=0.05),
}


# -------------------------------------------------------------------------------------- training


def _make_net(recipe: Recipe):
    import torch
    from torch import nn

    c1, c2 = recipe.channels

    class ExampleNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
            self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
            self.fc1 = nn.Linear(c2 * 7 * 7, FEATURE_DIM)
            self.fc2 = nn.Linear(FEATURE_DIM, NUM_CLASSES)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
            x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
            features = torch.relu(self.fc1(torch.flatten(x, 1)))
            return self.fc2(features), features

    return ExampleNet()


def train(recipe: Recipe, progress: bool = True):
    """Train the example CNN on the in-distribution classes; deterministic for a recipe."""
    import torch
    from tqdm.auto import tqdm

    torch.set_num_threads(2)
    torch.manual_seed(recipe.seed)
    raw = load_fashion_mnist()
    keep = np.flatnonzero(np.isin(raw["train_y"], IN_CLASSES))
    rng = np.random.default_rng(recipe.seed)
    keep = np.sort(rng.choice(keep, size=int(len(keep) * recipe.train_fraction), replace=False))
    x = torch.from_numpy(_pixels(raw["train_x"][keep]))
    y = torch.from_numpy(_remap(raw["train_y"][keep]))
    net = _make_net(recipe)
    optimiser = torch.optim.Adam(net.parameters(), lr=recipe.lr)
    steps_per_epoch = (len(keep) + recipe.batch_size - 1) // recipe.batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, recipe.lr, total_steps=recipe.epochs * steps_per_epoch
    )
    net.train()
    for epoch in range(recipe.epochs):
        order = torch.from_numpy(rng.permutation(len(keep)))
        bar = tqdm(
            range(steps_per_epoch), desc=f"training epoch {epoch + 1}/{recipe.epochs}", disable=not progress
        )
        for step in bar:
            idx = order[step * recipe.batch_size : (step + 1) * recipe.batch_size]
            logits, _ = net(x[idx])
            loss = torch.nn.functional.cross_entropy(logits, y[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
    return net.eval()


# ---------------------------------------------------------------------------------------- export


def config_pbtxt(name: str = MODEL_NAME) -> str:
    return f"""name: "{name}"
backend: "python"
max_batch_size: 64
dynamic_batching {{
  max_queue_delay_microseconds: 500
}}
input [
  {{ name: "{INPUT_NAME}" data_type: TYPE_FP32 dims: [ {", ".join(map(str, INPUT_SHAPE))} ] }}
]
output [
  {{ name: "{LOGITS_OUTPUT}" data_type: TYPE_FP32 dims: [ {NUM_CLASSES} ] }},
  {{ name: "{FEATURES_OUTPUT}" data_type: TYPE_FP32 dims: [ {FEATURE_DIM} ] }}
]
instance_group [
  {{ kind: KIND_CPU count: 1 }}
]
"""


def export_version(net, model_dir: Path, version: str, torchscript_path: Path) -> None:
    import torch

    version_dir = model_dir / version
    version_dir.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in net.state_dict().items()}
    np.savez(version_dir / "weights.npz", **weights)
    for name in ("model.py", "network.py"):
        shutil.copy2(_TEMPLATE_DIR / name, version_dir / name)
    torchscript_path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # TorchScript is deprecated upstream but is what Triton's libtorch loads
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(net).save(str(torchscript_path))
