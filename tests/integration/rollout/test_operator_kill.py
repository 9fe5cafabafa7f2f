"""The operator killed (SIGKILL) at random points of canary rollouts, rollbacks and scale-ups.

The real API server, the real operator process, a real Prometheus scraping the sidecars' real
metric objects (traffic played by `SidecarTraffic`, as in test_rollout_cluster). Three models in
one namespace, each going through its phases one after another while one operator serves them:

- `promoted`: a healthy canary of the next version, through every step to promotion;
- `rolledback`: a canary whose inputs are half out of distribution, rolled back at its first
  check, then the rollback acknowledged (spec back at the stable version);
- `scaled`: Triton's queue time four times the target (scale-up 1 → 2 → 3 = max), then a tenth
  of it (back down to 1).

The operator is killed with SIGKILL at seeded random points (logged: GUARDEDMODEL_KILL_SEED picks
another seed) and started again at once; half of the kills land within 50 ms of a write to a model
(the operator's, or a spec edit), where the operator's next decide → write is under way. After every phase:
the state the spec and metrics call for; the routing went through each step once, in order
(no double rollback, no step repeated or skipped); status.history gained exactly the phase's
entries (none lost, none twice: `HistoryLedger` checks every version of the history the watch
saw). At the end, one more kill in the steady state: the new process writes nothing
(the API server's audit log counts every write request, no-ops included).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kill_campaign import Kill, KillLog, NamespaceWatch, Seen, deduplicated
from operator_run import (
    CANARY_ROLLOUT,
    OperatorProcess,
    install_crd,
    log_tail,
    model_manifest,
    spawn_operator,
)
from sidecar_traffic import SidecarTraffic

from guardedmodel_operator.rollout.outcome import metrics_moved
from guardedmodel_testground.api_audit import AuditedWrite, AuditTail
from guardedmodel_testground.cluster import LocalCluster
from guardedmodel_testground.prometheus import Prometheus, ScrapeJob

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

PROMOTED, ROLLED_BACK, SCALED = "promoted", "rolledback", "scaled"
TARGET_QUEUE_MS, HIGH_QUEUE_MS, LOW_QUEUE_MS = 50.0, 200.0, 5.0
SPECS: dict[str, dict[str, Any]] = {
    PROMOTED: {"rollout": CANARY_ROLLOUT},
    ROLLED_BACK: {"rollout": CANARY_ROLLOUT},
    SCALED: {"replicas": {"min": 1, "max": 3}, "scaling": {"targetQueueTimeMs": TARGET_QUEUE_MS}},
}
VERSIONS = [str(v) for v in range(1, 31)]
OPERATOR_ENV = {
    # Windows of 10 s: in 3 s a request rate read from a loaded box's bursts moved 1.5x now and then,
    # a true rewrite of status.metrics, which the steady-state restart at the end would count.
    "GUARDEDMODEL_ROLLOUT_MIN_WINDOW_S": "10",
    "GUARDEDMODEL_SCALE_INTERVAL_S": "1",
    "GUARDEDMODEL_SCALE_DOWN_WINDOW_S": "2",
}
# The operator's two clients: its writes, and kopf's (Events; watches only read).
OPERATOR_AGENTS = ("guardedmodel-operator", "kopf/")
PHASE_TIMEOUT_S = 90.0
STEADY_WINDOW_S = 6.0  # two rollout intervals and six scaler intervals
STEADY_TRIES = 5


REQUESTS_PER_SECOND = 40  # to each version a model routes


class Traffic:
    """Requests keep reaching every version a model routes; the scaled model's wait `queue_ms`
    in Triton's queue. The versions and the queue time change as the phases go."""

    def __init__(self, sidecars: dict[str, SidecarTraffic]) -> None:
        self.sidecars = sidecars
        self.live: dict[str, set[str]] = {name: {"1"} for name in sidecars}
        self.bad: set[str] = set()  # versions of `rolledback` whose inputs are half out of distribution
        self.queue_ms = LOW_QUEUE_MS
        self.lock = threading.Lock()
        self.stop_flag = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        # Paced by the clock, not by the loop: on a loaded machine the loop runs late, and a request
        # rate that followed it would move enough for the operator to rewrite status.metrics, which
        # is a true reading, not the steady state the last kill checks.
        last, owed = time.monotonic(), 0.0
        while not self.stop_flag.wait(0.25):
            now = time.monotonic()
            owed += (now - last) * REQUESTS_PER_SECOND
            last, count = now, int(owed)
            owed -= count
            with self.lock:
                live = {name: sorted(versions) for name, versions in self.live.items()}
                bad, queue_ms = set(self.bad), self.queue_ms
            for name, versions in live.items():
                for version in versions:
                    ood = 0.5 if name == ROLLED_BACK and version in bad else 0.0
                    self.sidecars[name].serve(version, count, ood_fraction=ood)
            self.sidecars[SCALED].triton_queue("1", 2 * count, queue_ms)

    def route(self, name: str, versions: set[str]) -> None:
        with self.lock:
            self.live[name] = set(versions)

    def stop(self) -> None:
        self.stop_flag.set()


