"""The `guardedmodel` entry point where a subcommand's optional part is missing (as in the image,
which carries only the runtime): a one-line hint and exit code 2, not a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

RUN_WITHOUT = """
import sys
sys.modules[{missing!r}] = None  # what an installation without it sees: ModuleNotFoundError
from guardedmodel_cli.main import main
sys.exit(main({argv!r}))
"""


@pytest.mark.parametrize(
    ("missing", "argv", "hint"),
    [
        ("guardedmodel_testground", ["cluster", "status"], "source checkout"),
        ("guardedmodel_testground", ["demo"], "source checkout"),
        ("torch", ["fit", "--help"], "guardedmodel[fit]"),
    ],
)
def test_a_missing_optional_part_is_named_with_what_to_install(
    missing: str, argv: list[str], hint: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", RUN_WITHOUT.format(missing=missing, argv=argv)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"lacks '{missing}'" in result.stderr and hint in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_runtime_module_is_a_real_error() -> None:
    """The operator or sidecar failing to import is a broken installation: it shows its traceback."""
    result = subprocess.run(
        [sys.executable, "-c", RUN_WITHOUT.format(missing="guardedmodel_sidecar.cli", argv=["sidecar"])],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0 and "Traceback" in result.stderr
