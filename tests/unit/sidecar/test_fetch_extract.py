"""Model archives are unpacked without writing outside the model folder, also on interpreters
without tarfile's "data" filter (Debian bookworm's Python 3.11.2, which the image is built on)."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from guardedmodel_sidecar.fetch import FetchError, extract_archive


def archive_of(*members: tuple[tarfile.TarInfo, bytes | None]) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    buffer.seek(0)
    return buffer


def regular(name: str, data: bytes = b"x", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    return info, data


def special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, None


@pytest.fixture(params=["stdlib data filter", "without data filter"])
def without_filter(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    if request.param == "without data filter":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
        return True
    if not hasattr(tarfile, "data_filter"):
        pytest.skip("this interpreter has no tarfile data filter")
    return False


def unpack(buffer: io.BytesIO, staging: Path) -> None:
    with tarfile.open(fileobj=buffer, mode="r:gz") as archive:
        extract_archive(archive, staging, "http://repo/m.tar.gz")


def test_a_model_folder_is_unpacked_with_its_modes(tmp_path: Path, without_filter: bool) -> None:
    buffer = archive_of(
        special("m", tarfile.DIRTYPE),
        regular("m/config.pbtxt", b"name: 'm'"),
        regular("m/1/model.py", b"print()", mode=0o755),
    )
    unpack(buffer, tmp_path)
    assert (tmp_path / "m" / "config.pbtxt").read_bytes() == b"name: 'm'"
    assert (tmp_path / "m" / "1" / "model.py").stat().st_mode & 0o111


ESCAPES: dict[str, Callable[[], io.BytesIO]] = {
    "absolute path": lambda: archive_of(regular("/tmp/guardedmodel-escape")),
    "parent path": lambda: archive_of(regular("m/../../guardedmodel-escape")),
    "symlink out of the tree": lambda: archive_of(special("m/link", tarfile.SYMTYPE, "/etc/passwd")),
    "device file": lambda: archive_of(special("m/dev", tarfile.CHRTYPE)),
}


@pytest.mark.parametrize("case", list(ESCAPES))
def test_members_that_escape_or_are_special_are_refused(
    tmp_path: Path, case: str, without_filter: bool
) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    try:
        unpack(ESCAPES[case](), staging)
        refused = False
    except (FetchError, tarfile.TarError):
        refused = True
    # Our rule refuses every one of them; the stdlib filter may instead strip a leading "/" and
    # unpack inside the folder, which is as safe.
    assert refused or (not without_filter and case == "absolute path")
    assert not (tmp_path / "guardedmodel-escape").exists()
    assert not Path("/tmp/guardedmodel-escape").exists()


def test_without_the_filter_links_inside_the_tree_are_refused_with_the_fix(tmp_path: Path) -> None:
    # Stricter than the data filter, which allows links inside the tree: say what to do instead.
    with pytest.MonkeyPatch.context() as patch:
        patch.delattr(tarfile, "data_filter", raising=False)
        with pytest.raises(FetchError, match="replace links with the files"):
            unpack(archive_of(regular("m/a"), special("m/b", tarfile.SYMTYPE, "a")), tmp_path)
