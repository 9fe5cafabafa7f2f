"""The archive a new guard version is published as: what goes in it, and that it is repeatable."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from guardedmodel_cli.publish_archive import (
    PublishError,
    VersionState,
    list_folder,
    plan_new_version,
    version_state,
    write_archive,
)

MODEL = "m"


def make_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    root = make_tree(
        tmp_path / "repo",
        {
            "m/config.pbtxt": b"config",
            "m/1/model.py": b"model one",
            "m/1/weights.npz": b"weights one",
            "m/1/guard/guard.json": b"old guard",
            "m/1/guard/report/report.json": b"old report",
            "m/1/__pycache__/model.cpython-311.pyc": b"cache",
            "m/3/model.py": b"model three",
        },
    )
    (root / "m/1/model.py").chmod(0o755)
    return root


@pytest.fixture
def guard(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "guard", {"guard.json": b"new guard", "report/report.json": b"new report"})


def test_the_new_version_is_the_old_model_files_with_the_new_guard(repository: Path, guard: Path) -> None:
    existing = list_folder(repository, "")
    assert "m/1/__pycache__/model.cpython-311.pyc" not in existing  # caches never travel
    tree = plan_new_version(existing, list_folder(guard, ""), model=MODEL, from_version="1", version="2")
    new = {name: ref.path.read_bytes() for name, ref in tree.items() if name.startswith("m/2/")}
    assert new == {
        "m/2/model.py": b"model one",
        "m/2/weights.npz": b"weights one",
        "m/2/guard/guard.json": b"new guard",
        "m/2/guard/report/report.json": b"new report",
    }
    assert tree["m/2/model.py"].executable and not tree["m/2/weights.npz"].executable
    # every other file of the repository is kept as it was
    assert {n: r for n, r in tree.items() if not n.startswith("m/2/")} == existing


@pytest.mark.parametrize(
    ("from_version", "version", "message"),
    [
        ("7", "2", "has no version 7 (it holds 1, 3)"),
        ("1", "1", "is the version the files come from"),
        ("1", "v2", "must be a version number"),
        ("latest", "2", "must be a version number"),
    ],
)
def test_impossible_versions_are_refused_with_what_to_change(
    repository: Path, guard: Path, from_version: str, version: str, message: str
) -> None:
    with pytest.raises(PublishError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan_new_version(
            list_folder(repository, ""),
            list_folder(guard, ""),
            model=MODEL,
            from_version=from_version,
            version=version,
        )


def test_an_empty_guard_folder_is_refused(repository: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(PublishError, match="guard folder holds no files"):
        plan_new_version(list_folder(repository, ""), {}, model=MODEL, from_version="1", version="2")


def test_a_version_held_already_is_told_apart_by_its_files(
    repository: Path, guard: Path, tmp_path: Path
) -> None:
    existing = list_folder(repository, "")
    planned = plan_new_version(existing, list_folder(guard, ""), model=MODEL, from_version="1", version="2")
    assert version_state(existing, planned, model=MODEL, version="2") is VersionState.ABSENT
    assert version_state(planned, planned, model=MODEL, version="2") is VersionState.SAME
    other = make_tree(
        tmp_path / "other", {"guard.json": b"another guard", "report/report.json": b"new report"}
    )
    replanned = plan_new_version(planned, list_folder(other, ""), model=MODEL, from_version="1", version="2")
    assert version_state(planned, replanned, model=MODEL, version="2") is VersionState.DIFFERENT
    # version 3 (not the one published) does not count
    assert version_state(existing, planned, model=MODEL, version="3") is VersionState.SAME


def test_the_archive_is_byte_for_byte_repeatable_and_round_trips(
    repository: Path, guard: Path, tmp_path: Path
) -> None:
    planned = plan_new_version(
        list_folder(repository, ""), list_folder(guard, ""), model=MODEL, from_version="1", version="2"
    )
    first = write_archive(planned, tmp_path / "a.tar.gz")
    for ref in planned.values():  # other timestamps on disk change nothing
        ref.path.touch()
    assert write_archive(planned, tmp_path / "b.tar.gz") == first
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes()
    with tarfile.open(tmp_path / "a.tar.gz") as archive:
        archive.extractall(tmp_path / "out", filter="data")
        members = {m.name: m for m in archive.getmembers()}
    unpacked = list_folder(tmp_path / "out", "")
    assert {n: r.sha256 for n, r in unpacked.items()} == {n: r.sha256 for n, r in planned.items()}
    assert {n: r.executable for n, r in unpacked.items()} == {n: r.executable for n, r in planned.items()}
    assert members["m/2"].isdir() and members["m"].isdir()
    assert {(m.uid, m.gid, m.mtime, m.uname) for m in members.values()} == {(0, 0, 0, "")}
    # and writing what was unpacked gives the same bytes again: how an interrupted publish is recognised
    assert write_archive(unpacked, tmp_path / "c.tar.gz") == first
