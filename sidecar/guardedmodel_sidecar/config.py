"""The sidecar's one typed configuration: the ``sidecar.yaml`` file, then environment, then flags.

The operator renders ``sidecar.yaml`` into the pod's ConfigMap; standalone runs and benchmarks write
it by hand. Keys (camelCase, as in the GuardedModel API)::

    guardedModel: {namespace: ns, name: n}   # optional: watch routing from this GuardedModel's status
    spec:                                    # the GuardedModel spec with defaults applied
      model: {name: m, repository: ..., version: "1"}
      gate:
        inputs: [{name: INPUT, datatype: FP32, shape: [784], min: 0.0, max: 1.0}]  # shape w/o batch dim
        ood: {method: mahalanobis|energy|knn|msp|vim|none, threshold: null, action: reject|review|flag}
      confidence: {reviewBelow: 0.5, review: {webhook: http://..., maxFraction: 0.05}}
      audit: {enabled: true, sampleRate: 0.01,
              export: {url: s3://bucket/prefix, intervalSeconds: 60,   # Parquet to a bucket
                       storage: {endpoint: ..., region: ..., virtualHostedStyle: false}}}
      drift: {window: 60s}
    routing: {stableVersion: "1", canaryVersion: null, canaryWeight: 0,  # initial / standalone routing
              lastGoodVersion: null,                 # kept loaded and guarded: a rollback is a flip
              shadow: {version: "3", fraction: 0.1, replay: 200}}  # a candidate never served:
                                             # mirrored a fraction of the stable's requests, and
                                             # replayed the newest sampled ones (docs/rollouts.md)
    triton: {httpUrl: "127.0.0.1:8000", grpcUrl: "127.0.0.1:8001", metricsUrl: "127.0.0.1:8002"}
                                             # metricsUrl (optional): Triton's queue time is read
                                             # there and republished for the operator's scaler
    modelRepository: /models                 # local path where <model>/<version>/guard/ is readable
    listen: {host: 0.0.0.0, http: 8080, grpc: 8081, metrics: 9090}
    auditDir: /var/lib/guardedmodel/audit
    auditExportCredentialsDir: /var/run/secrets/guardedmodel/audit-export   # the mounted Secret of
                                             # spec.audit.export.storage (absent: the default chain)
    spoolDir: /var/lib/guardedmodel/review-spool
    limits: {maxBodyBytes: 67108864, ...}     # optional: see guardedmodel_sidecar.limits (from
                                             # spec.sidecar.limits); every network input is bounded
    tuning:                                  # optional, sidecar-only knobs (defaults below)
      maxBatch: 1024                         # larger batch dimensions are refused by the gate
      loadVersions: true                     # load routed versions through Triton's repository API
      microBatching: {enabled: false, maxBatch: 64, maxInflight: 2}   # from spec.sidecar.microBatching
      tritonMetricsInterval: 5s              # how often Triton's metrics are read (metricsUrl)
      workers: 1                             # >1: that many processes share the HTTP/gRPC ports
                                             # (SO_REUSEPORT); worker i serves metrics on metrics+i
                                             # and audits into auditDir/worker-i
      auditRotateBytes: 104857600
      auditRetainFiles: 10                   # rotated files kept per stream (0: no count limit)
      auditRetainBytes: 0                    # bytes of rotated files kept per stream (0: no limit)
      auditBufferBytes: 33554432             # audit lines held in memory while the disk lags
      reviewRetries: 5                       # quick attempts per item (backoff 0.2 s doubling)
      reviewRetryInterval: 30s               # then the webhook is tried again this often
      reviewTimeout: 5s                      # one delivery attempt; a slower answer is retried
      reviewSpoolMaxItems: 10000             # review items on disk; more are counted spool_full
      reviewSpoolMaxBytes: 536870912
      logitsOutput: null                     # default: the artifact's (LOGITS)
      featuresOutput: null                   # default: the artifact's (FEATURES)
      shadowMaxInflight: 4                   # mirrored calls to a shadow candidate at once; more
                                             # are skipped and counted
      replayConcurrency: 2                   # replayed calls to a shadow candidate at once

Environment (overrides the file): GUARDEDMODEL_TRITON_HTTP_URL, GUARDEDMODEL_TRITON_GRPC_URL,
GUARDEDMODEL_MODEL_REPOSITORY, GUARDEDMODEL_AUDIT_DIR, GUARDEDMODEL_SPOOL_DIR. Flags of
``guardedmodel sidecar`` override both.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from guardedmodel_sidecar.config_spec import GuardSpec, parse_spec
from guardedmodel_sidecar.config_spec import (
    InputSpec as InputSpec,  # re-exported: the gate's users import it here
)
from guardedmodel_sidecar.config_values import ConfigError, parse_duration, section
from guardedmodel_sidecar.limits import Limits, parse_limits


@dataclass(frozen=True)
class Shadow:
    """A candidate version that is never served: it answers copies of live requests and replayed
    audit samples, and its answers are only compared with the stable's."""

    version: str
    fraction: float = 0.0  # share of the stable's requests mirrored to the candidate
    replay: int = 0  # sampled requests from the audit log replayed to it, once


