"""Build (once) and locate the control-plane binaries of the local cluster.

`tools/k8sbundle` is a Go wrapper module that pins Kubernetes, etcd, kwok and
helm; everything comes from the Go module proxy. The build output is cached
under a key made of the module files and the Go version, so a second start on
the same machine reuses it, and a change to the pins rebuilds.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from .paths import cache_dir, go_command, repo_root

#: The commands linked into the multi-call binary; each gets a symlink.
BUNDLED_COMMANDS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")

#: Separate programs built from the same module graph (sharing its build cache).
SEPARATE_PROGRAMS = {"kwok": "sigs.k8s.io/kwok/cmd/kwok", "helm": "helm.sh/helm/v3/cmd/helm"}


@dataclass(frozen=True)
class K8sBinaries:
    bin_dir: Path

    def path(self, command: str) -> Path:
        return self.bin_dir / command

    @property
    def kubectl(self) -> Path:
        return self.path("kubectl")

    @property
    def helm(self) -> Path:
        return self.path("helm")

    @property
    def kwok(self) -> Path:
        return self.path("kwok")


def _module_dir() -> Path:
    return repo_root() / "tools" / "k8sbundle"


def build_key() -> str:
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum", "main.go"):
        digest.update((_module_dir() / name).read_bytes())
    digest.update(Path(__file__).read_bytes())  # the build flags live here
    digest.update(
        subprocess.run([go_command(), "version"], capture_output=True, text=True, check=True).stdout.encode()
    )
    return digest.hexdigest()[:16]


def _complete(bin_dir: Path) -> bool:
    names = ("k8sbundle", *BUNDLED_COMMANDS, *SEPARATE_PROGRAMS)
    return (bin_dir / ".complete").exists() and all((bin_dir / name).exists() for name in names)


def ensure_k8s_binaries(*, log: TextIO = sys.stderr) -> K8sBinaries:
    """Return the cached binaries, building them first if this machine has none."""
    bin_dir = cache_dir() / "k8s" / build_key() / "bin"
    if _complete(bin_dir):
        return K8sBinaries(bin_dir)
    bin_dir.mkdir(parents=True, exist_ok=True)
    # A lock so two test runs (or a test run and `make demo`) don't build twice.
    with open(bin_dir.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _complete(bin_dir):
            _build(bin_dir, log)
    return K8sBinaries(bin_dir)


def kubernetes_version() -> str:
    """The pinned k8s.io/kubernetes release, read from the wrapper's go.mod."""
    for line in (_module_dir() / "go.mod").read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "k8s.io/kubernetes":
            return parts[1]
    raise RuntimeError("k8s.io/kubernetes is not required in tools/k8sbundle/go.mod")


def _version_ldflags() -> str:
    """Stamp the release into the binaries, as Kubernetes' own build does.

    Without it the server reports v0.0.0-master, which kubectl refuses to
    parse and which breaks helm's kubeVersion checks.
    """
    version = kubernetes_version()
    major, minor = version.lstrip("v").split(".")[:2]
    flags = []
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {package}.gitVersion={version}",
            f"-X {package}.gitMajor={major}",
            f"-X {package}.gitMinor={minor}",
            f"-X {package}.gitTreeState=clean",
        ]
    return " ".join(flags)


def _build(bin_dir: Path, log: TextIO) -> None:
    env = dict(os.environ, GOFLAGS="-mod=mod")
    flags = ["-trimpath", f"-ldflags=-s -w {_version_ldflags()}"]
    steps = [("k8sbundle", "."), *list(SEPARATE_PROGRAMS.items())]
    for name, package in steps:
        started = time.monotonic()
        print(f"building {name} (cached after the first build) ...", file=log, flush=True)
        result = subprocess.run(
            [go_command(), "build", *flags, "-o", str(bin_dir / name), package],
            cwd=_module_dir(),
            env=env,
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise RuntimeError(f"go build of {package} failed:\n{result.stdout}\n{result.stderr}")
        print(f"built {name} in {time.monotonic() - started:.0f}s", file=log, flush=True)
    for command in BUNDLED_COMMANDS:
        link = bin_dir / command
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to("k8sbundle")
    (bin_dir / ".complete").write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
