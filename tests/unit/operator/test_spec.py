from __future__ import annotations

import pytest

from guardedmodel_operator.spec import SpecError, parse_repository, parse_spec, with_defaults


def test_defaults_fill_only_missing_fields() -> None:
    spec = with_defaults({"model": {}, "rollout": {"steps": [50, 100]}, "replicas": {"max": 3}})
    assert spec["rollout"]["steps"] == [50, 100]  # a given list replaces the default
    assert spec["rollout"]["interval"] == "30s"
    assert spec["replicas"] == {"min": 1, "max": 3}


def test_defaults_do_not_alias_between_calls() -> None:
    first = with_defaults({})
    first["rollout"]["steps"].append(7)
    assert with_defaults({})["rollout"]["steps"] == [10, 50, 100]


@pytest.mark.parametrize(
    ("url", "scheme", "claim", "sub_path", "host_path"),
    [
        ("pvc://models/classifiers/v", "pvc", "models", "classifiers/v", None),
        ("pvc://models", "pvc", "models", "", None),
        ("file:///srv/models/", "file", None, "", "/srv/models"),
        ("s3://bucket/path", "s3", None, "", None),
        ("https://host/models", "https", None, "", None),
    ],
)
def test_repository_forms(
    url: str, scheme: str, claim: str | None, sub_path: str, host_path: str | None
) -> None:
    repo = parse_repository(url)
    assert (repo.scheme, repo.claim, repo.sub_path, repo.host_path) == (scheme, claim, sub_path, host_path)
    assert repo.is_remote == (scheme in ("s3", "gs", "http", "https"))


@pytest.mark.parametrize("url", ["ftp://x/y", "models/dir", "file://relative/path"])
def test_bad_repository_is_refused_with_the_field_named(url: str) -> None:
    with pytest.raises(SpecError, match=r"spec\.model\.repository"):
        parse_repository(url)


def test_parse_spec_checks_what_the_crd_checks() -> None:
    model = {"name": "m", "repository": "pvc://c", "version": "2"}
    assert parse_spec({"model": model}).model_version == "2"
    with pytest.raises(SpecError, match="version"):
        parse_spec({"model": {**model, "version": "v2"}})
    with pytest.raises(SpecError, match=r"replicas\.min"):
        parse_spec({"model": model, "replicas": {"min": 3, "max": 2}})
    with pytest.raises(SpecError, match=r"spec\.model\.name"):
        parse_spec({"model": {"repository": "pvc://c", "version": "1"}})
