"""`guardedmodel fetch-model`: copy one model out of a remote repository into the pod.

The operator runs this as the pod's init container when `spec.model.repository`
is remote, so Triton and the sidecar read the same bytes from one local path
(the guard artifact travels inside each version folder, so rolling back the
model rolls back its guard).

An http(s) repository is a folder served over HTTP that holds one archive per
model, made with ``tar czf <model>.tar.gz -C <repository> <model>``; when a
``<model>.tar.gz.sha256`` file sits next to it, the archive must match it.
An s3:// or gs:// repository is a bucket prefix with the same layout
(``s3://bucket/prefix/<model>.tar.gz`` and its ``.sha256``), read with the credentials
of the pod's environment (see ``object_store``); both kinds go through one checker.
A file:// repository is a local folder (tests, single-node clusters).

An ensemble's steps run other models of the repository: when the fetched model is an ensemble,
the models its steps name are fetched beside it (and theirs, for an ensemble inside an ensemble),
so that Triton finds them when it loads the ensemble.

A version published after the pod started is fetched later by the sidecar (``add_versions``):
routing to it must not need a new pod, so the sidecar adds the missing version folders to the pod's
copy, each with one rename, and never touches a version Triton may have loaded.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Protocol


class FetchError(RuntimeError):
    """The model could not be fetched; the message says from where and why."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--repository", required=True, help="s3://, gs://, http(s):// or file:// repository URL"
    )
    parser.add_argument("--model", required=True, help="model name (a folder of the repository)")
    parser.add_argument("--dest", type=Path, required=True, help="local repository to copy the model into")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per HTTP request")


def run(args: argparse.Namespace) -> int:
    try:
        targets = fetch_with_steps(args.repository, args.model, args.dest, timeout=args.timeout)
    except FetchError as error:
        print(f"fetch-model: {error}", file=sys.stderr)
        return 1
    for target in targets:
        print(f"fetched {target.name} into {target}")
    return 0


def fetch_with_steps(repository: str, model: str, dest: Path, *, timeout: float = 300.0) -> list[Path]:
    """Fetch ``model`` and, when it is an ensemble, every model its steps run (nested too)."""
    from guardedmodel_sidecar.ensemble import ensemble_steps
    from guardedmodel_sidecar.model_loader import local_model_config

    fetched = [fetch_model(repository, model, dest, timeout=timeout)]
    pending, seen = [model], {model}
    while pending:
        config = local_model_config(Path(dest), pending.pop()) or {}
        for step in ensemble_steps(config):
            if step.model not in seen:
                seen.add(step.model)
                try:
                    fetched.append(fetch_model(repository, step.model, dest, timeout=timeout))
                except FetchError as error:
                    raise FetchError(
                        f"{model} is an ensemble whose step runs {step.model}: {error}"
                    ) from error
                pending.append(step.model)
    return fetched


def fetch_model(repository: str, model: str, dest: Path, *, timeout: float = 300.0) -> Path:
    """Copy `model` from `repository` to `dest/model` and return that path."""
    if not model or "/" in model or model in (".", ".."):
        raise FetchError(f"model name {model!r} must be a single folder name")
    url = urllib.parse.urlparse(repository)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if url.scheme == "file":
        return _copy_local(Path(url.path) / model, dest / model)
    if url.scheme in ("http", "https"):
        return _fetch_archive(_HttpReader(repository.rstrip("/"), timeout), model, dest)
    if url.scheme in ("s3", "gs"):
        # Imported here: the sidecar's serving path never needs the object store client.
        from guardedmodel_sidecar.object_store import BucketReader, ObjectStoreError

        try:
            return _fetch_archive(BucketReader(repository, timeout=timeout), model, dest)
        except ObjectStoreError as error:
            raise FetchError(str(error)) from error
    raise FetchError(
        f"unsupported repository scheme in {repository!r} (use s3://, gs://, https://, http:// or file://)"
    )


def add_versions(
    repository: str, model: str, dest: Path, versions: tuple[str, ...], *, timeout: float = 300.0
) -> list[str]:
    """Add the folders of ``versions`` that ``dest/model`` lacks, from a fresh copy of the model;
    returns the versions added. A version folder that appears meanwhile (another worker fetched it)
    is kept as it is. Raises FetchError when the repository does not hold a version asked for."""
    target = Path(dest) / model
    wanted = [v for v in versions if not (target / v).is_dir()]
    if not wanted:
        return []
    staging = Path(tempfile.mkdtemp(dir=dest, prefix=f".{model}-versions-"))
    try:
        fresh = fetch_model(repository, model, staging, timeout=timeout)
        absent = [v for v in wanted if not (fresh / v).is_dir()]
        if absent:
            raise FetchError(
                f"{repository} has no version {', '.join(absent)} of {model!r} "
                f"(it holds {', '.join(sorted(p.name for p in fresh.iterdir() if p.is_dir())) or 'none'})"
            )
        target.mkdir(parents=True, exist_ok=True)
        added = []
        for version in wanted:
            try:
                (fresh / version).rename(target / version)
            except OSError:
                if not (target / version).is_dir():
                    raise
                continue  # fetched meanwhile by another worker of this pod
            added.append(version)
        return added
    except OSError as error:
        raise FetchError(
            f"cannot add versions {', '.join(wanted)} of {model!r} to {dest}: {error}"
        ) from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _copy_local(source: Path, target: Path) -> Path:
    if not source.is_dir():
        raise FetchError(f"{source} is not a model folder")
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    _replace(staging, target)
    return target


