"""Where the test ground keeps built binaries and runtime state.

Binaries are cached per content hash under the user's cache directory so a
second start on the same machine reuses them; runtime state (data dirs, logs,
pid files) lives in a directory the caller chooses, so parallel test runs and
the CLI never share it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def repo_root() -> Path:
    """The guardedmodel checkout this package runs from (editable install)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").is_file() and (parent / "tools" / "k8sbundle").is_dir():
            return parent
    raise RuntimeError(
        f"cannot find the guardedmodel checkout above {here}; the test ground runs from a source checkout "
        "(pip install -e .)"
    )


def cache_dir() -> Path:
    base = os.environ.get("GUARDEDMODEL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "guardedmodel"
    )
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_state_dir() -> Path:
    return repo_root() / ".state"


def go_command() -> str:
    """The Go toolchain that builds the test ground's binaries from the module proxy."""
    go = shutil.which("go") or "/usr/local/go/bin/go"
    if not Path(go).exists():
        raise RuntimeError("Go is needed to build the test ground's binaries (go 1.26+ on PATH)")
    return go