@dataclass
class Phase:
    """One step of one model's story: what starts it, when it is done, what must have happened."""

    name: str
    model: str
    goal: Callable[[Seen], bool]
    # (the model's versions the watch saw during the phase, history entries it gained) → problems
    check: Callable[[list[Seen], list[tuple[str, str]]], list[str]]
    then: Callable[[], None] = lambda: None  # after the goal (e.g. stop traffic to the old version)
    watch_start: int = 0
    ledger_start: int = 0
    started_at: float = 0.0
    killed: bool = False


@dataclass
class Campaign:
    cluster: LocalCluster
    namespace: str
    prometheus_url: str
    traffic: Traffic
    watch: NamespaceWatch
    log_path: Path
    log: KillLog
    operator: OperatorProcess | None = None
    started_at: float = 0.0  # when the running operator process started
    phases: dict[str, Phase] = field(default_factory=dict)  # the phase in progress, per model
    stories: dict[str, Iterator[Phase]] = field(default_factory=dict)

    # -- the operator -------------------------------------------------------------------
    def start_operator(self) -> None:
        self.operator = spawn_operator(
            self.cluster, self.namespace, self.prometheus_url, self.log_path, OPERATOR_ENV, append=True
        )
        self.started_at = time.monotonic()

    def kill(self, mode: str) -> None:
        assert self.operator is not None
        in_progress = tuple(sorted(p.name for p in self.phases.values()))
        self.operator.kill()
        self.log.kills.append(
            Kill(len(self.log.kills) + 1, mode, time.monotonic() - self.started_at, in_progress)
        )
        with self.log_path.open("a") as log:
            log.write(f"\n===== SIGKILL {len(self.log.kills)} ({mode}); phases {in_progress} =====\n\n")
        for phase in self.phases.values():
            phase.killed = True
        self.start_operator()

    def fail(self, what: str) -> None:
        pytest.fail(f"{what}\n{self.log.summary()}\noperator log tail:\n{log_tail(self.log_path, 60)}")

    # -- the models' stories -----------------------------------------------------------
    def apply(self, name: str, version: str) -> None:
        self.cluster.kubectl(
            "apply", "-f", "-", input=model_manifest(self.namespace, name, SPECS[name], version)
        )

    def begin(self, phase: Phase, start: Callable[[], None]) -> Phase:
        phase.watch_start = self.watch.count(phase.model)
        phase.ledger_start = len(self.watch.ledger(phase.model).entries)
        start()
        phase.started_at = time.monotonic()
        self.phases[phase.model] = phase
        return phase

    def promotions(self) -> Iterator[Phase]:
        for previous, version in itertools.pairwise(VERSIONS):

            def start(previous: str = previous, version: str = version) -> None:
                self.traffic.route(PROMOTED, {previous, version})
                self.apply(PROMOTED, version)

            yield self.begin(
                Phase(
                    "canary rollout",
                    PROMOTED,
                    goal=lambda seen, v=version: (
                        seen.routing == (v, None, 0) and seen.status.get("phase") == "Ready"
                    ),
                    check=lambda seen, added, p=previous, v=version: expect(
                        f"canary {v}",
                        seen,
                        added,
                        routings=[(p, v, 10), (p, v, 50), (p, v, 100), (v, None, 0)],
                        entries=[(v, "CanaryStarted"), (v, "Promoted")],
                    ),
                    then=lambda v=version: self.traffic.route(PROMOTED, {v}),
                ),
                start,
            )

    def rollbacks(self) -> Iterator[Phase]:
        for version in VERSIONS[1:]:

            def start(version: str = version) -> None:
                self.traffic.bad.add(version)
                self.traffic.route(ROLLED_BACK, {"1", version})
                self.apply(ROLLED_BACK, version)

            yield self.begin(
                Phase(
                    "rollback",
                    ROLLED_BACK,
                    goal=lambda seen: (
                        seen.status.get("phase") == "RolledBack" and seen.routing == ("1", None, 0)
                    ),
                    check=lambda seen, added, v=version: expect(
                        f"rollback of {v}",
                        seen,
                        added,
                        routings=[("1", v, 10), ("1", None, 0)],
                        entries=[(v, "CanaryStarted"), (v, "RolledBack")],
                    ),
                    then=lambda: self.traffic.route(ROLLED_BACK, {"1"}),
                ),
                start,
            )
            yield self.begin(
                Phase(
                    "rollback acknowledged",
                    ROLLED_BACK,
                    goal=lambda seen: seen.status.get("phase") == "Ready" and seen.routing == ("1", None, 0),
                    check=lambda seen, added, v=version: expect(
                        f"acknowledgement of the rollback of {v}", seen, added, routings=[], entries=[]
                    ),
                ),
                lambda: self.apply(ROLLED_BACK, "1"),
            )

    def scalings(self) -> Iterator[Phase]:
        while True:
            yield self.scaling("scale-up", HIGH_QUEUE_MS, 3)
            yield self.scaling("scale-down", LOW_QUEUE_MS, 1)

    def scaling(self, name: str, queue_ms: float, replicas: int) -> Phase:
        """Triton's queue time set to `queue_ms`, until `replicas` replicas are wanted and ready."""
        return self.begin(
            Phase(
                name,
                SCALED,
                goal=lambda seen: (
                    seen.desired_replicas == replicas and seen.status.get("readyReplicas") == replicas
                ),
                check=lambda seen, added: expect_replicas(name, seen, added, up=replicas > 1),
            ),
            lambda: setattr(self.traffic, "queue_ms", queue_ms),
        )

    def advance(self, start_next: bool) -> None:
        """Finish every phase that reached its goal (its checks must pass) and start the next."""
        for model, phase in list(self.phases.items()):
            latest = self.watch.latest(model)
            if latest is None or not phase.goal(latest):
                if time.monotonic() - phase.started_at > PHASE_TIMEOUT_S:
                    self.fail(
                        f"{phase.name} of {model} did not reach its goal in {PHASE_TIMEOUT_S:.0f}s; "
                        f"last status: {json.dumps(latest.status if latest else None, indent=1)}"
                    )
                continue
            seen = self.watch.since(model, phase.watch_start)
            added = self.watch.ledger(model).outcomes_since(phase.ledger_start)
            problems = phase.check(seen, added)
            if problems:
                self.fail(f"{phase.name} of {model}: " + "; ".join(problems))
            if phase.killed:
                self.log.converged_s.setdefault(phase.name, []).append(time.monotonic() - self.started_at)
            phase.then()
            del self.phases[model]
            if start_next:
                next(self.stories[model])

    def wait(self, seconds: float, start_next: bool = True, until_write: bool = False) -> bool:
        """`seconds`, finishing and starting phases as they go; with `until_write`, only until a
        write to any model lands (True then)."""
        deadline, writes = time.monotonic() + seconds, self.watch.events
        while time.monotonic() < deadline:
            self.advance(start_next)
            if until_write and self.watch.events > writes:
                return True
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        return False


