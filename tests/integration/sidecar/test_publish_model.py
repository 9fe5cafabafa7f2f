"""`guardedmodel publish` against real object stores on loopback: a new guard version goes into the
bucket repository, and what the pod reads back (`fetch-model`, the sidecar's later-version fetch) is the
old version's model files with the new guard, byte for byte.

Every command runs as a process with only the environment a pod's Secret (or a CI job's) would give it."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import obstore
import pytest
from test_fetch_model_object_store import BUCKET, cli, example, fetch, tree

from guardedmodel_fit.example import ExampleBuild
from guardedmodel_sidecar.fetch import add_versions
from guardedmodel_testground.objstore import FakeGcsServer, MinioServer, publish_model

pytestmark = pytest.mark.integration

MODEL = "fashion-mnist"
__all__ = ["example"]  # the worked example's build, a fixture shared with the fetch tests


@pytest.fixture(scope="module")
def minio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinioServer]:
    with MinioServer(tmp_path_factory.mktemp("minio")) as server:
        server.create_bucket(BUCKET)
        yield server


@pytest.fixture
def repository(
    minio: MinioServer, example: ExampleBuild, request: pytest.FixtureRequest, tmp_path: Path
) -> str:
    """A fresh prefix holding version 1 only, as the model team published it."""
    prefix = request.node.name.replace("[", "-").replace("]", "")
    publish_model(minio, BUCKET, prefix, example.model_dir, tmp_path / "public", versions=("1",))
    return f"s3://{BUCKET}/{prefix}"


def publish(
    repository: str, guard: Path, env: dict[str, str], *extra: str
) -> subprocess.CompletedProcess[str]:
    return cli(
        "publish",
        f"--repository={repository}",
        f"--model={MODEL}",
        "--from-version=1",
        "--version=2",
        f"--guard={guard}",
        *extra,
        env=env,
    )


def without_guard(files: dict[str, bytes]) -> dict[str, bytes]:
    return {name: data for name, data in files.items() if not name.startswith("guard/")}


def assert_version_2_is(fetched: Path, example: ExampleBuild, guard: Path) -> None:
    assert tree(fetched / "2" / "guard") == tree(guard)
    assert without_guard(tree(fetched / "2")) == without_guard(tree(example.model_dir / "1"))
    assert tree(fetched / "1") == tree(example.model_dir / "1")  # the old version is untouched


def new_guard(example: ExampleBuild) -> Path:
    # A guard fitted elsewhere: the example's version 2 guard has the same classes and features.
    return example.model_dir / "2" / "guard"


def test_a_published_guard_version_is_fetched_byte_for_byte_and_a_retry_changes_nothing(
    minio: MinioServer, example: ExampleBuild, repository: str, tmp_path: Path
) -> None:
    guard = new_guard(example)
    result = publish(repository, guard, minio.env())
    assert result.returncode == 0, result.stderr
    assert f"published version 2 of {MODEL} at {repository}/{MODEL}.tar.gz" in result.stdout
    assert fetch(repository, MODEL, tmp_path / "pod", minio.env()).returncode == 0
    assert_version_2_is(tmp_path / "pod" / MODEL, example, guard)
    archive = minio.store(BUCKET)
    key = repository.removeprefix(f"s3://{BUCKET}/") + f"/{MODEL}.tar.gz"
    before = bytes(obstore.get(archive, key).bytes())
    again = publish(repository, guard, minio.env())
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stdout
    assert bytes(obstore.get(archive, key).bytes()) == before


def test_the_sidecar_adds_the_published_version_to_a_running_pod(
    minio: MinioServer,
    example: ExampleBuild,
    repository: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert fetch(repository, MODEL, tmp_path / "pod", minio.env()).returncode == 0  # the pod started on v1
    assert publish(repository, new_guard(example), minio.env()).returncode == 0
    for key, value in minio.env().items():
        monkeypatch.setenv(key, value)
    assert add_versions(repository, MODEL, tmp_path / "pod", ("1", "2")) == ["2"]
    assert_version_2_is(tmp_path / "pod" / MODEL, example, new_guard(example))


def test_an_existing_version_is_replaced_only_when_asked(
    minio: MinioServer, example: ExampleBuild, repository: str, tmp_path: Path
) -> None:
    assert publish(repository, new_guard(example), minio.env()).returncode == 0
    other = example.model_dir / "1" / "guard"
    refused = publish(repository, other, minio.env())
    assert refused.returncode == 1
    assert "already holds a different version 2" in refused.stderr and "--replace" in refused.stderr
    assert fetch(repository, MODEL, tmp_path / "a", minio.env()).returncode == 0
    assert tree(tmp_path / "a" / MODEL / "2" / "guard") == tree(new_guard(example))
    replaced = publish(repository, other, minio.env(), "--replace")
    assert replaced.returncode == 0, replaced.stderr
    assert replaced.stdout.startswith("replaced version 2")
    assert fetch(repository, MODEL, tmp_path / "b", minio.env()).returncode == 0
    assert_version_2_is(tmp_path / "b" / MODEL, example, other)


def test_an_interrupted_publish_is_refused_by_readers_and_finished_by_a_retry(
    minio: MinioServer, example: ExampleBuild, repository: str, tmp_path: Path
) -> None:
    prefix = repository.removeprefix(f"s3://{BUCKET}/")
    sha_key = f"{prefix}/{MODEL}.tar.gz.sha256"
    old_sha = bytes(obstore.get(minio.store(BUCKET), sha_key).bytes())
    assert publish(repository, new_guard(example), minio.env()).returncode == 0
    minio.upload(BUCKET, sha_key, old_sha)  # as if the run stopped after the archive, before its .sha256
    torn = fetch(repository, MODEL, tmp_path / "torn", minio.env())
    assert torn.returncode == 1 and "has sha256" in torn.stderr  # nobody serves the unchecked archive
    finished = publish(repository, new_guard(example), minio.env())
    assert finished.returncode == 0, finished.stderr
    assert "finished an interrupted publish of version 2" in finished.stdout
    assert fetch(repository, MODEL, tmp_path / "pod", minio.env()).returncode == 0
    assert_version_2_is(tmp_path / "pod" / MODEL, example, new_guard(example))


def test_an_archive_that_does_not_match_its_sha256_is_refused_and_left_alone(
    minio: MinioServer, example: ExampleBuild, repository: str
) -> None:
    prefix = repository.removeprefix(f"s3://{BUCKET}/")
    forged = b"0" * 64 + f"  {MODEL}.tar.gz\n".encode()
    minio.upload(BUCKET, f"{prefix}/{MODEL}.tar.gz.sha256", forged)
    result = publish(repository, new_guard(example), minio.env())
    assert result.returncode == 1
    assert f"but {repository}/{MODEL}.tar.gz.sha256 says {'0' * 64}" in result.stderr, result.stderr
    assert "nothing was written" in result.stderr
    assert bytes(obstore.get(minio.store(BUCKET), f"{prefix}/{MODEL}.tar.gz.sha256").bytes()) == forged


def test_refusals_say_what_to_fix(
    minio: MinioServer, example: ExampleBuild, repository: str, tmp_path: Path
) -> None:
    missing = publish(f"s3://{BUCKET}/nothing-here", new_guard(example), minio.env())
    assert missing.returncode == 1 and "upload the model first" in missing.stderr, missing.stderr
    denied = publish(repository, new_guard(example), minio.env(secret_key="not-the-key"))
    assert denied.returncode == 1
    assert "access denied" in denied.stderr and "AWS_SECRET_ACCESS_KEY" in denied.stderr, denied.stderr
    (tmp_path / "not-a-guard").mkdir()
    (tmp_path / "not-a-guard" / "notes.txt").write_text("hello")
    not_guard = publish(repository, tmp_path / "not-a-guard", minio.env())
    assert not_guard.returncode == 1 and "is not a usable guard artifact" in not_guard.stderr, (
        not_guard.stderr
    )


def test_publish_to_gcs_and_fetch_back_byte_for_byte(example: ExampleBuild, tmp_path: Path) -> None:
    with FakeGcsServer(tmp_path / "gcs", xml_uploads=True) as server:
        server.create_bucket(BUCKET)
        publish_model(server, BUCKET, "team", example.model_dir, tmp_path / "public", versions=("1",))
        result = publish(f"gs://{BUCKET}/team", new_guard(example), server.env())
        assert result.returncode == 0, result.stderr
        assert fetch(f"gs://{BUCKET}/team", MODEL, tmp_path / "pod", server.env()).returncode == 0
        assert_version_2_is(tmp_path / "pod" / MODEL, example, new_guard(example))