class ArchiveReader(Protocol):
    """Where archives are read from: names are relative to the repository URL."""

    def url(self, name: str) -> str: ...

    def read_small(self, name: str, limit: int = 4096) -> bytes | None: ...

    def chunks(self, name: str) -> Iterator[bytes]: ...


class _HttpReader:
    def __init__(self, base: str, timeout: float) -> None:
        self.base, self.timeout = base, timeout

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def read_small(self, name: str, limit: int = 4096) -> bytes | None:
        try:
            with urllib.request.urlopen(self.url(name), timeout=self.timeout) as response:
                data: bytes = response.read(limit)
                return data
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return None
            raise FetchError(f"cannot read {self.url(name)}: {error}") from error
        except (urllib.error.URLError, OSError) as error:
            raise FetchError(f"cannot read {self.url(name)}: {error}") from error

    def chunks(self, name: str) -> Iterator[bytes]:
        try:
            with urllib.request.urlopen(self.url(name), timeout=self.timeout) as response:
                while chunk := response.read(1 << 20):
                    yield chunk
        except (urllib.error.URLError, OSError) as error:
            raise FetchError(f"cannot download {self.url(name)}: {error}") from error


def _fetch_archive(reader: ArchiveReader, model: str, dest: Path) -> Path:
    name = f"{model}.tar.gz"
    archive_url = reader.url(name)
    expected = expected_digest(reader, name + ".sha256")
    with tempfile.NamedTemporaryFile(dir=dest, prefix=f".{model}-", suffix=".tar.gz") as download:
        digest = hashlib.sha256()
        for chunk in reader.chunks(name):
            digest.update(chunk)
            download.write(chunk)
        download.flush()
        if expected is not None and digest.hexdigest() != expected:
            raise FetchError(
                f"{archive_url} has sha256 {digest.hexdigest()}, but {archive_url}.sha256 says {expected}"
            )
        staging = dest / f".{model}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            with tarfile.open(download.name, "r:gz") as archive:
                extract_archive(archive, staging, archive_url)
        except (tarfile.TarError, OSError) as error:
            raise FetchError(f"{archive_url} is not a usable .tar.gz archive: {error}") from error
    extracted = staging / model
    if not extracted.is_dir():
        raise FetchError(f"{archive_url} does not contain a top-level folder {model!r}")
    target = dest / model
    _replace(extracted, target)
    shutil.rmtree(staging, ignore_errors=True)
    return target


def extract_archive(archive: tarfile.TarFile, staging: Path, source: str) -> None:
    """Unpack a model archive into ``staging`` without letting it write anywhere else.

    Python's "data" filter (3.11.4 and later) refuses absolute paths, links out of the tree and
    device files. Interpreters without it (Debian bookworm's 3.11.2, which the image may be built
    on) get a stricter rule of our own: only folders and regular files, relative and without "..";
    a model repository needs nothing else, and the files are written here, never by tarfile.
    """
    if hasattr(tarfile, "data_filter"):
        archive.extractall(staging, filter="data")
        return
    root = staging.resolve()
    for member in archive.getmembers():
        name = PurePosixPath(member.name)
        if name.is_absolute() or ".." in name.parts or not name.parts:
            raise FetchError(f"{source}: member {member.name!r} would be written outside the model folder")
        if not (member.isdir() or member.isfile()):
            kind = "link" if member.issym() or member.islnk() else "special file"
            raise FetchError(
                f"{source}: member {member.name!r} is a {kind}; a model archive may hold only folders and "
                "regular files on this image (replace links with the files they point to)"
            )
        target = root.joinpath(*name.parts)
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        source_file = archive.extractfile(member)
        if source_file is None:
            raise FetchError(f"{source}: member {member.name!r} has no data")
        with source_file, open(target, "wb") as out:
            shutil.copyfileobj(source_file, out)
        target.chmod(0o755 if member.mode & 0o111 else 0o644)


def expected_digest(reader: ArchiveReader, name: str) -> str | None:
    data = reader.read_small(name)
    if data is None:
        return None
    text = data.decode("ascii", errors="replace")
    digest = text.split()[0].lower() if text.split() else ""
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise FetchError(f"{reader.url(name)} does not hold a sha256 digest")
    return digest


def _replace(source: Path, target: Path) -> None:
    """Move `source` to `target`, replacing a previous copy (an init container can run again)."""
    if target.exists():
        shutil.rmtree(target)
    source.rename(target)
