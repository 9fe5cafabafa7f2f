"""Traffic and probes for the fault scenarios: concurrent HTTP and gRPC callers and a kubelet-like
poller of the sidecar's health endpoints, each outcome recorded with its times.

Each caller is a thread with its own connection, sending the toy model's request in a loop until told
to stop; what came back (status, v2 error text, start and end on one monotonic clock) is kept, so a
test can say what happened to the requests in flight at a fault, how soon the first refusal came and
whether any call outlived its deadline.
"""

from __future__ import annotations

import http.client
import statistics
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import tritonclient.grpc as grpcclient
import yaml
from sidecar_toy import MODEL
from tritonclient.utils import InferenceServerException

from guardedmodel_operator.builders import build_context, build_deployment
from guardedmodel_operator.config import OperatorConfig
from guardedmodel_operator.spec import parse_spec

REPO = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class Outcome:
    protocol: str  # "http" or "grpc"
    started: float
    ended: float
    status: str  # HTTP status ("200", "503", ...), a gRPC code name ("OK", "UNAVAILABLE", ...), or "conn"
    error: str = ""  # the v2 error text (HTTP {"error": ...}, the gRPC details), "" on success
    client_id: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("200", "OK")

    @property
    def unavailable(self) -> bool:
        """A clean refusal: HTTP 503 with a v2 error body, or gRPC UNAVAILABLE with details."""
        return self.status in ("503", "UNAVAILABLE") and bool(self.error)


def http_body(x: np.ndarray, client_id: str) -> bytes:
    inputs = [{"name": "INPUT", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]
    return orjson.dumps({"id": client_id, "inputs": inputs})


@dataclass
class Traffic:
    """``http_callers`` + ``grpc_callers`` threads calling the sidecar until ``stop``."""

    http_url: str
    grpc_url: str
    x: np.ndarray
    http_callers: int = 3
    grpc_callers: int = 3
    grpc_deadline_s: float = 5.0
    http_socket_timeout_s: float = 90.0  # only a backstop: a call that long counts as a hang
    pause_s: float = 0.005  # between one caller's calls, so two cores are not saturated
    prefix: str = "t"
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _seq: int = 0

    def start(self) -> Traffic:
        for i in range(self.http_callers):
            self._threads.append(threading.Thread(target=self._http_loop, name=f"http-{i}", daemon=True))
        for i in range(self.grpc_callers):
            self._threads.append(threading.Thread(target=self._grpc_loop, name=f"grpc-{i}", daemon=True))
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the callers; a caller still inside a call after ``timeout_s`` is a hang."""
        self._stop.set()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0.0))
        stuck = [t.name for t in self._threads if t.is_alive()]
        assert not stuck, f"callers still waiting for an answer {timeout_s} s after the stop: {stuck}"

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)

    def _next_id(self) -> str:
        with self._lock:
            self._seq += 1
            return f"{self.prefix}-{self._seq}"

    def _keep(self, outcome: Outcome) -> None:
        with self._lock:
            self.outcomes.append(outcome)

    def _http_loop(self) -> None:
        host, _, port = self.http_url.rpartition(":")
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection(host, int(port), timeout=self.http_socket_timeout_s)
            client_id = self._next_id()
            started = time.monotonic()
            try:
                conn.request(
                    "POST",
                    f"/v2/models/{MODEL}/infer",
                    http_body(self.x, client_id),
                    {"Content-Type": "application/json"},
                )
                response = conn.getresponse()
                body = response.read()
                status, error = str(response.status), ""
                if response.status != 200:
                    error = str(orjson.loads(body).get("error", ""))
                if response.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                status, error = "conn", f"{type(exc).__name__}: {exc}"
                conn.close()
                conn = None
            self._keep(Outcome("http", started, time.monotonic(), status, error, client_id))
            time.sleep(self.pause_s)
        if conn is not None:
            conn.close()

    def _grpc_loop(self) -> None:
        client = grpcclient.InferenceServerClient(self.grpc_url)
        inp = grpcclient.InferInput("INPUT", list(self.x.shape), "FP32")
        inp.set_data_from_numpy(self.x)
        while not self._stop.is_set():
            client_id = self._next_id()
            started = time.monotonic()
            try:
                client.infer(MODEL, [inp], request_id=client_id, client_timeout=self.grpc_deadline_s)
                status, error = "OK", ""
            except InferenceServerException as exc:
                status = (exc.status() or "").removeprefix("StatusCode.") or "conn"
                error = exc.message() or ""
            self._keep(Outcome("grpc", started, time.monotonic(), status, error, client_id))
            time.sleep(self.pause_s)
        client.close()


# ------------------------------------------------------------------------------------------ probes


@dataclass(frozen=True)
class ProbeSpec:
    path: str
    period_s: float
    timeout_s: float
    failure_threshold: int


def deployment_probes() -> dict[str, ProbeSpec]:
    """The sidecar container's readiness and liveness probes exactly as the operator renders them for
    the minimal example manifest."""
    body = yaml.safe_load((REPO / "examples" / "guardedmodel-minimal.yaml").read_text())
    body["metadata"] |= {"namespace": "default", "uid": "0", "generation": 1}
    config = OperatorConfig(triton_image="triton", sidecar_image="sidecar")
    deployment = build_deployment(build_context(body, parse_spec(body["spec"]), config, None))
    (container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "sidecar"]
    probes = {}
    for kind in ("readinessProbe", "livenessProbe"):
        probe = container[kind]
        probes[kind] = ProbeSpec(
            probe["httpGet"]["path"],
            float(probe["periodSeconds"]),
            float(probe["timeoutSeconds"]),
            int(probe["failureThreshold"]),
        )
    return probes


@dataclass
class ProbePoller:
    """Polls the health endpoints as a kubelet does (HTTP GET, success is 2xx/3xx within the probe's
    timeout), but every ``every_s`` instead of every period: a kubelet's probes at any phase are a
    subset of these polls, so what holds for all of them holds for the kubelet's."""

    http_url: str
    probes: dict[str, ProbeSpec]
    every_s: float = 0.1
    polls: dict[str, list[tuple[float, bool]]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> ProbePoller:
        for kind, spec in self.probes.items():
            self.polls[kind] = []
            thread = threading.Thread(target=self._loop, args=(kind, spec), name=kind, daemon=True)
            self._threads.append(thread)
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def snapshot(self, kind: str) -> list[tuple[float, bool]]:
        with self._lock:
            return list(self.polls[kind])

    def _loop(self, kind: str, spec: ProbeSpec) -> None:
        host, _, port = self.http_url.rpartition(":")
        while not self._stop.is_set():
            at = time.monotonic()
            try:
                conn = http.client.HTTPConnection(host, int(port), timeout=spec.timeout_s)
                conn.request("GET", spec.path)
                passed = 200 <= conn.getresponse().status < 400
                conn.close()
            except (OSError, http.client.HTTPException):
                passed = False
            with self._lock:
                self.polls[kind].append((at, passed))
            self._stop.wait(max(self.every_s - (time.monotonic() - at), 0.0))


def first_after(
    at: float, items: Iterable[Any], when: Callable[[Any], float], test: Callable[[Any], bool]
) -> Any:
    """The earliest item (by ``when``) at or after ``at`` that passes ``test``; None if none."""
    found = [item for item in items if when(item) >= at and test(item)]
    return min(found, key=when) if found else None


def summary(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f} s, max {max(values):.2f} s over {len(values)}"
