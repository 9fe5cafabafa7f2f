"""One reconcile of one GuardedModel: observe → pure build/plan/judge → write.

This is the only module that combines the pure parts with I/O. It reads live
children from a lookup (kopf's watch-fed indices, so observing costs no API
call), writes only the children that differ, and patches status only when the
computed status differs from the stored one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Unpack

from .apply import Write, plan_write
from .builders import build_children, build_context, child_names, status_inputs
from .clock import format_time, utcnow
from .config import OperatorConfig
from .events import Event, status_events, write_events
from .fetch_failure import MODEL_FETCHED, fetch_failure, fetched_condition
from .kube import KubeClient
from .labels import selector_labels
from .pod_security import hostpath_refusal
from .readiness import DeploymentState, Observed, first_version_ready, next_status
from .rollout.outcome import first_promotion
from .spec import GuardedModelSpec, SpecError, parse_spec
from .status import condition, conditions_by_type, invalid_spec_status, merge_conditions, merge_patch

ChildLookup = Callable[[str, str, str], Mapping[str, Any] | None]  # (kind, namespace, name) → live object
EventSink = Callable[[Event], None]


# Writes within a stage are independent and go concurrently; stages go in
# order. A RoleBinding waits for its Role: without the `bind` verb (which the
# operator deliberately lacks) the API server admits a binding only after
# checking the Role it names, so the Role must exist. The Deployment goes last
# so its pods find their ServiceAccount and ConfigMap in place.
WRITE_STAGES = (
    frozenset({"ServiceAccount", "Role", "ConfigMap", "Service", "NetworkPolicy"}),
    frozenset({"RoleBinding"}),
    frozenset({"Deployment"}),
)


def desired_status(
    status: dict[str, Any], dep: DeploymentState, **observed: Unpack[Observed]
) -> dict[str, Any]:
    """The status this reconcile writes: the core's fields, and the first promotion once its pods are
    ready. Versions after the first are the rollout controller's (canary, instant, rollback). Pure."""
    ready = first_version_ready(status, dep, observed["pod_hash"])
    first = observed["spec_version"] if ready else None
    return {**next_status(status, dep, **observed), **first_promotion(status, first, observed["now"])}


@dataclass
class Outcome:
    writes: list[Write] = field(default_factory=list)
    # What the API server returned for each write: newer than any watch-fed
    # copy until the watch event for it arrives.
    written: list[dict[str, Any]] = field(default_factory=list)
    status_written: bool = False
    # The resourceVersion of a status this reconcile wrote that leaves the children as built: its
    # watch event (the echo) has nothing for another reconcile to do.
    settled_version: str | None = None
    phase: str | None = None


