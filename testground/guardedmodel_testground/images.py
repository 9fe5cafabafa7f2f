"""Build (once) the container images the real-pod tier runs, with no registry and no daemon.

Three images, each cached by content hash under `<cache>/images/`, as the
cluster binaries are:

- a Debian bookworm base, made by `mmdebstrap` from the Debian mirror and
  imported into buildah's storage (Docker Hub is not reachable here);
- the product image, `buildah bud` of the repository's own `Dockerfile` with
  `--build-arg BASE=<that base>`, the file users build on python:3.11-slim;
- a CPU Triton image from the `nvidia-pytriton` wheel's `tritonserver` and
  Python backend (nvcr.io is not reachable here).

Each image ends as a docker-archive tarball that `ctr -n k8s.io images import`
takes. A cache hit checks a marker file and returns without running buildah.

buildah runs as root with `vfs` storage (this machine has no overlay mounts
for containers) and `chroot` isolation (no user namespaces or runc needed).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from .paths import cache_dir, repo_root
from .procs import ManagedProcess

#: Where the product and test ground images are named (never pushed anywhere).
REGISTRY = "localhost"
PRODUCT_REPOSITORY = f"{REGISTRY}/guardedmodel"
TRITON_REPOSITORY = f"{REGISTRY}/guardedmodel-triton-cpu"
BASE_REPOSITORY = f"{REGISTRY}/guardedmodel-base"

#: The uid the product image runs as (Dockerfile `USER`); the Triton image's is TRITON_UID.
PRODUCT_UID = 10001
TRITON_UID = 1000

#: What the Dockerfile copies into the build: the cache key covers exactly these.
PRODUCT_CONTEXT = ("Dockerfile", "pyproject.toml", "README.md", "operator", "sidecar", "cli")

#: Global flags for every buildah call; the storage is ours alone, under the cache.
STORAGE_FLAGS = ("--storage-driver", "vfs")
ISOLATION = "chroot"

DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_SECURITY = "http://deb.debian.org/debian-security"


@dataclass(frozen=True)
class BaseRecipe:
    """A Debian bookworm root filesystem made by mmdebstrap (minbase and a few packages)."""

    flavour: str
    packages: tuple[str, ...]
    suite: str = "bookworm"

    def mmdebstrap_argv(self, target: Path) -> list[str]:
        sources = [
            f"deb {DEBIAN_MIRROR} {self.suite} main",
            f"deb {DEBIAN_MIRROR} {self.suite}-updates main",
            f"deb {DEBIAN_SECURITY} {self.suite}-security main",
        ]
        # Documentation, manual pages and translations are a third of a
        # minbase system and nothing in a container reads them.
        excludes = ["/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*", "/usr/share/info/*"]
        dpkg_options = [f"path-exclude={pattern}" for pattern in excludes]
        dpkg_options.append("path-include=/usr/share/doc/*/copyright")
        return [
            "mmdebstrap",
            "--variant=minbase",
            # usr-is-merged instead of the usrmerge package, which drags in perl.
            "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
            f"--include={','.join(self.packages)}",
            *(f"--dpkgopt={option}" for option in dpkg_options),
            "--aptopt=Acquire::Retries 3",
            self.suite,
            str(target),
            *sources,
        ]


#: The product's base: Python 3.11 and its venv module (the Dockerfile makes /opt/venv).
PYTHON_BASE = BaseRecipe("python", ("python3", "python3-venv", "ca-certificates"))
#: Triton's base: the Python backend stub links libpython3.11; models import numpy.
TRITON_BASE = BaseRecipe("triton", ("python3", "libpython3.11", "python3-numpy", "ca-certificates"))


@dataclass(frozen=True)
class BuiltImage:
    """One image: its name in buildah's storage and in containerd, and its archive."""

    repository: str
    tag: str
    archive: Path
    key_dir: Path

    @property
    def reference(self) -> str:
        return f"{self.repository}:{self.tag}"

    @property
    def info(self) -> dict[str, float]:
        """What the build measured: seconds, archive and unpacked bytes."""
        info: dict[str, float] = json.loads((self.key_dir / "info.json").read_text())
        return info


class ImageBuildError(RuntimeError):
    """A build step failed; the message names the command and quotes its output."""


# ---- pure parts: keys and file sets -------------------------------------------------


