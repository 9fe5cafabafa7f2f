"""A GuardedModel's rollout as a person reads it: `status` and `history`, as text or JSON. Pure.

Everything shown comes from the object (spec, status, annotations) and its Events; the CRD's
defaults fill what the spec leaves out, as the API server does.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

from guardedmodel_operator.rollout.commands import Orders
from guardedmodel_operator.spec import with_defaults

from .actions import carried_out

# status.metrics figure → the threshold of spec.rollout.thresholds it is judged by.
JUDGED_BY = {
    "oodRate": "maxOodRate",
    "reviewRate": "maxReviewRate",
    "estimatedAccuracy": "minEstimatedAccuracy",
    "driftScore": "maxDriftScore",
}
EVENTS_SHOWN = 8
FIELD_WIDTH = 18  # the width of "Name:" before each value of `status`
# Event reasons of the reconcile's bookkeeping (a child object written): left out of `status`.
HOUSEKEEPING = ("Updated", "Created")


def summary(body: Mapping[str, Any], events: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The facts `status` shows, as one JSON-ready object (`-o json`)."""
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    spec = with_defaults(body.get("spec") or {})
    rollout_spec = spec.get("rollout") or {}
    steps = sorted(int(s) for s in rollout_spec.get("steps") or ())
    canary, weight = status.get("canaryVersion"), int(status.get("canaryWeight") or 0)
    stable = status.get("stableVersion")
    serving = []
    if stable:
        serving.append({"version": stable, "role": "stable", "weight": 100 - weight if canary else 100})
    if canary:
        serving.append({"version": canary, "role": "canary", "weight": weight})
    thresholds = rollout_spec.get("thresholds") or {}
    metrics = dict(status.get("metrics") or {})
    judged = [
        {"figure": figure, "value": metrics[figure], "threshold": limit, "limit": thresholds[limit]}
        for figure, limit in JUDGED_BY.items()
        if figure in metrics and limit in thresholds
    ]
    return {
        "name": meta.get("name"),
        "namespace": meta.get("namespace"),
        "phase": status.get("phase"),
        "specVersion": str((spec.get("model") or {}).get("version", "")),
        "generation": meta.get("generation"),
        "observedGeneration": status.get("observedGeneration"),
        "strategy": rollout_spec.get("strategy"),
        "steps": steps,
        "interval": rollout_spec.get("interval"),
        "serving": serving,
        "stableVersion": stable,
        "canaryVersion": canary,
        "canaryWeight": weight,
        "step": (steps.index(weight) + 1 if weight in steps else None) if canary else None,
        "lastGoodVersion": status.get("lastGoodVersion"),
        "shadow": status.get("shadow"),
        "comparison": status.get("comparison"),
        "rollout": status.get("rollout") or {},
        "metrics": metrics,
        "judged": judged,
        "thresholds": thresholds,
        "conditions": status.get("conditions") or [],
        "replicas": {
            "replicas": status.get("replicas"),
            "readyReplicas": status.get("readyReplicas"),
            "scaling": status.get("scaling"),
        },
        "orders": _orders(body),
        "history": status.get("history") or [],
        "events": [_event(e) for e in _recent(events)],
    }


