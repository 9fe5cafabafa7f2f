"""The operator's status writes on the real API server: one that names a resourceVersion lands only on
that version of the GuardedModel, so a decision taken on a stale copy is refused, never written."""

from __future__ import annotations

import pytest
from gm_operator_helpers import Namespace, minimal_example

from guardedmodel_operator.kube import CONFLICT, ApiError, KubeClient, login

pytestmark = pytest.mark.integration


async def test_a_status_write_on_a_stale_copy_is_refused(
    namespace: Namespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = minimal_example()
    manifest["metadata"]["namespace"] = namespace.name
    namespace.apply(manifest)
    name = manifest["metadata"]["name"]
    seen = namespace.get("guardedmodel", name)
    assert seen is not None
    monkeypatch.setenv("KUBECONFIG", str(namespace.cluster.kubeconfig))
    client = KubeClient.connect(login(), field_manager="precondition-test")
    try:
        copy_version = seen["metadata"]["resourceVersion"]
        written = await client.patch_status(
            namespace.name, name, {"canaryWeight": 10}, resource_version=copy_version
        )
        assert written["status"]["canaryWeight"] == 10
        # The object moved on (the write above, like any other writer's): the old copy is stale now.
        with pytest.raises(ApiError) as refused:
            await client.patch_status(
                namespace.name, name, {"canaryWeight": 50}, resource_version=copy_version
            )
        assert refused.value.status == CONFLICT
        assert namespace.get("guardedmodel", name)["status"]["canaryWeight"] == 10  # type: ignore[index]
        # Without a version (the core's own writes) the patch applies to whatever is there.
        await client.patch_status(namespace.name, name, {"canaryWeight": 0})
        assert namespace.get("guardedmodel", name)["status"]["canaryWeight"] == 0  # type: ignore[index]
    finally:
        await client.close()
