"""A status write computed from an old copy of the model never lands (the real API server).

A merge patch replaces status.history whole, so a decision made on a copy older than the object
would drop what was written in between: e.g. the late write of an operator process that was killed
(SIGKILL) and replaced, arriving after the new process read the model. Every status write of the
rollout controller and the core names the resourceVersion of the copy it was computed from; the
server refuses it (409) when the object has changed, and the next step decides on the newer copy.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from operator_run import CANARY_ROLLOUT, install_crd, model_manifest

from guardedmodel_operator.config import OperatorConfig
from guardedmodel_operator.events import Event
from guardedmodel_operator.kube import CONFLICT, ApiError, KubeClient, login
from guardedmodel_operator.reconcile import reconcile
from guardedmodel_operator.rollout.controller import RolloutController
from guardedmodel_testground.cluster import LocalCluster

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

NAME = "clf"
AT = "2026-01-01T00:00:00Z"


def entry(version: str, outcome: str, second: int) -> dict[str, str]:
    return {
        "version": version,
        "outcome": outcome,
        "at": f"2026-01-01T00:00:{second:02d}Z",
        "reason": outcome,
    }


@pytest.fixture
async def model(
    k8s_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[str, KubeClient]]:
    """A GuardedModel asking for version 2 while version 1 is stable and its Deployment rolled out
    (as the core leaves it), with no operator running; and the operator's own API client."""
    install_crd(k8s_cluster)
    namespace = f"stale-{uuid.uuid4().hex[:6]}"
    k8s_cluster.kubectl("create", "namespace", namespace)
    k8s_cluster.kubectl(
        "apply", "-f", "-", input=model_manifest(namespace, NAME, {"rollout": CANARY_ROLLOUT}, "2")
    )
    ready = {"type": "Ready", "status": "True", "reason": "RolloutComplete", "lastTransitionTime": AT}
    status = {
        "stableVersion": "1",
        "canaryWeight": 0,
        "observedGeneration": 1,
        "phase": "Ready",
        "conditions": [ready],
        "history": [entry("1", "Promoted", 0)],
    }
    patch_status(k8s_cluster, namespace, status)
    monkeypatch.setenv("KUBECONFIG", str(k8s_cluster.kubeconfig))
    client = KubeClient.connect(login(), field_manager="guardedmodel-operator")
    try:
        yield namespace, client
    finally:
        await client.close()
        k8s_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def patch_status(cluster: LocalCluster, namespace: str, status: dict[str, Any]) -> None:
    cluster.kubectl(
        "patch",
        "guardedmodel",
        NAME,
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )


async def test_a_decision_on_an_old_copy_writes_nothing_and_the_next_one_keeps_every_entry(
    k8s_cluster: LocalCluster, model: tuple[str, KubeClient]
) -> None:
    namespace, client = model
    events: list[Event] = []
    controller = RolloutController(None, client.patch_status, lambda body, event: events.append(event))
    old = k8s_cluster.kubectl_json("get", "guardedmodel", NAME, "-n", namespace)
    # Another process writes after this copy was read: one more history entry.
    written_between = entry("1", "Recovered", 1)
    patch_status(k8s_cluster, namespace, {"history": [entry("1", "Promoted", 0), written_between]})

    result, written = await controller.step(old)
    assert result.verdict.reason == "CanaryStarted"  # what the old copy called for ...
    assert written is None and result.patch is None and not events  # ... but nothing landed
    # The watch event of the newer copy wakes the next step; one interval is the backstop.
    assert result.next_in_s == 3.0
    now = k8s_cluster.kubectl_json("get", "guardedmodel", NAME, "-n", namespace)
    assert now["status"]["history"][-1] == written_between and "canaryVersion" not in now["status"]

    result, written = await controller.step(now)
    assert written is not None and [e.reason for e in events] == ["CanaryStarted"]
    history = [(h["version"], h["outcome"]) for h in written["status"]["history"]]
    assert history == [("1", "Promoted"), ("1", "Recovered"), ("2", "CanaryStarted")]
    assert (written["status"]["canaryVersion"], written["status"]["canaryWeight"]) == ("2", 10)


async def test_the_api_server_refuses_a_status_patch_on_an_old_resource_version(
    k8s_cluster: LocalCluster, model: tuple[str, KubeClient]
) -> None:
    namespace, client = model
    old = k8s_cluster.kubectl_json("get", "guardedmodel", NAME, "-n", namespace)["metadata"][
        "resourceVersion"
    ]
    patch_status(k8s_cluster, namespace, {"phase": "Progressing"})
    with pytest.raises(ApiError) as refused:
        await client.patch_status(namespace, NAME, {"phase": "Degraded"}, resource_version=old)
    assert refused.value.status == CONFLICT
    assert (
        k8s_cluster.kubectl_json("get", "guardedmodel", NAME, "-n", namespace)["status"]["phase"]
        == "Progressing"
    )
    # Without a precondition, or on the current version, the write lands.
    current = k8s_cluster.kubectl_json("get", "guardedmodel", NAME, "-n", namespace)["metadata"][
        "resourceVersion"
    ]
    assert (await client.patch_status(namespace, NAME, {"phase": "Ready"}, resource_version=current))[
        "status"
    ]["phase"] == "Ready"


async def test_the_cores_status_write_on_an_old_copy_is_refused_too(
    k8s_cluster: LocalCluster, model: tuple[str, KubeClient]
) -> None:
    namespace, client = model
    old = k8s_cluster.kubectl_json("get", "guardedmodel", NAME, "-n", namespace)
    written_between = entry("1", "Recovered", 1)
    patch_status(k8s_cluster, namespace, {"history": [entry("1", "Promoted", 0), written_between]})

    # No children yet: the reconcile creates them and writes no status until the Deployment's
    # controller has seen it (a status judged from an unseen Deployment is stale at once).
    outcome = await reconcile(old, lambda kind, ns, name: None, client, OperatorConfig(), lambda event: None)
    assert outcome.writes and not outcome.status_written
    k8s_cluster.kubectl(
        "wait", "deployment", NAME, "-n", namespace, "--for=jsonpath={.status.observedGeneration}=1"
    )
    deployment = k8s_cluster.kubectl_json("get", "deployment", NAME, "-n", namespace)

    def seen(kind: str, ns: str, name: str) -> dict[str, Any] | None:
        return deployment if kind == "Deployment" else None

    with pytest.raises(ApiError) as refused:
        # The Deployment as its controller reports it: the status computed from the old copy of
        # the model is written, and the server refuses it.
        await reconcile(old, seen, client, OperatorConfig(), lambda event: None)
    assert refused.value.status == CONFLICT
    assert k8s_cluster.kubectl_json("get", "guardedmodel", NAME, "-n", namespace)["status"]["history"][
        -1
    ] == (written_between)