@dataclass(frozen=True)
class Routing:
    stable_version: str
    canary_version: str | None = None
    canary_weight: int = 0  # percent of requests to the canary
    last_good: str | None = None  # what a rollback of the stable goes back to
    shadow: Shadow | None = None

    def versions(self) -> tuple[str, ...]:
        """The versions that answer callers."""
        if self.canary_version and self.canary_version != self.stable_version:
            return (self.stable_version, self.canary_version)
        return (self.stable_version,)

    def kept_versions(self) -> tuple[str, ...]:
        """The versions kept loaded and guarded: the served ones, the last good, the shadow."""
        kept = [*self.versions(), self.last_good, self.shadow.version if self.shadow else None]
        return tuple(dict.fromkeys(v for v in kept if v))


@dataclass(frozen=True)
class MicroBatching:
    enabled: bool = False
    max_batch: int = 64
    max_inflight: int = 2


@dataclass(frozen=True)
class Tuning:
    max_batch: int = 1024
    load_versions: bool = True
    micro_batching: MicroBatching = field(default_factory=MicroBatching)
    audit_rotate_bytes: int = 100 * 1024 * 1024
    # Audit and review bounds: see guardedmodel_sidecar.audit and .review (what happens at each bound).
    audit_retain_files: int = 10
    audit_retain_bytes: int = 0
    audit_buffer_bytes: int = 32 * 1024 * 1024
    review_retries: int = 5
    review_retry_interval_s: float = 30.0
    review_timeout_s: float = 5.0
    review_spool_max_items: int = 10_000
    review_spool_max_bytes: int = 512 * 1024 * 1024
    workers: int = 1
    # Set on the extra workers of a multi-process sidecar: they join the shared ports only once
    # they are ready, so the kernel never hands a connection to a worker that would refuse it.
    listen_when_ready: bool = False
    logits_output: str | None = None
    features_output: str | None = None
    triton_metrics_interval_s: float = 5.0
    shadow_max_inflight: int = 4
    replay_concurrency: int = 2
    worker_index: int = 0  # which of ``workers`` this process is (set by workers.worker_config)


@dataclass(frozen=True)
class Listen:
    host: str = "0.0.0.0"
    http: int = 8080
    grpc: int = 8081
    metrics: int = 9090


