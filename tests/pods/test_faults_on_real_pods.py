"""Faults on real pods under traffic, as the real kubelet and the Service's endpoints see them.

One GuardedModel with one replica on the real node (no Prometheus: nothing here reads metrics). A
client thread sends requests without pause, each to the Service's current ready endpoint, resolved
again for every request from the EndpointSlices (what kube-proxy does for a new connection; the node
has none), and counts what came back by kind.

1. A pod-rolling spec edit (the sidecar's log level) rolls the pod: the new pod becomes ready, the
   old one is gone, and not one request failed: the old sidecar keeps serving through its preStop
   delay while its endpoint is withdrawn, then drains; Triton outlives both.
2. Triton's process in the pod is SIGKILLed from the host (the node's containers are host
   processes): the pod's endpoint turns not ready, the kubelet restarts the triton container and
   not the sidecar (its liveness does not follow Triton's), the sidecar loads the routed version
   into the restarted, empty Triton, and the pod is ready again with no manual step. Requests in
   the gap are answered 503 with a v2 error body, or not sent (no ready endpoint); none hangs.

Needs root, the node packages and the image builders (`make test-pods`).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pod_helpers import (
    crash_looping,
    describe,
    example_manifest,
    pods,
    ready,
    real_node_ground,
    serve_on_real_node,
    wait_for,
)

from guardedmodel_cli.demo_traffic import MODEL as TRITON_MODEL
from guardedmodel_cli.demo_traffic import FreshRows, connection_lost
from guardedmodel_testground import real_pods
from guardedmodel_testground.cluster import LocalCluster

pytestmark = [pytest.mark.pods, pytest.mark.integration, pytest.mark.reliability]

NAMESPACE = "faults"
MODEL = "fashion"
PORT = "http"
#: Longer than any answer of a healthy or refusing sidecar by far; a request that takes this long hung.
REQUEST_TIMEOUT_S = 10.0
#: What the client counts as answered: a guarded answer, or the OOD scorer's refusal (an answer too).
ANSWERED = "answered"
NOT_SENT = "not sent: no ready endpoint"


@dataclass
class Stage:
    cluster: LocalCluster
    rows: FreshRows  # in-distribution rows the model was not trained on


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    with real_node_ground(tmp_path_factory, "faults-on-real-pods") as ground:
        manifest = example_manifest(MODEL, NAMESPACE)
        manifest["spec"]["replicas"] = {"min": 1, "max": 1}
        manifest["spec"]["rollout"]["continuousGuard"] = False  # no Prometheus here
        serve_on_real_node(ground, manifest, None)
        yield Stage(ground.cluster, ground.fresh_rows())


def model_pods(cluster: LocalCluster) -> list[dict]:
    return pods(cluster, NAMESPACE, f"app.kubernetes.io/instance={MODEL}")


def explain(cluster: LocalCluster) -> str:
    return describe(cluster, NAMESPACE, "pods")


def the_ready_pod(cluster: LocalCluster) -> dict | None:
    for pod in model_pods(cluster):
        if crash_looping(pod):
            raise AssertionError(f"{crash_looping(pod)}\n{explain(cluster)}")
    running = [p for p in model_pods(cluster) if ready(p)]
    return running[0] if len(running) == 1 else None


def restarts(pod: dict) -> dict[str, int]:
    return {c["name"]: c["restartCount"] for c in pod["status"]["containerStatuses"]}


def endpoint_ready(cluster: LocalCluster, address: str) -> bool | None:
    """The ready condition of the Service's endpoint at pod IP `address` (None: not listed)."""
    slices = cluster.kubectl_json(
        "get", "endpointslices", "-n", NAMESPACE, "-l", f"kubernetes.io/service-name={MODEL}"
    )["items"]
    for endpoint_slice in slices:
        for endpoint in endpoint_slice.get("endpoints") or []:
            if address in (endpoint.get("addresses") or []):
                return bool((endpoint.get("conditions") or {}).get("ready"))
    return None


@dataclass
class Sent:
    at: float  # monotonic: when the request was sent, or found no ready endpoint to go to
    kind: str  # ANSWERED, NOT_SENT, or the failure's kind
    address: str = ""
    seconds: float = 0.0
    detail: str = ""


