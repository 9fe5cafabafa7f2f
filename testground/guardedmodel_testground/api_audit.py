"""The API server's audit log of writes (`LocalCluster.audit_log`), read as data.

One line per write request the server answered, whether it changed anything or not: a no-op
patch costs the server as much as any other, so it counts. For GuardedModels the line holds what
was sent too. Who wrote is told by the user agent
(every local component shares one admin identity).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cluster import WRITE_VERBS


@dataclass(frozen=True)
class AuditedWrite:
    verb: str
    user_agent: str
    resource: str  # e.g. "guardedmodels", "deployments", "events"
    namespace: str
    name: str
    subresource: str
    code: int  # the HTTP status the server answered
    at: str  # stageTimestamp, RFC 3339 with microseconds
    request: Any = None  # what was sent, where the policy records it (GuardedModels)

    def describe(self) -> str:
        what = f"{self.resource}/{self.name}" + (f"/{self.subresource}" if self.subresource else "")
        sent = "" if self.request is None else f": {json.dumps(self.request)[:600]}"
        return f"{self.at} {self.verb} {self.namespace}/{what} → {self.code} ({self.user_agent}){sent}"


def parse_writes(lines: Iterable[str]) -> list[AuditedWrite]:
    """The writes among `lines` (JSON audit events; the log also holds service accounts' reads); a
    partly written last line is left out. Pure."""
    out = []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("verb") not in WRITE_VERBS:
            continue
        ref = event.get("objectRef") or {}
        out.append(
            AuditedWrite(
                verb=str(event.get("verb", "")),
                user_agent=str(event.get("userAgent", "")),
                resource=str(ref.get("resource", "")),
                namespace=str(ref.get("namespace", "")),
                name=str(ref.get("name", "")),
                subresource=str(ref.get("subresource", "")),
                code=int((event.get("responseStatus") or {}).get("code") or 0),
                at=str(event.get("stageTimestamp", "")),
                request=event.get("requestObject"),
            )
        )
    return out


@dataclass
class AuditTail:
    """The writes appended to the audit log since the last mark."""

    path: Path
    offset: int = 0

    def mark(self) -> AuditTail:
        """From now on: everything written so far is behind."""
        self.offset = self.path.stat().st_size if self.path.exists() else 0
        return self

    def since_mark(self, namespace: str, user_agents: Sequence[str]) -> list[AuditedWrite]:
        """Writes in `namespace` by a client whose user agent starts with one of `user_agents`."""
        if not self.path.exists():
            return []
        with self.path.open("rb") as log:
            log.seek(self.offset)
            text = log.read().decode(errors="replace")
        complete = text[: text.rfind("\n") + 1]  # the server may be mid-line
        return [
            w
            for w in parse_writes(complete.splitlines())
            if w.namespace == namespace and w.user_agent.startswith(tuple(user_agents))
        ]