async def reconcile(
    body: Mapping[str, Any],
    lookup: ChildLookup,
    client: KubeClient,
    config: OperatorConfig,
    emit: EventSink,
    now: Callable[[], dt.datetime] = utcnow,
    written: Callable[[dict[str, Any]], None] = lambda obj: None,
) -> Outcome:
    """Make the children and the status match the spec; `written` hears about
    every object the server returns from a write, as soon as it returns."""
    meta = body["metadata"]
    namespace, name, generation = meta["namespace"], meta["name"], int(meta.get("generation") or 0)
    status = dict(body.get("status") or {})
    outcome = Outcome()
    try:
        spec = parse_spec(body.get("spec") or {})
    except SpecError as error:
        await _write_invalid_spec(
            client,
            namespace,
            name,
            status,
            generation,
            str(error),
            emit,
            format_time(now()),
            outcome,
            resource_version=meta.get("resourceVersion"),
        )
        return outcome
    refusal = await _pod_security_refusal(client, namespace, spec)
    if refusal is not None:
        await _write_invalid_spec(
            client,
            namespace,
            name,
            status,
            generation,
            refusal,
            emit,
            format_time(now()),
            outcome,
            "PodSecurity",
            meta.get("resourceVersion"),
        )
        return outcome

    names = child_names(name)
    live_deployment = lookup("Deployment", namespace, names.deployment)
    current_replicas = (live_deployment or {}).get("spec", {}).get("replicas")
    ctx = build_context(body, spec, config, current_replicas)
    reconciled_before = "observedGeneration" in status

    writes = [
        write
        for desired in build_children(ctx)
        if (
            write := plan_write(
                desired,
                lookup(desired["kind"], namespace, desired["metadata"]["name"]),
                reconciled_before=reconciled_before,
            )
        )
        is not None
    ]

    async def apply(manifest: dict[str, Any]) -> dict[str, Any]:
        obj = await client.apply(manifest)
        written(obj)
        return obj

    deployment_written = False
    for stage in WRITE_STAGES:
        batch = [w for w in writes if w.kind in stage]
        results = await asyncio.gather(*(apply(w.manifest) for w in batch))
        outcome.writes.extend(batch)
        outcome.written.extend(results)
        for write, obj in zip(batch, results, strict=True):
            if write.kind == "Deployment":
                # The object the server returned is newer than the index's copy.
                live_deployment = obj
                deployment_written = True

    for event in write_events(outcome.writes):
        emit(event)
    deployment = DeploymentState.observe(live_deployment)
    if deployment_written and deployment.observed_generation < deployment.generation:
        # What its controller has not seen yet, it has not acted on: a status judged from it now
        # is stale at once. The controller's status update is a watch event that queues the
        # reconcile which reports it (one status write instead of two).
        return outcome

    new_status = desired_status(
        status,
        deployment,
        generation=generation,
        pod_hash=ctx.pod_hash,
        spec_version=spec.model_version,
        now=format_time(now()),
    )
    if spec.repository.is_remote:
        new_status = await _with_fetch_condition(
            client, new_status, live_deployment, ctx.pod_hash, namespace, name, format_time(now())
        )
    patch = merge_patch(status, new_status)
    if patch is not None:
        model = await client.patch_status(
            namespace, name, patch, resource_version=meta.get("resourceVersion")
        )
        written(model)
        outcome.written.append(model)
        outcome.status_written = True
        if status_inputs(new_status, spec) == (ctx.routing, ctx.scaled_replicas):
            outcome.settled_version = model["metadata"].get("resourceVersion")
    outcome.phase = new_status.get("phase")
    for event in status_events(status, new_status):
        emit(event)
    return outcome


async def _with_fetch_condition(
    client: KubeClient,
    status: dict[str, Any],
    live_deployment: Mapping[str, Any] | None,
    pod_hash: str,
    namespace: str,
    name: str,
    now: str,
) -> dict[str, Any]:
    """ModelFetched from the pods' fetch-model init containers; the pods are read only while the
    Deployment is not rolled out (a rolled-out pod got past its fetch)."""
    failure = None
    if live_deployment is not None and not DeploymentState.observe(live_deployment).rolled_out(pod_hash):
        pods = await client.list_pods(namespace, selector_labels(name))
        if pods is None:
            return status
        failure = fetch_failure(pods)
    previous = conditions_by_type(status).get(MODEL_FETCHED)
    fetched = condition(
        MODEL_FETCHED, fetched_condition(failure), previous, status["observedGeneration"], now
    )
    return {**status, "conditions": merge_conditions(status.get("conditions") or [], [fetched])}


async def _pod_security_refusal(client: KubeClient, namespace: str, spec: GuardedModelSpec) -> str | None:
    """Only a file:// repository can make the pod inadmissible, so only then is the namespace read."""
    if spec.repository.scheme != "file":
        return None
    labels = await client.namespace_labels(namespace)
    return hostpath_refusal(spec.repository, namespace, labels or {})


async def _write_invalid_spec(
    client: KubeClient,
    namespace: str,
    name: str,
    status: dict[str, Any],
    generation: int,
    message: str,
    emit: EventSink,
    now: str,
    outcome: Outcome,
    reason: str = "InvalidSpec",
    resource_version: str | None = None,
) -> None:
    # Leave the children as they are: a spec the operator cannot parse must
    # not tear down a model that is serving.
    new_status = invalid_spec_status(status, generation, message, now, reason)
    patch = merge_patch(status, new_status)
    if patch is not None:
        outcome.written.append(
            await client.patch_status(namespace, name, patch, resource_version=resource_version)
        )
        outcome.status_written = True
        emit(Event("Warning", reason, message))
    outcome.phase = "Failed"