@dataclass
class Traffic:
    """A client sending one request after another until stopped, each to the endpoint resolved just
    before it, on a new connection; every request's outcome is kept."""

    cluster: LocalCluster
    rows: FreshRows
    sent: list[Sent] = field(default_factory=list)
    resolver_errors: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Traffic:
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(REQUEST_TIMEOUT_S + 30)

    def _run(self) -> None:
        while not self._stop.is_set():
            at = time.monotonic()
            try:
                address = real_pods.ready_endpoint(self.cluster, NAMESPACE, MODEL, PORT)
            except Exception:  # the API server busy for a moment is no fault of the model's pods
                self.resolver_errors += 1
                time.sleep(0.2)
                continue
            if address is None:
                self.sent.append(Sent(at, NOT_SENT))
                time.sleep(0.2)
                continue
            self.sent.append(self._one(address))

    def _one(self, address: str) -> Sent:
        import tritonclient.http as httpclient
        from tritonclient.utils import InferenceServerException

        sample = self.rows.next(1)
        tensor = httpclient.InferInput("INPUT", list(sample.shape), "FP32")
        tensor.set_data_from_numpy(sample, binary_data=True)
        client = httpclient.InferenceServerClient(
            address, connection_timeout=REQUEST_TIMEOUT_S, network_timeout=REQUEST_TIMEOUT_S
        )
        started = time.monotonic()
        try:
            client.infer(TRITON_MODEL, [tensor])
            kind, detail = ANSWERED, ""
        except InferenceServerException as error:
            status = str(error.status())
            kind = ANSWERED if status == "422" else f"HTTP {status}"
            detail = str(error.message())
        except TimeoutError as error:
            kind, detail = "timed out (hung)", repr(error)
        except connection_lost() as error:
            kind, detail = "connection refused or reset", repr(error)
        except Exception as error:  # every other failure is counted too, by its type
            kind, detail = type(error).__name__, repr(error)
        finally:
            client.close()
        return Sent(started, kind, address, time.monotonic() - started, detail)

    def wait_answered(self, count: int, since: float, timeout: float) -> None:
        wait_for(
            f"{count} requests answered",
            lambda: sum(1 for s in list(self.sent) if s.kind == ANSWERED and s.at >= since) >= count,
            timeout,
            lambda: f"{self.counts()}\n{explain(self.cluster)}",
        )

    def timeline(self, fault: float, recovered: float) -> str:
        """Every request that did not come back answered, and the answered ones around them, in
        seconds from the fault (`recovered` marked), for a failure's message."""
        lines = [f"timeline (s from the fault; recovered at {recovered - fault:+.2f}):"]
        for sent in self.sent:
            if sent.kind != ANSWERED or abs(sent.at - fault) < 2 or abs(sent.at - recovered) < 2:
                lines.append(
                    f"  {sent.at - fault:+7.2f} {sent.seconds:5.2f}s {sent.kind:<28} {sent.address} {sent.detail}"
                )
        return "\n".join(lines)

    def counts(self) -> Counter[str]:
        return Counter(s.kind for s in self.sent)


def test_the_model_becomes_ready_on_one_pod(stage: Stage) -> None:
    pod = wait_for(
        "the model's pod Ready", lambda: the_ready_pod(stage.cluster), 300, lambda: explain(stage.cluster)
    )
    assert restarts(pod) == {"triton": 0, "sidecar": 0}


def test_a_rolling_update_under_traffic_fails_no_request(stage: Stage) -> None:
    cluster = stage.cluster
    old = the_ready_pod(cluster)
    assert old is not None
    old_uid, old_ip = old["metadata"]["uid"], old["status"]["podIP"]
    with Traffic(cluster, stage.rows) as traffic:
        traffic.wait_answered(5, 0, 60)
        edited = time.monotonic()
        patch = '{"spec":{"sidecar":{"logLevel":"debug"}}}'
        cluster.kubectl("patch", "gm", MODEL, "-n", NAMESPACE, "--type=merge", "-p", patch)

        def new_pod() -> dict | None:
            pod = the_ready_pod(cluster)
            return pod if pod is not None and pod["metadata"]["uid"] != old_uid else None

        pod = wait_for("the new pod Ready", new_pod, 240, lambda: explain(cluster))
        new_ready = time.monotonic() - edited
        wait_for(
            "the old pod gone",
            lambda: all(p["metadata"]["uid"] != old_uid for p in model_pods(cluster)),
            120,
            lambda: explain(cluster),
        )
        old_gone = time.monotonic() - edited
        traffic.wait_answered(5, time.monotonic(), 60)
    counts = traffic.counts()
    failures = [s for s in traffic.sent if s.kind != ANSWERED]
    by_address = Counter(s.address for s in traffic.sent if s.kind == ANSWERED)
    print(
        f"\nrolling update: new pod ready {new_ready:.1f} s and old pod gone {old_gone:.1f} s after the "
        f"edit; requests {dict(counts)} (answered by pod IP {dict(by_address)}), "
        f"resolver errors {traffic.resolver_errors}, slowest answer "
        f"{max(s.seconds for s in traffic.sent if s.kind == ANSWERED):.2f} s"
    )
    sidecar = next(c for c in pod["spec"]["containers"] if c["name"] == "sidecar")
    assert {"name": "GUARDEDMODEL_LOG_LEVEL", "value": "debug"} in sidecar["env"]
    assert not failures, [(s.kind, s.address, s.detail) for s in failures[:10]]
    new_ip = pod["status"]["podIP"]
    assert {a.split(":")[0] for a in by_address} == {old_ip, new_ip}, by_address  # both pods served


