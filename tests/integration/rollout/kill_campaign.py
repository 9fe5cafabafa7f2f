"""What the operator-kill scenario needs besides the operator itself: a watch that keeps every
version of every GuardedModel in a namespace, the ledger that finds a status.history entry lost,
duplicated or reordered across those versions, and the kill log with its figures."""

from __future__ import annotations

import statistics
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from operator_run import KubectlWatch

from guardedmodel_operator.status import HISTORY_LIMIT
from guardedmodel_testground.cluster import LocalCluster

Entry = tuple[str, str, str, str]  # (version, outcome, at, reason): what makes a history entry itself
Routing = tuple[Any, Any, Any]  # (stableVersion, canaryVersion, canaryWeight)


def entry_key(entry: Mapping[str, Any]) -> Entry:
    return (
        str(entry.get("version")),
        str(entry.get("outcome")),
        str(entry.get("at")),
        str(entry.get("reason")),
    )


@dataclass
class HistoryLedger:
    """status.history as the successive versions of one object showed it: every entry ever written,
    in order. Each new version of the history must be the ledger's newest entries (the oldest
    trimmed past HISTORY_LIMIT, new ones appended): anything else lost, duplicated or reordered one."""

    entries: list[Entry] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    limit: int = HISTORY_LIMIT

    def observe(self, history: Sequence[Mapping[str, Any]], where: str) -> None:
        keys = [entry_key(e) for e in history]
        if len(set(keys)) != len(keys):
            self.problems.append(f"{where}: an entry appears twice: {keys}")
            return
        known = set(self.entries)
        old = [k for k in keys if k in known]
        new = [k for k in keys if k not in known]
        if keys != old + new:
            self.problems.append(f"{where}: a new entry stands before an older one: {keys}")
        elif old and old != self.entries[-len(old) :]:
            self.problems.append(
                f"{where}: the kept entries are not the newest ones: {old} vs {self.entries[-len(old) :]}"
            )
        self.entries.extend(new)
        if len(keys) != min(len(self.entries), self.limit):
            self.problems.append(
                f"{where}: {len(keys)} entries where {min(len(self.entries), self.limit)} were written "
                f"(lost: {[k for k in self.entries[-self.limit :] if k not in set(keys)]})"
            )

    def outcomes_since(self, start: int) -> list[tuple[str, str]]:
        return [(version, outcome) for version, outcome, _, _ in self.entries[start:]]


@dataclass
class Seen:
    """One version of one GuardedModel as the watch delivered it."""

    resource_version: int
    spec_version: str
    status: dict[str, Any]

    @property
    def routing(self) -> Routing:
        s = self.status
        return (s.get("stableVersion"), s.get("canaryVersion"), s.get("canaryWeight"))

    @property
    def desired_replicas(self) -> Any:
        return (self.status.get("scaling") or {}).get("desiredReplicas")


class NamespaceWatch:
    """Every version of every GuardedModel in a namespace, in order (`kubectl get --watch`), each
    history checked by its model's ledger as it arrives."""

    def __init__(self, cluster: LocalCluster, namespace: str) -> None:
        self.seen: dict[str, list[Seen]] = {}
        self.ledgers: dict[str, HistoryLedger] = {}
        self.changed = threading.Condition()
        self.events = 0
        self.watch = KubectlWatch(
            cluster,
            ["guardedmodels", "-n", namespace, "--output-watch-events"],
            lambda e: self._add(e["object"]),
        )

    def _add(self, obj: Mapping[str, Any]) -> None:
        meta, status = obj.get("metadata") or {}, dict(obj.get("status") or {})
        name, rv = str(meta.get("name")), int(meta.get("resourceVersion") or 0)
        with self.changed:
            seen = self.seen.setdefault(name, [])
            if seen and rv <= seen[-1].resource_version:
                return  # the watch restarted and replays what it sent
            version = str(((obj.get("spec") or {}).get("model") or {}).get("version"))
            seen.append(Seen(rv, version, status))
            self.ledgers.setdefault(name, HistoryLedger()).observe(
                status.get("history") or [], f"{name}@{rv}"
            )
            self.events += 1
            self.changed.notify_all()

    def latest(self, name: str) -> Seen | None:
        with self.changed:
            seen = self.seen.get(name)
            return seen[-1] if seen else None

    def count(self, name: str) -> int:
        with self.changed:
            return len(self.seen.get(name, []))

    def since(self, name: str, start: int) -> list[Seen]:
        with self.changed:
            return list(self.seen.get(name, [])[start:])

    def ledger(self, name: str) -> HistoryLedger:
        with self.changed:
            return self.ledgers.setdefault(name, HistoryLedger())

    def stop(self) -> None:
        self.watch.stop()


def deduplicated(values: Sequence[Any]) -> list[Any]:
    """`values` without consecutive repeats: the steps a field went through."""
    out: list[Any] = []
    for value in values:
        if not out or out[-1] != value:
            out.append(value)
    return out


@dataclass(frozen=True)
class Kill:
    number: int
    mode: str  # "random" (a seeded delay after the restart) | "after-write" (just after a write landed)
    after_s: float  # since the operator process started
    phases: tuple[str, ...]  # the phases in progress when it landed


@dataclass
class KillLog:
    seed: int
    kills: list[Kill] = field(default_factory=list)
    # phase → seconds from the last restart before the phase's goal to the goal, per finished phase.
    converged_s: dict[str, list[float]] = field(default_factory=dict)

    def per_phase(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for kill in self.kills:
            for phase in kill.phases:
                counts[phase] = counts.get(phase, 0) + 1
        return counts

    def summary(self) -> str:
        lines = [f"seed {self.seed}: {len(self.kills)} kills; per phase {self.per_phase()}"]
        for phase, times in sorted(self.converged_s.items()):
            lines.append(
                f"  {phase}: {len(times)} finished after a kill; restart → goal median "
                f"{statistics.median(times):.1f}s, max {max(times):.1f}s"
            )
        lines += [
            f"  kill {k.number} ({k.mode}, {k.after_s:.2f}s after start): {k.phases}" for k in self.kills
        ]
        return "\n".join(lines)
