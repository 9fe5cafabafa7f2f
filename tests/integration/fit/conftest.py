"""The worked Fashion-MNIST example, built once per machine into a cache (minutes the first time)."""

from __future__ import annotations

import pytest

from guardedmodel_fit.example import DEFAULT_OUT, ExampleBuild, build_example


@pytest.fixture(scope="session")
def fashion_example() -> ExampleBuild:
    return build_example(DEFAULT_OUT, versions=("1", "2"), progress=False)