@dataclass(frozen=True)
class SidecarConfig:
    spec: GuardSpec
    routing: Routing
    triton_http_url: str = "127.0.0.1:8000"
    triton_grpc_url: str = "127.0.0.1:8001"
    triton_metrics_url: str | None = None  # host:port of Triton's metrics endpoint
    # (name, value) of the header Triton's restricted APIs require; sent on the sidecar's own
    # model-repository calls only, never on a caller's forwarded request.
    triton_restricted_header: tuple[str, str] | None = None
    model_repository: Path | None = None
    # The remote repository the pod's copy (model_repository) was fetched from: versions published
    # after the pod started are fetched from it when routing needs them (version_fetch.py).
    model_source: str | None = None
    listen: Listen = field(default_factory=Listen)
    audit_dir: Path = Path("/var/lib/guardedmodel/audit")
    audit_export_credentials: Path | None = None  # a mounted Secret for spec.audit.export's bucket
    spool_dir: Path = Path("/var/lib/guardedmodel/review-spool")
    guarded_model: tuple[str, str] | None = None  # (namespace, name)
    tuning: Tuning = field(default_factory=Tuning)
    limits: Limits = field(default_factory=Limits)

    def with_overrides(self, **changes: Any) -> SidecarConfig:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def parse_routing(data: Mapping[str, Any], default_version: str) -> Routing:
    stable = data.get("stableVersion") or default_version
    canary = data.get("canaryVersion") or None
    weight = data.get("canaryWeight") or 0
    if not isinstance(weight, int) or not 0 <= weight <= 100:
        raise ConfigError(f"routing.canaryWeight: {weight!r} must be an integer percentage 0-100")
    last_good = data.get("lastGoodVersion") or None
    return Routing(
        str(stable),
        None if canary is None else str(canary),
        weight if canary else 0,
        None if last_good is None else str(last_good),
        parse_shadow(data.get("shadow"), "routing.shadow"),
    )


def parse_shadow(data: Any, where: str) -> Shadow | None:
    """``{version, fraction, replay}`` (the GuardedModel's status.shadow); None or {} is no shadow."""
    if not data:
        return None
    if not isinstance(data, Mapping) or not data.get("version"):
        raise ConfigError(f"{where}: {data!r} needs at least a version: {{version, fraction, replay}}")
    fraction = data.get("fraction") or 0.0
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"{where}.fraction: {fraction!r} must be a number from 0 to 1")
    replay = data.get("replay") or 0
    if isinstance(replay, bool) or not isinstance(replay, int) or replay < 0:
        raise ConfigError(f"{where}.replay: {replay!r} must be a whole number >= 0")
    return Shadow(str(data["version"]), float(fraction), replay)