def _orders(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    orders = Orders.from_annotations((body.get("metadata") or {}).get("annotations"))
    out: list[dict[str, Any]] = []
    for order in (orders.promote, orders.abort):
        if order is None:
            continue
        state = carried_out(order, body)
        said = "pending" if state is None else ("carried out" if state[0] else "stale: never acts")
        out.append({"annotation": order.key, "value": order.value, "state": said})
    out += [
        {"annotation": key, "value": None, "state": f"unreadable: {why}"} for key, why in orders.unreadable
    ]
    return out


def _recent(events: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The newest Events that say what happened to the model, not which child object was re-applied;
    in the order they were last seen (within a second: the order the API server stored them)."""
    said = [e for e in events if e.get("reason") not in HOUSEKEEPING]
    return sorted(said, key=lambda e: (_event_time(e), _stored_order(e)))[-EVENTS_SHOWN:]


def _stored_order(event: Mapping[str, Any]) -> int:
    version = str((event.get("metadata") or {}).get("resourceVersion") or "0")
    return int(version) if version.isdigit() else 0


def _event_time(event: Mapping[str, Any]) -> str:
    return str(event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp") or "")


def _event(event: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "at": _event_time(event),
        "type": event.get("type"),
        "reason": event.get("reason"),
        "count": event.get("count") or 1,
        "message": event.get("message"),
    }


def render_status(body: Mapping[str, Any], events: Sequence[Mapping[str, Any]] = (), width: int = 110) -> str:
    s = summary(body, events)
    fields = [
        _field("Name", f"{s['namespace']}/{s['name']}"),
        _field("Phase", s["phase"] or "(not reconciled yet)"),
        _field(
            "Spec version",
            f"{s['specVersion']} (generation {s['generation']}, observed {s['observedGeneration']})",
        ),
        _field("Strategy", _strategy(s)),
        _field(
            "Serving",
            ", ".join(f"{v['role']} {v['version']} ({v['weight']}%)" for v in s["serving"]) or "nothing yet",
        ),
    ]
    if s["canaryVersion"]:
        fields.append(_field("Canary step", _step(s)))
    fields.append(_field("Last good", s["lastGoodVersion"] or "-"))
    if s["shadow"]:
        fields.append(_field("Shadow", _shadow(s)))
    rollout = s["rollout"]
    if rollout:
        head = f"{rollout.get('phase', '-')}, {rollout.get('reason', '-')} since {rollout.get('since', '-')}"
        if rollout.get("failedChecks"):
            head += f", {rollout['failedChecks']} failed check(s)"
        if rollout.get("blockedVersion"):
            head += f"; version {rollout['blockedVersion']} blocked ({rollout.get('blockedReason')}) until the spec changes"
        fields.append(_field("Rollout", head))
        if rollout.get("message"):
            fields.append(_field("", str(rollout["message"])))
    if s["metrics"]:
        fields.append(_field(f"Last check (v{s['metrics'].get('version', '?')})", _metrics(s)))
    fields.append(_field("Replicas", _replicas(s["replicas"])))
    for order in s["orders"]:
        fields.append(_field("Order", f"{order['annotation']}: {order['value'] or ''} ({order['state']})"))
    lines = [line for name, value in fields for line in _wrapped(name, value, width)]
    lines += ["", "Conditions:"]
    rows = [
        (
            c.get("type", ""),
            c.get("status", ""),
            c.get("reason", ""),
            c.get("lastTransitionTime", ""),
            c.get("message", ""),
        )
        for c in s["conditions"]
    ]
    lines += _table(("TYPE", "STATUS", "REASON", "SINCE", "MESSAGE"), rows, width) if rows else ["  (none)"]
    lines += ["", "History:"]
    lines += history_lines(s["history"], width) if s["history"] else ["  (none)"]
    if s["events"]:
        lines += ["", f"Events (last {EVENTS_SHOWN}):"]
        event_rows = [
            (e["at"], e["type"], e["reason"] + (f" (x{e['count']})" if e["count"] > 1 else ""), e["message"])
            for e in s["events"]
        ]
        lines += _table(("LAST SEEN", "TYPE", "REASON", "MESSAGE"), event_rows, width)
    return "\n".join(lines)


def render_history(body: Mapping[str, Any], width: int = 110) -> str:
    history = (body.get("status") or {}).get("history") or []
    if not history:
        return "no history yet"
    return "\n".join(history_lines(history, width, indent=""))


def history_lines(history: Sequence[Mapping[str, Any]], width: int, indent: str = "  ") -> list[str]:
    rows = [
        (h.get("at", ""), h.get("version", ""), h.get("outcome", ""), h.get("reason", "")) for h in history
    ]
    return _table(("AT", "VERSION", "OUTCOME", "REASON"), rows, width, indent)


def _field(name: str, value: str) -> tuple[str, str]:
    return (f"{name}:" if name else "", value)


def _wrapped(name: str, value: str, width: int) -> list[str]:
    """`Name:    value`, the value wrapped at `width` under itself."""
    indent = " " * FIELD_WIDTH
    lines = textwrap.wrap(
        value, width=width, initial_indent=name.ljust(FIELD_WIDTH), subsequent_indent=indent
    )
    return lines or [name]


def _strategy(s: Mapping[str, Any]) -> str:
    if s["strategy"] == "instant":
        return "instant (all traffic at once)"
    steps = " → ".join(f"{w}%" for w in s["steps"])
    return f"{s['strategy']}, steps {steps}, a check every {s['interval']}"


def _step(s: Mapping[str, Any]) -> str:
    weight, steps = s["canaryWeight"], s["steps"]
    upcoming = [w for w in steps if w > weight]
    where = f"step {s['step']} of {len(steps)}" if s["step"] else "between steps"
    then = f"next {upcoming[0]}%" if upcoming else "next: stable"
    return f"{where} ({weight}%), {then}"


def _shadow(s: Mapping[str, Any]) -> str:
    shadow, comparison = s["shadow"], s["comparison"] or {}
    text = f"version {shadow.get('version')} (fraction {shadow.get('fraction', 0)}, replay {shadow.get('replay', 0)})"
    if comparison:
        text += f": {comparison.get('rows', 0)} rows compared, agreement {comparison.get('agreement', '-')}, {comparison.get('decision')}"
    return text


def _metrics(s: Mapping[str, Any]) -> str:
    limits = {j["figure"]: j for j in s["judged"]}
    parts = []
    for figure, value in s["metrics"].items():
        if figure == "version":
            continue
        judged = limits.get(figure)
        parts.append(f"{figure} {value}" + (f" ({judged['threshold']} {judged['limit']})" if judged else ""))
    return ", ".join(parts)


def _replicas(replicas: Mapping[str, Any]) -> str:
    text = f"{replicas.get('readyReplicas') or 0} ready of {replicas.get('replicas') or 0}"
    scaling = replicas.get("scaling") or {}
    if scaling:
        text += f"; scaling wants {scaling.get('desiredReplicas')} ({scaling.get('reason')}: {scaling.get('message', '')})"
    return text


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], width: int, indent: str = "  ") -> list[str]:
    """Columns as wide as their widest cell; the last column wraps at `width`."""
    cells = [[str(c) for c in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header) - 1)]
    lead = len(indent) + sum(w + 2 for w in widths)
    out = []
    for row in cells:
        first = indent + "".join(c.ljust(w + 2) for c, w in zip(row, widths, strict=False))
        wrapped = textwrap.wrap(row[-1], width=max(30, width - lead)) or [""]
        out.append((first + wrapped[0]).rstrip())
        out += [" " * lead + more for more in wrapped[1:]]
    return out
