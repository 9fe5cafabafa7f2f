"""Build (once) and locate h2spec, the HTTP/2 conformance suite run against the sidecar's gRPC server.

``tools/h2spec`` pins it and its dependencies in a Go module (from the Go module proxy); the binary
is cached under a key of those module files and the Go version, like the cluster binaries.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from .paths import cache_dir, go_command, repo_root

PACKAGE = "github.com/summerwind/h2spec/cmd/h2spec"


def _module_dir() -> Path:
    return repo_root() / "tools" / "h2spec"


def ensure_h2spec() -> Path:
    go = go_command()
    version = subprocess.run([go, "version"], capture_output=True, text=True, check=True).stdout
    digest = hashlib.sha256(version.encode())
    for name in ("go.mod", "go.sum", "tools.go"):
        digest.update((_module_dir() / name).read_bytes())
    binary = cache_dir() / "h2spec" / digest.hexdigest()[:16] / "h2spec"
    if binary.exists():
        return binary
    binary.parent.mkdir(parents=True, exist_ok=True)
    partial = binary.with_name(f"h2spec.{os.getpid()}.partial")
    result = subprocess.run(
        [go, "build", "-trimpath", "-o", str(partial), PACKAGE],
        cwd=_module_dir(),
        env=dict(os.environ, GOFLAGS="-mod=mod"),
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"go build of {PACKAGE} failed:\n{result.stdout}\n{result.stderr}")
    partial.replace(binary)  # atomic: a concurrent build of the same key finds a whole binary
    return binary
