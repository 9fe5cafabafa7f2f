"""The operator's one configuration object, read from the environment and flags.

Environment variables carry the deployment-time defaults (the Helm chart sets
them); command-line flags override them for local runs and tests. Everything
the rest of the operator needs to know about its surroundings is in here, so
no module reads `os.environ` on its own.
"""

from __future__ import annotations

import argparse
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

ENV_PREFIX = "GUARDEDMODEL_"
#: `priority` meaning "draw a random one for this process" (see OperatorConfig.priority).
RANDOM_PRIORITY = -1
PRIORITY_DRAW_RANGE = 2**15

DEFAULT_TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:25.01-py3"
DEFAULT_SIDECAR_IMAGE = "ghcr.io/guardedmodel/guardedmodel:0.1.0"


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


class ConfigError(ValueError):
    """A configuration value that cannot work; the message says which and why."""


@dataclass(frozen=True)
class OperatorConfig:
    # Namespaces to watch: empty means the whole cluster.
    namespaces: tuple[str, ...] = ()
    triton_image: str = DEFAULT_TRITON_IMAGE
    sidecar_image: str = DEFAULT_SIDECAR_IMAGE
    log_format: str = "text"  # text | json
    log_level: str = "info"  # debug | info | warning
    # The operator's own Prometheus metrics; port 0 disables them.
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9100
    # kopf's liveness endpoint (probe handlers answer there); empty disables it.
    health_endpoint: str = "http://0.0.0.0:8080/healthz"
    # kopf follows namespaces and CRDs as they come and go, which needs list/watch on both
    # cluster-wide. Off under a namespaced Role (the chart's rbac.scope=namespace), which grants
    # neither: kopf then uses the namespaces it was given and the CRDs it found at start, and
    # asks the API server for nothing it would refuse.
    cluster_scanning: bool = True
    # With a peering name, several replicas elect one active operator (kopf
    # peering, which needs the KopfPeering CRDs the chart installs); without
    # one the operator runs standalone and must be the only replica.
    peering_name: str = ""
    # kopf pauses every operator that sees a peer of higher priority, and all of them when the
    # highest priorities tie, so identical replicas must not share one: RANDOM_PRIORITY (the
    # default) draws one per process (`with_priority_drawn`), and the replica that draws the
    # highest is the active one.
    priority: int = RANDOM_PRIORITY
    # A watch that sees no event for this long is re-established: some load
    # balancers and API server versions silently drop idle watch streams.
    watch_server_timeout_s: int = 300  # the API server wants whole seconds
    watch_client_timeout_s: float = 330.0
    # A watch stream that delivers nothing (not even a bookmark) for this long
    # is considered dead; the API server sends bookmarks every minute.
    watch_inactivity_timeout_s: float = 70.0
    # Every this often the operator lists its models and reconciles those whose spec generation
    # stayed unreconciled since the last listing (a lost watch event; see resync.py); 0 turns it off.
    resync_interval_s: float = 60.0
    # The initial listing is paged so 1000s of objects are not one huge response.
    list_chunk_size: int = 500
    connect_timeout_s: float = 10.0
    request_timeout_s: float = 30.0
    # A failed API request (the API server restarting, etcd down) is retried with a backoff doubling
    # from half a second up to this, for about api_retry_total_s. A lost watch starts such a series
    # again as soon as one is spent, so this is also the longest the operator stays blind after the
    # API server is back (kopf's own series ends with 13 s and 21 s waits).
    api_retry_max_s: float = 5.0
    api_retry_total_s: float = 60.0
    # Bounded concurrency: at most this many objects are processed at once,
    # so 1000 GuardedModels do not become 1000 simultaneous API writers.
    worker_limit: int = 20
    field_manager: str = "guardedmodel-operator"
    extra_labels: dict[str, str] = field(default_factory=dict)
    # Where the rollout controller reads the sidecars' metrics; empty = nowhere,
    # so canaries hold (no data is not success) and only strategy instant rolls.
    prometheus_url: str = ""
    # The target labels that carry a GuardedModel's namespace and name on its
    # pods' series (a pod scrape with labelmap turns guardedmodel.io/name into
    # guardedmodel_io_name).
    prometheus_namespace_label: str = "namespace"
    prometheus_name_label: str = "guardedmodel_io_name"
    # One Prometheus query, connection included. A check runs under the model's lock, so a hung
    # Prometheus delays the model's other work by at most this much per check.
    prometheus_timeout_s: float = 10.0
    # increase() needs two scrapes inside the window: keep it above twice the
    # scrape interval even when spec.rollout.interval is shorter.
    rollout_min_window_s: float = 60.0
    # The scaler reads Triton queue time this often (models with replicas.max > min),
    # and lets the replica count fall only after this long at the lower load.
    scale_interval_s: float = 30.0
    scale_down_window_s: float = 300.0
    # Every model with spec.scaling.idleAfter above 0s is checked for traffic this often.
    idle_interval_s: float = 60.0

    def __post_init__(self) -> None:
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"log format must be 'text' or 'json', not {self.log_format!r}")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"log level must be debug, info, warning or error, not {self.log_level!r}")
        if not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"metrics port must be 0..65535 (0 disables metrics), not {self.metrics_port}")
        if self.worker_limit < 1:
            raise ConfigError(f"worker limit must be at least 1, not {self.worker_limit}")
        if self.watch_client_timeout_s <= self.watch_server_timeout_s:
            raise ConfigError(
                "the watch client timeout must exceed the server timeout, or every watch is cut "
                f"client-side before the server ends it ({self.watch_client_timeout_s} <= "
                f"{self.watch_server_timeout_s})"
            )
        if self.prometheus_url and not self.prometheus_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"prometheus URL must start with http:// or https://, not {self.prometheus_url!r}"
            )
        if self.prometheus_timeout_s <= 0:
            raise ConfigError(f"the Prometheus timeout must be positive, not {self.prometheus_timeout_s}")
        if self.resync_interval_s < 0:
            raise ConfigError(
                f"the resync interval must not be negative (0 = off), not {self.resync_interval_s}"
            )
        if self.rollout_min_window_s < 0:
            raise ConfigError(f"rollout min window must not be negative, not {self.rollout_min_window_s}")
        if self.scale_interval_s <= 0 or self.scale_down_window_s < 0:
            raise ConfigError(
                "the scale interval must be positive and the scale-down window not negative, not "
                f"{self.scale_interval_s} and {self.scale_down_window_s}"
            )
        if not 0 < self.api_retry_max_s <= self.api_retry_total_s:
            raise ConfigError(
                "the API retry backoff must be positive and at most the total retry time, not "
                f"{self.api_retry_max_s} and {self.api_retry_total_s}"
            )
        if self.idle_interval_s <= 0:
            raise ConfigError(f"the idle check interval must be positive, not {self.idle_interval_s}")
        if not self.triton_image or not self.sidecar_image:
            raise ConfigError("the Triton and sidecar images must not be empty")

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    @property
    def api_retry_backoffs_s(self) -> tuple[float, ...]:
        """The waits between the attempts of one failed API request: 0.5 s doubling up to
        api_retry_max_s, as many as fit in api_retry_total_s."""
        waits: list[float] = []
        wait = min(0.5, self.api_retry_max_s)
        while sum(waits) + wait <= self.api_retry_total_s:
            waits.append(wait)
            wait = min(wait * 2, self.api_retry_max_s)
        return tuple(waits)

    def with_priority_drawn(self, draw: Callable[[], int] | None = None) -> OperatorConfig:
        """This process's peering priority: the configured one, or a random one in
        [1, PRIORITY_DRAW_RANGE] (two replicas tie with probability 1 in 2^15; a tie pauses both
        until one restarts)."""
        if self.priority != RANDOM_PRIORITY:
            return self
        draw = draw or (lambda: 1 + secrets.randbelow(PRIORITY_DRAW_RANGE))
        return replace(self, priority=draw())

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorConfig:
        """Read every field from GUARDEDMODEL_<FIELD_NAME_UPPER>; unset ones keep their default."""
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is None:
                continue
            values[f.name] = _parse(f.name, raw, getattr(cls(), f.name))
        return cls(**values)  # type: ignore[arg-type]

    def with_args(self, args: argparse.Namespace) -> OperatorConfig:
        """Override with the flags that were given on the command line (None = not given)."""
        changes = {
            f.name: getattr(args, f.name) for f in fields(self) if getattr(args, f.name, None) is not None
        }
        if "namespaces" in changes:
            changes["namespaces"] = _namespaces(",".join(changes["namespaces"]))
        return replace(self, **changes)


