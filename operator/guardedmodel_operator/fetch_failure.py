"""The ModelFetched condition: a failing ``fetch-model`` init container, seen in the pods' status.

A pod whose model cannot be fetched (wrong keys, a missing object, a checksum mismatch) never gets
past its init container, and the Deployment only reports it as unavailable. The init container's
last output (``terminationMessagePolicy: FallbackToLogsOnError``) is its terminated state's message,
so the reason, with the bucket, the endpoint and what to fix, is copied into the GuardedModel's
status here. Pure: pods in, condition out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .status import Condition

FETCH_CONTAINER = "fetch-model"
MODEL_FETCHED = "ModelFetched"
_MESSAGE_LIMIT = 1024


def fetch_failure(pods: Iterable[Mapping[str, Any]]) -> str | None:
    """The first failing fetch-model's message, naming its pod; None when none is failing."""
    for pod in pods:
        name = (pod.get("metadata") or {}).get("name", "?")
        for container in (pod.get("status") or {}).get("initContainerStatuses") or []:
            if container.get("name") != FETCH_CONTAINER:
                continue
            state, last = container.get("state") or {}, container.get("lastState") or {}
            terminated = state.get("terminated") or last.get("terminated") or {}
            if int(terminated.get("exitCode") or 0) == 0:
                continue
            message = (terminated.get("message") or "").strip() or terminated.get("reason") or "no output"
            return f"pod {name}: {FETCH_CONTAINER} failed: {message[-_MESSAGE_LIMIT:]}"
    return None


def fetched_condition(failure: str | None) -> Condition:
    if failure is not None:
        return ("False", "FetchFailed", failure)
    return ("True", "NoFetchFailure", f"no pod's {FETCH_CONTAINER} init container is failing")
