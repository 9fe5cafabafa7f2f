"""`kubectl guardedmodel` end to end: kubectl finds the plugin on PATH, the plugin writes orders and
spec changes through the real API server, the real operator carries them out.

The canaries check once an hour here, so nothing but the orders moves them; Prometheus scrapes a
sidecar's real metric objects so that `status` shows the figures the operator judged by.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from operator_run import install_crd, log_tail, model_manifest, start_operator, wait_for_status
from sidecar_traffic import SidecarTraffic

from guardedmodel_testground.cluster import LocalCluster
from guardedmodel_testground.prometheus import Prometheus, ScrapeJob

pytestmark = pytest.mark.integration

RBAC = Path(__file__).resolve().parents[3] / "examples" / "kubectl-guardedmodel-rbac.yaml"
MODELS = ("promoted", "aborted", "shown", "refused")
VERSIONS = ("1", "2", "3")
# No check comes due while a test runs: only the orders move a canary.
ROLLOUT = {"strategy": "canary", "steps": [10, 50, 100], "interval": "1h", "minRequests": 20}


@dataclass
class Plugin:
    cluster: LocalCluster
    namespace: str
    env: dict[str, str]
    operator_log: Path

    def __call__(self, *args: str, ok: bool = True, user: str = "sre") -> subprocess.CompletedProcess[str]:
        """`kubectl guardedmodel -n NS ARGS`, as a person types it, with the rights of `user`:
        bound to a Role of examples/kubectl-guardedmodel-rbac.yaml."""
        assert self.cluster.binaries is not None
        done = subprocess.run(
            [str(self.cluster.binaries.kubectl), "guardedmodel", "-n", self.namespace, "--as", user, *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=120,
        )
        if ok and done.returncode != 0:
            pytest.fail(
                f"kubectl guardedmodel {' '.join(args)}: {done.stderr}\n{log_tail(self.operator_log)}"
            )
        return done

    def apply(self, name: str, version: str) -> None:
        self.cluster.kubectl(
            "apply", "-f", "-", input=model_manifest(self.namespace, name, {"rollout": ROLLOUT}, version)
        )

    def gm(self, name: str) -> dict[str, Any]:
        return self.cluster.kubectl_json("get", "guardedmodel", name, "-n", self.namespace)

    def wait(self, name: str, what: str, ok: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        return wait_for_status(
            self.cluster,
            self.namespace,
            name,
            what,
            ok,
            timeout=60,
            context=lambda: log_tail(self.operator_log),
        )

    def canary_at(self, name: str, version: str) -> dict[str, Any]:
        """`name` serving 1 (the fixture created it), then a canary of `version` at 10 %."""
        self.wait(
            name, "version 1 stable", lambda st: st.get("stableVersion") == "1" and st.get("phase") == "Ready"
        )
        self.apply(name, version)
        return self.wait(
            name,
            f"canary {version} at 10%",
            lambda st: (st.get("canaryVersion"), st.get("canaryWeight")) == (version, 10),
        )

    def events(self, name: str, reason: str) -> list[dict[str, Any]]:
        selector = f"involvedObject.name={name},reason={reason}"
        items = self.cluster.kubectl_json(
            "get", "events", "-n", self.namespace, "--field-selector", selector
        )["items"]
        return list(items)


@pytest.fixture(scope="module")
def plugin(k8s_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plugin]:
    tmp = tmp_path_factory.mktemp("kubectl-plugin")
    install_crd(k8s_cluster)
    namespace = f"plugin-{uuid.uuid4().hex[:6]}"
    k8s_cluster.kubectl("create", "namespace", namespace)
    # The rights the docs list, and no more: sre may steer rollouts, viewer may only look.
    k8s_cluster.kubectl("apply", "-n", namespace, "-f", str(RBAC))
    for user, role in (("sre", "guardedmodel-rollout-operator"), ("viewer", "guardedmodel-rollout-viewer")):
        k8s_cluster.kubectl(
            "create", "rolebinding", user, "-n", namespace, f"--role={role}", f"--user={user}"
        )
    sidecar = SidecarTraffic("classifier", VERSIONS).start()
    jobs = [
        ScrapeJob(
            f"{namespace}-{m}", [sidecar.target], labels={"namespace": namespace, "guardedmodel_io_name": m}
        )
        for m in MODELS
    ]
    prometheus = Prometheus(tmp / "prometheus", jobs).start()
    stop = threading.Event()

    def traffic() -> None:
        while not stop.wait(0.25):
            for version in VERSIONS:
                sidecar.serve(version, 10)

    threading.Thread(target=traffic, daemon=True).start()
    # The checks run once an hour here: the first one must find the 3 s window full of traffic, or
    # its figures stay empty for the rest of the module (no data is what it would rightly say).
    prometheus.wait_for(f'increase(guardedmodel_samples_total{{namespace="{namespace}"}}[3s]) > 0')
    time.sleep(3)
    log = tmp / "operator.log"
    stop_operator = start_operator(
        k8s_cluster, namespace, prometheus.url, log, {"GUARDEDMODEL_ROLLOUT_MIN_WINDOW_S": "3"}
    )
    # What kubectl runs for `kubectl guardedmodel`: the `kubectl-guardedmodel` console script.
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    script = bin_dir / "kubectl-guardedmodel"
    script.write_text(f'#!/bin/sh\nexec {sys.executable} -m guardedmodel_cli.plugin.main "$@"\n')
    script.chmod(0o755)
    assert k8s_cluster.binaries is not None
    env = {
        **k8s_cluster.env,
        "PATH": f"{bin_dir}{os.pathsep}{k8s_cluster.env['PATH']}",
        "GUARDEDMODEL_KUBECTL": str(k8s_cluster.binaries.kubectl),
        "COLUMNS": "160",
    }
    plugin = Plugin(k8s_cluster, namespace, env, log)
    for name in MODELS:  # all at version 1 at once: their first rollouts overlap
        plugin.apply(name, "1")
    try:
        yield plugin
    finally:
        stop.set()
        stop_operator()
        prometheus.stop()
        sidecar.stop()
        k8s_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_promote_takes_one_step_then_promote_full_makes_the_canary_stable(plugin: Plugin) -> None:
    plugin.canary_at("promoted", "2")

    step = plugin("promote", "promoted")
    print(step.stdout)
    assert "promote canary 2 from 10% to 50%" in step.stdout
    assert "PromotedStep: canary 2 promoted from 10% to 50%" in step.stdout  # the operator's history entry
    gm = plugin.gm("promoted")
    assert (gm["status"]["canaryVersion"], gm["status"]["canaryWeight"]) == ("2", 50)
    assert "guardedmodel.io/promote" not in (gm["metadata"].get("annotations") or {})  # taken off again

    full = plugin("promote", "promoted", "--full")
    print(full.stdout)
    assert (
        "promote canary 2 from 50% to stable" in full.stdout
        and "Promoted: canary 2 promoted at 50%" in full.stdout
    )
    status = plugin.gm("promoted")["status"]
    assert (
        status["stableVersion"] == "2"
        and not status.get("canaryVersion")
        and status["lastGoodVersion"] == "1"
    )
    assert [(h["version"], h["outcome"]) for h in status["history"][-3:]] == [
        ("2", "CanaryStarted"),
        ("2", "PromotedStep"),
        ("2", "Promoted"),
    ]
    assert len(plugin.events("promoted", "PromotedByHand")) == 2

    # No canary left: promote and abort refuse, and write nothing.
    before = plugin.gm("promoted")["metadata"]["resourceVersion"]
    for args in (("promote", "promoted"), ("abort", "promoted")):
        refused = plugin(*args, ok=False)
        assert (
            refused.returncode == 1
            and "has no canary to" in refused.stderr
            and "serves alone" in refused.stderr
        )
    assert plugin.gm("promoted")["metadata"]["resourceVersion"] == before


def test_abort_rolls_the_canary_back_and_undo_acknowledges_then_goes_back(plugin: Plugin) -> None:
    plugin.canary_at("aborted", "2")
    forbidden = plugin("abort", "aborted", ok=False, user="viewer")
    assert forbidden.returncode == 1 and "forbidden" in forbidden.stderr, forbidden.stderr
    assert (
        "Serving:          stable 1 (90%), canary 2 (10%)"
        in plugin("status", "aborted", user="viewer").stdout
    )

    aborted = plugin("abort", "aborted")
    print(aborted.stdout)
    assert (
        "abort canary 2 at 10%: all traffic back to 1" in aborted.stdout
        and "Aborted: canary 2 aborted" in aborted.stdout
    )
    status = plugin.wait("aborted", "phase RolledBack", lambda st: st.get("phase") == "RolledBack")
    assert status["stableVersion"] == "1" and not status.get("canaryVersion")
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "Aborted")
    assert plugin.events("aborted", "Aborted")
    time.sleep(2)  # blocked: the spec still names 2, and the canary does not start again
    assert not plugin.gm("aborted")["status"].get("canaryVersion")

    undone = plugin("undo", "aborted")
    print(undone.stdout)
    assert "spec.model.version 2 → 1: the rollback to 1 is acknowledged" in undone.stdout
    plugin.wait("aborted", "the rollback acknowledged", lambda st: st.get("phase") == "Ready")

    # Steady on 1, no last good version yet: undo needs a version named.
    refused = plugin("undo", "aborted", ok=False)
    assert refused.returncode == 1 and "--to-version" in refused.stderr
    plugin("undo", "aborted", "--to-version", "3")
    plugin.wait(
        "aborted", "a canary of 3", lambda st: (st.get("canaryVersion"), st.get("canaryWeight")) == ("3", 10)
    )


def test_status_and_history_show_the_rollout(plugin: Plugin) -> None:
    plugin.canary_at("shown", "2")
    plugin("promote", "shown")

    text = plugin("status", "shown").stdout
    print(text)  # the README quotes this
    for expected in (
        f"{plugin.namespace}/shown",
        "Phase:            Progressing",
        "Serving:          stable 1 (50%), canary 2 (50%)",
        "Canary step:      step 2 of 3 (50%), next 100%",
        "canary, steps 10% → 50% → 100%, a check every 1h",
        "PromotedStep",
        "Conditions:",
        "PromotedByHand",
    ):
        assert expected in text, text
    # the figures of the last check, next to the threshold each was judged by
    assert "Last check (v1):" in text and "oodRate 0 (maxOodRate 0.25)" in text, text

    summary = json.loads(plugin("status", "shown", "-o", "json").stdout)
    assert (summary["canaryVersion"], summary["canaryWeight"], summary["step"]) == ("2", 50, 2)
    assert summary["serving"] == [
        {"version": "1", "role": "stable", "weight": 50},
        {"version": "2", "role": "canary", "weight": 50},
    ]

    history = plugin("history", "shown").stdout
    print(history)
    lines = history.splitlines()
    assert lines[0].split() == ["AT", "VERSION", "OUTCOME", "REASON"]
    outcomes = [line.split()[2] for line in lines[1:] if line[:1].isdigit()]
    assert outcomes == ["Promoted", "CanaryStarted", "PromotedStep"], history
    as_json = json.loads(plugin("history", "shown", "-o", "json").stdout)
    assert [h["outcome"] for h in as_json] == outcomes

    watched = plugin("status", "shown", "--watch", "--timeout", "2")
    assert watched.stdout.count("Conditions:") == 1  # printed again only when it changes


def test_an_order_for_a_canary_that_moved_on_is_refused_by_the_api_server(plugin: Plugin) -> None:
    """An order is decided on the object as read: written onto a newer copy, the API server refuses it."""
    plugin.canary_at("refused", "2")
    old = plugin.gm("refused")
    plugin.apply("refused", "3")  # supersedes canary 2
    plugin.wait("refused", "canary 3", lambda st: st.get("canaryVersion") == "3")
    done = subprocess.run(
        [
            str(plugin.cluster.binaries.kubectl),  # type: ignore[union-attr]
            "patch", "guardedmodels.guardedmodel.io", "refused", "-n", plugin.namespace, "--type=merge", "-p",
            json.dumps({"metadata": {"resourceVersion": old["metadata"]["resourceVersion"], "annotations": {"guardedmodel.io/abort": f"version=2,generation={old['metadata']['generation']}"}}}),
        ],
        capture_output=True, text=True, env=plugin.env, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0 and "modified" in done.stderr
    # Written anyway (a person's hand-made annotation): it names canary 2, so it never acts on canary 3.
    plugin.cluster.kubectl(
        "annotate", "guardedmodel", "refused", "-n", plugin.namespace,
        f"guardedmodel.io/abort=version=2,generation={old['metadata']['generation']}",
    )  # fmt: skip
    time.sleep(2)
    status = plugin.gm("refused")["status"]
    assert (status["canaryVersion"], status["canaryWeight"]) == ("3", 10) and status["phase"] == "Progressing"
    assert "stale: never acts" in plugin("status", "refused").stdout
