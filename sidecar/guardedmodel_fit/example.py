"""The worked example: a small CNN on Fashion-MNIST, served by Triton, with its guard fitted.

    python -m guardedmodel_fit.example --out ~/.cache/guardedmodel/examples

builds (and caches) a Triton model repository::

    OUT/models/fashion-mnist/config.pbtxt     Python backend, max_batch_size 64, dynamic batching
    OUT/models/fashion-mnist/<v>/model.py     Triton side; runs network.py (numpy, no torch)
    OUT/models/fashion-mnist/<v>/network.py, weights.npz
    OUT/models/fashion-mnist/<v>/guard/       guard.json, guard.npz, report/ (json, png, html)
    OUT/data/*.npz                            validation, fit, near- and far-OOD sets
    OUT/torchscript/fashion-mnist-v<v>.pt     the same network as TorchScript (for checks)

Input ``INPUT`` FP32 [1, 28, 28] (pixels in [0, 1]); outputs ``LOGITS`` FP32 [8] and ``FEATURES``
FP32 [64]. Classes 8 (bag) and 9 (ankle boot) are held out of training: they are the near-OOD
set. Far-OOD sets are another data set (scikit-learn's handwritten digits) and corruptions of
in-distribution images (noise, grey-level shift, blur, inversion, corrupted pixel values).

Versions: ``1`` is the reference model; ``2`` is trained on 5% of the data for one epoch (a
weaker model, for canary/rollback demos: lower accuracy and confidence, more reviews).
A rebuild is skipped when the code and recipe that made the files are unchanged.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import inspect
import json
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from guardedmodel_sidecar.guard.artifact import MANIFEST_FILE

from .data import Dataset
from .fitting import FitConfig

MODEL_NAME = "fashion-mnist"
INPUT_NAME = "INPUT"
INPUT_SHAPE = (1, 28, 28)
LOGITS_OUTPUT = "LOGITS"
FEATURES_OUTPUT = "FEATURES"
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
FEATURE_DIM = 64
FAR_OOD_SETS = ("digits", "noise", "grey-shift", "blur", "inverted", "corrupted")
NEAR_OOD_SET = "held-out-classes"
DEFAULT_OUT = Path("~/.cache/guardedmodel/examples").expanduser()
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


@dataclass(frozen=True)
class ExampleBuild:
    out: Path
    repository: Path  # the Triton model repository (pass to tritonserver --model-repository)
    model_dir: Path
    data_dir: Path
    versions: tuple[str, ...]
    rebuilt: tuple[str, ...]  # what had to be (re)made this time; empty when all was cached

    def dataset(self, name: str) -> Dataset:
        from .data import load_dataset

        return load_dataset(self.data_dir / f"{name}.npz", name=name)

    def torchscript(self, version: str) -> Path:
        return self.out / "torchscript" / f"{MODEL_NAME}-v{version}.pt"


# ------------------------------------------------------------------------------------------ data


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


# ----------------------------------------------------------------------------------------- build


def _code_hash(paths: Sequence[Path], extra: object, functions: Sequence[Callable[..., object]] = ()) -> str:
    """Digest of what made a cached output: files, the source of functions, and parameters.

    Only the code that shapes an output goes in, so editing unrelated parts of this module
    does not retrain the models.
    """
    h = hashlib.sha256(json.dumps(extra, sort_keys=True, default=str).encode())
    for path in sorted(paths):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    for func in functions:
        h.update(inspect.getsource(func).encode())
    return h.hexdigest()


def _stamp_matches(path: Path, digest: str) -> bool:
    try:
        return bool(json.loads(path.read_text()).get("digest") == digest)
    except (OSError, ValueError):
        return False


def example_fit_config(progress: bool = True) -> FitConfig:
    return FitConfig(
        seed=0,
        mahalanobis_normalise=True,  # measured better on this network, near and far
        progress=progress,
        metadata={"class_names": [CLASS_NAMES[c] for c in IN_CLASSES], "example": MODEL_NAME},
    )


def build_example(
    out: Path = DEFAULT_OUT,
    *,
    versions: Sequence[str] = ("1", "2"),
    force: bool = False,
    progress: bool = True,
) -> ExampleBuild:
    """Build (or reuse) the example repository under ``out``; see the module doc."""
    from .cli import fit_to_directory
    from .extract import open_model

    out = Path(out).expanduser()
    repository = out / "models"
    model_dir = repository / MODEL_NAME
    data_dir = out / "data"
    here = Path(__file__).parent
    sidecar_guard = here.parent / "guardedmodel_sidecar" / "guard"
    rebuilt: list[str] = []

    data_digest = _code_hash(
        [],
        {"held_out": HELD_OUT_CLASSES, "far": FAR_OOD_SETS},
        [read_idx, load_fashion_mnist, _pixels, _remap, _gaussian_blur, far_ood_sets, prepare_data],
    )
    if force or not _stamp_matches(data_dir / "BUILD.json", data_digest):
        prepare_data(data_dir)
        (data_dir / "BUILD.json").write_text(json.dumps({"digest": data_digest}))
        rebuilt.append("data")

    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(config_pbtxt())
    fit_code = [p for p in sorted(here.glob("*.py")) if p.name != "example.py"] + sorted(
        sidecar_guard.glob("*.py")
    )
    for version in versions:
        recipe = RECIPES[version]
        version_dir = model_dir / version
        torchscript_path = out / "torchscript" / f"{MODEL_NAME}-v{version}.pt"
        train_digest = _code_hash(
            sorted(_TEMPLATE_DIR.glob("*.py")),
            {"recipe": asdict(recipe), "v": version, "data": data_digest},
            [_make_net, train, export_version],
        )
        if (
            force
            or not _stamp_matches(version_dir / "BUILD.json", train_digest)
            or not torchscript_path.is_file()
        ):
            started = time.monotonic()
            net = train(recipe, progress=progress)
            export_version(net, model_dir, version, torchscript_path)
            (version_dir / "BUILD.json").write_text(
                json.dumps(
                    {"digest": train_digest, "recipe": asdict(recipe), "train_s": time.monotonic() - started}
                )
            )
            rebuilt.append(f"model v{version}")
        guard_dir = version_dir / "guard"
        fit_config = example_fit_config(progress=False)
        guard_digest = _code_hash(
            fit_code,
            {"train": train_digest, "data": data_digest, "config": repr(fit_config)},
            [example_fit_config],
        )
        if (
            force
            or f"model v{version}" in rebuilt
            or not (
                _stamp_matches(guard_dir / "BUILD.json", guard_digest)
                and (guard_dir / MANIFEST_FILE).is_file()
            )
        ):
            shutil.rmtree(guard_dir, ignore_errors=True)
            build = ExampleBuild(out, repository, model_dir, data_dir, tuple(versions), ())
            extractor = open_model(model_dir, version=version)
            fit_to_directory(
                extractor,
                build.dataset("validation"),
                guard_dir,
                fit_set=build.dataset("fit"),
                ood_sets=[build.dataset(NEAR_OOD_SET), *(build.dataset(n) for n in FAR_OOD_SETS)],
                config=example_fit_config(progress),
            )
            (guard_dir / "BUILD.json").write_text(json.dumps({"digest": guard_digest}))
            rebuilt.append(f"guard v{version}")
    return ExampleBuild(out, repository, model_dir, data_dir, tuple(versions), tuple(rebuilt))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m guardedmodel_fit.example", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})"
    )
    parser.add_argument("--versions", default="1,2", help="model versions to build (1: reference, 2: weaker)")
    parser.add_argument("--force", action="store_true", help="rebuild even when cached")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    versions = [v.strip() for v in args.versions.split(",") if v.strip()]
    unknown = [v for v in versions if v not in RECIPES]
    if unknown:
        parser.error(f"unknown version(s) {unknown}; known: {', '.join(RECIPES)}")
    started = time.monotonic()
    build = build_example(args.out, versions=versions, force=args.force, progress=not args.no_progress)
    done = ", ".join(build.rebuilt) or "nothing (all cached)"
    print(
        f"Triton model repository: {build.repository}  (model {MODEL_NAME}, versions {', '.join(versions)})"
    )
    print(f"rebuilt: {done}  in {time.monotonic() - started:.1f}s")
    for version in versions:
        print(f"  guard report v{version}: {build.model_dir / version / 'guard' / 'report' / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