def tool_versions() -> str:
    """buildah's and mmdebstrap's versions: a new tool may build a different image."""
    versions = []
    for tool in ("buildah", "mmdebstrap"):
        path = shutil.which(tool)
        if path is None:
            raise ImageBuildError(
                f"{tool} is not installed; `make pod-deps` (scripts/install-pod-deps.sh) installs it"
            )
        out = subprocess.run([path, "--version"], capture_output=True, text=True, check=True).stdout
        versions.append(out.strip())
    return "\n".join(versions)


def digest_files(root: Path, relative_paths: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for relative in sorted(relative_paths):
        path = root / relative
        digest.update(relative.encode() + b"\0")
        digest.update(oct(path.stat().st_mode & 0o111).encode())
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def context_files(root: Path, entries: Sequence[str]) -> list[str]:
    """The files of `entries` git tracks or would track (not ignored): the build context."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z", "--", *entries],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sorted({name for name in listed.split("\0") if name and (root / name).is_file()})


def recipe_key(recipe: BaseRecipe, versions: str) -> str:
    text = json.dumps(
        {"argv": recipe.mmdebstrap_argv(Path("TARGET")), "image": _base_image_config(), "tools": versions}
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _key(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


# ---- the builds ---------------------------------------------------------------------------


def images_dir() -> Path:
    return cache_dir() / "images"


def buildah_argv(*args: str) -> list[str]:
    storage = images_dir() / "storage"
    return [
        "buildah",
        *STORAGE_FLAGS,
        "--root",
        str(storage / "root"),
        "--runroot",
        str(storage / "run"),
        *args,
    ]


def _run(argv: Sequence[str]) -> str:
    result = subprocess.run(list(argv), capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-40:])
        raise ImageBuildError(f"{' '.join(argv)} failed (exit {result.returncode}):\n{tail}")
    return result.stdout


def _require_root() -> None:
    if os.geteuid() != 0:
        raise ImageBuildError(
            "building images needs root (buildah with vfs storage and chroot isolation, mmdebstrap root mode)"
        )


def _complete(key_dir: Path) -> bool:
    return (key_dir / ".complete").exists() and (key_dir / "image.tar").exists()


def _image_in_storage(reference: str) -> bool:
    argv = buildah_argv("inspect", "--type", "image", "--format", "{{.FromImageID}}", reference)
    return subprocess.run(argv, capture_output=True).returncode == 0


def _cached(
    kind: str, key: str, repository: str, build: Callable[[BuiltImage], None], log: TextIO
) -> BuiltImage:
    """Return the image of `key`, building it under a lock if no complete build exists."""
    key_dir = images_dir() / kind / key
    image = BuiltImage(repository, key, key_dir / "image.tar", key_dir)
    if _complete(key_dir):
        return image
    _require_root()
    key_dir.mkdir(parents=True, exist_ok=True)
    # A lock so two test runs (or a test run and the demo) don't build twice.
    with open(key_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _complete(key_dir):
            started = time.monotonic()
            print(
                f"building image {image.reference} (cached after the first build) ...", file=log, flush=True
            )
            build(image)
            _export(image)
            seconds = time.monotonic() - started
            info = {"build_seconds": round(seconds, 1), **_sizes(image)}
            (key_dir / "info.json").write_text(json.dumps(info, indent=1) + "\n")
            (key_dir / ".complete").write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            print(f"built {image.reference} in {seconds:.0f}s", file=log, flush=True)
            _prune_superseded(key_dir, repository)
    return image


def _prune_superseded(current: Path, repository: str) -> None:
    """Drop the other builds of this kind: with vfs storage each one costs its full size twice
    (archive and storage). A build another process holds locked is left alone."""
    for other in current.parent.iterdir():
        if other == current or not other.is_dir():
            continue
        with open(other / ".lock", "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            subprocess.run(buildah_argv("rmi", f"{repository}:{other.name}"), capture_output=True)
            shutil.rmtree(other, ignore_errors=True)


def _export(image: BuiltImage) -> None:
    partial = image.archive.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    _run(buildah_argv("push", image.reference, f"docker-archive:{partial}:{image.reference}"))
    partial.rename(image.archive)


def _sizes(image: BuiltImage) -> dict[str, float]:
    """The archive is the image's layers as plain tars: its size is the unpacked size.

    The gzip figure is what a registry push would move (layers go compressed).
    """
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    compressed = 0
    with open(image.archive, "rb") as archive:
        while chunk := archive.read(1 << 20):
            compressed += len(compressor.compress(chunk))
    compressed += len(compressor.flush())
    return {"archive_bytes": image.archive.stat().st_size, "gzip_bytes": compressed}


def _base_image_config() -> list[str]:
    return [
        "--env",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--env",
        "LANG=C.UTF-8",
        "--cmd",
        "/usr/bin/python3",
    ]


def ensure_base_image(recipe: BaseRecipe = PYTHON_BASE, *, log: TextIO = sys.stderr) -> BuiltImage:
    """The bookworm base of `recipe`, present in buildah's storage (FROM needs it there)."""
    key = recipe_key(recipe, tool_versions())
    repository = f"{BASE_REPOSITORY}-{recipe.flavour}"
    image = _cached(f"base-{recipe.flavour}", key, repository, lambda image: _build_base(recipe, image), log)
    if not _image_in_storage(image.reference):
        # The storage was cleared but the archive stayed: load it back.
        _require_root()
        _run(buildah_argv("pull", f"docker-archive:{image.archive}"))
    return image


def _build_base(recipe: BaseRecipe, image: BuiltImage) -> None:
    with tempfile.TemporaryDirectory(dir=image.key_dir) as scratch:
        rootfs = Path(scratch) / "rootfs.tar"
        _run(recipe.mmdebstrap_argv(rootfs))
        container = _run(buildah_argv("from", "scratch")).strip()
        try:
            _run(buildah_argv("add", container, str(rootfs), "/"))
            _run(buildah_argv("config", *_base_image_config(), container))
            _run(buildah_argv("commit", "--rm", container, image.reference))
        except BaseException:
            subprocess.run(buildah_argv("rm", container), capture_output=True)
            raise


def product_key(base: BuiltImage, versions: str) -> str:
    root = repo_root()
    files = context_files(root, PRODUCT_CONTEXT)
    return _key(digest_files(root, files), base.tag, versions, ISOLATION, *STORAGE_FLAGS)


def ensure_product_image(*, log: TextIO = sys.stderr) -> BuiltImage:
    """The image of the repository's Dockerfile, built on the bookworm base."""
    base = ensure_base_image(PYTHON_BASE, log=log)
    key = product_key(base, tool_versions())
    return _cached("product", key, PRODUCT_REPOSITORY, lambda image: _build_product(base, image), log)


def _stage_context(root: Path, files: Iterable[str], target: Path) -> None:
    """Copy exactly the keyed files, so the build sees nothing the key does not cover."""
    for relative in files:
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / relative, destination)


