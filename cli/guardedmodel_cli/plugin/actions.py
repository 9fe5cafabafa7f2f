"""What `promote`, `abort` and `undo` write, decided from the GuardedModel as read. Pure, no I/O.

promote and abort write an order annotation (`guardedmodel_operator.rollout.commands`) naming the
canary in flight, its generation and, for a step, the weight it promotes from; the operator carries it
out once and records it in status.history. undo changes spec.model.version: an ordinary spec change.
Every patch carries the resourceVersion it was decided on, so the API server refuses it (409) when the
object changed in between, instead of acting on what the person did not see.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from guardedmodel_operator.rollout.commands import ABORT, PROMOTE, Order
from guardedmodel_operator.spec import with_defaults


class Refused(Exception):
    """The action makes no sense for the model as it is; the message says why and what to do."""


@dataclass(frozen=True)
class Change:
    """A merge patch of the GuardedModel, and what it asks for in words."""

    patch: dict[str, Any]
    summary: str
    order: Order | None = None  # the order it writes (promote, abort); None for a spec change


def _parts(body: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    return dict(body.get("metadata") or {}), dict(body.get("spec") or {}), dict(body.get("status") or {})


def _name(body: Mapping[str, Any]) -> str:
    meta = body.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def _canary(body: Mapping[str, Any], action: str) -> tuple[str, int, int]:
    """(canary version, weight, generation), or Refused when no canary is in flight."""
    meta, spec, status = _parts(body)
    canary = status.get("canaryVersion")
    if not canary:
        shadow = (status.get("shadow") or {}).get("version")
        serving = status.get("stableVersion") or "none yet"
        what = f"version {shadow} is in shadow" if shadow else f"version {serving} serves alone"
        raise Refused(
            f"{_name(body)} has no canary to {action}: {what} (phase {status.get('phase', 'unknown')})"
        )
    wanted = str((spec.get("model") or {}).get("version", ""))
    if wanted != canary:
        raise Refused(
            f"{_name(body)}: spec.model.version is {wanted} while canary {canary} is in flight; the operator "
            "is about to act on that change, so there is no canary to "
            f"{action} (look again with `kubectl guardedmodel status`)"
        )
    return str(canary), int(status.get("canaryWeight") or 0), int(meta.get("generation") or 0)


def _annotate(body: Mapping[str, Any], order: Order, summary: str) -> Change:
    meta = body.get("metadata") or {}
    patch = {
        "metadata": {"resourceVersion": meta.get("resourceVersion"), "annotations": {order.key: order.value}}
    }
    return Change(patch, summary, order)


def promote(body: Mapping[str, Any], full: bool) -> Change:
    canary, weight, generation = _canary(body, "promote")
    status = body.get("status") or {}
    if full:
        order = Order(PROMOTE, canary, generation, full=True)
        return _annotate(
            body, order, f"promote canary {canary} from {weight}% to stable, skipping the steps left"
        )
    order = Order(PROMOTE, canary, generation, weight=weight)
    steps = sorted(int(s) for s in with_defaults(body.get("spec") or {})["rollout"]["steps"])
    upcoming = [s for s in steps if s > weight]
    to = (
        f"{upcoming[0]}%"
        if upcoming
        else f"stable (it is at its last step; stable is {status.get('stableVersion')})"
    )
    return _annotate(
        body, order, f"promote canary {canary} from {weight}% to {to}, without waiting for its check"
    )


def abort(body: Mapping[str, Any]) -> Change:
    canary, weight, generation = _canary(body, "abort")
    stable = (body.get("status") or {}).get("stableVersion")
    order = Order(ABORT, canary, generation)
    return _annotate(body, order, f"abort canary {canary} at {weight}%: all traffic back to {stable}")


def undo(body: Mapping[str, Any], to_version: str | None) -> Change:
    """spec.model.version set back: to `to_version`, else to the version serving while the spec names
    another (a canary or shadow is withdrawn, a rollback acknowledged), else to lastGoodVersion (a new
    canary of it)."""
    meta, spec, status = _parts(body)
    wanted = str((spec.get("model") or {}).get("version", ""))
    stable, last_good = status.get("stableVersion"), status.get("lastGoodVersion")
    if to_version is not None:
        target = to_version
    elif stable and wanted != stable:
        target = stable
    elif last_good:
        target = last_good
    else:
        raise Refused(
            f"{_name(body)}: version {wanted} serves and there is no status.lastGoodVersion to go back to; "
            "name one with --to-version"
        )
    if not str(target).isdigit() or str(target).startswith("0"):
        raise Refused(f"--to-version {target!r}: a Triton model version is a positive whole number")
    if target == wanted:
        raise Refused(f"{_name(body)}: spec.model.version is {wanted} already; nothing to undo")
    if target == stable and status.get("canaryVersion"):
        effect = f"canary {status['canaryVersion']} is withdrawn, {stable} keeps serving"
    elif target == stable and (status.get("rollout") or {}).get("phase") == "RolledBack":
        effect = f"the rollback to {stable} is acknowledged (phase Ready again)"
    elif target == stable:
        effect = f"{stable} keeps serving"
    else:
        effect = f"the operator rolls version {target} out as any new version (canary steps, checks)"
    patch = {
        "metadata": {"resourceVersion": meta.get("resourceVersion")},
        "spec": {"model": {"version": str(target)}},
    }
    return Change(patch, f"spec.model.version {wanted} → {target}: {effect}")


def carried_out(order: Order, body: Mapping[str, Any]) -> tuple[bool, str] | None:
    """Has the operator acted on `order`? (True, its history entry) when it did; (False, why) when it
    never will (the canary moved on meanwhile); None while it is still to come."""
    _, _, status = _parts(body)
    for entry in reversed(status.get("history") or []):
        if order.words in str(entry.get("reason", "")):
            return True, f"{entry.get('at')} {entry.get('outcome')}: {entry.get('reason')}"
    meta = body.get("metadata") or {}
    canary, weight = status.get("canaryVersion"), int(status.get("canaryWeight") or 0)
    generation = int(meta.get("generation") or 0)
    if not order.acts_on(canary, weight, generation):
        now = (
            f"canary {canary} at {weight}%" if canary else f"no canary, {status.get('stableVersion')} stable"
        )
        last = (status.get("history") or [{}])[-1]
        return False, (
            f"{order.words} no longer names the rollout as it is ({now}, generation {generation}), so it "
            f"will never act; last in the history: {last.get('at')} {last.get('outcome')} "
            f"{last.get('version')}: {last.get('reason')}"
        )
    return None


def cleanup_patch(order: Order) -> list[dict[str, Any]]:
    """A JSON patch that removes the order's annotation only if it still holds this order."""
    path = "/metadata/annotations/" + order.key.replace("~", "~0").replace("/", "~1")
    return [{"op": "test", "path": path, "value": order.value}, {"op": "remove", "path": path}]
