"""The worked example as a Triton ensemble: a preprocessing step, then the classifier.

    OUT/models/fashion-mnist-chain/config.pbtxt         platform "ensemble"; <v>/ empty folders
    OUT/models/fashion-mnist-chain/<v>/guard/           the chain's guard (fitted through Triton)
    OUT/models/fashion-mnist-unflatten/1/model.py       Python backend: IMAGE [784] -> PIXELS [1, 28, 28]
    OUT/models/fashion-mnist/                           the classifier (``build_example``)

The ensemble's input is ``IMAGE`` FP32 [784]; its outputs are the classifier step's ``LOGITS`` and
its ``FEATURES``, published under the name ``EMBEDDING``: an ensemble exposes a step's tensor only
when the ensemble config maps it to an ensemble output, and the guard's fit records that name
(``--features-output EMBEDDING``) so the sidecar reads the features from the chain's response.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .cli import FitOutcome
    from .example import ExampleBuild

import numpy as np

from .example_data import FAR_OOD_SETS, NEAR_OOD_SET, NUM_CLASSES
from .example_network import (
    FEATURE_DIM,
    FEATURES_OUTPUT,
    INPUT_NAME,
    INPUT_SHAPE,
    LOGITS_OUTPUT,
    MODEL_NAME,
)

_STEP_TEMPLATE_DIR = Path(__file__).parent / "ensemble_template"
ENSEMBLE_NAME = "fashion-mnist-chain"
STEP_NAME = "fashion-mnist-unflatten"
ENSEMBLE_INPUT = "IMAGE"
ENSEMBLE_INPUT_SHAPE = (784,)
STEP_OUTPUT = "PIXELS"
ENSEMBLE_FEATURES = "EMBEDDING"


@dataclass(frozen=True)
class EnsembleLayout:
    repository: Path
    ensemble_dir: Path
    versions: tuple[str, ...]


def _head(name: str, kind: str, outputs: Sequence[tuple[str, Sequence[int]]]) -> str:
    """Name, backend/platform, batching, the chain's input and ``outputs`` (name, dims), all FP32."""
    listed = ",\n".join(
        f'  {{ name: "{n}" data_type: TYPE_FP32 dims: [ {", ".join(map(str, dims))} ] }}'
        for n, dims in outputs
    )
    return f"""name: "{name}"
{kind}
max_batch_size: 64
input [
  {{ name: "{ENSEMBLE_INPUT}" data_type: TYPE_FP32 dims: [ {ENSEMBLE_INPUT_SHAPE[0]} ] }}
]
output [
{listed}
]
"""


def step_config_pbtxt(name: str = STEP_NAME) -> str:
    return (
        _head(name, 'backend: "python"', [(STEP_OUTPUT, INPUT_SHAPE)])
        + """\
instance_group [
  { kind: KIND_CPU count: 1 }
]
"""
    )


def ensemble_config_pbtxt(
    name: str = ENSEMBLE_NAME, *, classifier: str = MODEL_NAME, classifier_version: int = -1
) -> str:
    """The chain: ``classifier_version`` -1 runs the classifier's newest loaded version."""
    outputs = [(LOGITS_OUTPUT, (NUM_CLASSES,)), (ENSEMBLE_FEATURES, (FEATURE_DIM,))]
    return (
        _head(name, 'platform: "ensemble"', outputs)
        + f"""\
ensemble_scheduling {{
  step [
    {{
      model_name: "{STEP_NAME}"
      model_version: -1
      input_map {{ key: "{ENSEMBLE_INPUT}" value: "{ENSEMBLE_INPUT}" }}
      output_map {{ key: "{STEP_OUTPUT}" value: "pixels" }}
    }},
    {{
      model_name: "{classifier}"
      model_version: {classifier_version}
      input_map {{ key: "{INPUT_NAME}" value: "pixels" }}
      output_map {{ key: "{LOGITS_OUTPUT}" value: "{LOGITS_OUTPUT}" }}
      output_map {{ key: "{FEATURES_OUTPUT}" value: "{ENSEMBLE_FEATURES}" }}
    }}
  ]
}}
"""
    )


def write_ensemble_repository(
    classifier_dir: Path,
    repository: Path,
    *,
    classifier_versions: Sequence[str] = ("1",),
    versions: Sequence[str] = ("1",),
) -> EnsembleLayout:
    """Lay out the chain in ``repository``: the step, the ensemble's version folders and a copy of
    ``classifier_versions`` of the classifier (without their guards: the chain has its own)."""
    repository = Path(repository)
    classifier = repository / MODEL_NAME
    classifier.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(classifier_dir) / "config.pbtxt", classifier / "config.pbtxt")
    for version in classifier_versions:
        shutil.copytree(
            Path(classifier_dir) / version,
            classifier / version,
            ignore=shutil.ignore_patterns("guard", "__pycache__"),
            dirs_exist_ok=True,
        )
    step = repository / STEP_NAME
    (step / "1").mkdir(parents=True, exist_ok=True)
    (step / "config.pbtxt").write_text(step_config_pbtxt())
    shutil.copy(_STEP_TEMPLATE_DIR / "unflatten.py", step / "1" / "model.py")
    ensemble_dir = repository / ENSEMBLE_NAME
    for version in versions:
        (ensemble_dir / version).mkdir(parents=True, exist_ok=True)
    (ensemble_dir / "config.pbtxt").write_text(ensemble_config_pbtxt())
    return EnsembleLayout(repository, ensemble_dir, tuple(versions))


def fit_ensemble_guard(
    build: ExampleBuild, layout: EnsembleLayout, triton_url: str, *, version: str = "1", rows: int = 2000
) -> FitOutcome:
    """Fit the chain's guard through the Triton at ``triton_url`` (the chain loaded there), on the
    first ``rows`` of the example's data sets, naming the classifier step's own features output."""
    from .cli import fit_to_directory
    from .example import example_fit_config
    from .extract import open_model

    extractor = open_model(
        layout.ensemble_dir, version=version, triton_url=triton_url, features_output=FEATURES_OUTPUT
    )
    pick = np.random.default_rng(0).permutation(rows)
    few = np.arange(min(rows, 1000) // 5)
    return fit_to_directory(
        extractor,
        build.dataset("validation").subset(pick[: rows * 3 // 4]),
        layout.ensemble_dir / version / "guard",
        fit_set=build.dataset("fit").subset(pick),
        ood_sets=[build.dataset(NEAR_OOD_SET).subset(pick[: rows // 4])]
        + [build.dataset(name).subset(few) for name in FAR_OOD_SETS[:2]],
        config=example_fit_config(progress=False),
    )