def expect(
    what: str,
    seen: list[Seen],
    added: list[tuple[str, str]],
    *,
    routings: list[tuple[Any, Any, Any]],
    entries: list[tuple[str, str]],
) -> list[str]:
    """The routing went through `routings` (after where it stood), once each and in order, and
    status.history gained exactly `entries`."""
    problems = []
    went = deduplicated([s.routing for s in seen])[1:]
    if went != routings:
        problems.append(f"{what}: routing went {went}, expected {routings}")
    if added != entries:
        problems.append(f"{what}: status.history gained {added}, expected {entries}")
    return problems


def expect_replicas(what: str, seen: list[Seen], added: list[tuple[str, str]], *, up: bool) -> list[str]:
    """Scale-up: 1 → 2 → 3, at most doubling per step; scale-down: never up again; never above max."""
    counts = deduplicated([s.desired_replicas for s in seen if s.desired_replicas is not None])
    steps = list(itertools.pairwise(counts))
    problems = []
    if up and (counts[-1:] != [3] or any(not (a < b <= 2 * a) for a, b in steps)):
        problems.append(f"{what}: desiredReplicas went {counts}, expected 1 → 2 → 3")
    if not up and (counts[-1:] != [1] or any(b > a for a, b in steps)):
        problems.append(f"{what}: desiredReplicas went {counts}, expected down to 1 and never up")
    if any(c > 3 for c in counts):
        problems.append(f"{what}: desiredReplicas above max: {counts}")
    if added:
        problems.append(f"{what}: status.history gained {added}, expected nothing")
    return problems


