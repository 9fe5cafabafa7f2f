from __future__ import annotations

import numpy as np
import pytest
from guard_synthetic import make_artifact

from guardedmodel_sidecar.guard.artifact import GuardArtifact


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def artifact(rng: np.random.Generator) -> GuardArtifact:
    return make_artifact(rng)
