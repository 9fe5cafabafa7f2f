"""Resync: a GuardedModel whose edit the watch never delivered is reconciled anyway.

The operator reacts to watch events. Should one never arrive (a watch stream that dies without an
error, an event dropped between the API server and kopf), the edit it carried would wait for the
model's next event, which for a model in a steady state may never come: the spec says one thing and
the pods run another, silently. Every ``resync_interval_s`` the operator therefore lists the models
it serves (one request, not one per model) and reconciles, from the listed copy, each model whose
spec generation was not reconciled (``status.observedGeneration`` behind ``metadata.generation``)
at this listing and the one before: a model that is merely being reconciled right now is left to
the reconcile under way. A model in a steady state costs nothing but its place in the list.

What this heals is counted (``guardedmodel_operator_resyncs_total``) and logged: a non-zero count
means watch events went missing, which is worth knowing about in itself.

The same listing also finds models whose pods are not rolled out and copy their model in an init
container (``fetch-model``: http(s), s3, gs). A failing init container (wrong keys, a missing
object) changes nothing the operator watches: the Deployment just stays unavailable until its
progress deadline. Such a model is reconciled at every listing, which reads its pods and turns the
``ModelFetched`` condition within one interval (reason ``rolling_out``; routine, not a lost event).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .spec import SpecError, parse_repository

Key = tuple[str, str]

#: Why a model is reconciled by the resync: the watch never delivered the listed generation, or it
#: did and the reconciles since have not converged (they failed; the next event would retry them).
WATCH_BEHIND = "watch_behind"
NOT_CONVERGED = "not_converged"
#: Its pods are not rolled out and fetch the model: their init containers are looked at again.
ROLLING_OUT = "rolling_out"


@dataclass(frozen=True)
class Behind:
    key: Key
    generation: int
    reason: str
    body: Mapping[str, Any]


def unreconciled_generation(body: Mapping[str, Any]) -> int | None:
    """The model's spec generation when its status has not caught up with it, else None. A model
    being deleted is the garbage collector's, not the resync's."""
    meta = body.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return None
    generation = int(meta.get("generation") or 0)
    observed = (body.get("status") or {}).get("observedGeneration")
    if observed is not None and int(observed) >= generation:
        return None
    return generation


def rolling_out_with_fetch(body: Mapping[str, Any]) -> bool:
    """Do the model's pods copy the model in an init container, and are they not rolled out yet (the
    Ready condition's reason is not RolloutComplete)? Pure."""
    if (body.get("metadata") or {}).get("deletionTimestamp"):
        return False
    try:  # the same rule that gives the pod its fetch-model init container
        fetched = parse_repository(
            str(((body.get("spec") or {}).get("model") or {}).get("repository"))
        ).is_remote
    except SpecError:
        return False  # an invalid spec builds no pods
    if not fetched:
        return False
    conditions = (body.get("status") or {}).get("conditions") or []
    ready = next((c for c in conditions if c.get("type") == "Ready"), None)
    return ready is not None and ready.get("reason") != "RolloutComplete"


def models_behind(
    listed: Iterable[Mapping[str, Any]],
    watched_generation: Mapping[Key, int],
    behind_before: Mapping[Key, int],
) -> tuple[list[Behind], dict[Key, int]]:
    """Which listed models to reconcile now, and the generations behind at this listing (the next
    call's `behind_before`). `watched_generation` is the generation of each model's copy in the
    operator's watch-fed index. Pure."""
    behind_now: dict[Key, int] = {}
    act: list[Behind] = []
    for body in listed:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        generation = unreconciled_generation(body)
        if generation is None:
            if rolling_out_with_fetch(body):
                act.append(Behind(key, int(meta.get("generation") or 0), ROLLING_OUT, body))
            continue
        behind_now[key] = generation
        if behind_before.get(key) != generation:
            continue  # new at this listing: the reconcile it triggered may still be under way
        watched = watched_generation.get(key)
        reason = WATCH_BEHIND if watched is None or watched < generation else NOT_CONVERGED
        act.append(Behind(key, generation, reason, body))
    return act, behind_now
