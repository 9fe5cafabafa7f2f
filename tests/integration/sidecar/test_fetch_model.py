"""`guardedmodel fetch-model` against a real HTTP server on loopback."""

from __future__ import annotations

import functools
import hashlib
import http.server
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from guardedmodel_sidecar.fetch import FetchError, fetch_model

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


def test_file_repositories_are_copied_and_cloud_schemes_explained(tmp_path: Path) -> None:
    make_model(tmp_path / "repository")
    target = fetch_model(f"file://{tmp_path / 'repository'}", "classifier", tmp_path / "models")
    assert (target / "1" / "model.py").is_file()
    with pytest.raises(FetchError, match="cloud SDK"):
        fetch_model("s3://bucket/models", "classifier", tmp_path / "models")
