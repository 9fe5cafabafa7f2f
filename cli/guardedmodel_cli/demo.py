"""`guardedmodel demo`: the whole product on one machine, end to end.

What runs, all on loopback: a real Kubernetes control plane with kwok GPU
nodes, the operator, Prometheus and Alertmanager with the chart's alert
rules, a real Triton serving the worked Fashion-MNIST example, and the guard
sidecar in front of it. kwok simulates the pods, so the Triton and sidecar
that the pod would run are started here as local processes, with the config
the operator rendered into the pod's ConfigMap; the sidecar watches the
GuardedModel's status for routing exactly as it does in a cluster.

The story it tells:
1. a manifest is applied and the operator brings the model up;
2. good, corrupted and out-of-distribution traffic goes through the sidecar
   with an unchanged tritonclient, and a table shows what the gate and the
   scorer decided;
3. version 2 (a weaker model) is rolled out as a canary; the operator reads
   the sidecar's metrics from Prometheus and rolls it back;
4. the inputs drift (a grey-level shift); the continuous guard sees the
   drift score and OOD rate break their thresholds and an alert fires.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from guardedmodel_testground.cluster import LocalCluster
from guardedmodel_testground.paths import default_state_dir, repo_root
from guardedmodel_testground.procs import ManagedProcess, StartError, free_port, http_ok, log_tail, wait_until
from guardedmodel_testground.prometheus import Alertmanager, Prometheus, ScrapeJob
from guardedmodel_testground.triton import TritonServer

NAMESPACE = "demo"
MANIFEST = "examples/fashion-mnist.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", type=Path, default=None, help="default: .state/demo in the checkout")
    parser.add_argument(
        "--keep", action="store_true", help="leave everything running until Ctrl-C, to explore it by hand"
    )
    parser.add_argument("--requests", type=int, default=40, help="requests per traffic category (default 40)")
    parser.add_argument("--timeout", type=float, default=180, help="seconds to wait for each phase")


def run(args: argparse.Namespace) -> int:
    state_dir = (args.state_dir or default_state_dir() / "demo").resolve()
    if (state_dir / "cluster" / "state.json").exists():
        print(
            f"a demo is already running from {state_dir} (stop it, or pass another --state-dir)",
            file=sys.stderr,
        )
        return 1
    # Each run starts from scratch: a previous run's etcd data would replay its objects.
    shutil.rmtree(state_dir, ignore_errors=True)
    demo = Demo(state_dir, requests=args.requests, timeout=args.timeout, keep=args.keep)
    try:
        demo.run()
    except (StartError, DemoError, subprocess.CalledProcessError) as error:
        detail = f"{error}\n{error.stderr}" if isinstance(error, subprocess.CalledProcessError) else error
        print(f"\ndemo failed: {detail}", file=sys.stderr)
        print(f"logs are in {state_dir}", file=sys.stderr)
        return 1
    return 0


class DemoError(RuntimeError):
    """A phase of the demo did not reach the state it waits for."""


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


@dataclass
class Outcome:
    decisions: Counter[str] = field(default_factory=Counter)
    confidences: list[float] = field(default_factory=list)
    ood_scores: list[float] = field(default_factory=list)
    versions: Counter[str] = field(default_factory=Counter)
    refusals: list[str] = field(default_factory=list)


class Demo:
    def __init__(self, state_dir: Path, *, requests: int, timeout: float, keep: bool) -> None:
        self.state_dir = state_dir
        self.requests = requests
        self.timeout = timeout
        self.keep = keep
        self.stack = contextlib.ExitStack()
        # What happened, for people (printed) and for the end-to-end test (summary.json).
        self.record: dict[str, Any] = {}
        self.in_distribution = np.empty((0, 1, 28, 28), dtype=np.float32)
        self.ports = {name: free_port() for name in ("http", "grpc", "metrics", "operator_metrics", "health")}

    # -- the story ---------------------------------------------------------------------------
    def run(self) -> None:
        with self.stack:
            build = self.build_example()
            self.cluster = self.stack.enter_context(LocalCluster(self.state_dir / "cluster"))
            print(f"cluster up: {self.cluster.server_url}")
            self.start_monitoring()
            self.start_operator()
            self.apply_manifest(build.repository)
            self.start_data_plane(build.repository)

            say("Traffic through the sidecar (tritonclient, unchanged), per input category")
            data = self.traffic_sets(build)
            outcomes = {name: self.send(inputs) for name, inputs in data.items()}
            self.print_table(outcomes)
            self.record["traffic"] = {name: dict(o.decisions) for name, o in outcomes.items()}
            self.print_metrics()

            self.rollout_canary()
            self.drift_and_guard()
            self.summary()
            if self.keep:
                self.wait_for_interrupt()

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

    def start_monitoring(self) -> None:
        say(
            "Prometheus + Alertmanager with the chart's alert rules ('for' shortened to 5s), scraping the sidecar"
        )
        self.alertmanager = self.stack.enter_context(Alertmanager(self.state_dir / "alertmanager"))
        rules = self.alert_rules()
        job = ScrapeJob(
            "guardedmodel-sidecar",
            [f"127.0.0.1:{self.ports['metrics']}"],
            # What the ServiceMonitor's relabelling adds in a cluster.
            labels={"namespace": NAMESPACE, "guardedmodel_io_name": "fashion"},
        )
        self.prometheus = self.stack.enter_context(
            Prometheus(
                self.state_dir / "prometheus",
                [job],
                rule_files=[rules],
                alertmanager_url=self.alertmanager.url,
            )
        )
        print(f"Prometheus {self.prometheus.url}   Alertmanager {self.alertmanager.url}")

    def alert_rules(self) -> Path:
        """The alert rules the chart ships (its PrometheusRule), as a plain rule file."""
        source = repo_root() / "charts" / "guardedmodel" / "files" / "alerts.yaml"
        if not source.exists():
            raise DemoError(f"the chart's alert rules are missing: {source}")
        document = yaml.safe_load(source.read_text())
        groups = document.get("groups") or document.get("spec", {}).get("groups")
        # The rules wait minutes before firing, as they should in production; the demo has
        # seconds, so its copy fires after 5 s of breach.
        for group in groups:
            for rule in group.get("rules", []):
                if "for" in rule:
                    rule["for"] = "5s"
        target = self.state_dir / "alerts.yaml"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(yaml.safe_dump({"groups": groups}))
        return target

    def start_operator(self) -> None:
        say("Installing the CRD and starting the operator")
        self.cluster.kubectl("apply", "-f", str(repo_root() / "crds"))
        self.cluster.kubectl(
            "wait", "--for=condition=Established", "crd/guardedmodels.guardedmodel.io", "--timeout=60s"
        )
        self.cluster.kubectl("create", "namespace", NAMESPACE)
        env = {
            **self.cluster.env,
            "GUARDEDMODEL_NAMESPACES": NAMESPACE,
            "GUARDEDMODEL_PROMETHEUS_URL": self.prometheus.url,
            # Prometheus scrapes every second here, so a few seconds of samples are enough per check.
            "GUARDEDMODEL_ROLLOUT_MIN_WINDOW_S": "5",
            "GUARDEDMODEL_METRICS_HOST": "127.0.0.1",
            "GUARDEDMODEL_METRICS_PORT": str(self.ports["operator_metrics"]),
            "GUARDEDMODEL_HEALTH_ENDPOINT": f"http://127.0.0.1:{self.ports['health']}/healthz",
        }
        operator = self.start_process(
            "operator",
            [self.executable(), "operator"],
            env,
            ready_url=f"http://127.0.0.1:{self.ports['health']}/healthz",
            timeout=60,
        )
        self.operator = operator
        print(f"operator running (log {operator.log_path})")

    def apply_manifest(self, repository: Path) -> None:
        say(f"kubectl apply -f {MANIFEST}  (repository pointed at the local build)")
        manifest = yaml.safe_load((repo_root() / MANIFEST).read_text())
        manifest["metadata"]["namespace"] = NAMESPACE
        manifest["spec"]["model"]["repository"] = f"file://{repository}"
        self.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))
        self.wait_status("phase Ready", lambda s: s.get("phase") == "Ready")
        print(self.cluster.kubectl("get", "gm", "-n", NAMESPACE).stdout.rstrip())
        print(
            self.cluster.kubectl("get", "deploy,svc,cm,networkpolicy,pods", "-n", NAMESPACE).stdout.rstrip()
        )

    def start_data_plane(self, repository: Path) -> None:
        say("Starting Triton and the sidecar with the config the operator rendered into the pod's ConfigMap")
        configmaps = self.cluster.kubectl_json("get", "configmaps", "-n", NAMESPACE)["items"]
        rendered = next(
            (cm["data"]["sidecar.yaml"] for cm in configmaps if "sidecar.yaml" in cm.get("data", {})), None
        )
        if rendered is None:
            raise DemoError("the operator rendered no ConfigMap with a sidecar.yaml")
        self.triton = self.stack.enter_context(
            TritonServer(repository, model_control_mode="explicit", log_dir=self.state_dir / "logs")
        )
        config = yaml.safe_load(rendered)
        # What differs between the pod and this machine: addresses, ports, writable paths.
        config["triton"] = {"httpUrl": self.triton.http_url, "grpcUrl": self.triton.grpc_url}
        config["modelRepository"] = str(repository)
        config["listen"] = {
            "host": "127.0.0.1",
            "http": self.ports["http"],
            "grpc": self.ports["grpc"],
            "metrics": self.ports["metrics"],
        }
        config["auditDir"] = str(self.state_dir / "audit")
        config["spoolDir"] = str(self.state_dir / "review-spool")
        config_path = self.state_dir / "sidecar.yaml"
        config_path.write_text(yaml.safe_dump(config))
        sidecar = self.start_process(
            "sidecar",
            [self.executable(), "sidecar", "--config", str(config_path)],
            self.cluster.env,
            ready_url=f"http://127.0.0.1:{self.ports['http']}/v2/health/ready",
            timeout=120,
        )
        self.sidecar = sidecar
        print(f"Triton {self.triton.http_url} (explicit model control, loopback only)")
        print(
            f"sidecar HTTP 127.0.0.1:{self.ports['http']}  gRPC 127.0.0.1:{self.ports['grpc']}  "
            f"metrics http://127.0.0.1:{self.ports['metrics']}/metrics"
        )

    # -- traffic -------------------------------------------------------------------------------
    def traffic_sets(self, build: Any) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(7)

        def take(name: str) -> np.ndarray:
            inputs = np.asarray(build.dataset(name).inputs, dtype=np.float32)
            return inputs[rng.choice(len(inputs), size=self.requests, replace=False)]

        good = take("validation")
        self.in_distribution = good
        corrupted = good.copy()
        corrupted[:, 0, :4, :4] = np.nan
        return {
            "in-distribution": good,
            "held-out classes (near-OOD)": take("held-out-classes"),
            "handwritten digits (far-OOD)": take("digits"),
            "inverted images": take("inverted"),
            "grey-level shift": take("grey-shift"),
            "out of range (x255)": good * 255.0,
            "NaN pixels": corrupted,
        }

    def send(self, inputs: np.ndarray) -> Outcome:
        import tritonclient.http as httpclient
        from tritonclient.utils import InferenceServerException

        client = httpclient.InferenceServerClient(f"127.0.0.1:{self.ports['http']}")
        outcome = Outcome()
        try:
            for sample in inputs:
                tensor = httpclient.InferInput("INPUT", [1, *sample.shape], "FP32")
                tensor.set_data_from_numpy(sample[None], binary_data=True)
                try:
                    result = client.infer("fashion-mnist", [tensor])
                except InferenceServerException as error:
                    # 400: the gate refused a malformed input; 422: the scorer rejected it as OOD.
                    kind = "rejected as OOD" if str(error.status()) == "422" else "refused by gate"
                    outcome.decisions[kind] += 1
                    outcome.refusals.append(f"[{error.status()}] {error.message()}")
                    continue
                parameters = result.get_response().get("parameters", {})
                outcome.decisions[parameters.get("guard_decision", "?")] += 1
                outcome.versions[str(parameters.get("model_version", "?"))] += 1
                if parameters.get("guard_confidence") is not None:
                    outcome.confidences.append(float(parameters["guard_confidence"]))
                if parameters.get("guard_ood_score") is not None:
                    outcome.ood_scores.append(float(parameters["guard_ood_score"]))
        finally:
            client.close()
        return outcome

    def print_table(self, outcomes: dict[str, Outcome]) -> None:
        header = (
            f"{'input':30} {'accept':>7} {'review':>7} {'OOD-reject':>10} {'gate-refused':>12} "
            f"{'conf':>6} {'ood':>7}"
        )
        print(header)
        print("-" * len(header))
        for name, outcome in outcomes.items():
            conf = f"{np.mean(outcome.confidences):.2f}" if outcome.confidences else "-"
            ood = f"{np.median(outcome.ood_scores):.1f}" if outcome.ood_scores else "-"
            d = outcome.decisions
            print(
                f"{name:30} {d['accept']:>7} {d['review']:>7} {d['rejected as OOD']:>10} "
                f"{d['refused by gate']:>12} {conf:>6} {ood:>7}"
            )
        refusals = [r for o in outcomes.values() for r in o.refusals[:1]]
        if refusals:
            print("\nwhat a refused caller reads (v2 error body, one example per input category):")
            for reason in dict.fromkeys(refusals):
                print(f"  - {reason}")
        print("conf = mean calibrated confidence of answered requests; ood = median OOD score")

    def print_metrics(self) -> None:
        say("What Prometheus sees (scraped from the sidecar every second)")
        query = "sum by (decision) (guardedmodel_requests_total)"
        print(f"  {query}")
        # Wait until two scrapes agree, so the figures cover all the traffic just sent.
        previous: dict[str, str] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            current = {s["metric"].get("decision", "?"): s["value"][1] for s in self.prometheus.query(query)}
            if current and current == previous:
                break
            previous = current
            time.sleep(1.5)
        for decision, value in sorted(previous.items()):
            print(f"    {decision:8} {value}")
        self.record["prometheus_requests"] = previous

    # -- rollout and drift -----------------------------------------------------------------------
    def rollout_canary(self) -> None:
        say('Rolling out version 2 (a weaker model) as a canary: kubectl patch gm fashion version "2"')
        self.patch_version("2")
        in_dist = self.in_distribution
        deadline = time.monotonic() + self.timeout
        seen_weights: list[int] = []
        while time.monotonic() < deadline:
            self.send(in_dist)
            status = self.status()
            weight = int(status.get("canaryWeight") or 0)
            if status.get("canaryVersion") and weight and (not seen_weights or seen_weights[-1] != weight):
                seen_weights.append(weight)
                print(f"  canary v{status['canaryVersion']} at {weight}% of traffic")
            if status.get("phase") in ("RolledBack", "Degraded") or (
                status.get("stableVersion") == "2" and not status.get("canaryVersion")
            ):
                break
        status = self.status()
        print(f"  phase {status.get('phase')}, stable v{status.get('stableVersion')}")
        self.print_history(status)
        self.print_events()
        self.record["canary"] = {"weights": seen_weights, "status": status}
        if status.get("phase") == "RolledBack":
            say('Acknowledging the rollback: the spec goes back to the serving version (patch version "1")')
            self.patch_version("1")
            status = self.wait_status("phase Ready", lambda s: s.get("phase") == "Ready")
            print(f"  phase {status.get('phase')}, stable v{status.get('stableVersion')}")

    def drift_and_guard(self) -> None:
        say(
            "Inputs drift (grey-level shift on every request); the continuous guard watches the stable version"
        )
        shifted = np.clip(self.in_distribution * 0.5 + 0.45, 0.0, 1.0).astype(np.float32)
        drift_alerts = {
            "GuardedModelDriftHigh",
            "GuardedModelOodRateHigh",
            "GuardedModelLowEstimatedAccuracy",
        }
        deadline = time.monotonic() + self.timeout
        fired: set[str] = set()
        drift_score: float | None = None
        guard_acted = False
        while time.monotonic() < deadline and not (fired and guard_acted and drift_score is not None):
            self.send(shifted)
            fired = {
                a["labels"]["alertname"]
                for a in self.alertmanager.alerts()
                if a["labels"].get("alertname") in drift_alerts
            }
            scores = self.prometheus.query('max(guardedmodel_drift_score{statistic="score"})')
            value = float(scores[0]["value"][1]) if scores else float("nan")
            drift_score = value if np.isfinite(value) else drift_score
            status = self.status()
            degraded = any(
                c["type"] == "Degraded" and c["status"] == "True" for c in status.get("conditions", [])
            )
            guard_acted = degraded or status.get("phase") in ("Degraded", "RolledBack")
        status = self.status()
        if drift_score is not None:
            print(f"  drift score (PSI against the fit's reference, > 0.2 is drift): {drift_score:.2f}")
        print(f"  phase {status.get('phase')}, stable v{status.get('stableVersion')}")
        for condition in status.get("conditions", []):
            print(f"  condition {condition['type']}={condition['status']}: {condition.get('message', '')}")
        print(f"  alerts firing in Alertmanager: {', '.join(sorted(fired)) or 'none'}")
        self.record["drift"] = {"alerts": sorted(fired), "drift_score": drift_score, "status": status}

    def summary(self) -> None:
        (self.state_dir / "summary.json").write_text(json.dumps(self.record, indent=2, default=str))
        say("Done")
        print(f'kubectl:     eval "$(guardedmodel cluster env --state-dir {self.cluster.state_dir})"')
        print(f"sidecar:     http://127.0.0.1:{self.ports['http']}/v2/models/fashion-mnist")
        print(f"metrics:     http://127.0.0.1:{self.ports['metrics']}/metrics")
        print(f"Prometheus:  {self.prometheus.url}/graph")
        print(f"audit log:   {self.state_dir / 'audit'}")
        print(f"logs:        {self.state_dir / 'logs'}")

    # -- helpers -------------------------------------------------------------------------------
    def start_process(
        self, name: str, argv: list[str], env: dict[str, str], *, ready_url: str, timeout: float
    ) -> ManagedProcess:
        """Start a local process for the rest of the demo and wait until `ready_url` answers 2xx."""
        process = ManagedProcess(name, argv, self.state_dir / "logs" / f"{name}.log", env=env).start()
        self.stack.callback(process.stop)
        wait_until(f"{name} at {ready_url}", lambda: http_ok(ready_url), timeout, process=process)
        return process

    def executable(self) -> str:
        return str(Path(sys.executable).with_name("guardedmodel"))

    def status(self) -> dict[str, Any]:
        gm = self.cluster.kubectl_json("get", "gm", "fashion", "-n", NAMESPACE)
        return dict(gm.get("status") or {})

    def wait_status(self, what: str, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            self.operator.check_alive()
            status = self.status()
            if predicate(status):
                return status
            time.sleep(1)
        raise DemoError(
            f"GuardedModel never reached {what}; status: {json.dumps(status)}\n"
            f"operator log:\n{log_tail(self.operator.log_path)}"
        )

    def patch_version(self, version: str) -> None:
        patch = json.dumps({"spec": {"model": {"version": version}}})
        self.cluster.kubectl("patch", "gm", "fashion", "-n", NAMESPACE, "--type=merge", "-p", patch)

    def print_history(self, status: dict[str, Any]) -> None:
        for entry in status.get("history", [])[-5:]:
            print(f"  history: v{entry.get('version')} {entry.get('outcome')} — {entry.get('reason', '')}")

    def print_events(self) -> None:
        events = self.cluster.kubectl(
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
        for line in events.splitlines()[-6:]:
            print(f"  event: {line}")

    def wait_for_interrupt(self) -> None:
        print("\neverything stays up; Ctrl-C to stop", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
