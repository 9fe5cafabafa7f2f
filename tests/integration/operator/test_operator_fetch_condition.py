"""A pod whose fetch-model init container fails: its message reaches the GuardedModel's status.

The operator and the API server are real; the pods are held unscheduled (a node selector no node
matches) and their init container's failure is written into the pod status the way the kubelet
reports it (kwok plays the kubelet the same way for running pods)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
from gm_operator_helpers import Namespace, OperatorProcess, condition, eventually, minimal_example

pytestmark = pytest.mark.integration

RESYNC_S = 2
MESSAGE = (
    "fetch-model: s3://models/prod/classifier.tar.gz.sha256: access denied by endpoint http://minio:9000 "
    "(HTTP 403 Forbidden, SignatureDoesNotMatch); check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
)


def fail_fetch(namespace: Namespace, pod: str) -> None:
    status = {
        "status": {
            "initContainerStatuses": [
                {
                    "name": "fetch-model",
                    "image": "sidecar:test",
                    "imageID": "",
                    "ready": False,
                    "restartCount": 2,
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s"}},
                    "lastState": {
                        "terminated": {
                            "exitCode": 1,
                            "reason": "Error",
                            "message": MESSAGE + "\n",
                            "startedAt": "2026-01-01T00:00:00Z",
                            "finishedAt": "2026-01-01T00:00:01Z",
                        }
                    },
                }
            ]
        }
    }
    namespace.kubectl("patch", "pod", pod, "--subresource=status", "--type=merge", "-p", json.dumps(status))


def test_a_failing_fetch_is_named_in_the_model_fetched_condition(
    namespace: Namespace, start_operator: Callable[..., OperatorProcess]
) -> None:
    start_operator(namespace.name, f"--resync-interval-s={RESYNC_S}")
    manifest = minimal_example()
    manifest["spec"]["model"].update(repository="s3://models/prod", storage={"secretName": "models-s3"})
    manifest["spec"]["triton"] = {"nodeSelector": {"nvidia.com/gpu.product": "no-such-gpu"}}
    namespace.apply(manifest)

    def fetched(status: str) -> dict[str, object] | None:
        gm = namespace.get("guardedmodel", "classifier") or {}
        found = condition(gm, "ModelFetched")
        return found if found.get("status") == status else None

    assert (
        eventually("ModelFetched True while nothing failed", lambda: fetched("True"))["reason"]
        == "NoFetchFailure"
    )
    pods = json.loads(namespace.kubectl("get", "pods", "-o", "json").stdout)["items"]
    assert pods, "the Deployment made no pod"
    fail_fetch(namespace, pods[0]["metadata"]["name"])
    # A failing init container is no event the operator watches (the Deployment stays as unavailable
    # as it was): the resync looks at the pods of a model that is not rolled out at every listing.
    started = time.monotonic()
    failed = eventually("ModelFetched False with the init container's message", lambda: fetched("False"))
    assert time.monotonic() - started < 3 * RESYNC_S + 5
    assert failed["reason"] == "FetchFailed"
    assert MESSAGE in failed["message"] and pods[0]["metadata"]["name"] in failed["message"]
