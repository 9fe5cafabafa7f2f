"""What the pod asks of Pod Security admission, decided without a cluster: a file:// repository
in a namespace that enforces baseline or restricted is refused with a message naming the fix,
and the test ground's CPU override (spec.triton.resources) leaves no GPU in the pod."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from guardedmodel_operator.builders import build_context, build_deployment
from guardedmodel_operator.config import OperatorConfig
from guardedmodel_operator.pod_security import ENFORCE_LABEL, hostpath_refusal
from guardedmodel_operator.spec import parse_repository, parse_spec

CONFIG = OperatorConfig(triton_image="triton:test", sidecar_image="sidecar:test")
FILE_REPO = parse_repository("file:///srv/models")


@pytest.mark.parametrize("level", ["baseline", "restricted"])
def test_file_repository_is_refused_where_hostpath_is(level: str) -> None:
    message = hostpath_refusal(FILE_REPO, "ml", {ENFORCE_LABEL: level})
    assert message is not None
    # a person can act on it: the field, the namespace and its level, and both admitted alternatives
    for part in ("spec.model.repository", "file:///srv/models", "'ml'", f"{ENFORCE_LABEL}={level}"):
        assert part in message
    assert "http(s)://" in message and "pvc://" in message


@pytest.mark.parametrize(
    "labels", [{}, {ENFORCE_LABEL: "privileged"}, {"pod-security.kubernetes.io/warn": "restricted"}]
)
def test_file_repository_is_allowed_where_hostpath_is_admitted(labels: dict[str, str]) -> None:
    assert hostpath_refusal(FILE_REPO, "dev", labels) is None


@pytest.mark.parametrize(
    "url", ["pvc://models/classifier", "https://models.example/repo", "http://10.0.0.1/r"]
)
def test_other_repositories_are_never_refused(url: str) -> None:
    assert hostpath_refusal(parse_repository(url), "ml", {ENFORCE_LABEL: "restricted"}) is None


def _deployment(body: dict[str, Any]) -> dict[str, Any]:
    return build_deployment(build_context(body, parse_spec(body["spec"]), CONFIG))


def _pod(body: dict[str, Any]) -> dict[str, Any]:
    return _deployment(body)["spec"]["template"]["spec"]


def test_every_container_meets_restricted(minimal_body: dict[str, Any]) -> None:
    body = copy.deepcopy(minimal_body)
    body["spec"]["model"]["repository"] = "https://models.example/repo"  # adds the fetch-model init container
    pod = _pod(body)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    every = pod["containers"] + pod["initContainers"]
    assert {c["name"] for c in every} == {"triton", "sidecar", "fetch-model"}
    for container in every:
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert security["readOnlyRootFilesystem"] is True
        assert not any("hostPort" in p for p in container.get("ports", []))
    assert not any("hostPath" in v for v in pod["volumes"])
    assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))


def test_user_resources_replace_the_gpu_default(minimal_body: dict[str, Any]) -> None:
    """The test ground's CPU node: spec.triton.resources replaces the default GPU limit as a whole
    (the API server's defaulting fills only an absent field, and with_defaults mirrors it)."""
    cpu_only = {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}}
    body = copy.deepcopy(minimal_body)
    body["spec"]["triton"] = {"resources": cpu_only, "tolerations": []}
    pod = _pod(body)
    triton = next(c for c in pod["containers"] if c["name"] == "triton")
    assert triton["resources"] == cpu_only
    assert "nvidia.com/gpu" not in repr(pod)
    # the default is still the GPU, so production keeps it without saying so
    default_pod = _pod(minimal_body)
    assert next(c for c in default_pod["containers"] if c["name"] == "triton")["resources"] == {
        "limits": {"nvidia.com/gpu": "1"}
    }
