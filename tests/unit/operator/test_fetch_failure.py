"""The ModelFetched condition from the pods' fetch-model init container states (as the kubelet reports them)."""

from __future__ import annotations

from typing import Any

import pytest

from guardedmodel_operator.fetch_failure import fetch_failure, fetched_condition

DENIED = "fetch-model: s3://models/prod/classifier.tar.gz.sha256: access denied by endpoint http://minio:9000"


def pod(name: str, *init: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": {"initContainerStatuses": list(init)}}


def fetch(
    state: dict[str, Any], last: dict[str, Any] | None = None, name: str = "fetch-model"
) -> dict[str, Any]:
    return {"name": name, "state": state, "lastState": last or {}}


def failed(message: str = DENIED, code: int = 1) -> dict[str, Any]:
    return {"terminated": {"exitCode": code, "reason": "Error", "message": message + "\n"}}


@pytest.mark.parametrize(
    "status",
    [
        fetch(failed()),  # just failed
        fetch({"waiting": {"reason": "CrashLoopBackOff"}}, failed()),  # backing off after a failure
        fetch({"running": {}}, failed()),  # trying again after a failure
    ],
)
def test_a_failing_fetch_is_reported_with_its_pod_and_message(status: dict[str, Any]) -> None:
    assert fetch_failure(
        [pod("ok", fetch({"terminated": {"exitCode": 0}})), pod("classifier-abc", status)]
    ) == (f"pod classifier-abc: fetch-model failed: {DENIED}")
    assert fetched_condition(fetch_failure([pod("classifier-abc", status)]))[:2] == ("False", "FetchFailed")


@pytest.mark.parametrize(
    "pods",
    [
        [],
        [pod("p")],  # not started yet
        [pod("p", fetch({"waiting": {"reason": "PodInitializing"}}))],
        [pod("p", fetch({"running": {}}))],
        [pod("p", fetch({"terminated": {"exitCode": 0}}, failed()))],  # succeeded after a failure
        [pod("p", fetch(failed(), name="other-init"))],  # not the fetch
        [{"metadata": {"name": "p"}}],  # no status at all
    ],
)
def test_no_failing_fetch_means_no_failure(pods: list[dict[str, Any]]) -> None:
    assert fetch_failure(pods) is None
    assert fetched_condition(None)[:2] == ("True", "NoFetchFailure")


def test_a_failure_without_output_names_the_reason_and_a_long_one_keeps_its_end() -> None:
    silent = {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}
    assert fetch_failure([pod("p", fetch(silent))]) == "pod p: fetch-model failed: OOMKilled"
    long = "x" * 5000 + " what to fix"
    message = fetch_failure([pod("p", fetch(failed(long)))])
    assert message is not None and message.endswith(" what to fix") and len(message) < 1100