@pytest.fixture
def campaign(
    k8s_cluster: LocalCluster, prometheus_factory: Callable[..., Prometheus], tmp_path: Path
) -> Iterator[Campaign]:
    install_crd(k8s_cluster)
    namespace = f"opkill-{uuid.uuid4().hex[:6]}"
    k8s_cluster.kubectl("create", "namespace", namespace)
    sidecars = {
        name: SidecarTraffic("classifier", VERSIONS if name != SCALED else ["1"]).start() for name in SPECS
    }
    prometheus = prometheus_factory(
        [
            ScrapeJob(name, [sidecar.target], labels={"namespace": namespace, "guardedmodel_io_name": name})
            for name, sidecar in sidecars.items()
        ]
    )
    traffic = Traffic(sidecars)
    prometheus.wait_for(f'guardedmodel_triton_requests_total{{namespace="{namespace}"}}')
    seed = int(os.environ.get("GUARDEDMODEL_KILL_SEED", "20261202"))
    watch = NamespaceWatch(k8s_cluster, namespace)
    c = Campaign(
        k8s_cluster, namespace, prometheus.url, traffic, watch, tmp_path / "operator.log", KillLog(seed)
    )
    c.start_operator()
    try:
        yield c
    finally:
        traffic.stop()
        if c.operator is not None:
            c.operator.stop()
        watch.stop()
        for sidecar in sidecars.values():
            sidecar.stop()
        k8s_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def events_per_version(c: Campaign, model: str, reason: str, decided: str) -> Counter[str]:
    """How many `reason` Events of `model` announce each version's decision (`decided` finds the version)."""
    events = c.cluster.kubectl_json(
        "get", "events", "-n", c.namespace, "--field-selector", f"involvedObject.name={model},reason={reason}"
    )["items"]
    return Counter(m.group(1) for e in events if (m := re.match(decided, e.get("message", ""))))


def run_campaign(c: Campaign, kills: int) -> None:
    rng = random.Random(c.log.seed)
    print(f"operator kill campaign: seed {c.log.seed}, {kills} kills")
    for name in SPECS:
        c.apply(name, "1")
    deadline = time.monotonic() + 60
    while not all(
        (seen := c.watch.latest(name)) is not None
        and seen.routing == ("1", None, 0)
        and seen.status.get("phase") == "Ready"
        for name in SPECS
    ):
        if time.monotonic() > deadline:
            c.fail("the models did not become Ready at version 1")
        time.sleep(0.2)

    c.stories = {PROMOTED: c.promotions(), ROLLED_BACK: c.rollbacks(), SCALED: c.scalings()}
    for story in c.stories.values():
        next(story)
    for _ in range(kills):
        if rng.random() < 0.5:
            c.wait(rng.uniform(0.5, 4.0))
            c.kill("random")
        else:
            c.wait(rng.uniform(0.3, 1.0))  # the operator has started and listed
            landed = c.wait(4.0, until_write=True)
            time.sleep(rng.uniform(0.0, 0.05))
            c.kill("after-write" if landed else "random")
    while c.phases:  # no new phases: each model finishes the one it is in
        c.wait(0.5, start_next=False)


