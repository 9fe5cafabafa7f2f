"""Time from drift onset to traffic on the last good version, on the real local parts.

    .venv/bin/python bench/rollback_time.py [--runs 5s=6,30s=4] [--cases canary,promoted]

What runs, as in `guardedmodel demo`: the local control plane (kwok), the real operator process,
Prometheus, a real Triton (CPU) with the worked example's versions 1 and 2, and the real sidecar
process following the GuardedModel's status. Each run is a fresh GuardedModel (its own name, so no
series of an earlier run is in its check window) with its own sidecar in front of the one Triton.

Two cases, each at every interval asked for:
- canary: version 1 stable, version 2 a canary at its first step; the inputs drift (a grey-level
  shift of fresh validation rows); end = the moment after which no answer comes from version 2
  (the status shows RolledBack);
- promoted: version 2 promoted through its canary (lastGoodVersion 1); the inputs drift; end = the
  first answer from version 1, after which every answer is from version 1.

The onset falls at a uniform phase within the interval after the routing change that starts the
operator's check schedule. The thresholds are set so that only drift can stop version 2 (the
example's drift limits; the quality limits wide open, version 2 is a weaker model by design).

Along the way it records, from outside, when the sidecar closed the first drifted window (its
/metrics, polled), when Prometheus scraped it (the sample's timestamp), when the operator ran the
failing check (its check counter, polled, and its log line), when the status said RolledBack (a
watch) and when the sidecar switched (its log line and the answers). A Flagger-style analysis of
the same knobs (rollback_model) is computed next to it.

A benchmark, not a test: it writes bench/results/rollback.json and bench/results/rollback.png.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rollback_model import Knobs, Run, first_rise, rises, traffic_on_good_version
from rollback_observe import (
    CounterPoll,
    StatusWatch,
    Traffic,
    counter_sample,
    drift_windows,
    first_after,
    log_times,
    scraped_at,
)
from rollback_report import markdown_table, plot, scenario_summary

from guardedmodel_cli.demo_traffic import FreshRows
from guardedmodel_testground import stack as local_stack
from guardedmodel_testground.cluster import LocalCluster
from guardedmodel_testground.procs import ManagedProcess, free_port, log_tail
from guardedmodel_testground.prometheus import FileDiscoveryJob
from guardedmodel_testground.sidecar_config import localize_sidecar_config
from guardedmodel_testground.triton import TritonServer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
MANIFEST = ROOT / "examples" / "fashion-mnist.yaml"
NAMESPACE = "bench"
CASES = ("canary", "promoted")
#: Only drift stops version 2 (a weaker model by design: review rate ~0.7, estimated accuracy ~0.5):
#: the example's drift and error limits stay, its quality limits are opened.
QUALITY_LIMITS_OPEN = {"maxOodRate": 0.97, "maxReviewRate": 1.0, "minEstimatedAccuracy": 0.0}


#: The sidecar's log line when it routes everything to version 1 again (rollback of either case).
ROUTED_BACK = r"routing is now Routing\(stable_version='1', canary_version=None"


def drift_only_thresholds() -> dict[str, float]:
    example = yaml.safe_load(MANIFEST.read_text())["spec"]["rollout"]["thresholds"]
    return {**example, **QUALITY_LIMITS_OPEN}


def manifest(name: str, version: str, knobs: Knobs, repository: Path) -> dict[str, Any]:
    """The worked example's manifest with the bench's knobs."""
    document: dict[str, Any] = yaml.safe_load(MANIFEST.read_text())
    document["metadata"] = {"name": name, "namespace": NAMESPACE}
    spec = document["spec"]
    spec["model"]["repository"] = f"file://{repository}"
    spec["model"]["version"] = version
    # Flagged, not refused: every answer names the version that gave it.
    spec["gate"]["ood"]["action"] = "flag"
    spec["drift"] = {"window": knobs.drift_window_rows, "alpha": 0.001, "minSamples": knobs.drift_min_samples}
    # Measured from the canary on: the example's shadow and replay phase comes before it and would
    # only delay the canary's start.
    for phase in ("shadow", "replay"):
        spec["rollout"].pop(phase, None)
    spec["rollout"].update(
        steps=list(knobs.steps),
        interval=f"{knobs.interval_s}s",
        failureLimit=knobs.failure_limit,
        thresholds=drift_only_thresholds(),
    )
    return document


class Bench:
    def __init__(self, state_dir: Path, args: argparse.Namespace) -> None:
        self.state_dir = state_dir
        self.args = args
        self.rng = np.random.default_rng(args.seed)
        state_dir.mkdir(parents=True, exist_ok=True)
        self.stack = contextlib.ExitStack()
        self.targets = state_dir / "targets.json"

    def __enter__(self) -> Bench:
        from guardedmodel_fit.example import DEFAULT_OUT, build_example

        self.build = build_example(DEFAULT_OUT, versions=("1", "2"), progress=True)
        rows = np.asarray(self.build.dataset("validation").inputs, dtype=np.float32)
        self._write_targets(None, None)
        self.cluster = self.stack.enter_context(LocalCluster(self.state_dir / "cluster"))
        monitoring = local_stack.start_monitoring(
            self.stack, self.state_dir, [FileDiscoveryJob("guardedmodel-sidecar", self.targets)], []
        )
        self.prometheus = monitoring.prometheus
        local_stack.install_crd(self.cluster, NAMESPACE)
        self.operator_ports = local_stack.OperatorPorts.free()
        self.operator = local_stack.start_operator(
            self.stack,
            self.cluster,
            namespace=NAMESPACE,
            prometheus_url=self.prometheus.url,
            ports=self.operator_ports,
            log_dir=self.state_dir / "logs",
            extra_env={"GUARDEDMODEL_ROLLOUT_MIN_WINDOW_S": str(self.args.min_window)},
        )
        self.triton = self.stack.enter_context(
            TritonServer(
                self.build.repository, model_control_mode="explicit", log_dir=self.state_dir / "logs"
            )
        )
        self.traffic = Traffic(FreshRows(rows), self.args.rate).start()
        self.stack.callback(self.traffic.stop)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()

    def _write_targets(self, target: str | None, name: str | None) -> None:
        groups = (
            []
            if target is None
            else [{"targets": [target], "labels": {"namespace": NAMESPACE, "guardedmodel_io_name": name}}]
        )
        tmp = self.targets.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups))
        tmp.replace(self.targets)  # Prometheus must never read half a file

    # -- one run ---------------------------------------------------------------------------------
    def run(self, case: str, knobs: Knobs, index: int) -> Run:
        name = f"{case}-{knobs.interval_s}s-{index}"
        run = Run(case, knobs.interval_s, index, name)
        with contextlib.ExitStack() as per_run:
            self.cluster.kubectl(
                "apply", "-f", "-", input=yaml.safe_dump(manifest(name, "1", knobs, self.build.repository))
            )
            watch = StatusWatch(self.cluster, NAMESPACE, name)
            per_run.callback(watch.stop)
            per_run.callback(self._delete, name)
            self._wait(run, "version 1 Ready", lambda: watch.latest().get("phase") == "Ready", 120)
            sidecar, metrics_url = self._start_sidecar(per_run, name, index)
            poll = CounterPoll(
                {
                    "drifted_windows": (
                        metrics_url,
                        counter_sample("guardedmodel_drift_windows_total", version="2", decision="drifted"),
                    ),
                    "checks_failed": (
                        self._operator_metrics,
                        counter_sample("guardedmodel_operator_rollout_checks_total", result="failed"),
                    ),
                    "checks_passed": (
                        self._operator_metrics,
                        counter_sample("guardedmodel_operator_rollout_checks_total", result="passed"),
                    ),
                    "checks_no_data": (
                        self._operator_metrics,
                        counter_sample("guardedmodel_operator_rollout_checks_total", result="no_data"),
                    ),
                }
            ).start()
            per_run.callback(poll.stop)
            self._wait(
                run,
                "Prometheus scraping the sidecar",
                lambda: bool(
                    self.prometheus.query(f'guardedmodel_requests_total{{guardedmodel_io_name="{name}"}}')
                ),
                30,
            )
            self._patch_version(name, "2")
            if case == "canary":
                started = self._wait_for(
                    run,
                    watch,
                    "canary 2 at its first step",
                    120,
                    lambda s: s.get("canaryVersion") == "2" and s.get("canaryWeight") == knobs.steps[0],
                )
            else:
                started = self._wait_for(
                    run,
                    watch,
                    "version 2 promoted",
                    120 + 4 * knobs.interval_s,
                    lambda s: (
                        s.get("stableVersion") == "2"
                        and not s.get("canaryVersion")
                        and s.get("lastGoodVersion") == "1"
                    ),
                )
            if started is None:
                return run
            phase = float(self.rng.uniform())
            run.onset_phase = phase
            time.sleep(max(0.0, started + phase * knobs.interval_s - time.time()))
            self.traffic.drifting.set()
            deadline = time.time() + 3 * knobs.interval_s + 60
            rolled_back = None
            while time.time() < deadline and rolled_back is None:
                time.sleep(0.2)
                rolled_back = watch.first_at(_rolled_back, after=started)
                self.operator.check_alive()
                sidecar.check_alive()
            time.sleep(2.0)  # answers after the status write: the sidecar's switch is in them
            self.traffic.drifting.clear()
            self._measure(run, knobs, watch, poll, sidecar, started, rolled_back)
        return run

    def _measure(
        self,
        run: Run,
        knobs: Knobs,
        watch: StatusWatch,
        poll: CounterPoll,
        sidecar: ManagedProcess,
        started: float,
        rolled_back: float | None,
    ) -> None:
        answers = self.traffic.trace()
        onset = self.traffic.onset
        if onset is None:
            run.failure = "no drifted request was answered"
            return
        after = [a for a in answers if a.sent >= onset]
        run.answers_after_onset = {
            str(v): sum(1 for a in after if a.version == v) for v in {a.version for a in after}
        }
        status = watch.latest()
        entry = next(
            (h for h in reversed(status.get("history") or []) if h.get("outcome") == "RolledBack"), None
        )
        run.rollback_reason = entry.get("reason") if entry else None
        good = traffic_on_good_version(answers, "2", onset)
        operator_log = self.operator.log_path
        events = {
            "drift_window_closed": first_rise(poll.series["drifted_windows"], onset),
            "prometheus_scraped": scraped_at(self.prometheus, run.name, "2", onset),
            "failed_check_counted": first_rise(poll.series["checks_failed"], onset),
            "operator_log_rollback": first_after(log_times(operator_log, r"rolled back to"), onset),
            "status_rolled_back": rolled_back,
            "sidecar_log_switch": first_after(log_times(sidecar.log_path, ROUTED_BACK), onset),
            "traffic_on_good_version": good,
        }
        run.times = {k: None if v is None else round(v - onset, 3) for k, v in events.items()}
        run.times["routing_change"] = round(started - onset, 3)
        since = started - knobs.interval_s
        run.checks = sorted(
            (round(t - onset, 3), result)
            for result in ("passed", "failed", "no_data")
            for t in rises(poll.series[f"checks_{result}"], since)
        )
        run.drift_windows = [
            {**window, "scraped": round(float(window["scraped"] or 0) - onset, 3)}
            for window in drift_windows(self.prometheus, run.name, "2", since)
        ]
        before = [s.status for s in watch.seen if s.at <= (rolled_back or time.time())]
        weights = [int(s.get("canaryWeight") or 0) for s in before if s.get("canaryVersion") == "2"]
        run.weight_at_rollback = weights[-1] if weights and run.case == "canary" else None
        if rolled_back is None:
            run.failure = (
                f"no rollback within {3 * knobs.interval_s + 60}s; status {json.dumps(status)[:400]}"
            )
        elif good is None:
            run.failure = "the status shows the rollback but version 2 still answered the last request"
        else:
            run.ok = True
            run.onset_to_good_s = run.times["traffic_on_good_version"]
            run.onset_to_status_s = run.times["status_rolled_back"]

    # -- helpers ---------------------------------------------------------------------------------
    @property
    def _operator_metrics(self) -> str:
        return f"http://127.0.0.1:{self.operator_ports.metrics}/metrics"

    def _start_sidecar(
        self, per_run: contextlib.ExitStack, name: str, index: int
    ) -> tuple[ManagedProcess, str]:
        rendered = local_stack.rendered_sidecar_config(self.cluster, NAMESPACE)
        if rendered is None:
            raise RuntimeError("the operator rendered no ConfigMap with a sidecar.yaml")
        listen = {"host": "127.0.0.1", "http": free_port(), "grpc": free_port(), "metrics": free_port()}
        workdir = self.state_dir / name
        config = localize_sidecar_config(
            rendered,
            triton={"httpUrl": self.triton.http_url, "grpcUrl": self.triton.grpc_url},
            repository=self.build.repository,
            listen=listen,
            audit_dir=workdir / "audit",
            spool_dir=workdir / "review-spool",
        )
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "sidecar.yaml").write_text(yaml.safe_dump(config))
        sidecar = local_stack.start_ready_process(
            per_run,
            f"sidecar-{name}",
            local_stack.guardedmodel_command("sidecar", "--config", str(workdir / "sidecar.yaml")),
            self.cluster.env,
            log_dir=self.state_dir / "logs",
            ready_url=f"http://127.0.0.1:{listen['http']}/v2/health/ready",
            timeout=120,
        )
        self._write_targets(f"127.0.0.1:{listen['metrics']}", name)
        self.traffic.retarget(f"127.0.0.1:{listen['http']}")
        per_run.callback(self.traffic.retarget, None)
        per_run.callback(self._write_targets, None, None)
        return sidecar, f"http://127.0.0.1:{listen['metrics']}/metrics"

    def _patch_version(self, name: str, version: str) -> None:
        patch = json.dumps({"spec": {"model": {"version": version}}})
        self.cluster.kubectl("patch", "gm", name, "-n", NAMESPACE, "--type=merge", "-p", patch)

    def _delete(self, name: str) -> None:
        # Foreground: the ConfigMap goes with it, so the next run reads its own.
        self.cluster.kubectl(
            "delete",
            "gm",
            name,
            "-n",
            NAMESPACE,
            "--cascade=foreground",
            "--wait=true",
            "--timeout=60s",
            check=False,
        )

    def _wait(self, run: Run, what: str, probe: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.operator.check_alive()
            if probe():
                return
            time.sleep(0.3)
        raise RuntimeError(
            f"{run.name}: timed out waiting for {what}\noperator log:\n{log_tail(self.operator.log_path)}"
        )

    def _wait_for(
        self,
        run: Run,
        watch: StatusWatch,
        what: str,
        timeout: float,
        predicate: Callable[[dict[str, Any]], bool],
    ) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.operator.check_alive()
            when = watch.first_at(predicate)
            if when is not None:
                return when
            if any(h.get("outcome") == "RolledBack" for h in watch.latest().get("history") or []):
                break
            time.sleep(0.2)
        run.failure = f"never reached {what}; status {json.dumps(watch.latest())[:600]}"
        return None


def _rolled_back(status: dict[str, Any]) -> bool:
    return any(
        h.get("version") == "2" and h.get("outcome") == "RolledBack" for h in status.get("history") or []
    )


def parse_runs(text: str) -> dict[int, int]:
    """'5s=6,30s=4' -> {5: 6, 30: 4}"""
    out = {}
    for part in text.split(","):
        interval, _, count = part.partition("=")
        out[int(interval.strip().removesuffix("s"))] = int(count)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="5s=6,30s=4", help="interval=runs per case (default 5s=6,30s=4)")
    parser.add_argument("--cases", default=",".join(CASES), help="canary,promoted")
    parser.add_argument(
        "--steps", default="50,100", help="spec.rollout.steps (the canary starts at the first)"
    )
    parser.add_argument("--failure-limit", type=int, default=1, help="spec.rollout.failureLimit")
    parser.add_argument("--drift-window", type=int, default=100, help="spec.drift.window in rows")
    parser.add_argument("--drift-min-samples", type=int, default=50, help="spec.drift.minSamples")
    parser.add_argument("--rate", type=float, default=80.0, help="requests per second (one row each)")
    parser.add_argument("--min-window", type=float, default=5.0, help="operator's minimum check window (s)")
    parser.add_argument(
        "--crossing", type=float, default=0.5, help="Flagger-style: share of the window to fail"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--state-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS / "rollback.json")
    args = parser.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    if unknown := set(cases) - set(CASES):
        parser.error(f"unknown cases {sorted(unknown)}; choose from {CASES}")
    plan = parse_runs(args.runs)
    steps = tuple(int(s) for s in args.steps.split(","))
    state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="bench-rollback-"))
    knobs_of = {
        interval: Knobs(
            interval,
            steps,
            args.failure_limit,
            args.drift_window,
            args.drift_min_samples,
            args.rate,
            args.min_window,
            1.0,
        )
        for interval in plan
    }
    runs: list[Run] = []
    started = time.monotonic()
    with Bench(state_dir, args) as bench:
        for interval, count in plan.items():
            for case in cases:
                for index in range(count):
                    run = bench.run(case, knobs_of[interval], index)
                    runs.append(run)
                    shown = f"{run.onset_to_good_s:.2f}s" if run.ok else f"FAILED: {run.failure}"
                    print(
                        f"{run.name}: phase {run.onset_phase or 0:.2f}  onset -> last good version {shown}  {run.times}",
                        flush=True,
                    )
    scenarios = {
        f"{case}-{interval}s": scenario_summary(
            [r for r in runs if r.case == case and r.interval_s == interval],
            knobs_of[interval],
            args.crossing,
        )
        for interval in plan
        for case in cases
    }
    results = {
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0]},
        "knobs": {
            "intervals_s": list(plan),
            "steps": list(steps),
            "failure_limit": args.failure_limit,
            "drift_window_rows": args.drift_window,
            "drift_min_samples": args.drift_min_samples,
            "drift_alpha": 0.001,
            "rate_rps": args.rate,
            "operator_min_window_s": args.min_window,
            "prometheus_scrape_s": 1.0,
            "thresholds": drift_only_thresholds(),
            "flagger_crossing": args.crossing,
        },
        "wall_s": round(time.monotonic() - started, 1),
        "scenarios": scenarios,
        "runs": [asdict(r) for r in runs],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    plot(results, args.out.with_suffix(".png"))
    print(markdown_table(results))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}; logs in {state_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
