"""Decide which children need a write, then write them with server-side apply.

Comparing before writing is what makes a reconcile with nothing changed write
nothing: the desired manifest must be a *subset* of the live object (the API
server adds defaults, status and metadata of its own, which are not drift).
Quantities are compared by value because the server normalises them
("1000m" is stored as "1").
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from .labels import SPEC_HASH_ANNOTATION

_QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eE][+-]?[0-9]+|[numkMGTPE]i?|Ki)?$")
# Quantity suffixes: the sub-unit ones, then the SI powers of 1000 and the binary powers of 1024.
_SUFFIX: dict[str | None, Decimal] = {
    None: Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    **{prefix: Decimal(1000) ** power for power, prefix in enumerate("kMGTPE", start=1)},
    **{prefix + "i": Decimal(1024) ** power for power, prefix in enumerate("KMGTPE", start=1)},
}


def parse_quantity(value: Any) -> Decimal | None:
    """A Kubernetes quantity as a number, or None if `value` is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return Decimal(str(value))
    if not isinstance(value, str):
        return None
    match = _QUANTITY.match(value.strip())
    if not match:
        return None
    try:
        number = Decimal(match.group(1))
    except InvalidOperation:
        return None
    suffix = match.group(2)
    if suffix and suffix[0] in "eE":
        return number * (Decimal(10) ** int(suffix[1:]))
    return number * _SUFFIX[suffix]


def _scalar_equal(desired: Any, actual: Any) -> bool:
    if (type(desired) is bool) != (type(actual) is bool):
        return False  # in Python True == 1, in a manifest they differ
    if desired == actual:
        return True
    left, right = parse_quantity(desired), parse_quantity(actual)
    return left is not None and left == right


def is_subset(desired: Any, actual: Any) -> bool:
    """True when every field set in `desired` has the same value in `actual`.

    Lists must have the same length and match element by element: an extra
    container or port added by hand is drift the operator must remove.
    """
    if isinstance(desired, Mapping):
        if not isinstance(actual, Mapping):
            return False
        return all(key in actual and is_subset(value, actual[key]) for key, value in desired.items())
    if isinstance(desired, list):
        if not isinstance(actual, list) or len(desired) != len(actual):
            return False
        return all(is_subset(d, a) for d, a in zip(desired, actual, strict=True))
    return _scalar_equal(desired, actual)


class Action(enum.Enum):
    CREATE = "create"  # the child does not exist yet
    RESTORE = "restore"  # it existed and was deleted or edited by hand
    UPDATE = "update"  # the spec changed, so the child must change


@dataclass(frozen=True)
class Write:
    action: Action
    manifest: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.manifest["kind"])

    @property
    def name(self) -> str:
        return str(self.manifest["metadata"]["name"])


def plan_write(
    desired: Mapping[str, Any], actual: Mapping[str, Any] | None, *, reconciled_before: bool
) -> Write | None:
    """The write needed to make `actual` match `desired`, or None.

    `reconciled_before` (the owner's status has an observedGeneration) tells a
    missing child that was deleted by hand from one never created.
    """
    desired_dict = dict(desired)
    if actual is None:
        return Write(Action.RESTORE if reconciled_before else Action.CREATE, desired_dict)
    if is_subset(_comparable(desired), _comparable(actual)):
        return None
    desired_hash = (desired.get("metadata", {}).get("annotations") or {}).get(SPEC_HASH_ANNOTATION)
    actual_hash = (actual.get("metadata", {}).get("annotations") or {}).get(SPEC_HASH_ANNOTATION)
    action = Action.RESTORE if desired_hash == actual_hash else Action.UPDATE
    return Write(action, desired_dict)


def _comparable(obj: Mapping[str, Any]) -> dict[str, Any]:
    # Only what the operator sets is compared; status and server-owned
    # metadata (resourceVersion, managedFields, ...) are never drift.
    meta = obj.get("metadata") or {}
    picked = {k: v for k, v in obj.items() if k not in ("metadata", "status")}
    picked["metadata"] = {
        k: meta[k] for k in ("name", "namespace", "labels", "annotations", "ownerReferences") if k in meta
    }
    return picked
