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
import hashlib
import inspect
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from guardedmodel_sidecar.guard.artifact import MANIFEST_FILE

from .data import Dataset
from .example_data import (
    CLASS_NAMES,
    FAR_OOD_SETS,
    HELD_OUT_CLASSES,
    IN_CLASSES,
    NEAR_OOD_SET,
    _gaussian_blur,
    _pixels,
    _remap,
    far_ood_sets,
    load_fashion_mnist,
    prepare_data,
    read_idx,
)
from .example_network import (
    _TEMPLATE_DIR,
    MODEL_NAME,
    RECIPES,
    _make_net,
    config_pbtxt,
    export_version,
    train,
)
from .fit_config import FitConfig


def default_out(environ: Mapping[str, str] = os.environ) -> Path:
    """Beside the test ground's other caches: $GUARDEDMODEL_CACHE, else $XDG_CACHE_HOME/guardedmodel,
    else ~/.cache/guardedmodel (the same rule as guardedmodel_testground.paths.cache_dir)."""
    base = environ.get("GUARDEDMODEL_CACHE") or str(
        Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "guardedmodel"
    )
    return Path(base).expanduser() / "examples"


DEFAULT_OUT = default_out()


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
    # The example's own modules make the data and the models, which have their own digests.
    fit_code = [p for p in sorted(here.glob("*.py")) if not p.name.startswith("example")] + sorted(
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