def _namespaces(raw: str) -> tuple[str, ...]:
    names = tuple(sorted({n.strip() for n in raw.split(",") if n.strip()}))
    return () if names in ((), ("*",)) else names


def _parse(name: str, raw: str, default: object) -> object:
    try:
        if name == "namespaces":
            return _namespaces(raw)
        if name == "extra_labels":
            pairs = [p.split("=", 1) for p in raw.split(",") if p.strip()]
            return {k.strip(): v.strip() for k, v in pairs}
        if isinstance(default, bool):
            word = raw.strip().lower()
            if word not in _TRUE + _FALSE:
                raise ValueError(f"say one of {', '.join(_TRUE + _FALSE)}")
            return word in _TRUE
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError as exc:
        raise ConfigError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not valid: {exc}") from exc
    return raw


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags mirror the environment variables; each defaults to None so that
    only flags actually given override the environment."""

    def add(flag: str, text: str = "", **options: Any) -> None:
        """Every flag's help ends with the environment variable it overrides, named like its field."""
        dest = options.get("dest") or flag.removeprefix("--").replace("-", "_")
        env = f"[env {ENV_PREFIX}{dest.upper()}]"
        parser.add_argument(flag, help=f"{text} {env}" if text else env, **options)

    add(
        "--namespace",
        "namespace to watch (repeatable, or comma-separated); '*' or none = all namespaces",
        dest="namespaces",
        action="append",
        metavar="NS",
    )
    add("--triton-image", "default Triton image")
    add("--sidecar-image", "default guard sidecar image")
    add("--log-format", choices=["text", "json"])
    add("--log-level", choices=["debug", "info", "warning", "error"])
    add("--metrics-host")
    add("--metrics-port", "operator metrics port, 0 disables", type=int)
    add("--health-endpoint", "liveness URL to serve, e.g. http://0.0.0.0:8080/healthz; '' disables")
    add("--peering-name", "kopf peering object name for running several replicas; '' = standalone")
    add(
        "--priority",
        "peering priority; -1 (default) = a random one per process, so one replica is active",
        type=int,
    )
    add("--worker-limit", "objects processed concurrently", type=int)
    add("--watch-server-timeout-s", type=int)
    add("--watch-client-timeout-s", type=float)
    add("--watch-inactivity-timeout-s", type=float)
    add("--resync-interval-s", "list the models this often to heal lost watch events; 0 = off", type=float)
    add("--api-retry-max-s", "longest wait between retries of a failed API request", type=float)
    add("--api-retry-total-s", "how long a failed API request is retried", type=float)
    add(
        "--prometheus-url",
        "Prometheus the rollout controller queries, e.g. http://prometheus.monitoring:9090; '' = none "
        "(canaries hold)",
    )
    add("--prometheus-namespace-label", "target label holding a model's namespace")
    add("--prometheus-name-label", "target label holding a GuardedModel's name")
    add("--prometheus-timeout-s", "limit of one Prometheus query, in seconds", type=float)
    add("--rollout-min-window-s", "shortest metrics window of a rollout check, in seconds", type=float)
    add(
        "--cluster-scanning",
        "follow namespaces and CRDs cluster-wide (needs list/watch on both); false under a namespaced Role",
        type=lambda raw: _parse("cluster_scanning", raw, True),
        metavar="BOOL",
    )
