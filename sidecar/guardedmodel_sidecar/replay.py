"""Replay of sampled requests from this process's audit log to a shadow candidate.

When routing names a shadow candidate with ``replay: N``, once per candidate version per process,
``replay`` joins the audit "samples" stream (the payloads kept at ``spec.audit.sampleRate``) with
the "records" stream (what was answered), current and rotated files, and takes the newest N requests
the current stable version answered (status 200; not refusals, not comparison records). Each goes
to the candidate through ``ShadowComparer.compare`` with what the stable answered, read from its
record, as the baseline; at most ``tuning.replayConcurrency`` at a time, so live traffic keeps the
rest of the Triton connections. The files are read on a worker thread, off the event loop.

With several worker processes each replays its share of N from its own audit log (the kernel spread
the traffic over them), so the pod replays N in all when the logs hold that many.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guardedmodel_sidecar.audit_file import iter_lines, iter_records, parse_line
from guardedmodel_sidecar.comparison import RowScores, rows_from_record
from guardedmodel_sidecar.protocol.model import Tensor
from guardedmodel_sidecar.shadow import REPLAY, UNREADABLE, ShadowComparer

log = logging.getLogger(__name__)

# Records of sampled requests say so (orjson writes this exact form): other lines are not parsed.
_SAMPLED = b'"sampled":true'


@dataclass(frozen=True)
class ReplayItem:
    record_id: str
    sample: Mapping[str, Any]  # the samples stream's entry: its inputs, base64
    baseline: RowScores


def replay_items(directory: Path, stable_version: str, limit: int) -> list[ReplayItem]:
    """The newest ``limit`` sampled requests ``stable_version`` answered with status 200, oldest
    first, each with the stable's answer read from its record."""
    if limit <= 0:
        return []
    answered: dict[str, RowScores] = {}
    for path, number, line in iter_lines(directory, "audit"):
        if _SAMPLED not in line:
            continue
        record = parse_line(path, number, line)
        if not isinstance(record, dict) or not _replayable(record, stable_version):
            continue
        try:
            answered[str(record["id"])] = rows_from_record(record)
        except (ValueError, TypeError) as exc:
            log.warning("%s:%d: audit record not replayable: %s", path, number, exc)
    newest: deque[ReplayItem] = deque(maxlen=limit)
    for sample in iter_records(directory, "samples"):
        baseline = answered.get(str(sample.get("id")))
        if baseline is not None:
            newest.append(ReplayItem(str(sample["id"]), sample, baseline))
    return list(newest)


def _replayable(record: Mapping[str, Any], stable_version: str) -> bool:
    return (
        record.get("status") == 200
        and record.get("version") == stable_version
        and "shadow_of" not in record
        and record.get("sampled") is True
    )


def sample_inputs(sample: Mapping[str, Any]) -> list[Tensor]:
    """The tensors of a samples-stream entry; raises ValueError when it cannot be read."""
    inputs = sample.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ValueError(f"sample {sample.get('id')} has no inputs")
    tensors = []
    for entry in inputs:
        try:
            raw = base64.b64decode(entry["b64"], validate=True)
            tensors.append(
                Tensor(
                    str(entry["name"]),
                    str(entry["datatype"]),
                    tuple(int(d) for d in entry["shape"]),
                    raw,
                    None,
                )
            )
        except (KeyError, TypeError, binascii.Error) as exc:
            raise ValueError(f"sample {sample.get('id')}: input not readable ({exc})") from None
    return tensors


async def replay(
    comparer: ShadowComparer,
    directory: Path,
    candidate: str,
    stable_version: str,
    limit: int,
    concurrency: int,
) -> int:
    """Replay to ``candidate`` the newest ``limit`` requests ``stable_version`` answered; returns
    how many were compared."""
    items = await asyncio.to_thread(replay_items, directory, stable_version, limit)
    log.info(
        "replaying %d sampled requests answered by version %s to candidate version %s (asked for %d)",
        len(items),
        stable_version,
        candidate,
        limit,
    )
    slots = asyncio.Semaphore(max(1, concurrency))

    async def one(item: ReplayItem) -> bool:
        try:
            inputs = sample_inputs(item.sample)
        except ValueError as exc:
            comparer.skip(candidate, REPLAY, UNREADABLE, str(exc))
            return False
        async with slots:
            return await comparer.compare(
                candidate, stable_version, inputs, item.baseline, item.record_id, REPLAY
            )

    compared = sum(await asyncio.gather(*(one(item) for item in items)))
    log.info("replay to candidate version %s: %d of %d requests compared", candidate, compared, len(items))
    return compared
