"""The core's part of the status: the Deployment's observed state → phase and conditions.

Pure: given the previous status and what the Deployment reports, return the
next status. Routing, history and the stable version are the rollout
controller's (`rollout.outcome`); see `status` for who writes what. The caller writes it only when it differs, so a quiet cluster
sees no status writes. Conditions follow the Kubernetes API conventions:
`lastTransitionTime` moves only when a condition's status flips, and "Ready"
is never True before pods actually are.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack

from .labels import POD_HASH_ANNOTATION
from .rollout.phase import overlay
from .status import Condition, condition, conditions_by_type, merge_conditions


@dataclass(frozen=True)
class DeploymentState:
    exists: bool
    pod_hash: str | None = None
    generation: int = 0
    observed_generation: int = 0
    desired: int = 0
    replicas: int = 0
    updated: int = 0
    ready: int = 0
    available: int = 0
    deadline_exceeded: bool = False
    failure_message: str | None = None

    @classmethod
    def observe(cls, deployment: Mapping[str, Any] | None) -> DeploymentState:
        if deployment is None:
            return cls(exists=False)
        meta, spec, status = (
            deployment.get("metadata", {}),
            deployment.get("spec", {}),
            deployment.get("status") or {},
        )
        annotations = (spec.get("template", {}).get("metadata", {}) or {}).get("annotations") or {}
        conditions = {c.get("type"): c for c in status.get("conditions") or []}
        progressing = conditions.get("Progressing") or {}
        replica_failure = conditions.get("ReplicaFailure") or {}
        return cls(
            exists=True,
            pod_hash=annotations.get(POD_HASH_ANNOTATION),
            generation=int(meta.get("generation") or 0),
            observed_generation=int(status.get("observedGeneration") or 0),
            desired=int(spec.get("replicas", 1)),
            replicas=int(status.get("replicas") or 0),
            updated=int(status.get("updatedReplicas") or 0),
            ready=int(status.get("readyReplicas") or 0),
            available=int(status.get("availableReplicas") or 0),
            deadline_exceeded=progressing.get("reason") == "ProgressDeadlineExceeded",
            failure_message=replica_failure.get("message")
            if replica_failure.get("status") == "True"
            else None,
        )

    def rolled_out(self, pod_hash: str) -> bool:
        """`kubectl rollout status` done, for the pod template built from this spec."""
        return (
            self.exists
            and self.pod_hash == pod_hash
            and self.observed_generation >= self.generation
            and self.updated >= self.desired
            and self.replicas == self.updated
            and self.available >= self.desired
            and self.ready >= self.desired
        )


@dataclass(frozen=True)
class Verdict:
    phase: str
    ready: Condition
    progressing: Condition
    degraded: Condition


def judge(dep: DeploymentState, *, pod_hash: str, spec_version: str, stable_version: str | None) -> Verdict:
    """The one decision of this module: where the GuardedModel stands.

    The pods are judged against the pod hash, which leaves the model version out: a version edit
    alone finds the pods rolled out, and the rollout controller moves traffic to it in them.
    """
    ok = ("False", "AsExpected", "")
    if not dep.exists:
        return Verdict(
            "Pending",
            ("False", "DeploymentMissing", "the Deployment does not exist yet"),
            ("True", "Creating", "creating the Deployment"),
            ok,
        )
    counts = f"{dep.ready}/{dep.desired} replicas ready"
    if dep.rolled_out(pod_hash):
        return Verdict(
            "Ready",
            # The stable version is what answers traffic; during or after a canary it can differ
            # from the spec's (a rolled-back canary leaves the spec naming the refused version).
            ("True", "RolloutComplete", f"{counts}, serving version {stable_version or spec_version}"),
            ("False", "RolloutComplete", "the pods of this spec are rolled out"),
            ok,
        )
    serving = dep.ready > 0
    ready = (
        ("True", "ServingPreviousRevision", f"{counts}; the new revision is not rolled out yet")
        if serving
        else ("False", "NoReadyReplicas", f"{counts}")
    )
    if dep.deadline_exceeded and dep.pod_hash == pod_hash:
        message = f"the pods of this spec made no progress within the deadline ({counts})"
        if dep.failure_message:
            message += f": {dep.failure_message}"
        return Verdict(
            "Degraded" if serving else "Failed",
            ready,
            ("False", "ProgressDeadlineExceeded", message),
            ("True", "ProgressDeadlineExceeded", message),
        )
    if dep.failure_message:
        return Verdict(
            "Degraded",
            ready,
            ("True", "ReplicaFailure", dep.failure_message),
            ("True", "ReplicaFailure", dep.failure_message),
        )
    rolling_same_spec = dep.pod_hash == pod_hash and dep.replicas == dep.updated
    if rolling_same_spec and stable_version is not None and dep.observed_generation >= dep.generation:
        # The rollout finished earlier and pods have since been lost.
        return Verdict(
            "Degraded",
            ready,
            ("False", "RolloutComplete", "the pods of this spec are rolled out"),
            ("True", "ReplicasUnavailable", f"{counts}"),
        )
    phase = "Pending" if stable_version is None and not serving else "Progressing"
    return Verdict(
        phase,
        ready,
        ("True", "RollingOut", f"rolling out the pods: {dep.updated}/{dep.desired} updated, {counts}"),
        ok,
    )


class Observed(TypedDict):
    """What a reconcile knows of the object besides its Deployment; the keywords of `next_status`
    and of the reconcile's `desired_status`, which adds the first promotion to it."""

    generation: int
    pod_hash: str
    spec_version: str
    now: str  # the time conditions change at, already formatted


def next_status(
    current: Mapping[str, Any] | None, dep: DeploymentState, **observed: Unpack[Observed]
) -> dict[str, Any]:
    """The full status to store; fields owned by other writers (routing, metrics, scaling, other
    conditions) are kept."""
    generation, now = observed["generation"], observed["now"]
    status: dict[str, Any] = copy.deepcopy(dict(current or {}))
    stable = status.get("stableVersion")
    verdict = judge(
        dep, pod_hash=observed["pod_hash"], spec_version=observed["spec_version"], stable_version=stable
    )
    # The rollout's phase (canary, rollback, breached guard) counts once the pods are Ready.
    phase, progressing, degraded = overlay(verdict.phase, verdict.progressing, verdict.degraded, status)
    previous = conditions_by_type(status)
    owned = [
        condition("Ready", verdict.ready, previous.get("Ready"), generation, now),
        condition("Progressing", progressing, previous.get("Progressing"), generation, now),
        condition("Degraded", degraded, previous.get("Degraded"), generation, now),
    ]
    # Conditions of other writers (the idle watch's Idle) stay as they are.
    status["conditions"] = merge_conditions(status.get("conditions") or [], owned)
    status["phase"] = phase
    status["observedGeneration"] = generation
    status["replicas"] = dep.replicas
    status["readyReplicas"] = dep.ready
    return {k: v for k, v in status.items() if v is not None}


def first_version_ready(status: Mapping[str, Any] | None, dep: DeploymentState, pod_hash: str) -> bool:
    """No version is stable yet and the pods of this spec are rolled out: the first promotion is due."""
    return (status or {}).get("stableVersion") is None and dep.rolled_out(pod_hash)
