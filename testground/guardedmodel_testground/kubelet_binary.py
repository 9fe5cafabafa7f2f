"""Build (once, only when a real node is asked for) and locate the kubelet.

The kubelet comes from the same pinned `k8s.io/kubernetes` as the control plane,
but it is a separate program with its own cache entry: the bundle's key (see
k8s_binaries) stays as it is, so a test run that only needs kwok nodes never
builds the kubelet, and adding the kubelet never rebuilds the bundle.

The build runs in a copy of `tools/k8sbundle`'s module files under the cache,
so `-mod=mod` may complete the copy's go.sum without touching the checkout; it
resolves the same versions, so Go's build cache shares every package the bundle
already compiled (a cached build takes about half a minute on two cores).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TextIO

from .k8s_binaries import _version_ldflags
from .paths import cache_dir, go_command, repo_root

KUBELET_PACKAGE = "k8s.io/kubernetes/cmd/kubelet"
_MODULE_FILES = ("go.mod", "go.sum", "main.go", "tools.go")


def _module_dir() -> Path:
    return repo_root() / "tools" / "k8sbundle"


def kubelet_build_key() -> str:
    """The pins, this file (the build flags live here) and the Go version."""
    digest = hashlib.sha256(b"kubelet\0")
    for name in ("go.mod", "go.sum"):
        digest.update((_module_dir() / name).read_bytes())
    digest.update(Path(__file__).read_bytes())
    digest.update(
        subprocess.run([go_command(), "version"], capture_output=True, text=True, check=True).stdout.encode()
    )
    return digest.hexdigest()[:16]


def ensure_kubelet(*, log: TextIO = sys.stderr) -> Path:
    """The cached kubelet, built first if this machine has none."""
    entry = cache_dir() / "kubelet" / kubelet_build_key()
    kubelet = entry / "bin" / "kubelet"
    if (entry / ".complete").exists() and kubelet.exists():
        return kubelet
    entry.mkdir(parents=True, exist_ok=True)
    with open(entry / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (entry / ".complete").exists():
            _build(entry, kubelet, log)
    return kubelet


def _build(entry: Path, kubelet: Path, log: TextIO) -> None:
    source = entry / "src"
    source.mkdir(exist_ok=True)
    for name in _MODULE_FILES:
        if (_module_dir() / name).exists():
            shutil.copy2(_module_dir() / name, source / name)
    kubelet.parent.mkdir(exist_ok=True)
    started = time.monotonic()
    print("building kubelet (cached after the first build) ...", file=log, flush=True)
    result = subprocess.run(
        [
            go_command(),
            "build",
            "-trimpath",
            f"-ldflags=-s -w {_version_ldflags()}",
            "-o",
            str(kubelet),
            KUBELET_PACKAGE,
        ],
        cwd=source,
        env=dict(os.environ, GOFLAGS="-mod=mod"),
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"go build of {KUBELET_PACKAGE} failed:\n{result.stdout}\n{result.stderr}")
    print(f"built kubelet in {time.monotonic() - started:.0f}s", file=log, flush=True)
    (entry / ".complete").write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
