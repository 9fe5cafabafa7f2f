"""`guardedmodel publish`: put a new guard version of a model into its bucket repository.

    guardedmodel publish --repository s3://models/team --model fashion-mnist \\
        --from-version 1 --version 2 --guard ./guard-v2

The new version is the old version's model files (the weights do not change) with the guard folder that
`guardedmodel fit` wrote. The repository keeps its layout (``<model>.tar.gz`` and ``.sha256``, what
`fetch-model` and the sidecar's later-version fetch read), so a GuardedModel edited to the new version
rolls it out like any other: the sidecar adds the version folder and the operator's canary decides.

Writing order: the archive, then its ``.sha256``. Between the two a reader finds them disagreeing and
refuses the archive (and tries again later); nobody serves an unchecked archive. A publish that stopped
between the two is finished by running it again: the archive is written byte for byte the same from the
same files, so a second run recognises its own work and writes the missing ``.sha256``. An existing
version is never overwritten unless --replace says so.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from guardedmodel_cli.publish_archive import (
    GUARD_FOLDER,
    FileRef,
    PublishError,
    VersionState,
    list_folder,
    plan_new_version,
    sha256_line,
    version_state,
    write_archive,
)
from guardedmodel_sidecar.fetch import FetchError, expected_digest, extract_archive
from guardedmodel_sidecar.guard.artifact import ArtifactError, load_artifact
from guardedmodel_sidecar.object_store import BucketWriter, ObjectStoreError, environment_bucket


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--repository", required=True, help="s3://<bucket>/<prefix> or gs://<bucket>/<prefix>"
    )
    parser.add_argument("--model", required=True, help="model name (its archive is <model>.tar.gz)")
    parser.add_argument("--from-version", required=True, help="the version whose model files are reused")
    parser.add_argument("--version", required=True, help="the new version number")
    parser.add_argument("--guard", required=True, type=Path, help="the guard folder `guardedmodel fit` wrote")
    parser.add_argument(
        "--replace", action="store_true", help="overwrite the version if the repository already holds it"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per object store request")


def run(args: argparse.Namespace) -> int:
    try:
        outcome = publish(
            args.repository,
            args.model,
            from_version=args.from_version,
            version=args.version,
            guard_dir=args.guard,
            replace=args.replace,
            timeout=args.timeout,
        )
    except PublishError as error:
        print(f"guardedmodel publish: {error}", file=sys.stderr)
        return 1
    print(outcome.message)
    return 0


@dataclass(frozen=True)
class Outcome:
    archive_url: str
    sha256: str
    action: str  # "published" | "replaced" | "completed" (an interrupted run finished) | "unchanged"
    message: str


def publish(
    repository: str,
    model: str,
    *,
    from_version: str,
    version: str,
    guard_dir: Path,
    replace: bool = False,
    timeout: float = 300.0,
) -> Outcome:
    if not model or "/" in model or model in (".", ".."):
        raise PublishError(f"model name {model!r} must be a single folder name")
    try:
        bucket = environment_bucket(repository, timeout=timeout)
    except ObjectStoreError as error:
        raise PublishError(str(error)) from error
    name = f"{model}.tar.gz"
    url = bucket.url(name)
    guard = _checked_guard(guard_dir)
    with tempfile.TemporaryDirectory(prefix="guardedmodel-publish-") as scratch:
        work = Path(scratch)
        try:
            current, recorded = _download(bucket, name, work / "current.tar.gz"), _recorded(bucket, name)
        except (ObjectStoreError, FetchError) as error:
            raise PublishError(str(error)) from error
        existing = _unpack(work / "current.tar.gz", work / "tree", url, model)
        _check_same_kind(guard, work / "tree" / model / from_version / GUARD_FOLDER, from_version)
        planned = plan_new_version(
            existing, list_folder(guard_dir, ""), model=model, from_version=from_version, version=version
        )
        state = version_state(existing, planned, model=model, version=version)
        if recorded is not None and recorded != current:
            # Either a publish stopped between the archive and its .sha256, or the archive is not what
            # was published. Only the first may be finished: its archive is exactly what the writer
            # makes of its own files.
            if state is VersionState.SAME and write_archive(existing, work / "again.tar.gz") == current:
                _put(bucket, name + ".sha256", sha256_line(current, name))
                return Outcome(
                    url,
                    current,
                    "completed",
                    f"{url}: finished an interrupted publish of "
                    f"version {version} (wrote its .sha256, {current})",
                )
            raise PublishError(
                f"{url} has sha256 {current}, but {url}.sha256 says {recorded}, and the archive is not what "
                f"an interrupted publish of version {version} from these files leaves; nothing was written. "
                "Check the archive, then upload the archive or the .sha256 that belongs to it"
            )
        if state is VersionState.SAME:
            if recorded is None:
                _put(bucket, name + ".sha256", sha256_line(current, name))
            return Outcome(
                url,
                current,
                "unchanged",
                f"{url} already holds version {version} with this guard ({current}); nothing to do",
            )
        if state is VersionState.DIFFERENT and not replace:
            raise PublishError(
                f"{url} already holds a different version {version} of {model!r}: publish a new version "
                "number, or pass --replace to overwrite it (pods that fetched the old one keep it until "
                "they restart)"
            )
        digest = write_archive(planned, work / "new.tar.gz")
        _put(bucket, name, work / "new.tar.gz")
        _put(bucket, name + ".sha256", sha256_line(digest, name))
    action = "replaced" if state is VersionState.DIFFERENT else "published"
    return Outcome(
        url,
        digest,
        action,
        f"{action} version {version} of {model} at {url} (sha256 {digest}): version {from_version}'s "
        f"model files with the guard from {guard_dir}",
    )


def _checked_guard(guard_dir: Path) -> tuple[int, int]:
    """(classes, feature size) of the guard artifact in ``guard_dir``; refuses a folder that is not one."""
    if not guard_dir.is_dir():
        raise PublishError(
            f"--guard {guard_dir} is not a folder: give the folder `guardedmodel fit --out` wrote"
        )
    try:
        artifact = load_artifact(guard_dir)
    except ArtifactError as error:
        raise PublishError(f"--guard {guard_dir} is not a usable guard artifact: {error}") from error
    return artifact.num_classes, artifact.feature_dim


def _check_same_kind(guard: tuple[int, int], old_guard: Path, from_version: str) -> None:
    """The new guard must describe the same network: the weights are reused, so classes and feature
    size cannot change."""
    if not old_guard.is_dir():
        return  # a version without a guard: nothing to compare with
    try:
        old = load_artifact(old_guard)
    except ArtifactError:
        return  # the old guard is what is being replaced; its fault does not block the fix
    if (old.num_classes, old.feature_dim) != guard:
        raise PublishError(
            f"the guard has {guard[0]} classes and {guard[1]} features, but version {from_version}'s model "
            f"has {old.num_classes} and {old.feature_dim}: fit the guard on version {from_version}'s model"
        )


def _download(bucket: BucketWriter, name: str, target: Path) -> str:
    """Copy the archive to ``target``; its sha256."""
    digest = hashlib.sha256()
    try:
        with open(target, "wb") as out:
            for chunk in bucket.chunks(name):
                digest.update(chunk)
                out.write(chunk)
    except ObjectStoreError as error:
        if "does not exist" in str(error):
            raise PublishError(
                f"{bucket.url(name)} does not exist (endpoint {bucket.endpoint}): a new guard version "
                "reuses a published version's model files; upload the model first "
                "(tar czf <model>.tar.gz -C <repository> <model>, and its .sha256)"
            ) from error
        raise
    return digest.hexdigest()


def _recorded(bucket: BucketWriter, name: str) -> str | None:
    return expected_digest(bucket, name + ".sha256")


def _unpack(archive: Path, target: Path, url: str, model: str) -> dict[str, FileRef]:
    target.mkdir()
    try:
        with tarfile.open(archive, "r:gz") as tar:
            extract_archive(tar, target, url)
    except (tarfile.TarError, OSError, FetchError) as error:
        raise PublishError(f"{url} is not a usable .tar.gz archive: {error}") from error
    if not (target / model).is_dir():
        raise PublishError(f"{url} does not contain a top-level folder {model!r}")
    return list_folder(target, "")


def _put(bucket: BucketWriter, name: str, source: Path | bytes) -> None:
    try:
        bucket.put(name, source.read_bytes() if isinstance(source, Path) else source)
    except ObjectStoreError as error:
        raise PublishError(str(error)) from error