def container_pid(stage: Stage, container_id: str) -> int:
    """The host pid of a container's main process, from the node's containerd (`containerd://<id>`)."""
    node = stage.cluster.real_node
    assert node is not None
    task = container_id.removeprefix("containerd://")
    for line in node.ctr("tasks", "list").stdout.splitlines()[1:]:
        columns = line.split()
        if columns and columns[0] == task:
            return int(columns[1])
    raise AssertionError(f"no running task {task} on the node")


def test_triton_killed_in_its_pod_is_restarted_by_the_kubelet_and_the_pod_recovers(stage: Stage) -> None:
    cluster = stage.cluster
    pod = the_ready_pod(cluster)
    assert pod is not None
    uid, ip = pod["metadata"]["uid"], pod["status"]["podIP"]
    before = restarts(pod)
    triton = next(c for c in pod["status"]["containerStatuses"] if c["name"] == "triton")
    pid = container_pid(stage, triton["containerID"])
    # The pid is this pod's Triton: its command line, and its cgroup under the pod's.
    assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"tritonserver")
    cgroup = Path(f"/proc/{pid}/cgroup").read_text()
    assert uid in cgroup or uid.replace("-", "_") in cgroup, cgroup

    with Traffic(cluster, stage.rows) as traffic:
        traffic.wait_answered(5, 0, 60)
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        wait_for("the pod's endpoint not ready", lambda: endpoint_ready(cluster, ip) is False, 60,
                 lambda: explain(cluster), interval=0.1)  # fmt: skip
        not_ready = time.monotonic() - killed
        wait_for("the pod's endpoint ready again", lambda: endpoint_ready(cluster, ip) is True, 180,
                 lambda: explain(cluster), interval=0.1)  # fmt: skip
        ready_again = time.monotonic() - killed
        recovered = time.monotonic()
        traffic.wait_answered(5, recovered, 60)
    after = the_ready_pod(cluster)
    assert after is not None and after["metadata"]["uid"] == uid, "the same pod recovers, not a new one"
    counts = traffic.counts()
    in_gap = [s for s in traffic.sent if s.at >= killed and s.at < recovered]
    refused = [s for s in traffic.sent if s.kind == "HTTP 503"]
    print(
        f"\nTriton SIGKILLed in its pod: endpoint not ready after {not_ready:.1f} s, ready again after "
        f"{ready_again:.1f} s; requests {dict(counts)}; in the gap {dict(Counter(s.kind for s in in_gap))}; "
        f"slowest request {max(s.seconds for s in traffic.sent):.2f} s; resolver errors "
        f"{traffic.resolver_errors}; restarts {before} -> {restarts(after)}"
        + (f"; a 503 says: {refused[0].detail}" if refused else "")
    )
    timeline = traffic.timeline(killed, recovered)
    assert restarts(after) == {"triton": before["triton"] + 1, "sidecar": before["sidecar"]}
    unexpected = [s for s in traffic.sent if s.kind not in (ANSWERED, NOT_SENT, "HTTP 503")]
    assert not unexpected, timeline
    # A request sent just before the kill can be refused by it: what counts is when it came back.
    assert all(s.at + s.seconds >= killed for s in refused), f"refused before the fault\n{timeline}"
    assert all(s.detail for s in refused), "a 503 without a v2 error message"
    assert all(s.kind == ANSWERED for s in traffic.sent if s.at >= recovered), f"{counts}\n{timeline}"
