"""`guardedmodel demo`: the whole product on one machine, end to end.

What runs, all on loopback: a real Kubernetes control plane with kwok GPU
nodes, the operator, Prometheus and Alertmanager with the chart's alert
rules, a real Triton serving the worked Fashion-MNIST example, and the guard
sidecar in front of it. kwok simulates the pods, so the Triton and sidecar
that the pod would run are started here as local processes, with the config
the operator rendered into the pod's ConfigMap; the sidecar watches the
GuardedModel's status for routing exactly as it does in a cluster.

With --real-pods the same story runs on real pods instead (demo_real_pods): the
operator installed from the chart and the model's Triton and sidecar in
containers on a real kubelet, from images built from the Dockerfile. It needs
root and takes a few minutes more (the image build, cached after the first
run, and the pods' start), so the default stays the local processes.

The story it tells:
1. a manifest is applied and the operator brings the model up;
2. good, corrupted and out-of-distribution traffic goes through the sidecar
   with an unchanged tritonclient, and a table shows what the gate and the
   scorer decided;
3. version 2 (a weaker model) is first shadowed (live traffic mirrored to it) and
   replayed (the audit log's samples), and its agreement with version 1 is shown;
   then it goes out as a canary, the operator reads the sidecar's metrics from
   Prometheus and rolls it back. No pod restarts: versions move through routing;
4. the inputs drift (a grey-level shift); the continuous guard sees the drift
   test call the windows drifted with a PSI above maxDriftScore, and the OOD
   rate break its threshold, and an alert fires.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from guardedmodel_cli import demo_output as out
from guardedmodel_cli.demo_output import say
from guardedmodel_cli.demo_real_pods import RealPodsError, RealPodsStage
from guardedmodel_cli.demo_traffic import (
    FreshRows,
    Outcome,
    connection_lost,
    mixed_batch,
    send,
    send_batches,
    traffic_sets,
)
from guardedmodel_testground import stack as local_stack
from guardedmodel_testground.cluster import LocalCluster
from guardedmodel_testground.paths import default_state_dir, repo_root
from guardedmodel_testground.procs import StartError, free_port, log_tail
from guardedmodel_testground.prometheus import ScrapeJob

NAMESPACE = "demo"
MANIFEST = "examples/fashion-mnist.yaml"
DRIFT_ALERTS = {"GuardedModelDriftHigh", "GuardedModelOodRateHigh", "GuardedModelLowEstimatedAccuracy"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", type=Path, default=None, help="default: .state/demo in the checkout")
    parser.add_argument(
        "--keep", action="store_true", help="leave everything running until Ctrl-C, to explore it by hand"
    )
    parser.add_argument("--requests", type=int, default=40, help="requests per traffic category (default 40)")
    parser.add_argument("--timeout", type=float, default=180, help="seconds to wait for each phase")
    parser.add_argument(
        "--real-pods",
        action="store_true",
        help="run the operator and the model in real pods on a real kubelet (root; make pod-deps node-deps)",
    )
    parser.add_argument(
        "--evergreen",
        action="store_true",
        help="one turn of the data loop instead: models in a bucket, reviews, a new guard fitted and rolled out",
    )


def run(args: argparse.Namespace) -> int:
    if args.evergreen and args.real_pods:
        print("--evergreen runs on local processes: leave out --real-pods", file=sys.stderr)
        return 2
    state_dir = (args.state_dir or default_state_dir() / "demo").resolve()
    if (state_dir / "cluster" / "state.json").exists():
        print(
            f"a demo is already running from {state_dir} (stop it, or pass another --state-dir)",
            file=sys.stderr,
        )
        return 1
    # Each run starts from scratch: a previous run's etcd data would replay its objects.
    shutil.rmtree(state_dir, ignore_errors=True)
    if args.evergreen:
        from guardedmodel_cli.demo_evergreen import EvergreenDemo

        demo: Demo = EvergreenDemo(state_dir, requests=args.requests, timeout=args.timeout, keep=args.keep)
    else:
        demo = Demo(
            state_dir, requests=args.requests, timeout=args.timeout, keep=args.keep, real_pods=args.real_pods
        )
    try:
        demo.run()
    except (StartError, DemoError, RealPodsError, subprocess.CalledProcessError) as error:
        detail = f"{error}\n{error.stderr}" if isinstance(error, subprocess.CalledProcessError) else error
        print(f"\ndemo failed: {detail}", file=sys.stderr)
        print(f"logs are in {state_dir}", file=sys.stderr)
        return 1
    return 0


class DemoError(RuntimeError):
    """A phase of the demo did not reach the state it waits for."""


class Demo:
    """The story's acts, in order; the stack comes from the test ground, the printing from
    demo_output, and what happened is recorded for the end-to-end test (summary.json)."""

    def __init__(
        self, state_dir: Path, *, requests: int, timeout: float, keep: bool, real_pods: bool = False
    ) -> None:
        self.state_dir = state_dir
        self.requests = requests
        self.timeout = timeout
        self.keep = keep
        self.stack = contextlib.ExitStack()
        self.record: dict[str, Any] = {}
        self.ood_alpha: float | None = None  # spec.gate.ood.alpha of the applied manifest
        # Sustained in-distribution traffic for the canary and drift acts: fresh validation rows.
        self.validation = FreshRows(np.empty((0, 1, 28, 28), dtype=np.float32))
        self.ports = {name: free_port() for name in ("http", "grpc", "metrics")}
        self.operator_ports = local_stack.OperatorPorts.free()
        self.pods = RealPodsStage(self.stack, state_dir, NAMESPACE, timeout) if real_pods else None

    def run(self) -> None:
        with self.stack:
            build = self.build_example()
            if self.pods is None:
                self.set_stage_locally(build)
            else:
                self.set_stage_on_real_pods(build)
            self.guard_traffic(build)
            self.per_row_batches(build)
            self.rollout_canary()
            self.drift_and_guard()
            self.summary()
            if self.keep:
                self.wait_for_interrupt()

    # -- setting the stage ---------------------------------------------------------------------
    def build_example(self) -> Any:
        say("Building the worked example: Fashion-MNIST CNN, Triton repository, guard artifact (cached)")
        from guardedmodel_fit.example import DEFAULT_OUT, build_example

        started = time.monotonic()
        build = build_example(DEFAULT_OUT, versions=("1", "2"), progress=True)
        what = ", ".join(build.rebuilt) or "everything cached"
        print(f"model repository {build.repository} ({what}; {time.monotonic() - started:.0f}s)")
        report = build.model_dir / "1" / "guard" / "report"
        if report.exists():
            print(f"fit report: {report}")
        return build

    def set_stage_locally(self, build: Any) -> None:
        self.cluster = self.stack.enter_context(LocalCluster(self.state_dir / "cluster"))
        print(f"cluster up: {self.cluster.server_url}")
        self.start_monitoring()
        self.start_operator()
        self.apply_manifest(lambda manifest: set_repository(manifest, f"file://{build.repository}"))
        self.start_data_plane(build.repository)

    def set_stage_on_real_pods(self, build: Any) -> None:
        assert self.pods is not None
        self.cluster, monitoring = self.pods.start(build)
        self.prometheus, self.alertmanager = monitoring.prometheus, monitoring.alertmanager
        self.apply_manifest(self.pods.manifest)
        print(f"the model's Service answers at {self.sidecar_address()} (a ready endpoint)")

    def start_monitoring(self) -> None:
        say(
            "Prometheus + Alertmanager with the chart's alert rules ('for' shortened to 5s), scraping the sidecar"
        )
        rules = local_stack.chart_alert_rules(self.state_dir / "alerts.yaml", fire_after="5s")
        job = ScrapeJob(
            "guardedmodel-sidecar",
            [f"127.0.0.1:{self.ports['metrics']}"],
            # What the ServiceMonitor's relabelling adds in a cluster.
            labels={"namespace": NAMESPACE, "guardedmodel_io_name": "fashion"},
        )
        monitoring = local_stack.start_monitoring(self.stack, self.state_dir, [job], [rules])
        self.prometheus, self.alertmanager = monitoring.prometheus, monitoring.alertmanager
        print(f"Prometheus {self.prometheus.url}   Alertmanager {self.alertmanager.url}")

    def start_operator(self) -> None:
        say("Installing the CRD and starting the operator")
        local_stack.install_crd(self.cluster, NAMESPACE)
        self.operator = local_stack.start_operator(
            self.stack,
            self.cluster,
            namespace=NAMESPACE,
            prometheus_url=self.prometheus.url,
            ports=self.operator_ports,
            log_dir=self.state_dir / "logs",
            # Prometheus scrapes every second here, so a few seconds of samples are enough per check.
            extra_env={"GUARDEDMODEL_ROLLOUT_MIN_WINDOW_S": "5"},
        )
        print(f"operator running (log {self.operator.log_path})")

    def apply_manifest(
        self,
        adapt: Callable[[dict[str, Any]], dict[str, Any]],
        note: str = "repository pointed at the local build",
    ) -> None:
        say(f"kubectl apply -f {MANIFEST}  ({note})")
        manifest = yaml.safe_load((repo_root() / MANIFEST).read_text())
        self.ood_alpha = manifest["spec"]["gate"]["ood"].get("alpha")
        manifest["metadata"]["namespace"] = NAMESPACE
        manifest = adapt(manifest)
        self.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))
        self.wait_status("phase Ready", lambda s: s.get("phase") == "Ready")
        print(self.cluster.kubectl("get", "gm", "-n", NAMESPACE).stdout.rstrip())
        print(
            self.cluster.kubectl("get", "deploy,svc,cm,networkpolicy,pods", "-n", NAMESPACE).stdout.rstrip()
        )

    def start_data_plane(
        self, repository: Path, *, model_source: str | None = None, env: dict[str, str] | None = None
    ) -> None:
        """``model_source``: the bucket ``repository`` was fetched from (later versions come from it);
        ``env``: the processes' environment (default: the cluster's)."""
        say("Starting Triton and the sidecar with the config the operator rendered into the pod's ConfigMap")
        rendered = local_stack.rendered_sidecar_config(self.cluster, NAMESPACE)
        if rendered is None:
            raise DemoError("the operator rendered no ConfigMap with a sidecar.yaml")
        listen = {"host": "127.0.0.1", **self.ports}
        plane = local_stack.start_data_plane(
            self.stack,
            rendered,
            repository,
            state_dir=self.state_dir,
            listen=listen,
            env=env or self.cluster.env,
            model_source=model_source,
        )
        self.triton, self.sidecar = plane.triton, plane.sidecar
        print(f"Triton {self.triton.http_url} (explicit model control, loopback only)")
        print(
            f"sidecar HTTP 127.0.0.1:{self.ports['http']}  gRPC 127.0.0.1:{self.ports['grpc']}  "
            f"metrics http://127.0.0.1:{self.ports['metrics']}/metrics"
        )

    # -- the acts ------------------------------------------------------------------------------
    def guard_traffic(self, build: Any) -> None:
        say("Traffic through the sidecar (tritonclient, unchanged), per input category")
        data = traffic_sets(build, self.requests)
        self.validation = FreshRows(np.asarray(build.dataset("validation").inputs, dtype=np.float32))
        outcomes = {name: self.send(inputs) for name, inputs in data.items()}
        out.print_table(outcomes)
        self.record["traffic"] = {name: dict(o.decisions) for name, o in outcomes.items()}
        say("What Prometheus sees (scraped from the sidecar every second)")
        query = "sum by (decision) (guardedmodel_requests_total)"
        counts = self.settled_query(query)
        out.print_decision_counts(query, counts)
        self.record["prometheus_requests"] = counts

    def per_row_batches(self, build: Any) -> None:
        say("One batch of 32 rows, three of them handwritten digits (far-OOD): answered row by row")
        good = np.asarray(build.dataset("validation").inputs, dtype=np.float32)
        odd = np.asarray(build.dataset("digits").inputs, dtype=np.float32)
        rng = np.random.default_rng(11)
        alpha = self.ood_alpha
        batch, odd_positions = mixed_batch(good[rng.choice(len(good), 32)], odd[:3])
        mixed = send_batches(self.sidecar_address(), batch)
        out.print_mixed_batch(mixed, odd_positions, alpha)
        say("The stated error rate: 640 in-distribution rows in batches of 32")
        rows = good[rng.choice(len(good), 640, replace=False)]
        measured = send_batches(self.sidecar_address(), rows)
        out.print_rejection_rate(measured, alpha)
        self.record["per_row"] = {
            "mixed_batch": mixed.decisions,
            "mixed_batch_digit_rows": odd_positions,
            "mixed_batch_blanked": mixed.blanked,
            "in_distribution_rows": len(measured.decisions),
            "in_distribution_rejected": measured.decisions.count("reject"),
            "alpha": alpha,
        }

    def settled_query(self, query: str) -> dict[str, str]:
        """Per decision, once two scrapes agree, so the figures cover all the traffic just sent."""
        previous: dict[str, str] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            current = {s["metric"].get("decision", "?"): s["value"][1] for s in self.prometheus.query(query)}
            if current and current == previous:
                break
            previous = current
            time.sleep(1.5)
        return previous

    def rollout_canary(self, what: str = "a weaker model") -> None:
        say(f'Rolling out version 2 ({what}): kubectl patch gm fashion version "2"')
        pods_before = self.model_pods()
        self.patch_version("2")
        deadline = time.monotonic() + self.timeout
        seen_weights: list[int] = []
        comparison: dict[str, Any] = {}
        while time.monotonic() < deadline:
            self.send(self.validation.next(self.requests), while_rolling=True)
            status = self.status()
            if (status.get("comparison") or {}).get("decision") in ("passed", "failed") and not comparison:
                comparison = dict(status["comparison"])
                out.print_comparison(comparison)
            weight = int(status.get("canaryWeight") or 0)
            if status.get("canaryVersion") and weight and (not seen_weights or seen_weights[-1] != weight):
                seen_weights.append(weight)
                print(f"  canary v{status['canaryVersion']} at {weight}% of traffic")
            # Wait for the canary's own outcome: the phase alone may still show the continuous guard's
            # verdict on version 1 (the traffic act sent it out-of-distribution inputs on purpose).
            decided = any(
                h.get("version") == "2" and h.get("outcome") in ("RolledBack", "Promoted")
                for h in status.get("history") or []
            )
            if decided or (status.get("stableVersion") == "2" and not status.get("canaryVersion")):
                break
        status = self.status()
        out.print_phase(status)
        out.print_history(status)
        out.print_events(self.model_events())
        pods_after = self.model_pods()
        out.print_pods(pods_before, pods_after)
        self.record["canary"] = {
            "weights": seen_weights,
            "status": status,
            "comparison": comparison,
            "pods_before": pods_before,
            "pods_after": pods_after,
        }
        if status.get("phase") == "RolledBack":
            say('Acknowledging the rollback: the spec goes back to the serving version (patch version "1")')
            self.patch_version("1")
            status = self.wait_status("phase Ready", lambda s: s.get("phase") == "Ready")
            out.print_phase(status)

    def drift_and_guard(self) -> None:
        say(
            "Inputs drift (grey-level shift on every request); the continuous guard watches the stable version"
        )
        deadline = time.monotonic() + self.timeout
        fired: set[str] = set()
        drift_score: float | None = None
        drift_p_value: float | None = None
        guard_acted = False
        while time.monotonic() < deadline and not (fired and guard_acted and drift_score is not None):
            self.send(np.clip(self.validation.next(self.requests) * 0.5 + 0.45, 0.0, 1.0))
            fired = {
                a["labels"]["alertname"]
                for a in self.alertmanager.alerts()
                if a["labels"].get("alertname") in DRIFT_ALERTS
            }
            scores = self.prometheus.query('max(guardedmodel_drift_score{statistic="score"})')
            value = float(scores[0]["value"][1]) if scores else float("nan")
            drift_score = value if np.isfinite(value) else drift_score
            # the drift test's p-value of the stable version's last window (NaN: too few rows)
            p_values = self.prometheus.query("min(guardedmodel_drift_p_value)")
            value = float(p_values[0]["value"][1]) if p_values else float("nan")
            drift_p_value = value if np.isfinite(value) else drift_p_value
            status = self.status()
            degraded = any(
                c["type"] == "Degraded" and c["status"] == "True" for c in status.get("conditions", [])
            )
            guard_acted = degraded or status.get("phase") in ("Degraded", "RolledBack")
        status = self.status()
        out.print_drift(status, drift_score, drift_p_value, fired)
        self.record["drift"] = {
            "alerts": sorted(fired),
            "drift_score": drift_score,
            "drift_p_value": drift_p_value,
            "status": status,
        }

    def summary(self) -> None:
        (self.state_dir / "summary.json").write_text(json.dumps(self.record, indent=2, default=str))
        say("Done")
        out.print_endpoints(
            cluster_state_dir=self.cluster.state_dir,
            sidecar=self.sidecar_address(),
            metrics=None if self.pods else f"127.0.0.1:{self.ports['metrics']}",
            prometheus_url=self.prometheus.url,
            state_dir=self.state_dir,
        )

    # -- talking to the stack ------------------------------------------------------------------
    def sidecar_address(self) -> str:
        return self.pods.sidecar_address() if self.pods else f"127.0.0.1:{self.ports['http']}"

    def send(self, inputs: np.ndarray, *, while_rolling: bool = False) -> Outcome:
        """One request per input. On real pods a version change rolls the pod: a burst that meets
        the old pod going away is sent again to the Service's endpoint of the moment."""
        if not (while_rolling and self.pods):
            return send(self.sidecar_address(), inputs)
        for _ in range(3):
            try:
                return send(self.sidecar_address(), inputs)
            except connection_lost():
                time.sleep(1)
        return send(self.sidecar_address(), inputs)

    def check_alive(self) -> None:
        if self.pods:
            self.pods.check_alive()
        else:
            self.operator.check_alive()

    def model_pods(self) -> dict[str, int]:
        """The model's pods that are Running: uid → container restarts."""
        pods = self.cluster.kubectl_json(
            "get", "pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/instance=fashion"
        )["items"]
        return {
            p["metadata"]["uid"]: sum(
                c.get("restartCount", 0) for c in p["status"].get("containerStatuses") or []
            )
            for p in pods
            if (p.get("status") or {}).get("phase") == "Running"
            and not p["metadata"].get("deletionTimestamp")
        }

    def status(self) -> dict[str, Any]:
        gm = self.cluster.kubectl_json("get", "gm", "fashion", "-n", NAMESPACE)
        return dict(gm.get("status") or {})

    def wait_status(self, what: str, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            self.check_alive()
            status = self.status()
            if predicate(status):
                return status
            time.sleep(1)
        log = self.pods.operator_logs() if self.pods else log_tail(self.operator.log_path)
        raise DemoError(
            f"GuardedModel never reached {what}; status: {json.dumps(status)}\noperator log:\n{log}"
        )

    def patch_version(self, version: str) -> None:
        patch = json.dumps({"spec": {"model": {"version": version}}})
        self.cluster.kubectl("patch", "gm", "fashion", "-n", NAMESPACE, "--type=merge", "-p", patch)

    def model_events(self) -> str:
        """The GuardedModel's events, oldest first, as REASON MESSAGE lines."""
        return self.cluster.kubectl(
            "get",
            "events",
            "-n",
            NAMESPACE,
            "--field-selector",
            "involvedObject.kind=GuardedModel",
            "--sort-by=.lastTimestamp",
            "-o",
            "custom-columns=REASON:.reason,MESSAGE:.message",
            "--no-headers",
        ).stdout.strip()

    def wait_for_interrupt(self) -> None:
        print("\neverything stays up; Ctrl-C to stop", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)


def set_repository(manifest: dict[str, Any], repository: str) -> dict[str, Any]:
    manifest["spec"]["model"]["repository"] = repository
    return manifest
