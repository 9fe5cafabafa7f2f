"""The protocol-agnostic data plane: gate -> model call -> scorer -> decision -> audit, review, metrics.

The HTTP and gRPC adapters decode a request into an ``InferRequest``, call ``Pipeline.infer`` and
encode what comes back; every guard rule lives here, once. Each model version routing serves has its
own ``VersionGuard`` (version_guard.py); the model call is handed in when the pipeline is built (the
plain Triton call, or the micro-batcher around it), so this module speaks no wire protocol.

Each row of a batch is decided on its own (decision.py); what the caller then gets, row by row or a
refusal of the whole request, is ``row_answers``.

Guards exist for every version routing keeps (served, last good, shadow candidate), but only the
served versions answer callers and have serving metrics; a request the stable answered may be
copied to a shadow candidate afterwards (shadow.py), without delaying its answer.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

from guardedmodel_sidecar.audit import AuditLog
from guardedmodel_sidecar.audit_records import failure_record, review_item, scored_record, undecodable_record
from guardedmodel_sidecar.config import SidecarConfig
from guardedmodel_sidecar.decision import ACCEPT, REJECT, REVIEW, Decision, decide
from guardedmodel_sidecar.errors import (
    GuardError,
    InputRefused,
    InvalidRequest,
    ModelNotFound,
    OutOfDistribution,
    Overloaded,
    Unavailable,
)
from guardedmodel_sidecar.metrics import SidecarMetrics
from guardedmodel_sidecar.protocol.budget import budget_for
from guardedmodel_sidecar.protocol.guard_outputs import GUARD_OOD_P_VALUE, GUARD_OOD_SCORE, GUARD_OUTPUT_NAMES
from guardedmodel_sidecar.protocol.model import InferRequest, InferResponse
from guardedmodel_sidecar.response_scoring import score_response
from guardedmodel_sidecar.review import SPOOLED, ReviewSink
from guardedmodel_sidecar.routing import Router
from guardedmodel_sidecar.row_answers import guarded_response, review_rows, summary
from guardedmodel_sidecar.shadow import ShadowComparer
from guardedmodel_sidecar.upstream import TritonHttp
from guardedmodel_sidecar.upstream_call import TritonCall, UpstreamCall, UpstreamResult
from guardedmodel_sidecar.version_guard import VersionGuard

log = logging.getLogger(__name__)


@dataclass(slots=True)
class GuardedResult:
    response: InferResponse
    version: str
    decision: Decision
    parameters: dict[str, Any]
    headers: dict[str, str]
    # Why the request is refused as a whole (422 / INVALID_ARGUMENT); None: it is answered.
    refusal: str | None = None


class Pipeline:
    def __init__(
        self,
        config: SidecarConfig,
        upstream: TritonHttp,
        router: Router,
        metrics: SidecarMetrics,
        audit: AuditLog,
        review: ReviewSink,
        *,
        upstream_call: UpstreamCall | None = None,
        guards: dict[str, VersionGuard] | None = None,
    ) -> None:
        self.config = config
        self.model = config.spec.model.name
        self.upstream = upstream
        self.router = router
        self.metrics = metrics
        self.audit = audit
        self.review = review
        # Shared with whoever scores ahead of the pipeline (the micro-batcher's score callback).
        self.guards: dict[str, VersionGuard] = guards if guards is not None else {}
        # The model call: the micro-batcher when enabled, else straight to Triton.
        self.upstream_call: UpstreamCall = (
            upstream_call or TritonCall(upstream, config.limits.request_timeout_s).result
        )
        # What one request may make the adapters decode; checked before any tensor is decoded.
        self.decode_budget = budget_for(config.spec.inputs, config.tuning.max_batch, config.limits)
        self.triton_ready = False
        # Record ids key review items at the webhook (Idempotency-Key): random bits keep them apart
        # across replicas and restarts, where the pid (1 in a container) and start second may repeat.
        self._id_prefix = f"{secrets.token_hex(4)}-{int(time.time()):x}"
        self._seq = 0
        self._inflight = 0
        self._max_inflight = config.limits.max_inflight_requests
        # version -> the model's own output names, read from Triton the first time a caller names a
        # GUARD_* output (a model output of that name wins over the guard's).
        self._model_outputs: dict[str, frozenset[str]] = {}
        self._warned_shadowed: set[tuple[str, str]] = set()
        # Copies the stable's requests to a shadow candidate (set by the app).
        self.shadow: ShadowComparer | None = None

    # ------------------------------------------------------------------------------------ set-up

    def install_guard(self, guard: VersionGuard) -> None:
        self.guards[guard.version] = guard
        self._model_outputs.pop(guard.version, None)
        self.register_served()

    def register_served(self) -> None:
        """Serving metrics for the served versions (a kept, unserved version gets them when it is
        first served: a last-good or shadow version's series stay out of the canary analysis)."""
        for version in self.router.routing.versions():
            guard = self.guards.get(version)
            if guard is not None:
                self.metrics.add_version(guard.metrics)

    # ------------------------------------------------------------------------------------ serving

    def next_id(self) -> str:
        self._seq += 1
        return f"{self._id_prefix}-{self._seq}"

    def _resolve(self, request: InferRequest) -> VersionGuard:
        if request.model_name != self.model:
            raise ModelNotFound(
                f"model '{request.model_name}' is not served here; this sidecar guards '{self.model}'"
            )
        served = self.router.routing.versions()
        version = request.model_version or self.router.choose()
        if request.model_version and version not in served:
            # a last-good or shadow version is loaded and guarded, but answers no caller
            raise ModelNotFound(
                f"version {version} of '{self.model}' is not served (routed versions: {', '.join(served)})"
            )
        guard = self.guards.get(version)
        if guard is None:
            raise Unavailable(f"version {version} of '{self.model}' is being prepared; retry shortly")
        return guard

    @property
    def inflight(self) -> int:
        """Requests in the guard pipeline now, on either protocol."""
        return self._inflight

    async def infer(self, request: InferRequest) -> GuardedResult:
        # Bounded concurrency: past the limit, refuse at once (503, retryable) instead of queueing
        # without bound; the micro-batcher and the Triton pool then never hold more than this.
        if self._inflight >= self._max_inflight:
            self.metrics.overload_refusals += 1
            raise Overloaded(
                f"the guard sidecar has {self._inflight} requests in flight (limits.maxInflightRequests); "
                "retry shortly or add replicas",
                headers={"Retry-After": "1"},
            )
        self._inflight += 1
        try:
            return await self._infer(request)
        finally:
            self._inflight -= 1

    async def _infer(self, request: InferRequest) -> GuardedResult:
        started = time.perf_counter()
        self.review.note_request()
        request_id = self.next_id()  # the audit record's id; the client's own is kept as client_id
        guard: VersionGuard | None = None
        stage = "gate"
        try:
            if not self.triton_ready:
                raise Unavailable(
                    self.upstream.down or "Triton is not ready; the sidecar refuses requests until it is"
                )
            guard = self._resolve(request)
            flags = guard.gate.check(request)
            outputs = guard.upstream_outputs(request)
            if outputs is not None and not GUARD_OUTPUT_NAMES.isdisjoint(outputs):
                outputs = await self._model_outputs_only(guard, outputs)
            gated = time.perf_counter()
            stage = "model"
            answer = await self.upstream_call(self.model, guard.version, request, outputs)
            modelled = time.perf_counter()
            stage = "scorer"
            result = self._score(request, request_id, guard, answer, flags)
        except GuardError as exc:
            self._record_failure(request, request_id, guard, stage, exc, started)
            raise
        finished = time.perf_counter()
        stages = guard.metrics.stages
        stages["gate"].observe(gated - started)
        stages["model"].observe(modelled - gated)
        stages["scorer"].observe(finished - modelled)
        stages["total"].observe(finished - started)
        if result.refusal is not None:
            raise OutOfDistribution(result.refusal, headers=result.headers)
        return result

    async def _model_outputs_only(self, guard: VersionGuard, names: list[str]) -> list[str]:
        """The outputs to ask Triton for, without the GUARD_* names the model does not have itself
        (the guard answers those); refuses a guard output this version cannot give."""
        model_outputs = await self._model_output_names(guard.version)
        kept = []
        for name in names:
            if name not in GUARD_OUTPUT_NAMES or name in model_outputs:
                kept.append(name)
            elif name == GUARD_OOD_SCORE and guard.scorer is None:
                raise InvalidRequest(
                    f"output '{name}' is not available: version {guard.version} of '{self.model}' has no "
                    "OOD scorer (spec.gate.ood.method, and a guard artifact with that detector)"
                )
            elif name == GUARD_OOD_P_VALUE and (guard.scorer is None or guard.conformal is None):
                raise InvalidRequest(
                    f"output '{name}' is not available: the guard of version {guard.version} of "
                    f"'{self.model}' has no conformal calibration scores; refit the guard, or ask for "
                    f"{GUARD_OOD_SCORE}"
                )
        return kept

    async def _model_output_names(self, version: str) -> frozenset[str]:
        known = self._model_outputs.get(version)
        if known is not None:
            return known
        status, metadata = await self.upstream.get_json(f"/v2/models/{self.model}/versions/{version}")
        if status != 200 or not isinstance(metadata, dict) or not isinstance(metadata.get("outputs"), list):
            return frozenset()  # not cached: asked again next time
        names = frozenset(str(o.get("name")) for o in metadata["outputs"] if isinstance(o, dict))
        self._model_outputs[version] = names
        return names

    def _score(
        self,
        request: InferRequest,
        request_id: str,
        guard: VersionGuard,
        answer: UpstreamResult,
        flags: list[str],
    ) -> GuardedResult:
        response = answer.response
        scores = answer.scores if answer.scores is not None else score_response(guard, response)
        decision = decide(scores.confidence, scores.ood, flags, guard.policy)
        guard.metrics.observe(scores.confidence, scores.predicted, scores.ood, scores.features)
        guard.metrics.decisions[decision.decision] += 1
        per_row = guard.metrics.row_decisions
        per_row[REJECT] += decision.rows_rejected
        per_row[REVIEW] += decision.rows_review
        per_row[ACCEPT] += decision.rows - decision.rows_rejected - decision.rows_review
        response, refusal, shadowed = guarded_response(
            response, request, decision, scores, guard.policy.batch_policy
        )
        for name in shadowed:
            self._warn_shadowed(guard.version, name)
        parameters, headers = summary(decision, scores, guard.version, request_id)
        record = scored_record(
            request, request_id, self.model, guard, decision, scores, answered=refusal is None
        )
        if refusal is None and decision.rows_review:
            rows = None if decision.rows_review == decision.rows else review_rows(decision)
            record["review"] = self.review.offer(review_item(record, request, rows))
            if record["review"] == SPOOLED:
                self.metrics.cost.count_review(guard.version)
        reviewed = record.get("review") == SPOOLED
        if self.audit.maybe_sample(
            request_id, request.inputs, model=self.model, version=guard.version, reviewed=reviewed
        ):
            record["sampled"] = True
        self.audit.record(record)
        if self.shadow is not None and guard.version == self.router.routing.stable_version:
            self.shadow.offer(request, request_id, guard, scores)
        return GuardedResult(response, guard.version, decision, parameters, headers, refusal)

    def _warn_shadowed(self, version: str, name: str) -> None:
        if (version, name) not in self._warned_shadowed:
            self._warned_shadowed.add((version, name))
            log.warning(
                "%s version %s has an output named %s, a name the guard reserves for its per-row "
                "results: callers get the model's output under that name, and not the guard's",
                self.model,
                version,
                name,
            )

    def record_undecodable(self, model: str, version: str, exc: GuardError, body: bytes | memoryview) -> None:
        """Audit a request that never became an InferRequest (bad JSON, sizes that do not add up)."""
        self.review.note_request()
        self.metrics.gate_refusals += 1
        self.audit.record(undecodable_record(self.next_id(), model, version, exc, body))

    def _record_failure(
        self,
        request: InferRequest,
        request_id: str,
        guard: VersionGuard | None,
        stage: str,
        exc: GuardError,
        started: float,
    ) -> None:
        refused = isinstance(exc, InputRefused) or exc.http_status in (400, 413, 422)
        if isinstance(exc, OutOfDistribution):
            return  # scored and audited already
        if refused and stage == "gate":
            self.metrics.gate_refusals += 1
            if guard is not None:
                guard.metrics.decisions[REJECT] += 1
        else:
            self.metrics.count_upstream_error(str(exc.http_status), guard.version if guard else "")
        stages = guard.metrics.stages if guard is not None else self.metrics.stages
        stages["total"].observe(time.perf_counter() - started)
        self.audit.record(failure_record(request, request_id, guard, stage, exc, refused))
