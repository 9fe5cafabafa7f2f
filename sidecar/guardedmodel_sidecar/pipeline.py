"""The protocol-agnostic data plane: gate -> Triton -> scorer -> decision -> audit, review, metrics.

The HTTP and gRPC adapters decode a request into an ``InferRequest``, call ``Pipeline.infer`` and
encode what comes back; every guard rule lives here, once. Each model version routing serves has a
``VersionGuard`` built from its guard artifact (temperature, OOD detector and threshold, drift
reference, input statistics), so a canary is scored by its own guard and a rollback rolls the guard
back with the model.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from guardedmodel_sidecar.audit import AuditLog, client_id
from guardedmodel_sidecar.config import InputSpec, SidecarConfig
from guardedmodel_sidecar.decision import REJECT, REVIEW, Decision, DecisionPolicy, decide
from guardedmodel_sidecar.errors import (
    DeadlineExceeded,
    GuardError,
    InputRefused,
    ModelNotFound,
    OutOfDistribution,
    Overloaded,
    Unavailable,
)
from guardedmodel_sidecar.gate import InputGate
from guardedmodel_sidecar.guard.artifact import ArtifactError, GuardArtifact, load_artifact
from guardedmodel_sidecar.guard.drift import DriftAccumulator
from guardedmodel_sidecar.guard.scoring import OodScorer, ScorerError, calibrated_confidence, make_ood_scorer
from guardedmodel_sidecar.metrics import SidecarMetrics, VersionMetrics
from guardedmodel_sidecar.protocol.budget import budget_for
from guardedmodel_sidecar.protocol.http_codec import encode_upstream_request
from guardedmodel_sidecar.protocol.model import InferRequest, InferResponse
from guardedmodel_sidecar.review import ReviewSink
from guardedmodel_sidecar.routing import Router
from guardedmodel_sidecar.upstream import TritonHttp

log = logging.getLogger(__name__)

_TRITON_TO_V2 = {
    "TYPE_BOOL": "BOOL",
    "TYPE_UINT8": "UINT8",
    "TYPE_UINT16": "UINT16",
    "TYPE_UINT32": "UINT32",
    "TYPE_UINT64": "UINT64",
    "TYPE_INT8": "INT8",
    "TYPE_INT16": "INT16",
    "TYPE_INT32": "INT32",
    "TYPE_INT64": "INT64",
    "TYPE_FP16": "FP16",
    "TYPE_FP32": "FP32",
    "TYPE_FP64": "FP64",
    "TYPE_STRING": "BYTES",
}


@dataclass
class VersionGuard:
    """What scores the traffic of one model version."""

    version: str
    gate: InputGate
    temperature: float
    scorer: OodScorer | None
    policy: DecisionPolicy
    logits_output: str
    features_output: str | None
    needs_features: bool
    metrics: VersionMetrics
    artifact: GuardArtifact | None = None
    warnings: list[str] = field(default_factory=list)

    def upstream_outputs(self, request: InferRequest) -> list[str] | None:
        """Outputs to ask Triton for: the caller's plus what scoring needs; None = all outputs."""
        if request.outputs is None:
            return None
        names = [o.name for o in request.outputs]
        if self.logits_output not in names:
            names.append(self.logits_output)
        if self.needs_features and self.features_output and self.features_output not in names:
            names.append(self.features_output)
        return names


@dataclass(slots=True)
class Scores:
    confidence: np.ndarray  # (b,) calibrated
    predicted: np.ndarray  # (b,) class index
    ood: np.ndarray | None  # (b,) higher = more OOD
    features: np.ndarray | None  # (b, D) when drift or the detector needs them

    def rows(self, start: int, stop: int) -> Scores:
        return Scores(
            self.confidence[start:stop],
            self.predicted[start:stop],
            None if self.ood is None else self.ood[start:stop],
            None if self.features is None else self.features[start:stop],
        )


@dataclass(slots=True)
class GuardedResult:
    response: InferResponse
    version: str
    decision: Decision
    parameters: dict[str, Any]
    headers: dict[str, str]