def host_trust_volumes() -> list[str]:
    """Bind this machine's CA bundle (and pip config) into the build's RUN steps.

    pip inside the build reaches PyPI through whatever this machine trusts (a
    TLS-inspecting proxy, a private index); the mounts exist only while a RUN
    step runs, so nothing of them is committed into the image.
    """
    bundle = Path(
        os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt"
    )
    volumes = []
    if bundle.is_file():
        volumes.append(f"--volume={bundle.resolve()}:/etc/ssl/certs/ca-certificates.crt:ro")
    pip_conf = Path("/etc/pip.conf")
    if pip_conf.is_file():
        volumes.append(f"--volume={pip_conf}:/etc/pip.conf:ro")
    return volumes


def _bud_argv(
    base: BuiltImage, image: BuiltImage, context: Path, containerfile: str = "Dockerfile"
) -> list[str]:
    return buildah_argv(
        "bud",
        f"--isolation={ISOLATION}",
        *host_trust_volumes(),
        f"--build-arg=BASE={base.reference}",
        "--pull-never",
        "--layers=false",
        "-f",
        str(context / containerfile),
        "-t",
        image.reference,
        str(context),
    )


def _build_product(base: BuiltImage, image: BuiltImage) -> None:
    root = repo_root()
    with tempfile.TemporaryDirectory(dir=image.key_dir) as scratch:
        context = Path(scratch) / "context"
        _stage_context(root, context_files(root, PRODUCT_CONTEXT), context)
        _run(_bud_argv(base, image, context))


# ---- the CPU Triton image -------------------------------------------------------------

TRITON_PYTHON = "3.11"  # bookworm's Python: the stub must match the interpreter it embeds

TRITON_CONTAINERFILE = f"""\
ARG BASE
FROM ${{BASE}}
RUN useradd --uid {TRITON_UID} --no-create-home --shell /usr/sbin/nologin triton-server
COPY tritonserver /opt/tritonserver
# tritonserver's default --backend-directory is /opt/tritonserver/backends,
# and the operator runs `tritonserver` by name, as in NVIDIA's image.
ENV PATH=/opt/tritonserver/bin:$PATH \\
    LD_LIBRARY_PATH=/opt/tritonserver/lib
USER {TRITON_UID}
EXPOSE 8000 8001 8002
ENTRYPOINT ["tritonserver"]
"""


