"""`guardedmodel fetch-model` against real object stores on loopback: MinIO (s3://) and
fake-gcs-server (gs://), each holding the worked example's model as a model team publishes it.

fetch-model runs as a process with the environment the pod's Secret would give it, as the
init container does; the sidecar's later-version fetch runs in process with the same settings."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from guardedmodel_fit.example import DEFAULT_OUT, ExampleBuild, build_example
from guardedmodel_sidecar.fetch import add_versions
from guardedmodel_testground.model_server import SKIPPED_NAMES
from guardedmodel_testground.objstore import FakeGcsServer, MinioServer, publish_model

pytestmark = pytest.mark.integration

BUCKET = "models"
PREFIX = "team/prod"


@pytest.fixture(scope="module")
def example() -> ExampleBuild:
    return build_example(DEFAULT_OUT, versions=("1", "2"), progress=False)


def with_example(server: MinioServer | FakeGcsServer, example: ExampleBuild) -> None:
    server.create_bucket(BUCKET)
    publish_model(server, BUCKET, PREFIX, example.model_dir, server.state_dir / "public")


@pytest.fixture(scope="module")
def minio(tmp_path_factory: pytest.TempPathFactory, example: ExampleBuild) -> Iterator[MinioServer]:
    with MinioServer(tmp_path_factory.mktemp("minio")) as server:
        with_example(server, example)
        yield server


@pytest.fixture(scope="module")
def gcs(tmp_path_factory: pytest.TempPathFactory, example: ExampleBuild) -> Iterator[FakeGcsServer]:
    with FakeGcsServer(tmp_path_factory.mktemp("gcs")) as server:
        with_example(server, example)
        yield server


@pytest.fixture(params=["s3", "gs"])
def store(request: pytest.FixtureRequest) -> tuple[str, MinioServer | FakeGcsServer]:
    server = request.getfixturevalue("minio" if request.param == "s3" else "gcs")
    return request.param, server


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`guardedmodel <args>` as a process with only `env`'s object store settings (a pod's or a CI job's)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GOOGLE_"))}
    return subprocess.run(
        [sys.executable, "-m", "guardedmodel_cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, **env},
    )


def fetch(repository: str, model: str, dest: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return cli("fetch-model", f"--repository={repository}", f"--model={model}", f"--dest={dest}", env=env)


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not SKIPPED_NAMES & set(p.relative_to(root).parts)
    }


def test_the_example_model_is_fetched_byte_for_byte(
    store: tuple[str, MinioServer | FakeGcsServer], example: ExampleBuild, tmp_path: Path
) -> None:
    scheme, server = store
    started = time.monotonic()
    result = fetch(f"{scheme}://{BUCKET}/{PREFIX}", example.model_dir.name, tmp_path, server.env())
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path / example.model_dir.name) == tree(example.model_dir)
    assert sorted(p.name for p in tmp_path.iterdir()) == [example.model_dir.name]  # no staging left
    print(f"fetch-model from {scheme}:// ({server.endpoint}): {elapsed:.2f}s")


def test_wrong_keys_name_the_bucket_the_endpoint_and_the_secret_to_fix(
    minio: MinioServer, example: ExampleBuild, tmp_path: Path
) -> None:
    result = fetch(
        f"s3://{BUCKET}/{PREFIX}", example.model_dir.name, tmp_path, minio.env(secret_key="not-the-key")
    )
    assert result.returncode == 1
    message = result.stderr
    for fragment in (
        f"s3://{BUCKET}/{PREFIX}/{example.model_dir.name}.tar.gz",
        "access denied",
        "HTTP 403 Forbidden, SignatureDoesNotMatch",  # the server's own reason, not a retry trace
        f"endpoint {minio.endpoint}",
        "AWS_SECRET_ACCESS_KEY",
        "spec.model.storage.secretName",
        f"bucket '{BUCKET}'",
    ):
        assert fragment in message, message
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("where", ["model", "prefix", "bucket"])
def test_a_missing_object_is_named_with_what_to_do(
    store: tuple[str, MinioServer | FakeGcsServer], where: str, tmp_path: Path
) -> None:
    scheme, server = store
    bucket, prefix, model = {
        "model": (BUCKET, PREFIX, "absent-model"),
        "prefix": (BUCKET, "team/none", "fashion-mnist"),
        "bucket": ("no-such-bucket", PREFIX, "fashion-mnist"),
    }[where]
    result = fetch(f"{scheme}://{bucket}/{prefix}", model, tmp_path, server.env())
    assert result.returncode == 1
    assert f"{scheme}://{bucket}/{prefix}/{model}.tar.gz" in result.stderr, result.stderr
    assert f"endpoint {server.endpoint}" in result.stderr, result.stderr
    if where != "bucket":  # a missing bucket is an error of its own on some servers
        assert "does not exist" in result.stderr and "spec.model.repository" in result.stderr, result.stderr


def test_a_checksum_mismatch_is_refused_and_nothing_is_written(
    store: tuple[str, MinioServer | FakeGcsServer], example: ExampleBuild, tmp_path: Path
) -> None:
    scheme, server = store
    name = f"{example.model_dir.name}.tar.gz"
    publish_model(server, BUCKET, "tampered", example.model_dir, tmp_path / "public")
    server.upload(BUCKET, f"tampered/{name}.sha256", b"0" * 64 + b"  " + name.encode() + b"\n")
    result = fetch(f"{scheme}://{BUCKET}/tampered", example.model_dir.name, tmp_path / "models", server.env())
    assert result.returncode == 1
    assert f"{scheme}://{BUCKET}/tampered/{name} has sha256" in result.stderr, result.stderr
    assert f"says {'0' * 64}" in result.stderr
    assert not list((tmp_path / "models").iterdir())


def test_a_version_published_later_is_added_from_the_bucket(
    store: tuple[str, MinioServer | FakeGcsServer],
    example: ExampleBuild,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scheme, server = store
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    model, repository = example.model_dir.name, f"{scheme}://{BUCKET}/later"
    publish_model(server, BUCKET, "later", example.model_dir, tmp_path / "public", versions=("1",))
    assert fetch(repository, model, tmp_path / "models", server.env()).returncode == 0
    assert not (tmp_path / "models" / model / "2").exists()
    publish_model(server, BUCKET, "later", example.model_dir, tmp_path / "public", versions=("1", "2"))
    assert add_versions(repository, model, tmp_path / "models", ("1", "2")) == ["2"]
    assert tree(tmp_path / "models" / model / "2") == tree(example.model_dir / "2")