def single_row_confidence(logits: np.ndarray, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """``calibrated_confidence`` for one row in plain Python floats.

    Same formula (max softmax = 1 / sum_j exp((z_j - z_max) / T)); a dozen numpy calls on a
    10-element array cost ~20x more than this loop, and batch 1 is the common request. A unit test
    holds it equal to the guard's vectorised version.
    """
    values = logits.tolist()
    top = max(values)
    inv_t = 1.0 / temperature
    total = 0.0
    for v in values:
        total += math.exp((v - top) * inv_t)
    return np.array([1.0 / total]), np.array([values.index(top)], dtype=np.int64)


def inputs_from_triton_config(config: dict[str, Any]) -> tuple[InputSpec, ...]:
    """Gate inputs when the spec names none: Triton's own config (batch dimension excluded)."""
    specs = []
    for entry in config.get("input", []):
        datatype = _TRITON_TO_V2.get(entry.get("data_type", ""), "")
        if not datatype:
            continue
        dims = tuple(int(d) for d in entry.get("dims", []))
        specs.append(InputSpec(entry["name"], datatype, dims))
    return tuple(specs)


class Pipeline:
    def __init__(
        self,
        config: SidecarConfig,
        upstream: TritonHttp,
        router: Router,
        metrics: SidecarMetrics,
        audit: AuditLog,
        review: ReviewSink,
    ) -> None:
        self.config = config
        self.model = config.spec.model.name
        self.upstream = upstream
        self.router = router
        self.metrics = metrics
        self.audit = audit
        self.review = review
        self.guards: dict[str, VersionGuard] = {}
        # What one request may make the adapters decode; checked before any tensor is decoded.
        self.decode_budget = budget_for(config.spec.inputs, config.tuning.max_batch, config.limits)
        self.triton_ready = False
        self._id_prefix = f"{os.getpid():x}-{int(time.time()):x}"
        self._seq = 0
        self._inflight = 0
        self._max_inflight = config.limits.max_inflight_requests
        # The upstream call; the micro-batcher wraps it when enabled.
        self.upstream_call: Callable[[str, str, InferRequest, list[str] | None], Awaitable[InferResponse]] = (
            self.call_triton
        )

    # ------------------------------------------------------------------------------------ set-up

    def build_guard(self, version: str, triton_config: dict[str, Any] | None) -> VersionGuard:
        spec = self.config.spec
        warnings: list[str] = []
        artifact: GuardArtifact | None = None
        if self.config.model_repository is not None:
            directory = Path(self.config.model_repository) / self.model / version / "guard"
            try:
                artifact = load_artifact(directory)
            except ArtifactError as exc:
                warnings.append(f"no usable guard artifact for version {version}: {exc}")
        else:
            warnings.append(
                "no modelRepository configured: confidence uses temperature 1 and OOD scoring is off"
            )
        method = spec.ood.method
        scorer: OodScorer | None = None
        threshold = spec.ood.threshold
        if method != "none":
            if artifact is None:
                warnings.append(
                    f"OOD method {method!r} needs a guard artifact; OOD scoring is off for {version}"
                )
                method = "none"
            else:
                try:
                    scorer = make_ood_scorer(method, artifact)
                except ScorerError as exc:
                    warnings.append(f"version {version}: {exc}; OOD scoring is off")
                    method = "none"
                if threshold is None and scorer is not None:
                    threshold = artifact.thresholds.get(method)
                    if threshold is None:
                        warnings.append(
                            f"artifact has no threshold for {method!r}: scores are reported, not acted on"
                        )
        inputs = spec.inputs or (inputs_from_triton_config(triton_config) if triton_config else ())
        references = [artifact.input_reference] if artifact and artifact.input_reference else []
        gate = InputGate(inputs, max_batch=self.config.tuning.max_batch, references=references)
        logits = self.config.tuning.logits_output or (artifact.logits_output if artifact else "LOGITS")
        features = self.config.tuning.features_output or (artifact.features_output if artifact else None)
        drift = DriftAccumulator(artifact.reference) if artifact is not None else None
        uses_feature_drift = (
            drift is not None and artifact is not None and artifact.reference.feature_edges.shape[0] > 0
        )
        needs_features = bool(features) and (
            (scorer is not None and scorer.requires_features) or uses_feature_drift
        )
        vm = VersionMetrics(
            model=self.model,
            version=version,
            method=method,
            ood_threshold=threshold,
            drift=drift,
            feature_dim=artifact.feature_dim if artifact else 0,
        )
        for warning in warnings:
            log.warning("%s: %s", self.model, warning)
        return VersionGuard(
            version=version,
            gate=gate,
            temperature=artifact.temperature if artifact else 1.0,
            scorer=scorer,
            policy=DecisionPolicy(spec.review_below, method, threshold if scorer else None, spec.ood.action),
            logits_output=logits,
            features_output=features if needs_features else None,
            needs_features=needs_features,
            metrics=vm,
            artifact=artifact,
            warnings=warnings,
        )

    def install_guard(self, guard: VersionGuard) -> None:
        self.guards[guard.version] = guard
        self.metrics.add_version(guard.metrics)

    # ------------------------------------------------------------------------------------ serving

    async def call_triton(
        self, model: str, version: str, request: InferRequest, outputs: list[str] | None
    ) -> InferResponse:
        if request.deadline is None:
            header, buffers = encode_upstream_request(request, outputs)
            return await self.upstream.infer(model, version, header, buffers)
        # The caller's deadline (gRPC) bounds the Triton call; once it has passed, Triton is not asked.
        remaining = request.deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise DeadlineExceeded("the call's deadline passed before the model was called")
        header, buffers = encode_upstream_request(request, outputs)
        return await self.upstream.infer(
            model, version, header, buffers, timeout_s=min(remaining, self.config.limits.request_timeout_s)
        )

    def _next_id(self) -> str:
        self._seq += 1
        return f"{self._id_prefix}-{self._seq}"

    def _resolve(self, request: InferRequest) -> VersionGuard:
        if request.model_name != self.model:
            raise ModelNotFound(
                f"model '{request.model_name}' is not served here; this sidecar guards '{self.model}'"
            )
        version = request.model_version or self.router.choose()
        guard = self.guards.get(version)
        if guard is None:
            if request.model_version:
                raise ModelNotFound(
                    f"version {version} of '{self.model}' is not served (routed versions: "
                    f"{', '.join(self.router.versions_to_load())})"
                )
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
        request_id = self._next_id()  # the audit record's id; the client's own is kept as client_id
        guard: VersionGuard | None = None
        stage = "gate"
        try:
            if not self.triton_ready:
                raise Unavailable("Triton is not ready; the sidecar refuses requests until it is")
            guard = self._resolve(request)
            flags = guard.gate.check(request)
            gated = time.perf_counter()
            stage = "model"
            response = await self.upstream_call(
                self.model, guard.version, request, guard.upstream_outputs(request)
            )
            modelled = time.perf_counter()
            stage = "scorer"
            result = self._score(request, request_id, guard, response, flags)
        except GuardError as exc:
            self._record_failure(request, request_id, guard, stage, exc, started)
            raise
        finished = time.perf_counter()
        stages = guard.metrics.stages
        stages["gate"].observe(gated - started)
        stages["model"].observe(modelled - gated)
        stages["scorer"].observe(finished - modelled)
        stages["total"].observe(finished - started)
        if result.decision.decision == REJECT:
            raise OutOfDistribution(
                f"input refused as out of distribution: {'; '.join(result.decision.reasons)}",
                headers=result.headers,
            )
        return result

    def score_response(self, guard: VersionGuard, response: InferResponse) -> Scores:
        logits_out = response.output(guard.logits_output)
        if logits_out is None:
            raise Unavailable(
                f"model '{self.model}' version {guard.version} returned no '{guard.logits_output}' output; "
                "the guard cannot score it (set tuning.logitsOutput to the logits output's name)"
            )
        logits = logits_out.as_numpy()
        logits = logits.reshape(logits.shape[0], -1)
        features = None
        if guard.needs_features and guard.features_output:
            features_out = response.output(guard.features_output)
            if features_out is not None:
                features = features_out.as_numpy()
                features = features.reshape(features.shape[0], -1)
        if logits.shape[0] == 1:
            confidence, predicted = single_row_confidence(logits[0], guard.temperature)
        else:
            confidence, predicted = calibrated_confidence(logits, guard.temperature)
        ood = guard.scorer.score(logits, features) if guard.scorer is not None else None
        return Scores(confidence, predicted, ood, features)

    def score_version(self, version: str, response: InferResponse) -> Scores | None:
        """Scores of a whole (stacked) response, for the micro-batcher; None when it cannot."""
        guard = self.guards.get(version)
        if guard is None:
            return None
        try:
            return self.score_response(guard, response)
        except (GuardError, ScorerError, ValueError):
            return None

    def _score(
        self,
        request: InferRequest,
        request_id: str,
        guard: VersionGuard,
        response: InferResponse,
        flags: list[str],
    ) -> GuardedResult:
        scores = (
            response.scores if isinstance(response.scores, Scores) else self.score_response(guard, response)
        )
        confidence, predicted, ood, features = (
            scores.confidence,
            scores.predicted,
            scores.ood,
            scores.features,
        )
        decision = decide(confidence, ood, flags, guard.policy)
        guard.metrics.observe(confidence, predicted, ood, features)
        guard.metrics.decisions[decision.decision] += 1
        parameters: dict[str, Any] = {
            "guard_decision": decision.decision,
            "guard_confidence": decision.confidence,
            "model_version": guard.version,
        }
        headers = {
            "Guard-Decision": decision.decision,
            "Guard-Confidence": f"{decision.confidence:.6f}",
            "Guard-Model-Version": guard.version,
        }
        if decision.ood_score is not None:
            parameters["guard_ood_score"] = decision.ood_score
            headers["Guard-Ood-Score"] = f"{decision.ood_score:.6g}"
        if len(decision.per_sample) > 1:
            parameters["guard_decisions"] = ",".join(decision.per_sample)
        if decision.reasons:
            parameters["guard_reasons"] = " | ".join(decision.reasons)
        headers["Guard-Request-Id"] = request_id  # finds the request's audit record
        record: dict[str, Any] = {
            "id": request_id,
            "client_id": client_id(request.id),
            "ts": time.time(),
            "model": self.model,
            "version": guard.version,
            "status": 200 if decision.decision != REJECT else OutOfDistribution.http_status,
            "decision": decision.decision,
            "decisions": decision.per_sample,
            "confidence": confidence,
            "predicted": predicted,
            "ood_method": guard.policy.ood_method,
            "ood_score": ood,
            "reasons": decision.reasons,
            "batch": int(confidence.shape[0]),
            "input_digest": _digest(request),
        }
        if decision.decision == REVIEW:
            item = {**record, "inputs": _inputs_preview(request)}
            record["review"] = self.review.offer(item)
        if self.audit.maybe_sample(request_id, request.inputs):
            record["sampled"] = True
        self.audit.record(record)
        return GuardedResult(response, guard.version, decision, parameters, headers)

    def record_undecodable(self, model: str, version: str, exc: GuardError, body: bytes | memoryview) -> None:
        """Audit a request that never became an InferRequest (bad JSON, sizes that do not add up)."""
        self.review.note_request()
        self.metrics.gate_refusals += 1
        self.audit.record(
            {
                "id": self._next_id(),
                "client_id": None,
                "ts": time.time(),
                "model": model,
                "version": version or None,
                "status": exc.http_status,
                "decision": REJECT,
                "stage": "decode",
                "error": exc.message,
                "batch": 0,
                "input_digest": hashlib.sha256(body).hexdigest()[:32],
            }
        )

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
        self.audit.record(
            {
                "id": request_id,
                "client_id": client_id(request.id),
                "ts": time.time(),
                "model": request.model_name,
                "version": guard.version if guard else request.model_version or None,
                "status": exc.http_status,
                "decision": REJECT if refused else "error",
                "stage": stage,
                "error": exc.message,
                "batch": request.batch_size() if request.inputs else 0,
                "input_digest": _digest(request),
            }
        )


def _digest(request: InferRequest) -> str:
    """SHA-256 of the inputs' v2 binary form, first 128 bits: SHA-256 runs in hardware on the
    CPUs we serve on (about twice as fast as blake2b here), and 128 bits identify a payload."""
    inputs = request.inputs
    if len(inputs) == 1:
        return hashlib.sha256(inputs[0].raw).hexdigest()[:32]
    h = hashlib.sha256()
    for tensor in inputs:
        h.update(tensor.raw)
    return h.hexdigest()[:32]


_PREVIEW_BYTES = 1 << 20


def _inputs_preview(request: InferRequest) -> list[dict[str, Any]]:
    """The inputs a reviewer looks at (numeric ones as lists; capped at 1 MiB per tensor)."""
    out = []
    for tensor in request.inputs:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        if tensor.array is not None and len(tensor.raw) <= _PREVIEW_BYTES:
            entry["data"] = np.ascontiguousarray(tensor.array)
        out.append(entry)
    return out
