"""How the rollout's state combines with the Deployment's into one phase and its conditions.

The core derives phase and conditions from the Deployment; the rollout controller keeps
its own view in `status.rollout`. Infrastructure comes first: while the pods are not
Ready the Deployment's phase stands. Once they are, the rollout's phase decides, so a
rollback or a breached guard is never painted over as Ready by the next reconcile.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# The reason of a rollback for lack of data (verdict.INCONCLUSIVE; the core imports this module only).
INCONCLUSIVE = "Inconclusive"
# The reason of a rollback a person ordered (verdict.ABORTED).
ABORTED = "Aborted"
# Rollout phases that override a Deployment that is simply Ready.
_OVERRIDING = ("Progressing", "Degraded", "RolledBack")


def overlay(
    phase: str,
    progressing: tuple[str, str, str],
    degraded: tuple[str, str, str],
    status: Mapping[str, Any],
) -> tuple[str, tuple[str, str, str], tuple[str, str, str]]:
    """(phase, Progressing, Degraded) from the Deployment's verdict and status.rollout.

    Conditions are (status, reason, message) triples as the core builds them.
    """
    rollout = status.get("rollout") or {}
    rollout_phase = rollout.get("phase")
    if phase != "Ready" or rollout_phase not in _OVERRIDING:
        return phase, progressing, degraded
    reason, message = str(rollout.get("reason") or rollout_phase), str(rollout.get("message") or "")
    if rollout_phase == "Progressing" and (status.get("shadow") or {}).get("version"):
        text = f"shadow of version {status['shadow']['version']}" + (f": {message}" if message else "")
        return "Progressing", ("True", "Shadow", text), degraded
    if rollout_phase == "Progressing":
        canary, weight = status.get("canaryVersion"), status.get("canaryWeight") or 0
        text = f"canary {canary} at {weight}%" + (f": {message}" if message else "")
        return "Progressing", ("True", "Canary", text), degraded
    if rollout_phase == "Degraded":
        return "Degraded", progressing, ("True", reason, message)
    # RolledBack: serving the previous version on purpose; Degraded says why (Inconclusive: a canary
    # or shadow given up for lack of data, not for a breached threshold; Aborted: by a person).
    blocked = rollout.get("blockedReason")
    why = blocked if blocked in (INCONCLUSIVE, ABORTED) else "RolledBack"
    return "RolledBack", progressing, ("True", why, _rolled_back_message(status, message))


def _rolled_back_message(status: Mapping[str, Any], message: str) -> str:
    history = status.get("history") or []
    last = next(
        (h for h in reversed(history) if h.get("outcome") in ("RolledBack", "Rejected", "Aborted")), None
    )
    if last is not None:
        return str(last.get("reason") or message)
    return message
