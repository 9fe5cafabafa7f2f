"""`guardedmodel fetch-model` against a real HTTP server on loopback."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import http.server
import shutil
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from guardedmodel_fit.example_ensemble import ENSEMBLE_NAME, STEP_NAME, write_ensemble_repository
from guardedmodel_fit.example_network import MODEL_NAME
from guardedmodel_sidecar.fetch import FetchError, add_versions, fetch_model, fetch_with_steps
from guardedmodel_sidecar.version_fetch import VersionFetcher

pytestmark = pytest.mark.integration


def make_model(root: Path) -> Path:
    model = root / "classifier"
    (model / "1" / "guard").mkdir(parents=True)
    (model / "config.pbtxt").write_text('name: "classifier"\n')
    (model / "1" / "model.py").write_text("# the model\n")
    (model / "1" / "guard" / "guard.json").write_text("{}\n")
    return model


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A folder served over HTTP on 127.0.0.1, holding classifier.tar.gz and its sha256."""
    public = tmp_path / "public"
    public.mkdir()
    model = make_model(tmp_path / "repository")
    archive = public / "classifier.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(model, arcname="classifier")
    (public / "classifier.tar.gz.sha256").write_text(
        f"{hashlib.sha256(archive.read_bytes()).hexdigest()}  classifier.tar.gz\n"
    )
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(public))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", public
    finally:
        server.shutdown()
        thread.join(timeout=5)


def test_fetches_and_verifies_an_archive(served: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = served
    dest = tmp_path / "models"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "guardedmodel_cli.main",
            "fetch-model",
            f"--repository={url}",
            "--model=classifier",
            f"--dest={dest}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert (dest / "classifier" / "1" / "guard" / "guard.json").is_file()
    assert (dest / "classifier" / "config.pbtxt").read_text() == 'name: "classifier"\n'
    # An init container that runs again replaces the copy instead of failing.
    fetch_model(url, "classifier", dest)
    assert sorted(p.name for p in dest.iterdir()) == ["classifier"]


def test_a_tampered_archive_is_refused(served: tuple[str, Path], tmp_path: Path) -> None:
    url, public = served
    (public / "classifier.tar.gz.sha256").write_text("0" * 64 + "\n")
    with pytest.raises(FetchError, match="sha256"):
        fetch_model(url, "classifier", tmp_path / "models")
    assert not (tmp_path / "models" / "classifier").exists()


def test_a_missing_model_names_the_url(served: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = served
    with pytest.raises(FetchError, match=r"cannot download .*/other\.tar\.gz"):
        fetch_model(url, "other", tmp_path / "models")


def test_file_repositories_are_copied_and_other_schemes_explained(tmp_path: Path) -> None:
    make_model(tmp_path / "repository")
    target = fetch_model(f"file://{tmp_path / 'repository'}", "classifier", tmp_path / "models")
    assert (target / "1" / "model.py").is_file()
    with pytest.raises(FetchError, match=r"unsupported repository scheme .*use s3://, gs://"):
        fetch_model("ftp://host/models", "classifier", tmp_path / "models")


def publish(public: Path, repository: Path, version: str) -> None:
    """A new version added to the repository and the archive re-published, as a model team would."""
    folder = repository / "classifier" / version
    (folder / "guard").mkdir(parents=True)
    (folder / "model.py").write_text(f"# version {version}\n")
    archive = public / "classifier.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(repository / "classifier", arcname="classifier")
    (public / "classifier.tar.gz.sha256").write_text(f"{hashlib.sha256(archive.read_bytes()).hexdigest()}\n")


def test_a_version_published_after_the_pod_started_is_added_beside_the_loaded_ones(
    served: tuple[str, Path], tmp_path: Path
) -> None:
    url, public = served
    dest = tmp_path / "models"
    fetch_model(url, "classifier", dest)
    loaded = dest / "classifier" / "1" / "model.py"
    inode = loaded.stat().st_ino
    publish(public, tmp_path / "repository", "2")
    assert add_versions(url, "classifier", dest, ("1", "2")) == ["2"]
    assert (dest / "classifier" / "2" / "model.py").read_text() == "# version 2\n"
    assert loaded.stat().st_ino == inode  # the version Triton may hold is never rewritten
    assert add_versions(url, "classifier", dest, ("1", "2")) == []  # nothing missing: no download
    assert sorted(p.name for p in dest.iterdir()) == ["classifier"]  # no staging left behind


def test_a_version_the_repository_lacks_is_named_and_the_fetch_backs_off(
    served: tuple[str, Path], tmp_path: Path
) -> None:
    url, public = served
    dest = tmp_path / "models"
    fetch_model(url, "classifier", dest)
    with pytest.raises(FetchError, match=r"has no version 7 of 'classifier' \(it holds 1\)"):
        add_versions(url, "classifier", dest, ("1", "7"))
    now = [100.0]
    fetcher = VersionFetcher(url, "classifier", dest, retry_s=30.0, clock=lambda: now[0])
    with pytest.raises(FetchError, match="no version 7"):
        asyncio.run(fetcher.ensure(("7",)))
    (public / "classifier.tar.gz").unlink()  # a second download would now fail differently
    now[0] += 10
    with pytest.raises(FetchError, match=r"no version 7 .*next try in 20s"):
        asyncio.run(fetcher.ensure(("7",)))
    now[0] += 30
    with pytest.raises(FetchError, match="cannot download"):
        asyncio.run(fetcher.ensure(("7",)))
    assert sorted(p.name for p in dest.iterdir()) == ["classifier"]


def test_a_tampered_archive_adds_no_version(served: tuple[str, Path], tmp_path: Path) -> None:
    url, public = served
    dest = tmp_path / "models"
    fetch_model(url, "classifier", dest)
    publish(public, tmp_path / "repository", "2")
    (public / "classifier.tar.gz.sha256").write_text("0" * 64 + "\n")
    with pytest.raises(FetchError, match="sha256"):
        add_versions(url, "classifier", dest, ("2",))
    assert sorted(p.name for p in (dest / "classifier").iterdir()) == ["1", "config.pbtxt"]


def test_an_ensemble_brings_the_models_its_steps_run(tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    write_ensemble_repository(make_model(tmp_path / "classifier-source"), repository, classifier_versions=())
    (repository / "unused").mkdir()
    dest = tmp_path / "models"
    fetched = fetch_with_steps(f"file://{repository}", ENSEMBLE_NAME, dest)
    assert [p.name for p in fetched] == [ENSEMBLE_NAME, STEP_NAME, MODEL_NAME]
    assert sorted(p.name for p in dest.iterdir()) == sorted([ENSEMBLE_NAME, STEP_NAME, MODEL_NAME])
    assert (dest / STEP_NAME / "1" / "model.py").is_file()

    shutil.rmtree(repository / STEP_NAME)
    with pytest.raises(FetchError, match=f"{ENSEMBLE_NAME} is an ensemble whose step runs {STEP_NAME}"):
        fetch_with_steps(f"file://{repository}", ENSEMBLE_NAME, tmp_path / "again")