def parse_config(data: Mapping[str, Any]) -> SidecarConfig:
    if not isinstance(data, Mapping):
        raise ConfigError("sidecar config must be a mapping at the top level")
    spec = parse_spec(section(data, "spec", ""))
    routing = parse_routing(section(data, "routing", ""), spec.model.version)
    triton = section(data, "triton", "")
    listen = section(data, "listen", "")
    gm = data.get("guardedModel")
    guarded_model = None
    if gm:
        if not isinstance(gm, Mapping) or not gm.get("name"):
            raise ConfigError("guardedModel: needs {namespace, name}")
        guarded_model = (str(gm.get("namespace", "default")), str(gm["name"]))
    tuning = section(data, "tuning", "")
    mb = section(tuning, "microBatching", "tuning.")
    defaults = Tuning()
    repo = data.get("modelRepository")
    restricted = section(triton, "restrictedHeader", "triton.")
    if restricted and not (restricted.get("name") and restricted.get("value")):
        raise ConfigError("triton.restrictedHeader: needs both name and value")
    return SidecarConfig(
        spec=spec,
        routing=routing,
        triton_http_url=_strip_scheme(str(triton.get("httpUrl", "127.0.0.1:8000"))),
        triton_grpc_url=_strip_scheme(str(triton.get("grpcUrl", "127.0.0.1:8001"))),
        triton_metrics_url=_strip_scheme(str(triton["metricsUrl"])) if triton.get("metricsUrl") else None,
        triton_restricted_header=(
            (str(restricted["name"]).lower(), str(restricted["value"])) if restricted else None
        ),
        model_repository=Path(repo) if repo else None,
        model_source=str(data["modelSource"]) if data.get("modelSource") else None,
        listen=Listen(
            host=str(listen.get("host", "0.0.0.0")),
            http=int(listen.get("http", 8080)),
            grpc=int(listen.get("grpc", 8081)),
            metrics=int(listen.get("metrics", 9090)),
        ),
        audit_dir=Path(data.get("auditDir", "/var/lib/guardedmodel/audit")),
        audit_export_credentials=(
            Path(data["auditExportCredentialsDir"]) if data.get("auditExportCredentialsDir") else None
        ),
        spool_dir=Path(data.get("spoolDir", "/var/lib/guardedmodel/review-spool")),
        guarded_model=guarded_model,
        tuning=Tuning(
            max_batch=int(tuning.get("maxBatch", defaults.max_batch)),
            load_versions=bool(tuning.get("loadVersions", defaults.load_versions)),
            micro_batching=MicroBatching(
                enabled=bool(mb.get("enabled", False)),
                max_batch=int(mb.get("maxBatch", 64)),
                max_inflight=int(mb.get("maxInflight", 2)),
            ),
            audit_rotate_bytes=int(tuning.get("auditRotateBytes", defaults.audit_rotate_bytes)),
            audit_retain_files=_whole(tuning, "auditRetainFiles", defaults.audit_retain_files, 0),
            audit_retain_bytes=_whole(tuning, "auditRetainBytes", defaults.audit_retain_bytes, 0),
            audit_buffer_bytes=_whole(tuning, "auditBufferBytes", defaults.audit_buffer_bytes, 1),
            review_retries=_whole(tuning, "reviewRetries", defaults.review_retries, 1),
            review_retry_interval_s=_positive_duration(
                tuning, "reviewRetryInterval", defaults.review_retry_interval_s
            ),
            review_timeout_s=_positive_duration(tuning, "reviewTimeout", defaults.review_timeout_s),
            review_spool_max_items=_whole(tuning, "reviewSpoolMaxItems", defaults.review_spool_max_items, 1),
            review_spool_max_bytes=_whole(tuning, "reviewSpoolMaxBytes", defaults.review_spool_max_bytes, 1),
            workers=max(1, int(tuning.get("workers", defaults.workers))),
            logits_output=tuning.get("logitsOutput"),
            features_output=tuning.get("featuresOutput"),
            triton_metrics_interval_s=parse_duration(
                tuning.get("tritonMetricsInterval", defaults.triton_metrics_interval_s),
                "tuning.tritonMetricsInterval",
            ),
            shadow_max_inflight=_whole(tuning, "shadowMaxInflight", defaults.shadow_max_inflight, 1),
            replay_concurrency=_whole(tuning, "replayConcurrency", defaults.replay_concurrency, 1),
        ),
        limits=parse_limits(section(data, "limits", "")),
    )


def _whole(data: Mapping[str, Any], key: str, default: int, minimum: int) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"tuning.{key}: {value!r} must be a whole number >= {minimum}")
    return value


def _positive_duration(data: Mapping[str, Any], key: str, default: float) -> float:
    seconds = parse_duration(data.get(key, default), f"tuning.{key}")
    if seconds <= 0:
        raise ConfigError(
            f"tuning.{key}: {data.get(key)!r} must be a duration above 0 (examples: 500ms, 30s)"
        )
    return seconds


def _strip_scheme(url: str) -> str:
    for prefix in ("http://", "grpc://"):
        if url.startswith(prefix):
            return url[len(prefix) :].rstrip("/")
    return url.rstrip("/")


def load_config(path: Path | None, env: Mapping[str, str] | None = None) -> SidecarConfig:
    """Read ``sidecar.yaml`` and apply environment overrides."""
    if path is None:
        raise ConfigError("no config file given (--config sidecar.yaml)")
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the sidecar config: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    config = parse_config(data)
    env = os.environ if env is None else env
    return config.with_overrides(
        triton_http_url=_env_url(env, "GUARDEDMODEL_TRITON_HTTP_URL"),
        triton_grpc_url=_env_url(env, "GUARDEDMODEL_TRITON_GRPC_URL"),
        model_repository=_env_path(env, "GUARDEDMODEL_MODEL_REPOSITORY"),
        audit_dir=_env_path(env, "GUARDEDMODEL_AUDIT_DIR"),
        spool_dir=_env_path(env, "GUARDEDMODEL_SPOOL_DIR"),
    )


def _env_url(env: Mapping[str, str], key: str) -> str | None:
    value = env.get(key)
    return _strip_scheme(value) if value else None


def _env_path(env: Mapping[str, str], key: str) -> Path | None:
    value = env.get(key)
    return Path(value) if value else None
