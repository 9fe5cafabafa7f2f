"""The CRD file itself: structure, printer columns, defaults that match the operator's."""

from __future__ import annotations

import copy
from typing import Any

from guardedmodel_operator.spec import DEFAULTS, with_defaults


def _version(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    return version


def _spec_schema(crd: dict[str, Any]) -> dict[str, Any]:
    return _version(crd)["schema"]["openAPIV3Schema"]["properties"]["spec"]


def apply_schema_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """Structural-schema defaulting as the API server does it: a missing field
    with a default gets it, then defaulting recurses into objects and arrays."""
    if isinstance(value, dict) and "properties" in schema:
        for key, sub in schema["properties"].items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = apply_schema_defaults(value[key], sub)
    if isinstance(value, list) and "items" in schema:
        return [apply_schema_defaults(item, schema["items"]) for item in value]
    return value


def test_names_scope_and_status_subresource(crd: dict[str, Any]) -> None:
    assert crd["metadata"]["name"] == "guardedmodels.guardedmodel.io"
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == ("GuardedModel", "guardedmodels", ["gm"])
    assert crd["spec"]["scope"] == "Namespaced"
    version = _version(crd)
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}


def test_printer_columns(crd: dict[str, Any]) -> None:
    columns = {c["name"]: c["jsonPath"] for c in _version(crd)["additionalPrinterColumns"]}
    assert columns == {
        "Phase": ".status.phase",
        "Stable": ".status.stableVersion",
        "Canary": ".status.canaryVersion",
        "Weight": ".status.canaryWeight",
        "Est-Accuracy": ".status.metrics.estimatedAccuracy",
        "OOD-Rate": ".status.metrics.oodRate",
        "Age": ".metadata.creationTimestamp",
    }


def test_operator_defaults_equal_the_crd_defaults(crd: dict[str, Any]) -> None:
    minimal = {"model": {"name": "m", "repository": "pvc://c", "version": "1"}}
    by_server = apply_schema_defaults(copy.deepcopy(minimal), _spec_schema(crd))
    assert with_defaults(minimal) == by_server
    # and the operator knows no default the CRD lacks
    assert set(DEFAULTS) <= set(_spec_schema(crd)["properties"])


def test_every_cel_string_and_list_is_bounded(crd: dict[str, Any]) -> None:
    """The API server refuses CEL rules whose cost it cannot bound; catch that here, not at install."""
    unbounded: list[str] = []

    def walk(schema: dict[str, Any], path: str) -> None:
        if schema.get("x-kubernetes-validations") and path.count(".") > 1:
            if schema.get("type") == "string" and "maxLength" not in schema:
                unbounded.append(path)
            if schema.get("type") == "array" and "maxItems" not in schema:
                unbounded.append(path)
        for key, sub in (schema.get("properties") or {}).items():
            walk(sub, f"{path}.{key}")
        if isinstance(schema.get("items"), dict):
            walk(schema["items"], f"{path}[]")

    walk(_version(crd)["schema"]["openAPIV3Schema"], "")
    assert unbounded == []


def test_status_has_the_routing_fields_the_sidecar_reads(crd: dict[str, Any]) -> None:
    status = _version(crd)["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    for field in (
        "stableVersion",
        "canaryVersion",
        "canaryWeight",
        "lastGoodVersion",
        "history",
        "conditions",
    ):
        assert field in status
    assert set(status["phase"]["enum"]) == {
        "Pending",
        "Progressing",
        "Ready",
        "Degraded",
        "RolledBack",
        "Failed",
    }


def test_chart_crds_are_in_sync_with_the_source(tmp_path: Any) -> None:
    from guardedmodel_operator import crdsync

    root = crdsync.repo_root()
    assert crdsync.differences(root) == []
    # and the check does fail on a difference
    fake = tmp_path / "repo"
    (fake / "crds").mkdir(parents=True)
    (fake / "charts" / "guardedmodel" / "crds").mkdir(parents=True)
    (fake / "crds" / "a.yaml").write_text("a: 1\n")
    (fake / "charts" / "guardedmodel" / "crds" / "a.yaml").write_text("a: 2\n")
    assert crdsync.differences(fake) == ["charts/guardedmodel/crds/a.yaml differs from crds/a.yaml"]
    crdsync.sync(fake)
    assert crdsync.differences(fake) == []


def _object_default_paths(defaults: dict[str, Any], path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for key, value in defaults.items():
        if isinstance(value, dict):
            paths += [(*path, key), *_object_default_paths(value, (*path, key))]
    return paths


def test_a_given_object_is_defaulted_like_the_api_server_does(crd: dict[str, Any]) -> None:
    """An object the user gives (here: empty) gets only its properties' own defaults, never the
    default of the object as a whole: `triton.resources: {requests: {cpu: 1}}` drops the GPU."""
    paths = _object_default_paths(DEFAULTS)
    assert ("triton", "resources") in paths
    for path in paths:
        spec: dict[str, Any] = {"model": {"name": "m", "repository": "pvc://c", "version": "1"}}
        node = spec
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = {}
        by_server = apply_schema_defaults(copy.deepcopy(spec), _spec_schema(crd))
        assert with_defaults(spec) == by_server, path