@pytest.mark.parametrize(
    "kills", [pytest.param(15, id="15-kills"), pytest.param(50, id="50-kills", marks=pytest.mark.slow)]
)
def test_operator_killed_mid_rollout_rollback_and_scale_up_converges_without_loss(
    campaign: Campaign, kills: int
) -> None:
    c = campaign
    run_campaign(c, kills)
    print(c.log.summary())
    # Every phase had kills, so each was interrupted somewhere.
    per_phase = c.log.per_phase()
    assert all(per_phase.get(p, 0) > 0 for p in ("canary rollout", "rollback", "scale-up")), c.log.summary()
    for name in SPECS:
        assert not c.watch.ledger(name).problems, c.watch.ledger(name).problems
    # Events go out after the status write, in the background: a kill in between loses one (Events
    # are best effort in Kubernetes), but no decision is ever announced twice.
    for model, reason, decided in (
        (ROLLED_BACK, "RolledBack", r"canary (\S+) rolled back"),
        (PROMOTED, "Promoted", r"canary (\S+) passed every step"),
    ):
        posted = events_per_version(c, model, reason, decided)
        made = sum(1 for *_, why in c.watch.ledger(model).entries if re.match(decided, why))
        print(f"{reason} Events: {sum(posted.values())} for {made} decisions (kills lost the rest)")
        assert all(n == 1 for n in posted.values()), f"{reason} announced more than once: {posted}"

    # The steady state: one more kill, and the new process has nothing to write.
    # Steady first: a whole window with no operator write (a figure that moved past its noise
    # threshold in a 3 s window is a true write, and one of the last kill's process would be
    # counted against the restart).
    audit = AuditTail(c.cluster.audit_log)
    for _ in range(STEADY_TRIES):
        audit.mark()
        time.sleep(STEADY_WINDOW_S)
        before = audit.since_mark(c.namespace, OPERATOR_AGENTS)
        if not before:
            break
    assert not before, "never steady:\n" + "\n".join(w.describe() for w in before)
    shown = {
        name: c.cluster.kubectl_json("get", "guardedmodel", name, "-n", c.namespace)
        .get("status", {})
        .get("metrics")
        for name in SPECS
    }
    c.kill("steady")
    audit.mark()
    time.sleep(STEADY_WINDOW_S)
    after = audit.since_mark(c.namespace, OPERATOR_AGENTS)
    # A figure read past its noise threshold is rewritten at any check, restart or not (a stored
    # rate and the true one can sit right at RATE_RATIO apart): such a write is the rule at work.
    # Anything else (a figure within its noise, another field, another object) the restart caused.
    caused = [w for w in after if not is_noise_rule_rewrite(w, shown.get(w.name))]
    print(
        f"operator writes in {STEADY_WINDOW_S:g}s: before the last kill {len(before)}, after it {len(after)}"
        f" ({len(after) - len(caused)} figures read past their noise threshold)"
    )
    assert not caused, "writes after a restart in the steady state:\n" + "\n".join(
        w.describe() for w in caused
    )


def is_noise_rule_rewrite(write: AuditedWrite, shown: dict[str, Any] | None) -> bool:
    """Is `write` a status.metrics rewrite that the operator's rule (`metrics_moved`) calls for at
    any check, given the figures `shown` before the restart?"""
    sent = write.request if isinstance(write.request, dict) else {}
    status = sent.get("status")
    if write.resource != "guardedmodels" or write.subresource != "status" or not isinstance(status, dict):
        return False
    if (
        set(status) != {"metrics"}
        or not isinstance(status["metrics"], dict)
        or set(sent) - {"status", "metadata"}
    ):
        return False
    fresh = {k: v for k, v in {**(shown or {}), **status["metrics"]}.items() if v is not None}
    return metrics_moved(shown, fresh)
