"""The archive a new guard version is published as: pure planning, and a byte-for-byte repeatable writer.

A bucket repository holds one archive per model, ``<model>.tar.gz``, with every version folder in it
(see ``guardedmodel_sidecar.fetch``). A new guard version is the old version's model files with a new
``guard/`` folder: the weights do not change, only what the sidecar knows about them. Planning works on
file listings (archive name → digest and where the bytes are), so what goes in the archive is decided
without touching a bucket; the writer then makes the same bytes from the same listing every time (no
timestamps, owners or order of the disk in it), which is what lets an interrupted publish be recognised
and finished rather than guessed at.
"""

from __future__ import annotations

import gzip
import hashlib
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path, PurePosixPath

GUARD_FOLDER = "guard"
#: Files a folder on disk may hold that no pod needs (the bytecode caches of this machine's Python).
SKIPPED_NAMES = frozenset({"__pycache__"})


class PublishError(RuntimeError):
    """The version cannot be published; the message says what to change."""


@dataclass(frozen=True)
class FileRef:
    """One regular file: where its bytes are on this machine, their digest, and its mode bit."""

    path: Path
    sha256: str
    executable: bool = False


#: A folder's files: posix path inside the archive → the file.
Listing = Mapping[str, FileRef]


class VersionState(Enum):
    ABSENT = "absent"  # the archive has no such version folder yet
    SAME = "same"  # it holds exactly the files this publish would write (an earlier run got that far)
    DIFFERENT = "different"  # it holds other files: replacing them needs --replace


def list_folder(root: Path, prefix: str) -> dict[str, FileRef]:
    """The regular files under ``root``, named ``<prefix>/<relative path>`` (just the relative path with an
    empty prefix); links and caches are left out (a model archive holds folders and regular files only)."""
    listing: dict[str, FileRef] = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if SKIPPED_NAMES & set(relative.parts) or path.is_symlink() or not path.is_file():
            continue
        listing[f"{prefix}/{relative.as_posix()}" if prefix else relative.as_posix()] = FileRef(
            path, _digest(path), executable=bool(path.stat().st_mode & 0o111)
        )
    return listing


def versions_of(listing: Listing, model: str) -> list[str]:
    """The version folders (numbers) of ``model`` in an archive listing, in numeric order."""
    found = {PurePosixPath(name).parts[1] for name in listing if name.startswith(f"{model}/")}
    return sorted((v for v in found if v.isdigit()), key=int)


def plan_new_version(
    existing: Listing, guard: Listing, *, model: str, from_version: str, version: str
) -> dict[str, FileRef]:
    """The whole archive after publishing: every file of ``existing`` except those of ``version``, plus
    ``version`` = ``from_version``'s files without its guard folder, and ``guard``'s files (named
    relative to the guard folder) as the new guard folder."""
    for label, value in (("--from-version", from_version), ("--version", version)):
        if not value.isdigit():
            raise PublishError(
                f"{label} {value!r} must be a version number (Triton's version folders: 1, 2, ...)"
            )
    if from_version == version:
        raise PublishError(f"--version {version} is the version the files come from: publish a new number")
    source = f"{model}/{from_version}/"
    model_files = {name: ref for name, ref in existing.items() if name.startswith(source)}
    if not model_files:
        held = ", ".join(versions_of(existing, model)) or "none"
        raise PublishError(f"the repository's {model}.tar.gz has no version {from_version} (it holds {held})")
    if not guard:
        raise PublishError("the guard folder holds no files: give the folder `guardedmodel fit --out` wrote")
    target = f"{model}/{version}/"
    tree = {name: ref for name, ref in existing.items() if not name.startswith(target)}
    old_guard = f"{source}{GUARD_FOLDER}/"
    for name, ref in model_files.items():
        if not name.startswith(old_guard):
            tree[target + name[len(source) :]] = ref
    for name, ref in guard.items():
        tree[f"{target}{GUARD_FOLDER}/{name}"] = ref
    return tree


def version_state(existing: Listing, planned: Listing, *, model: str, version: str) -> VersionState:
    """Whether ``existing`` already holds ``version`` as ``planned`` has it (compared by digest)."""
    prefix = f"{model}/{version}/"

    def files(listing: Listing) -> dict[str, str]:
        return {name: ref.sha256 for name, ref in listing.items() if name.startswith(prefix)}

    held = files(existing)
    if not held:
        return VersionState.ABSENT
    return VersionState.SAME if held == files(planned) else VersionState.DIFFERENT


def write_archive(tree: Listing, target: Path) -> str:
    """Write ``tree`` as a .tar.gz at ``target`` and return its sha256. The same tree gives the same
    bytes: members sorted, folders made explicit, no timestamps or owners, gzip without a date."""
    folders = {str(parent) for name in tree for parent in PurePosixPath(name).parents if str(parent) != "."}
    with (
        open(target, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as zipped,
        tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as archive,
    ):
        for name in sorted(folders | set(tree)):
            info = tarfile.TarInfo(name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if name in folders:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                archive.addfile(info)
                continue
            ref = tree[name]
            info.mode = 0o755 if ref.executable else 0o644
            info.size = ref.path.stat().st_size
            with open(ref.path, "rb") as data:
                archive.addfile(info, data)
    return _digest(target)


def sha256_line(digest: str, archive_name: str) -> bytes:
    """The ``.sha256`` file beside an archive, as ``sha256sum`` writes it."""
    return f"{digest}  {archive_name}\n".encode()


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as data:
        while chunk := data.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