def pytriton_root() -> Path:
    """The installed nvidia-pytriton package, found without importing it (it is heavy)."""
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        raise ImageBuildError(
            "the nvidia-pytriton wheel is needed for the Triton image (pip install -e '.[test]')"
        )
    return Path(spec.origin).parent


def triton_layout(pytriton: Path) -> dict[str, Path]:
    """Where each file of /opt/tritonserver comes from in the wheel."""
    server = pytriton / "tritonserver"
    layout = {"bin/tritonserver": server / "bin" / "tritonserver"}
    for item in sorted((pytriton.parent / "nvidia_pytriton.libs").iterdir()):
        layout[f"lib/{item.name}"] = item
    for item in sorted((server / "backends" / "python").iterdir()):
        if item.is_file():
            layout[f"backends/python/{item.name}"] = item
    stub = server / "python_backend_stubs" / TRITON_PYTHON / "triton_python_backend_stub"
    layout["backends/python/triton_python_backend_stub"] = stub
    return layout


def triton_key(base: BuiltImage, versions: str) -> str:
    layout = triton_layout(pytriton_root())
    digest = hashlib.sha256()
    for name, source in sorted(layout.items()):
        stat = source.stat()
        # The wheel's files never change in place; name, size and mtime identify them.
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    return _key(digest.hexdigest(), TRITON_CONTAINERFILE, base.tag, versions, ISOLATION, *STORAGE_FLAGS)


def ensure_triton_image(*, log: TextIO = sys.stderr) -> BuiltImage:
    """A CPU-only Triton with the Python backend, for the real-pod test ground."""
    base = ensure_base_image(TRITON_BASE, log=log)
    key = triton_key(base, tool_versions())
    return _cached("triton", key, TRITON_REPOSITORY, lambda image: _build_triton(base, image), log)


def _build_triton(base: BuiltImage, image: BuiltImage) -> None:
    with tempfile.TemporaryDirectory(dir=image.key_dir) as scratch:
        context = Path(scratch) / "context"
        for name, source in triton_layout(pytriton_root()).items():
            destination = context / "tritonserver" / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)
        (context / "Containerfile").write_text(TRITON_CONTAINERFILE)
        _run(_bud_argv(base, image, context, "Containerfile"))


# ---- running what an image holds (checks; the real pods run under the kubelet) -----------


@contextlib.contextmanager
def working_container(image: BuiltImage) -> Iterator[str]:
    """A throwaway container of `image`; with vfs storage each one is a full copy, so share it."""
    container = _run(buildah_argv("from", "--pull-never", image.reference)).strip()
    try:
        yield container
    finally:
        subprocess.run(buildah_argv("rm", container), capture_output=True)


def run_in_container(
    container: str, command: Sequence[str], *, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run `command` as the image's user, with chroot isolation and this machine's network."""
    argv = buildah_argv("run", f"--isolation={ISOLATION}", container, "--", *command)
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def copy_into(container: str, source: Path, destination: str) -> None:
    _run(buildah_argv("copy", container, str(source), destination))


@contextlib.contextmanager
def serve_in_container(container: str, command: Sequence[str], *, log_path: Path) -> Iterator[ManagedProcess]:
    """Run a server in the foreground of `container`; stopped (its process group) on exit."""
    argv = buildah_argv("run", f"--isolation={ISOLATION}", container, "--", *command)
    process = ManagedProcess(f"{container} (buildah run)", argv, log_path).start()
    try:
        yield process
    finally:
        process.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m guardedmodel_testground.images [product] [triton]`: build what is missing and
    print, per image, the reference and the archive to give `ctr -n k8s.io images import`."""
    builders = {"product": ensure_product_image, "triton": ensure_triton_image}
    wanted = list(argv if argv is not None else sys.argv[1:]) or list(builders)
    unknown = [name for name in wanted if name not in builders]
    if unknown:
        print(f"unknown image {', '.join(unknown)}; choose from {', '.join(builders)}", file=sys.stderr)
        return 2
    for name in wanted:
        image = builders[name]()
        print(
            json.dumps(
                {"image": name, "reference": image.reference, "archive": str(image.archive), **image.info}
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
