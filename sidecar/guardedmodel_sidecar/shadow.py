"""A shadow candidate answers copies of the stable's requests; its answers are compared, never served.

``ShadowComparer.offer`` is called by the pipeline for each request the stable version's model
answered and its guard scored (answered, or refused as out of distribution: the OOD comparison needs
the rows the stable refuses too). ``Router.mirror`` picks exactly ``shadow.fraction`` of them. A
picked request is copied (its tensors may live in a buffer the connection reuses) and handed to a
background task: the caller's answer never waits for it. At most ``tuning.shadowMaxInflight`` copies
are in flight; past that a copy is skipped and counted (``reason="inflight_limit"``).

``compare`` is the one path for a copied request and a replayed audit sample (replay.py): the inputs
go to the candidate in Triton (straight, not through the micro-batcher), its answer is scored by the
candidate's own guard, compared row by row with the stable's (comparison.py), counted in the
``guardedmodel_comparison_*`` counters and written to the audit log as a comparison record. It
touches none of the candidate's serving metrics (requests, samples, OOD, confidence, drift).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from guardedmodel_sidecar.audit import AuditLog
from guardedmodel_sidecar.audit_records import comparison_record
from guardedmodel_sidecar.comparison import RowScores, compare_rows, rows_from_scores
from guardedmodel_sidecar.errors import GuardError
from guardedmodel_sidecar.guard.scoring import ScorerError
from guardedmodel_sidecar.metrics import SidecarMetrics
from guardedmodel_sidecar.protocol.model import InferRequest, Tensor
from guardedmodel_sidecar.response_scoring import Scores, score_response
from guardedmodel_sidecar.routing import Router
from guardedmodel_sidecar.upstream import TritonHttp
from guardedmodel_sidecar.version_guard import VersionGuard

log = logging.getLogger(__name__)

SHADOW, REPLAY = "shadow", "replay"
INFLIGHT_LIMIT, UPSTREAM_ERROR, NOT_LOADED, UNREADABLE = (
    "inflight_limit",
    "upstream_error",
    "not_loaded",
    "unreadable",
)
_LOG_INTERVAL_S = 10.0


class ShadowComparer:
    def __init__(
        self,
        model: str,
        triton: TritonHttp,
        router: Router,
        guards: dict[str, VersionGuard],
        metrics: SidecarMetrics,
        audit: AuditLog,
        *,
        max_inflight: int,
        timeout_s: float,
        next_id: Callable[[], str],
        is_ready: Callable[[str], bool],
    ) -> None:
        self.model = model
        self.triton = triton
        self.router = router
        self.guards = guards  # the pipeline's: every kept version's guard
        self.metrics = metrics
        self.audit = audit
        self.max_inflight = max_inflight
        self.timeout_s = timeout_s
        self.next_id = next_id
        self.is_ready = is_ready  # the version is loaded in Triton and guarded
        self._tasks: set[asyncio.Task[bool]] = set()
        self._logged_at: dict[tuple[str, str], float] = {}

    @property
    def inflight(self) -> int:
        return len(self._tasks)

    def offer(self, request: InferRequest, request_id: str, guard: VersionGuard, scores: Scores) -> None:
        """A request the stable (``guard``) answered: copy it to the shadow candidate if it is picked."""
        candidate = self.router.mirror()
        if candidate is None:
            return
        if len(self._tasks) >= self.max_inflight:
            self.metrics.count_comparison_skipped(candidate, SHADOW, INFLIGHT_LIMIT)
            return
        inputs = [Tensor(t.name, t.datatype, t.shape, bytes(t.raw), None) for t in request.inputs]
        task = asyncio.get_running_loop().create_task(
            self._mirror(candidate, guard, inputs, scores, request_id), name=f"shadow-{request_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _mirror(
        self, candidate: str, guard: VersionGuard, inputs: list[Tensor], scores: Scores, request_id: str
    ) -> bool:
        # the stable's side is reduced here, off the caller's path
        try:
            baseline = rows_from_scores(scores, guard.policy.ood_threshold)
        except ValueError as exc:
            self.skip(candidate, SHADOW, UNREADABLE, f"the stable's scores: {exc}")
            return False
        return await self.compare(candidate, guard.version, inputs, baseline, request_id, SHADOW)

    async def compare(
        self,
        candidate: str,
        baseline_version: str,
        inputs: list[Tensor],
        baseline: RowScores,
        shadow_of: str,
        source: str,
    ) -> bool:
        """Send ``inputs`` to ``candidate``, compare its rows with ``baseline``; True when counted."""
        guard = self.guards.get(candidate)
        if guard is None or not self.is_ready(candidate):
            self.skip(candidate, source, NOT_LOADED, f"version {candidate} is not loaded and guarded yet")
            return False
        outputs = [guard.logits_output]
        if guard.needs_features and guard.features_output:
            outputs.append(guard.features_output)
        request = InferRequest(self.model, candidate, "", {}, inputs, None)
        try:
            response = await self.triton.infer_request(
                self.model, candidate, request, outputs, timeout_s=self.timeout_s
            )
            scores = score_response(guard, response)
            rows = rows_from_scores(scores, guard.policy.ood_threshold)
            counts = compare_rows(rows, baseline)
        except (GuardError, ScorerError, ValueError) as exc:
            self.skip(candidate, source, UPSTREAM_ERROR, str(exc))
            return False
        self.metrics.count_comparison(candidate, baseline_version, source, counts)
        self.audit.record(
            comparison_record(
                self.next_id(),
                shadow_of,
                source,
                self.model,
                candidate,
                baseline_version,
                scores,
                rows,
                counts,
            )
        )
        return True

    def skip(self, candidate: str, source: str, reason: str, why: str) -> None:
        """Count a request not compared; log why, at most every 10 s per candidate and reason."""
        self.metrics.count_comparison_skipped(candidate, source, reason)
        now = time.monotonic()
        if now - self._logged_at.get((candidate, reason), -_LOG_INTERVAL_S) >= _LOG_INTERVAL_S:
            self._logged_at[(candidate, reason)] = now
            log.warning(
                "%s: a %s request was not compared with candidate version %s (%s): %s "
                "(guardedmodel_comparison_skipped_total counts each)",
                self.model,
                source,
                candidate,
                reason,
                why,
            )

    async def stop(self) -> None:
        """Cancel the copies in flight: nobody waits for them."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
