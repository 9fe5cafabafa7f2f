from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
CRD_PATH = REPO / "crds" / "guardedmodel.io_guardedmodels.yaml"


@pytest.fixture(scope="session")
def crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text())


@pytest.fixture
def minimal_body() -> dict[str, Any]:
    return yaml.safe_load((REPO / "examples" / "guardedmodel-minimal.yaml").read_text()) | {
        "metadata": {"name": "classifier", "namespace": "ml", "uid": "0000-1111", "generation": 1}
    }
