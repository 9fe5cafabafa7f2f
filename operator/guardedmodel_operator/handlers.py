"""kopf wiring, kept thin: every handler turns a watch event into a call to
`reconcile.reconcile` for the GuardedModel concerned.

Design choices, and why:
- Only watch-event handlers (`on.event`), no create/update/delete or timer
  handlers: those make kopf store progress annotations on the object (a write
  per change) and timers need a finalizer. Owner references let the garbage
  collector delete the children, so no finalizer is needed at all.
- Children are watched too (by our managed-by label), so a child deleted or
  edited by hand triggers a reconcile of its owner: level-triggered repair.
- Live objects come from kopf indices fed by those watches. kopf fills every
  index before any handler runs, so the first reconcile after a restart sees
  the existing children and writes nothing when they already match.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from . import metrics
from .config import OperatorConfig
from .diffbase import SlimDiffBaseStorage
from .events import Event, failure_event
from .keys import Key, key_of
from .kube import CONFLICT, ApiError, KubeClient, in_cluster_login, login
from .labels import GROUP, MANAGED_BY, MANAGED_BY_LABEL, OWNER_NAME_LABEL, PLURAL, VERSION
from .model_tasks import Memo, slim
from .prometheus import PrometheusSource
from .reconcile import reconcile
from .resync import ROLLING_OUT, WATCH_BEHIND, models_behind
from .rollout import wiring as rollout_wiring
from .scaling import idle_wiring
from .scaling import wiring as scaling_wiring
from .scaling.controller import ScaleController
from .scheduler import ModelScheduler

log = logging.getLogger(__name__)

# (group, version, plural, kind) of every child kind the operator writes.
CHILD_RESOURCES = (
    ("", "v1", "configmaps", "ConfigMap"),
    ("", "v1", "services", "Service"),
    ("", "v1", "serviceaccounts", "ServiceAccount"),
    ("apps", "v1", "deployments", "Deployment"),
    ("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    ("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    ("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy"),
)
INDEX_SUFFIX = "_index"  # every kopf index here is named <what>_index
MODEL_INDEX = "guardedmodels_index"
RETRY_DELAYS_S = (0.5, 2.0, 5.0)


@dataclass
class OperatorState:
    """Everything the handlers share, passed to kopf as its `memo`."""

    config: OperatorConfig
    client: KubeClient | None = None
    # One lock per GuardedModel: a model event and a child event for the same
    # model must not reconcile concurrently. Removed when the model is deleted.
    locks: dict[Key, asyncio.Lock] = field(default_factory=dict)
    # Bounds how many reconciles run at once (and so the API writes in flight).
    # This is deliberately not kopf's queueing.worker_limit: kopf's workers wait
    # for every index to be filled before running handlers, so with more
    # objects than workers at start-up the waiting workers starve the ones
    # that would fill the indices, and the operator never starts work.
    slots: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self.slots = asyncio.Semaphore(self.config.worker_limit)

    phases: dict[Key, str] = field(default_factory=dict)
    # Models with a reconcile queued but not started. A trigger for one of them
    # adds nothing: the queued reconcile reads the latest state when it starts.
    # This coalesces the burst of child events that follows every creation.
    queued: set[Key] = field(default_factory=set)
    # Objects this operator just wrote, by (kind, namespace, name), kept only
    # until the watch delivers the same or a newer version. Without them a
    # reconcile triggered right after a write would see the pre-write copy in
    # the index and write (and report) the same change twice.
    recent: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    # The resourceVersion of each model's last status write by the core reconcile that left its
    # children as built (Outcome.settled_version): the watch event of that very version is the
    # echo of a decision already taken, with nothing for a reconcile to do.
    settled: dict[Key, str] = field(default_factory=dict)
    # The rollout controller's per-model tasks and what they need (rollout.wiring).
    rollouts: ModelScheduler | None = None
    # The one Prometheus client, shared by rollout analysis and the scaler (model_tasks).
    prometheus: PrometheusSource | None = None
    rollout_bodies: dict[Key, dict[str, Any]] = field(default_factory=dict)
    # When the rollout controller last checked each model (rollout.controller.RolloutController).
    rollout_checks: dict[Key, dt.datetime] = field(default_factory=dict)
    # The scaler's per-model tasks (scaling.wiring), for models with replicas.max > min.
    scalers: ModelScheduler | None = None
    scale_controller: ScaleController | None = None
    scale_bodies: dict[Key, dict[str, Any]] = field(default_factory=dict)
    # The idle watch's per-model tasks (scaling.idle_wiring), for models with idleAfter above 0s.
    idle_watch: ModelScheduler | None = None
    idle_bodies: dict[Key, dict[str, Any]] = field(default_factory=dict)
    # kopf's indices (live views, the same objects at every call), kept from the first model event
    # so that the resync can reconcile outside a handler; empty until the watch has started. Filled
    # in place: kopf hands each object a shallow copy of the memo, so an assignment would stay there.
    indices: dict[str, Any] = field(default_factory=dict)
    # The resync's task (resync.py), started with the first model event (in place, as above).
    background: list[asyncio.Task[None]] = field(default_factory=list)

    def forget(self, key: Key) -> None:
        self.locks.pop(key, None)
        metrics.publish_model_phase(*key, self.phases.pop(key, None), None)
        self.recent.pop(("GuardedModel", *key), None)
        self.settled.pop(key, None)
        self.publish_phases()

    def set_phase(self, key: Key, phase: str) -> None:
        metrics.publish_model_phase(*key, self.phases.get(key), phase)
        self.phases[key] = phase
        self.publish_phases()

    def remember(self, obj: Mapping[str, Any]) -> None:
        meta = obj["metadata"]
        self.recent[(obj["kind"], meta["namespace"], meta["name"])] = slim(obj)

    def seen(self, kind: str, body: Mapping[str, Any], deleted: bool = False) -> bool:
        """A watch event arrived: drop our copy if the watch has caught up with it.

        Returns True when the event is the echo of our own write (same
        resourceVersion): nothing changed that this operator does not know.
        """
        meta = body["metadata"]
        key = (kind, meta["namespace"], meta["name"])
        mine = self.recent.get(key)
        if mine is None or (not deleted and _newer(mine, body)):
            return False
        del self.recent[key]
        return not deleted and mine["metadata"].get("resourceVersion") == meta.get("resourceVersion")

    def freshest(self, kind: str, namespace: str, name: str, watched: Mapping[str, Any] | None) -> Any:
        mine = self.recent.get((kind, namespace, name))
        if mine is None:
            return watched
        if watched is None or _newer(mine, watched):
            return mine
        return watched

    def publish_phases(self) -> None:
        counts = Counter(self.phases.values())
        for phase in ("Pending", "Progressing", "Ready", "Degraded", "RolledBack", "Failed"):
            metrics.MODELS.labels(phase=phase).set(counts.get(phase, 0))


def _controllers_memo(state: OperatorState) -> Memo:
    """Never called: mypy checks here that the state kopf passes as `memo` is what the
    rollout and scaling wiring expect of it."""
    return state


def _newer(left: Mapping[str, Any], right: Mapping[str, Any]) -> bool:
    """Is `left` a newer version of the object than `right`?

    resourceVersions are etcd revisions on every API server in use; should one
    ever not be numeric, trust the watch (`right`).
    """
    lrv, rrv = left["metadata"].get("resourceVersion", ""), right["metadata"].get("resourceVersion", "")
    if lrv.isdigit() and rrv.isdigit():
        return int(lrv) > int(rrv)
    return False


def _index_lookup(
    state: OperatorState, indices: Mapping[str, Any]
) -> Callable[[str, str, str], Mapping[str, Any] | None]:
    def lookup(kind: str, namespace: str, name: str) -> Mapping[str, Any] | None:
        store = indices.get(f"{kind.lower()}_index")
        found = store.get((namespace, name)) if store is not None else None
        watched = next(iter(found), None) if found is not None else None
        return state.freshest(kind, namespace, name, watched)

    return lookup


async def reconcile_model(
    state: OperatorState, body: Mapping[str, Any], trigger: str, indices: Mapping[str, Any], logger: Any
) -> None:
    meta = body["metadata"]
    key = (meta["namespace"], meta["name"])
    if meta.get("deletionTimestamp"):
        return  # the garbage collector is removing the children; nothing to build
    if key in state.queued:
        metrics.COALESCED.inc()
        return
    state.queued.add(key)
    lock = state.locks.setdefault(key, asyncio.Lock())
    try:
        async with lock, state.slots:
            state.queued.discard(key)
            await _reconcile_latest(state, key, trigger, indices, logger)
    finally:
        state.queued.discard(key)


async def _reconcile_latest(
    state: OperatorState, key: Key, trigger: str, indices: Mapping[str, Any], logger: Any
) -> None:
    assert state.client is not None, "the startup handler creates the client"
    # The newest copy of the model: the watch-fed index, or our own last status
    # write if the watch has not delivered it yet. Not the event that queued
    # this reconcile: later events were coalesced into it.
    found = indices[MODEL_INDEX].get(key)
    indexed = next(iter(found), None) if found is not None else None
    if indexed is None:
        return  # deleted while queued
    body = state.freshest("GuardedModel", key[0], key[1], indexed)
    if body["metadata"].get("deletionTimestamp"):
        return

    def emit(event: Event) -> None:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)

    for attempt, delay in enumerate((*RETRY_DELAYS_S, None)):
        started = time.perf_counter()
        try:
            outcome = await reconcile(
                body, _index_lookup(state, indices), state.client, state.config, emit, written=state.remember
            )
        except (TimeoutError, ApiError, OSError) as error:
            if isinstance(error, ApiError) and error.status == CONFLICT:
                # The model changed since the copy this reconcile read (a user's edit, or the write
                # of an operator process that was replaced), so its status was not written. The
                # watch event of the newer copy queues the next reconcile, which reads that copy.
                metrics.RECONCILES.labels(trigger=trigger, result="conflict").inc()
                logger.info(
                    f"the model changed while reconciling; reconciling again on the newer copy ({error})"
                )
                return
            metrics.RECONCILES.labels(trigger=trigger, result="error").inc()
            metrics.RECONCILE_ERRORS.labels(error=type(error).__name__).inc()
            if delay is None or (isinstance(error, ApiError) and error.status in (400, 403, 404, 422)):
                # Not transient, or out of retries: say so on the object;
                # the next watch event for it or its children retries.
                logger.error(f"reconcile failed after {attempt + 1} attempt(s): {error}")
                emit(failure_event(error))
                return
            logger.warning(f"reconcile failed ({error}); retrying in {delay}s")
            await asyncio.sleep(delay)
            continue
        finally:
            metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
        metrics.RECONCILES.labels(trigger=trigger, result="success").inc()
        if outcome.settled_version:
            state.settled[key] = outcome.settled_version
        for write in outcome.writes:
            metrics.WRITES.labels(kind=write.kind, action=write.action.value).inc()
        if outcome.status_written:
            metrics.WRITES.labels(kind="GuardedModel", action="status").inc()
        if outcome.phase:
            state.set_phase(key, outcome.phase)
        return


def _start_resync(state: OperatorState) -> None:
    """Started from a handler, not at start-up: the task inherits the handler's context, which kopf's
    Event posting needs (its queue lives in a context variable kopf sets for its handlers)."""
    if not state.config.resync_interval_s:
        return
    if state.config.peering_name:
        # A replica kopf has paused gets no events but would go on listing and reconciling.
        log.info("resync off: with peering, only watch events reconcile")
        return
    state.background.append(asyncio.create_task(_resync_forever(state), name="resync"))


async def _resync_forever(state: OperatorState) -> None:
    behind: dict[Key, int] = {}
    while True:
        await asyncio.sleep(state.config.resync_interval_s)
        try:
            behind = await resync_once(state, behind)
        except (TimeoutError, ApiError, OSError) as error:
            log.warning(f"resync: listing the models failed ({error}); trying again in the next interval")
        except Exception:  # a bug here must not end every later resync
            log.exception("resync failed; trying again in the next interval")


async def resync_once(state: OperatorState, behind_before: dict[Key, int]) -> dict[Key, int]:
    """List the models, reconcile those whose generation stayed unreconciled since the last listing
    (resync.py), and return the generations behind now."""
    if not state.indices or state.client is None:
        log.debug("resync: no watch event yet")
        return {}
    listed = await state.client.list_models(state.config.namespaces)
    models = state.indices[MODEL_INDEX]
    watched: dict[Key, int] = {}
    for body in listed:
        key = key_of(body)
        found = models.get(key)
        copy = next(iter(found), None) if found is not None else None
        if copy is not None:
            watched[key] = int(copy["metadata"].get("generation") or 0)
    act, behind_now = models_behind(listed, watched, behind_before)
    log.debug(f"resync: {len(listed)} models listed, {len(behind_now)} behind, {len(act)} to reconcile")
    for model in act:
        metrics.RESYNCS.labels(reason=model.reason).inc()
        if model.reason == ROLLING_OUT:
            log.debug(f"resync: {model.key[0]}/{model.key[1]} is rolling out; looking at its pods' fetch")
        else:
            log.warning(
                f"resync: {model.key[0]}/{model.key[1]} generation {model.generation} is still unreconciled "
                f"({model.reason}); reconciling it from a fresh read"
            )
        slimmed = slim(model.body)
        if model.reason == WATCH_BEHIND:
            state.remember(slimmed)  # newer than the index's copy: the reconcile reads this one
        await reconcile_model(state, slimmed, "resync", state.indices, log)
    return behind_now


def register(registry: kopf.OperatorRegistry) -> None:
    """Attach every handler to `registry` (not kopf's global one), so that
    importing this module has no side effects."""
    managed = {MANAGED_BY_LABEL: MANAGED_BY}

    # A private registry does not inherit kopf's default login handlers.
    @kopf.on.login(registry=registry)
    def authenticate(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return in_cluster_login(kwargs["settings"]) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, memo: OperatorState, **_: Any) -> None:
        config = memo.config
        settings.watching.server_timeout = config.watch_server_timeout_s
        settings.watching.client_timeout = config.watch_client_timeout_s
        settings.watching.connect_timeout = config.connect_timeout_s
        settings.watching.inactivity_timeout = config.watch_inactivity_timeout_s
        settings.watching.chunk_size = config.list_chunk_size
        settings.networking.request_timeout = config.request_timeout_s
        settings.networking.error_backoffs = config.api_retry_backoffs_s
        # Unbounded on purpose (see OperatorState.slots); idle workers exit after idle_timeout.
        settings.queueing.worker_limit = None
        # Events are posted in the background; a bounded pool keeps a burst of
        # 1000s of decisions from opening 1000s of concurrent requests.
        settings.posting.worker_limit = config.worker_limit
        # Nothing here uses kopf's progress or diff-base storage; if a future
        # handler does, it writes annotations under our own prefix, never status.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = SlimDiffBaseStorage(prefix=GROUP)
        settings.persistence.finalizer = f"{GROUP}/operator"
        # kopf's own log lines must not become Kubernetes Events; the operator
        # posts its decisions explicitly.
        settings.posting.level = logging.ERROR
        settings.scanning.disabled = not config.cluster_scanning
        settings.peering.standalone = not config.peering_name
        if config.peering_name:
            settings.peering.name = config.peering_name
            settings.peering.priority = config.priority
            settings.peering.clusterwide = config.clusterwide
        memo.client = KubeClient.connect(
            login(), field_manager=config.field_manager, timeout_s=config.request_timeout_s
        )
        metrics.serve(config.metrics_host, config.metrics_port)
        memo.publish_phases()

    @kopf.on.cleanup(registry=registry)
    async def close(memo: OperatorState, **_: Any) -> None:
        for task in memo.background:
            task.cancel()
        if memo.client is not None:
            await memo.client.close()

    @kopf.on.probe(id="models", registry=registry)
    def tracked_models(memo: OperatorState, **_: Any) -> int:
        return len(memo.phases)

    @kopf.index(GROUP, VERSION, PLURAL, id=MODEL_INDEX, registry=registry)
    def index_model(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> Any:
        return {(namespace, name): slim(body)}

    @kopf.on.event(GROUP, VERSION, PLURAL, id="guardedmodel_event", registry=registry)
    async def on_model(
        event: kopf.RawEvent, body: kopf.Body, memo: OperatorState, logger: Any, **kw: Any
    ) -> None:
        if event["type"] == "DELETED":
            memo.forget(key_of(body))
            return
        key = key_of(body)
        echo = memo.seen("GuardedModel", body)
        if not memo.indices:
            memo.indices.update((name, index) for name, index in kw.items() if name.endswith(INDEX_SUFFIX))
            _start_resync(memo)
        if echo and memo.settled.pop(key, None) == body["metadata"].get("resourceVersion"):
            # The echo of the core's own status write, which changed nothing the children are
            # built from: the reconcile that wrote it already made everything match.
            return
        await reconcile_model(memo, slim(body), "guardedmodel", kw, logger)

    for group, version, plural, kind in CHILD_RESOURCES:
        _register_child(registry, group, version, plural, kind, managed)
    rollout_wiring.register(registry)
    scaling_wiring.register(registry)
    idle_wiring.register(registry)


def _register_child(
    registry: kopf.OperatorRegistry, group: str, version: str, plural: str, kind: str, managed: dict[str, str]
) -> None:
    api = f"{group}/{version}" if group else version

    @kopf.index(api, plural, id=f"{kind.lower()}_index", labels=managed, registry=registry)
    def index_child(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> Any:
        return {(namespace, name): slim(body)}

    @kopf.on.event(api, plural, id=f"{kind.lower()}_event", labels=managed, registry=registry)
    async def on_child(
        event: kopf.RawEvent, body: kopf.Body, memo: OperatorState, logger: Any, **kw: Any
    ) -> None:
        if event["type"] is None:
            # The initial listing after a start: every GuardedModel's own
            # listing event reconciles it, and kopf fills all indices first,
            # so that reconcile already sees this child. Skipping here saves
            # one redundant reconcile per child on every restart.
            return
        if memo.seen(kind, body, deleted=event["type"] == "DELETED"):
            # The echo of our own write: the reconcile that wrote it already
            # used the server's answer, so there is nothing to look at again.
            return
        owner = body["metadata"].get("labels", {}).get(OWNER_NAME_LABEL)
        namespace = body["metadata"]["namespace"]
        if not owner:
            return
        found = kw[MODEL_INDEX].get((namespace, owner))
        model = next(iter(found), None) if found is not None else None
        if model is None:
            return  # its GuardedModel is gone; the garbage collector takes the child
        await reconcile_model(memo, model, kind.lower(), kw, logger)
