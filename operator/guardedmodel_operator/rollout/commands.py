"""A person's orders to a canary, given as annotations of the GuardedModel (`kubectl guardedmodel`).

Pure, no I/O. An order names the canary it is meant for: its version, the object's generation when
it was given, and for a step promotion the weight it promotes from. A canary is identified by these:
a version can only become the canary again through a change of spec.model.version, which is a new
generation, and a step is left only once. So an order acts at most once, and one left on the object
(the plugin was interrupted, a person wrote it by hand) never acts on a later canary or step. The
operator never writes annotations: it ignores an order that no longer names the canary in flight.

    guardedmodel.io/promote: "version=3,generation=7,weight=10"   the next step after 10 %
    guardedmodel.io/promote: "version=3,generation=7,full=true"   all traffic to 3, the steps left skipped
    guardedmodel.io/abort:   "version=3,generation=7"             roll canary 3 back now
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

PROMOTE = "guardedmodel.io/promote"
ABORT = "guardedmodel.io/abort"


@dataclass(frozen=True)
class Order:
    """One order, as an annotation says it."""

    key: str  # PROMOTE or ABORT
    version: str
    generation: int
    weight: int | None = None  # a step promotion: the weight it promotes from
    full: bool = False  # a promotion past every step left

    def acts_on(self, canary: str | None, weight: int, generation: int) -> bool:
        """Is this order meant for the canary in flight, at this weight, in this generation?"""
        if canary is None or (self.version, self.generation) != (canary, generation):
            return False
        return self.full or self.key == ABORT or self.weight == weight

    @property
    def value(self) -> str:
        """The annotation's value."""
        parts = [f"version={self.version}", f"generation={self.generation}"]
        if self.full:
            parts.append("full=true")
        elif self.weight is not None:
            parts.append(f"weight={self.weight}")
        return ",".join(parts)

    @property
    def words(self) -> str:
        """How a history entry or an Event quotes it."""
        return f'{self.key}: "{self.value}"'


@dataclass(frozen=True)
class Orders:
    promote: Order | None = None
    abort: Order | None = None
    # Annotations under these keys that say nothing readable: (key, why), for people to see.
    unreadable: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_annotations(cls, annotations: Mapping[str, str] | None) -> Orders:
        annotations = annotations or {}
        found: dict[str, Order | None] = {}
        unreadable = []
        for key in (PROMOTE, ABORT):
            raw = annotations.get(key)
            if raw is None:
                continue
            try:
                found[key] = parse_order(key, raw)
            except ValueError as error:
                unreadable.append((key, str(error)))
        return cls(found.get(PROMOTE), found.get(ABORT), tuple(unreadable))


def parse_order(key: str, raw: str) -> Order:
    """An order from its annotation; ValueError says what is wrong with it."""
    fields: dict[str, str] = {}
    for part in raw.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep or not value or name in fields:
            raise ValueError(f"{key}: {raw!r} is not a list of name=value (version=3,generation=7,...)")
        fields[name] = value
    allowed = {"version", "generation"} | ({"weight", "full"} if key == PROMOTE else set())
    if unknown := set(fields) - allowed:
        raise ValueError(
            f"{key}: {raw!r} names {', '.join(sorted(unknown))}; it takes {', '.join(sorted(allowed))}"
        )
    if "version" not in fields or "generation" not in fields:
        raise ValueError(f"{key}: {raw!r} lacks version= or generation=")
    if not fields["generation"].isdigit() or not fields["version"].isdigit():
        raise ValueError(f"{key}: {raw!r}: version and generation are whole numbers")
    full = fields.get("full") == "true"
    if key == PROMOTE and full == ("weight" in fields):
        raise ValueError(f"{key}: {raw!r} takes either weight=<the weight promoted from> or full=true")
    weight = fields.get("weight")
    if weight is not None and not weight.isdigit():
        raise ValueError(f"{key}: {raw!r}: weight is a whole number")
    return Order(
        key, fields["version"], int(fields["generation"]), None if weight is None else int(weight), full
    )
