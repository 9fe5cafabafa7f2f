"""Bucket URLs and the errors of an unreachable endpoint, without a server."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from guardedmodel_sidecar.fetch import FetchError, fetch_model
from guardedmodel_sidecar.object_store import BucketReader, ObjectStoreError, _looks_denied, object_at


@pytest.mark.parametrize(
    ("repository", "name", "url"),
    [
        ("s3://models", "m.tar.gz", "s3://models/m.tar.gz"),
        ("s3://models/", "m.tar.gz", "s3://models/m.tar.gz"),
        ("s3://models/team/prod", "m.tar.gz", "s3://models/team/prod/m.tar.gz"),
        ("s3://models/team/prod/", "m.tar.gz.sha256", "s3://models/team/prod/m.tar.gz.sha256"),
        ("gs://models//team//", "m.tar.gz", "gs://models/team/m.tar.gz"),
    ],
)
def test_objects_are_named_under_the_prefix(repository: str, name: str, url: str) -> None:
    assert BucketReader(repository).url(name) == url


@pytest.mark.parametrize("repository", ["s3://", "s3:///prefix", "gs://", "https://host/path", "models/prod"])
def test_a_url_without_a_bucket_is_refused_with_the_form_to_write(repository: str) -> None:
    with pytest.raises(ObjectStoreError, match=r"s3://<bucket>/<prefix> or gs://<bucket>/<prefix>"):
        BucketReader(repository)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_endpoint_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    with pytest.raises(FetchError) as error:
        fetch_model("s3://models/prod", "classifier", tmp_path, timeout=5)
    assert f"s3://models/prod/classifier.tar.gz.sha256 from endpoint {endpoint}" in str(error.value)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_an_unreadable_gcs_key_file_says_which_secret_to_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOOGLE_SERVICE_ACCOUNT_PATH", str(tmp_path / "absent.json"))
    with pytest.raises(
        FetchError, match=r"key file .*absent\.json.*spec\.model\.storage\.secretName.*key\.json"
    ):
        fetch_model("gs://models/prod", "classifier", tmp_path / "models")


@pytest.mark.parametrize(
    ("text", "denied"),
    [
        ("Server returned non-2xx status code: 403 Forbidden: <Code>SignatureDoesNotMatch</Code>", True),
        ("Server returned non-2xx status code: 401 Unauthorized", True),
        ("<Error><Code>InvalidAccessKeyId</Code></Error>", True),
        ("error sending request for url (http://127.0.0.1:44031/models/x): Connection refused", False),
        ("Server returned non-2xx status code: 500 Internal Server Error: /bucket/4030/401", False),
    ],
)
def test_only_the_servers_refusal_counts_as_access_denied(text: str, denied: bool) -> None:
    assert _looks_denied(text) is denied


@pytest.mark.parametrize(
    ("url", "name", "full"),
    [
        ("s3://loop/sets/reviewed.parquet", "reviewed.parquet", "s3://loop/sets/reviewed.parquet"),
        ("gs://loop/a/b/c.parquet", "c.parquet", "gs://loop/a/b/c.parquet"),
        ("s3://loop/set.parquet", "set.parquet", "s3://loop/set.parquet"),
    ],
)
def test_an_object_url_is_split_into_its_bucket_and_name(url: str, name: str, full: str) -> None:
    reader, got = object_at(url)
    assert got == name and reader.url(got) == full


@pytest.mark.parametrize("url", ["s3://loop", "s3://loop/", "gs://", "set.parquet"])
def test_an_object_url_without_a_bucket_and_a_name_is_refused(url: str) -> None:
    with pytest.raises(ObjectStoreError):
        object_at(url)
