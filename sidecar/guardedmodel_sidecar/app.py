"""Wiring and lifecycle of the sidecar: one process, one event loop, three listening ports.

Start-up order: metrics and the audit/review sinks first (so nothing is lost), then the HTTP and
gRPC listeners (they answer not-ready until Triton is), then a health monitor that waits for Triton,
loads the versions routing needs, builds their guards and only then declares the sidecar ready. When
Triton stops answering its liveness check (killed, or hung: triton_watch.py) the sidecar turns not-ready
within a second or two (health 503, infer 503 / UNAVAILABLE, calls in flight to a hung Triton abandoned);
when Triton is back, the monitor reloads the routed versions (an explicit-mode Triton restarts empty)
and the sidecar becomes ready again.

Routing keeps more versions than it serves: the last good version and a shadow candidate are loaded
and guarded too (docs/rollouts.md), so that a rollback, or a promotion of what was shadowed, is a
routing flip: a new routing whose served versions are already loaded and guarded is adopted at once,
without waiting for any load. Readiness depends on the served versions only: a kept version that
cannot be loaded is logged, shown in ``guardedmodel_version_loaded`` and retried every minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from guardedmodel_sidecar.audit import AuditLog
from guardedmodel_sidecar.comparison import worker_share
from guardedmodel_sidecar.config import Routing, SidecarConfig
from guardedmodel_sidecar.config_values import ConfigError
from guardedmodel_sidecar.cost import parse_cost
from guardedmodel_sidecar.errors import Unavailable
from guardedmodel_sidecar.fetch import FetchError
from guardedmodel_sidecar.grpc_server import GrpcService, start_grpc_server
from guardedmodel_sidecar.http_server import V2HttpServer
from guardedmodel_sidecar.kube_credentials import ApiServer
from guardedmodel_sidecar.metrics import SidecarMetrics
from guardedmodel_sidecar.microbatch import MicroBatcher
from guardedmodel_sidecar.model_loader import LoadError, ensure_loaded, local_model_config
from guardedmodel_sidecar.pipeline import Pipeline
from guardedmodel_sidecar.replay import replay
from guardedmodel_sidecar.response_scoring import score_version
from guardedmodel_sidecar.review import ReviewSink
from guardedmodel_sidecar.routing import Router
from guardedmodel_sidecar.shadow import ShadowComparer
from guardedmodel_sidecar.status_watch import GuardedModelWatcher
from guardedmodel_sidecar.triton_metrics import TritonCounters, follow_triton_counters
from guardedmodel_sidecar.triton_watch import TritonWatch
from guardedmodel_sidecar.upstream import TritonHttp
from guardedmodel_sidecar.upstream_call import TritonCall, UpstreamCall
from guardedmodel_sidecar.version_fetch import VersionFetcher
from guardedmodel_sidecar.version_guard import VersionGuard, build_guard
from guardedmodel_sidecar.version_metrics import drift_policy

if TYPE_CHECKING:
    from guardedmodel_sidecar.audit_export import AuditExporter

log = logging.getLogger(__name__)

# A kept (not served) version Triton would not load is tried again after this long, not on every
# health check: each try is a load of the model's other versions' configuration too.
KEPT_RETRY_S = 60.0
# The final audit export at stop: after the preStop sleep and the request grace, within the pod's 30 s.
EXPORT_DRAIN_S = 10.0


class SidecarApp:
    def __init__(
        self,
        config: SidecarConfig,
        *,
        kubeconfig: str | None = None,
        health_interval_s: float = 0.5,
        metrics_socket: Path | None = None,
    ) -> None:
        self.config = config
        # A worker of several serves its metrics here, for the parent to merge (see workers.py).
        self.metrics_socket = metrics_socket
        self.kubeconfig = kubeconfig
        self.health_interval_s = health_interval_s
        spec = config.spec
        self.metrics = SidecarMetrics(spec.model.name, drift_policy(spec.drift, config.tuning.workers))
        self.metrics.cost.set_prices(spec.cost)
        self.audit = AuditLog(
            config.audit_dir,
            enabled=spec.audit_enabled,
            sample_rate=spec.sample_rate,
            rotate_bytes=config.tuning.audit_rotate_bytes,
            retain_files=config.tuning.audit_retain_files,
            retain_bytes=config.tuning.audit_retain_bytes,
            buffer_bytes=config.tuning.audit_buffer_bytes,
        )
        self.review = ReviewSink(
            spec.review.webhook,
            config.spool_dir,
            max_fraction=spec.review.max_fraction,
            retries=config.tuning.review_retries,
            slow_retry_s=config.tuning.review_retry_interval_s,
            timeout_s=config.tuning.review_timeout_s,
            max_spool_items=config.tuning.review_spool_max_items,
            max_spool_bytes=config.tuning.review_spool_max_bytes,
        )
        self.triton = TritonHttp(
            config.triton_http_url,
            timeout_s=config.limits.request_timeout_s,
            max_connections=config.limits.max_triton_connections,
            restricted_header=config.triton_restricted_header,
        )
        self.watch = TritonWatch(self.triton, self._triton_live)
        self.router = Router(config.routing)
        # The guards of the served versions: the pipeline's, and the micro-batcher's to score with.
        guards: dict[str, VersionGuard] = {}
        triton_call = TritonCall(self.triton, config.limits.request_timeout_s)
        upstream_call: UpstreamCall = triton_call.result
        mb = config.tuning.micro_batching
        self.batcher: MicroBatcher | None = None
        if mb.enabled:
            self.batcher = MicroBatcher(
                triton_call,
                max_batch=mb.max_batch,
                max_inflight=mb.max_inflight,
                score=partial(score_version, guards),
            )
            upstream_call = self.batcher.infer
        self.pipeline = Pipeline(
            config,
            self.triton,
            self.router,
            self.metrics,
            self.audit,
            self.review,
            upstream_call=upstream_call,
            guards=guards,
        )
        self.shadow = ShadowComparer(
            spec.model.name,
            self.triton,
            self.router,
            guards,
            self.metrics,
            self.audit,
            max_inflight=config.tuning.shadow_max_inflight,
            timeout_s=config.limits.request_timeout_s,
            next_id=self.pipeline.next_id,
            is_ready=self._version_ready,
        )
        self.pipeline.shadow = self.shadow
        self.metrics.version_roles = self._version_roles
        self.metrics.review_counts = self.review.counts
        self.metrics.spool_depth = self.review.spool_depth
        self.metrics.spool_fill = self.review.fill_ratio
        self.metrics.volumes_full = lambda: {
            "audit": self.audit.no_space,
            "review_spool": self.review.no_space,
        }
        self.metrics.audit_records = lambda: self.audit.records_written
        self.metrics.audit_stats = self.audit.stats
        self.exporter: AuditExporter | None = None
        if config.spec.export is not None:
            # Imported only when exporting: pyarrow costs ~75 MB and 0.3 s in every process.
            from guardedmodel_sidecar.audit_export import exporter_for

            self.exporter = exporter_for(config)
        if self.exporter is not None:
            exporter = self.exporter
            self.metrics.audit_export = lambda: (exporter.stats, exporter.last_success)
        # Scraped by the metrics handler, which runs in this loop (the count includes its own task).
        self.metrics.asyncio_tasks = lambda: len(asyncio.all_tasks())
        self.http_port = self.grpc_port = self.metrics_port = 0
        self._tasks: list[asyncio.Task[Any]] = []
        self._http: asyncio.Server | None = None
        self._http_server: V2HttpServer | None = None
        self._stopping = False
        self._grpcio: grpc.aio.Server | None = None
        self._grpc_service: GrpcService | None = None
        self._metrics_runner: web.AppRunner | None = None
        self._prepare_lock = asyncio.Lock()
        self._loaded: set[str] = set()  # versions Triton served at the last check
        self._kept_retry_at: dict[str, float] = {}  # kept versions that failed to load: next try
        self._replayed: set[str] = set()  # shadow candidates replayed to (once per process)
        self._background: set[asyncio.Task[Any]] = set()
        self.watcher: GuardedModelWatcher | None = None
        self._pending_routing: Routing | None = None  # routing the watcher asked for but not yet servable
        self.fetcher = (
            VersionFetcher(config.model_source, config.spec.model.name, config.model_repository)
            if config.model_source and config.model_repository is not None
            else None
        )

    # ------------------------------------------------------------------------------- readiness

    def is_ready(self) -> bool:
        return (
            not self._stopping
            and self.pipeline.triton_ready
            and all(v in self.pipeline.guards for v in self.router.routing.versions())
        )

    async def _prepare(self, routing: Routing) -> None:
        """Load and guard every version ``routing`` keeps (and those the current routing keeps, for
        the switch); raises LoadError when a version it serves cannot be served."""
        async with self._prepare_lock:
            model = self.config.spec.model.name
            served = routing.versions()
            now = asyncio.get_running_loop().time()
            wanted = tuple(
                v
                for v in dict.fromkeys([*routing.kept_versions(), *self.router.versions_to_load()])
                if v in served or self._kept_retry_at.get(v, 0.0) <= now
            )
            refused: LoadError | None = None
            loadable = wanted
            if self.fetcher is not None:
                try:
                    await self.fetcher.ensure(wanted)
                except FetchError as exc:
                    # Load what the pod's copy holds; what it lacks stays missing, with this reason.
                    refused = LoadError(str(exc))
                    absent = self.fetcher.missing(wanted)
                    loadable = tuple(v for v in wanted if v not in absent)
            if self.config.tuning.load_versions:
                try:
                    local = local_model_config(self.config.model_repository, model)
                    await ensure_loaded(self.triton, model, loadable, local)
                except LoadError as exc:
                    refused = refused or exc  # a Triton without explicit model control cannot load
            missing = await self._missing(model, wanted)
            self._loaded = set(wanted) - set(missing)
            if any(v in missing for v in served):
                raise refused or LoadError(
                    f"waiting for Triton to serve '{model}' versions {', '.join(v for v in served if v in missing)}"
                )
            if refused is not None and not missing:
                log.info("versions already loaded; Triton did not accept a load: %s", refused)
            if refused is not None and missing:
                for version in missing:
                    self._kept_retry_at[version] = now + KEPT_RETRY_S
                log.error(
                    "versions %s of '%s' (kept for a rollback or as a shadow candidate, not served) cannot be "
                    "loaded: %s; serving goes on, they are tried again in %.0f s",
                    ", ".join(missing),
                    model,
                    refused,
                    KEPT_RETRY_S,
                )
            for version in wanted:
                if version in self.pipeline.guards or version in missing:
                    continue
                try:
                    await self._build_guard(model, version)
                except Exception as exc:
                    if version in served:
                        raise
                    log.error("cannot guard version %s of '%s' (kept, not served): %s", version, model, exc)
        self._start_replay()

    async def _build_guard(self, model: str, version: str) -> None:
        status, triton_config = await self.triton.get_json(f"/v2/models/{model}/versions/{version}/config")
        guard = build_guard(self.config, version, triton_config if status == 200 else None)
        model_max = int((triton_config or {}).get("max_batch_size", 0)) if status == 200 else 0
        if self.batcher is not None and model_max > 0:
            self.batcher.max_batch = min(self.batcher.max_batch, model_max)
        self.pipeline.install_guard(guard)

    def _version_ready(self, version: str) -> bool:
        """Loaded in Triton at the last check, and guarded (a guard outlives its version's unload)."""
        return version in self._loaded and version in self.pipeline.guards

    def _servable(self, routing: Routing) -> bool:
        """Every version ``routing`` serves is loaded and guarded already: it can be adopted now."""
        return self.pipeline.triton_ready and all(self._version_ready(v) for v in routing.versions())

    def _version_roles(self) -> list[tuple[str, str, bool]]:
        return [(version, role, self._version_ready(version)) for version, role in self.router.roles()]

    def _start_replay(self) -> None:
        """Replay audit samples to the shadow candidate, once per candidate, when it is ready."""
        shadow = self.router.routing.shadow
        if (
            shadow is None
            or shadow.replay <= 0
            or shadow.version in self._replayed
            or not self._version_ready(shadow.version)
        ):
            return
        self._replayed.add(shadow.version)
        tuning = self.config.tuning
        share = worker_share(shadow.replay, tuning.workers, tuning.worker_index)
        if share:
            replaying = replay(
                self.shadow,
                self.audit.directory,
                shadow.version,
                self.router.routing.stable_version,
                share,
                tuning.replay_concurrency,
            )
            self._in_background(replaying, f"replay-{shadow.version}")

    def _in_background(self, work: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed: %s", task.get_name(), task.exception())

    async def _missing(self, model: str, versions: tuple[str, ...]) -> list[str]:
        missing = []
        for version in versions:
            response = await self.triton.request("GET", f"/v2/models/{model}/versions/{version}/ready")
            if response.status != 200:
                missing.append(version)
        return missing

    async def apply_routing(self, routing: Routing) -> None:
        """New routing from the GuardedModel: prepare its versions first, then switch traffic. When
        the versions it serves are ready already (a rollback to the last good version), switch at
        once and load what else it keeps in the background."""
        if self._servable(routing):
            self._adopt(routing)
            self._in_background(self._prepare_kept(), "prepare-kept-versions")
            return
        try:
            await self._prepare(routing)
        except Exception as exc:
            self._pending_routing = routing
            log.error("cannot adopt routing %s yet (keeping %s): %s", routing, self.router.routing, exc)
            return
        self._adopt(routing)

    def _adopt(self, routing: Routing) -> None:
        self._pending_routing = None
        if self.router.update(routing):
            self.pipeline.register_served()
            log.info("routing is now %s", routing)
        self._start_replay()

    async def _prepare_kept(self) -> None:
        try:
            await self._prepare(self.router.routing)
        except Exception as exc:
            log.error("Triton is up but the routed versions are not servable: %s", exc)

    async def _monitor(self) -> None:
        """Readiness = Triton is live and serves every routed version (not Triton's server-wide
        readiness, which dips while another version loads: a canary load must not stop traffic)."""
        model = self.config.spec.model.name
        checks = 0
        while True:
            if self._prepare_lock.locked():
                # A version is being loaded. Triton may answer "not ready" for the versions
                # already serving while it applies the new version policy; that is not an
                # outage, and refusing traffic now would turn a canary start into errors.
                await asyncio.sleep(self.health_interval_s)
                continue
            checks += 1
            ready = False
            try:
                if self.watch.live and self.triton.down is None:
                    versions = self.router.routing.versions()
                    missing = await self._missing(model, versions)
                    if missing or not self.pipeline.triton_ready or checks % 4 == 0:
                        await self._prepare_kept()
                        missing = await self._missing(model, versions)
                    ready = not missing and all(v in self.pipeline.guards for v in versions)
            except Unavailable:
                ready = False
            ready = ready and self.triton.down is None  # the watch may have found it down meanwhile
            if not ready:
                self._loaded.clear()
            if self.pipeline.triton_ready and not ready:
                log.warning(
                    "Triton at %s is not serving the routed versions; refusing requests until it is",
                    self.config.triton_http_url,
                )
            self.pipeline.triton_ready = ready
            self.metrics.triton_ready = ready
            if self._pending_routing is not None and ready:
                await self.apply_routing(self._pending_routing)
            await asyncio.sleep(self.health_interval_s)

    def _triton_live(self, live: bool) -> None:
        """The liveness watch's verdict flipped: not live refuses requests now, not at the next check;
        live again is ready again once the monitor has seen the routed versions served."""
        if not live:
            self._loaded.clear()
            self.pipeline.triton_ready = self.metrics.triton_ready = False

    def _publish_triton(self, counters: dict[str, TritonCounters]) -> None:
        self.metrics.triton_queue = {v: (c.queue_seconds, c.requests) for v, c in counters.items()}
        self.metrics.triton_compute = {v: (c.compute_seconds, c.executions) for v, c in counters.items()}
        self.metrics.cost.observe_compute({v: c.compute_seconds for v, c in counters.items()})

    def _follow_spec(self, spec: Mapping[str, Any]) -> None:
        """The GuardedModel's spec as the routing watch last read it: prices apply from now on."""
        try:
            prices = parse_cost(spec.get("cost"))
        except ConfigError as exc:
            log.warning("%s; keeping the prices %s", exc, self.metrics.cost.prices)
            return
        if prices != self.metrics.cost.prices:
            log.info("spec.cost is now %s", prices)
            self.metrics.cost.set_prices(prices)

    async def _drift_windows(self) -> None:
        """Close time windows on a timer; row-count windows close themselves (version_metrics)."""
        window_s = self.config.spec.drift.window_s
        if window_s is None:
            return
        while True:
            await asyncio.sleep(window_s)
            self.metrics.close_windows()

    # ------------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        listen = self.config.listen
        metrics_app = web.Application()
        metrics_app.router.add_get("/metrics", self._metrics_handler)
        self._metrics_runner = web.AppRunner(metrics_app, access_log=None)
        await self._metrics_runner.setup()
        if self.metrics_socket is not None:
            await web.UnixSite(self._metrics_runner, str(self.metrics_socket)).start()
        else:
            site = web.TCPSite(self._metrics_runner, listen.host, listen.metrics)
            await site.start()
            self.metrics_port = _bound_port(site)

        spawn = asyncio.get_running_loop().create_task
        self._tasks += [
            spawn(self.watch.run(), name="triton-liveness"),
            spawn(self._monitor(), name="triton-monitor"),
            spawn(self.audit.run_flusher(), name="audit-flusher"),
            spawn(self.review.run_sender(), name="review-sender"),
            spawn(self._drift_windows(), name="drift-windows"),
        ]
        if self.exporter is not None:
            self._tasks.append(spawn(self.exporter.run(), name="audit-export"))
        if self.config.triton_metrics_url:
            self._tasks.append(
                spawn(
                    follow_triton_counters(
                        self.config.triton_metrics_url,
                        self.config.spec.model.name,
                        self.config.tuning.triton_metrics_interval_s,
                        self._publish_triton,
                    ),
                    name="triton-metrics",
                )
            )
        if self.config.guarded_model is not None:
            namespace, name = self.config.guarded_model
            try:
                api = ApiServer.from_environment(self.kubeconfig)
            except Exception as exc:
                log.warning("no Kubernetes API access (%s); routing stays %s", exc, self.router.routing)
            else:
                self.watcher = GuardedModelWatcher(
                    api,
                    namespace,
                    name,
                    self.apply_routing,
                    lambda: self.router.routing,
                    on_spec=self._follow_spec,
                )
                self.metrics.routing_watch = self.watcher.state
                self._tasks.append(spawn(self.watcher.run(), name="routing-watcher"))
        if self.config.tuning.listen_when_ready:
            try:
                await self.wait_ready(timeout_s=120.0)
            except TimeoutError as exc:
                log.warning("%s; joining the ports anyway, answering 503 until ready", exc)
        reuse_port = self.config.tuning.workers > 1
        server = V2HttpServer(self.pipeline, self.triton, limits=self.config.limits, is_ready=self.is_ready)
        self._http_server = server
        self._http = await server.start(listen.host, listen.http, reuse_port=reuse_port)
        self.http_port = self._http.sockets[0].getsockname()[1]
        self._grpc_service = GrpcService(
            self.pipeline, self.config.triton_grpc_url, self.is_ready, limits=self.config.limits
        )
        self._grpcio, self.grpc_port = await start_grpc_server(
            self._grpc_service, listen.host, listen.grpc, self.config.limits, reuse_port=reuse_port
        )
        log.info(
            "guard sidecar for '%s': HTTP :%d, gRPC :%d, metrics :%d, Triton %s",
            self.config.spec.model.name,
            self.http_port,
            self.grpc_port,
            self.metrics_port,
            self.config.triton_http_url,
        )

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not self.is_ready():
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(
                    f"sidecar not ready after {timeout_s} s (Triton {self.config.triton_http_url})"
                )
            await asyncio.sleep(0.05)

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop taking connections and requests (readiness fails; HTTP: no new connection, no new
        request read on an open one; gRPC: new calls refused), answer what was taken on either protocol
        (up to ``grace_s``; a pod's termination grace period is 30 s by default), then close the sinks:
        a graceful stop answers every request it accepted, and every answer has its audit record on
        disk. What is still open after ``grace_s`` is cut, unanswered, before the sinks close."""
        self._stopping = True
        if self._http is not None:
            self._http.close()
        http = self._http_server
        if http is not None:
            http.drain()
        grpc_stopped = (
            asyncio.ensure_future(self._grpcio.stop(grace=grace_s)) if self._grpcio is not None else None
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while (self.pipeline.inflight or (http is not None and http.connections)) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        if http is not None:
            http.abort()
        if grpc_stopped is not None:
            await grpc_stopped
        await self.shadow.stop()
        for task in [*self._tasks, *self._background]:
            task.cancel()
        for task in [*self._tasks, *self._background]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._grpc_service is not None:
            await self._grpc_service.close()
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
        self.metrics.close_windows()
        self.audit.close()
        if self.exporter is not None:
            # What the audit log wrote last goes to the bucket too, within the pod's grace period.
            drained = self.exporter.drain_bounded(EXPORT_DRAIN_S)
            await loop.run_in_executor(None, drained.wait, EXPORT_DRAIN_S + 2)
        self.triton.close()

    async def _metrics_handler(self, request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _bound_port(site: web.TCPSite) -> int:
    server = site._server  # aiohttp keeps the asyncio server here; the public API has no bound port
    assert server is not None
    sockets = getattr(server, "sockets", None) or []
    return int(sockets[0].getsockname()[1]) if sockets else 0
