"""What the per-model background controllers (rollout, scaling) share in their kopf wiring.

Each runs one task per GuardedModel that wakes up, takes the model's lock (the one the core's
reconcile takes), works on the freshest copy of the object and writes only its own status fields.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import kopf

from .events import Event

Result = TypeVar("Result")
Key = tuple[str, str]  # (namespace, name)


def post_event(body: Mapping[str, Any], event: Event) -> None:
    kopf.event(dict(body), type=event.type, reason=event.reason, message=event.message)  # type: ignore[arg-type]


def status_patcher(memo: Any) -> Callable[[str, str, Mapping[str, Any]], Awaitable[dict[str, Any]]]:
    async def patch_status(namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        assert memo.client is not None, "the core's startup handler creates the client"
        written: dict[str, Any] = await memo.client.patch_status(namespace, name, patch)
        return written

    return patch_status


def slim(body: Mapping[str, Any]) -> dict[str, Any]:
    """The object without managedFields (large, and read by nobody here)."""
    meta = {k: v for k, v in body["metadata"].items() if k != "managedFields"}
    return {**dict(body), "metadata": meta}


async def locked_step(
    memo: Any,
    key: Key,
    cached: Mapping[str, Any] | None,
    step: Callable[[Mapping[str, Any]], Awaitable[tuple[Result, dict[str, Any] | None]]],
) -> Result | None:
    """Run `step` on the freshest copy of the model under its lock; None when it is gone."""
    body = memo.freshest("GuardedModel", key[0], key[1], cached)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    async with memo.locks.setdefault(key, asyncio.Lock()):
        body = memo.freshest("GuardedModel", key[0], key[1], body)
        result, written = await step(body)
        if written is not None:
            memo.remember(written)
    return result
