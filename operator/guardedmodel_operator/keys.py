"""How the operator names one GuardedModel in its maps, locks and tasks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Key = tuple[str, str]  # (namespace, name)


def key_of(body: Mapping[str, Any]) -> Key:
    meta = body["metadata"]
    return (meta["namespace"], meta["name"])
