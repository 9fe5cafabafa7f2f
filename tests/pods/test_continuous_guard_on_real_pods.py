"""The continuous guard end to end on real pods and real metrics: version 2 is promoted through its
canary, its inputs then drift, and the operator rolls the promoted version back to the last good
one, version 1, on what Prometheus scraped from the sidecar. Nothing here is a synthetic counter:
the drift test runs in the sidecar on the traffic sent, Prometheus scrapes it from the pod, and the
operator (a pod from the chart) queries Prometheus.

The thresholds are set so that only drift can stop version 2 (it is a deliberately weaker model:
review rate ~0.7 and estimated accuracy ~0.5 on in-distribution inputs), and the OOD rate limit is
high enough that the grey-level shift breaks the drift test and PSI first.

Needs root (`make test-pods`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
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

from guardedmodel_cli.demo_traffic import FreshRows, send
from guardedmodel_testground import real_pods
from guardedmodel_testground.chart_release import release_leftovers
from guardedmodel_testground.cluster import LocalCluster

pytestmark = pytest.mark.pods

NAMESPACE = "guard"
MODEL = "fashion"
#: Only drift stops version 2: the quality limits are wide open, the drift limits are the example's.
THRESHOLDS = {
    "maxOodRate": 0.97,
    "maxReviewRate": 1.0,
    "minEstimatedAccuracy": 0.0,
    "maxDriftScore": 0.5,
    "maxErrorRate": 0.05,
}


#: The pod (uid) started after the promotion: the rollback must flip on it.
NEW_POD: list[str] = []


@dataclass
class Stage:
    cluster: LocalCluster
    address: Any  # () -> the model Service's ready endpoint
    validation: FreshRows  # in-distribution rows the model was not trained on

    def fresh(self, count: int = 40) -> np.ndarray:
        return self.validation.next(count)


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    with real_node_ground(tmp_path_factory, "continuous-guard", versions=("1", "2")) as ground:
        cluster = ground.cluster
        monitoring = real_pods.start_pod_monitoring(
            ground.stack, ground.workdir / "monitoring", cluster, [NAMESPACE]
        )
        manifest = example_manifest(MODEL, NAMESPACE)
        manifest["spec"]["rollout"]["thresholds"] = THRESHOLDS
        serve_on_real_node(ground, manifest, monitoring.prometheus.url)

        def address() -> str:
            return wait_for(
                "a ready endpoint of the model's Service",
                lambda: real_pods.ready_endpoint(cluster, NAMESPACE, MODEL, "http"),
                120,
                lambda: explain(cluster),
            )

        yield Stage(cluster, address, ground.fresh_rows())


def status(cluster: LocalCluster) -> dict:
    return dict(cluster.kubectl_json("get", "gm", MODEL, "-n", NAMESPACE).get("status") or {})


def model_pods(cluster: LocalCluster) -> list[dict]:
    return pods(cluster, NAMESPACE, f"app.kubernetes.io/instance={MODEL}")


def explain(cluster: LocalCluster) -> str:
    logs = cluster.kubectl(
        "logs",
        "-n",
        real_pods.OPERATOR_NAMESPACE,
        "-l",
        "app.kubernetes.io/instance=gm",
        "--tail=40",
        check=False,
    ).stdout
    return f"{json.dumps(status(cluster), indent=1)}\n{describe(cluster, NAMESPACE, 'pods')}\n{logs}"


def history(cluster: LocalCluster) -> list[tuple[str, str]]:
    return [(h.get("version", ""), h.get("outcome", "")) for h in status(cluster).get("history") or []]


def test_version_1_becomes_ready(stage: Stage) -> None:
    def model_ready() -> bool:
        for pod in model_pods(stage.cluster):
            if crash_looping(pod):
                raise AssertionError(f"{crash_looping(pod)}\n{explain(stage.cluster)}")
        return status(stage.cluster).get("phase") == "Ready"

    wait_for("version 1 Ready", model_ready, 300, lambda: explain(stage.cluster))
    assert status(stage.cluster)["stableVersion"] == "1"


def test_version_2_is_promoted_through_its_canary(stage: Stage) -> None:
    cluster = stage.cluster
    cluster.kubectl(
        "patch", "gm", MODEL, "-n", NAMESPACE, "--type=merge", "-p", '{"spec":{"model":{"version":"2"}}}'
    )

    def promoted() -> bool:
        send(stage.address(), stage.fresh())
        return ("2", "Promoted") in history(cluster) or ("2", "RolledBack") in history(cluster)

    wait_for("version 2 promoted", promoted, 300, lambda: explain(cluster))
    current = status(cluster)
    assert ("2", "Promoted") in history(cluster), json.dumps(current["history"], indent=1)
    assert current["stableVersion"] == "2" and current["lastGoodVersion"] == "1", current
    answered = send(stage.address(), stage.fresh(20)).versions
    assert set(answered) == {"2"}, answered


def test_a_pod_started_after_the_promotion_keeps_the_last_good_version_loaded(stage: Stage) -> None:
    """The pod is deleted (a reschedule); the one that replaces it reads routing, lastGoodVersion
    included, from its ConfigMap and the status, and loads and guards version 1 without serving it,
    so that a rollback is a flip on it too."""
    cluster = stage.cluster
    (old,) = [p for p in model_pods(cluster) if ready(p)]
    cluster.kubectl("delete", "pod", "-n", NAMESPACE, old["metadata"]["name"], "--wait=false")

    def replaced() -> list[dict]:
        return [p for p in model_pods(cluster) if ready(p) and p["metadata"]["uid"] != old["metadata"]["uid"]]

    (pod,) = wait_for("a new pod Ready", replaced, 300, lambda: explain(cluster))
    NEW_POD.append(pod["metadata"]["uid"])
    metrics = real_pods.ready_endpoint(cluster, NAMESPACE, MODEL, "metrics")
    assert metrics is not None

    def last_good_loaded() -> bool:
        import urllib.request

        with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=5) as response:
            text = response.read().decode()
        return any(
            line.startswith("guardedmodel_version_loaded{")
            and 'role="lastGood"' in line
            and 'version="1"' in line
            and line.rstrip().endswith(" 1.0")
            for line in text.splitlines()
        )

    wait_for("version 1 loaded as the last good one", last_good_loaded, 60, lambda: explain(cluster))
    answered = send(stage.address(), stage.fresh(20)).versions
    assert set(answered) == {"2"}, answered  # kept loaded, never served


def test_drift_on_the_promoted_version_rolls_it_back_to_the_last_good_one(stage: Stage) -> None:
    """Grey-level shift on every request: the sidecar's drift test calls the windows drifted with a
    PSI above maxDriftScore, the continuous guard rolls version 2 back to version 1, and the pod
    started after the promotion answers from version 1 (a routing flip, no restart, no load)."""
    cluster = stage.cluster
    (pod,) = [p for p in model_pods(cluster) if ready(p)]
    assert pod["metadata"]["uid"] == NEW_POD[0]
    onset = time.monotonic()

    def rolled_back() -> bool:
        send(stage.address(), np.clip(stage.fresh() * 0.5 + 0.45, 0.0, 1.0))
        return ("2", "RolledBack") in history(cluster)

    wait_for("the promoted version rolled back", rolled_back, 300, lambda: explain(cluster))
    seconds = time.monotonic() - onset
    seen = time.monotonic()
    while set(send(stage.address(), stage.fresh(1)).versions) != {"1"}:
        assert time.monotonic() - seen < 30, "the flip to version 1 did not reach the pod"
    flip = time.monotonic() - seen
    current = status(cluster)
    assert current["stableVersion"] == "1" and current["lastGoodVersion"] == "1", current
    message = next(
        h["reason"] for h in current["history"] if h["version"] == "2" and h["outcome"] == "RolledBack"
    )
    assert "rolled back to last good version 1" in message and "drift" in message, message
    (after,) = [p for p in model_pods(cluster) if ready(p)]
    assert after["metadata"]["uid"] == pod["metadata"]["uid"]
    assert all(c["restartCount"] == 0 for c in after["status"]["containerStatuses"])
    answered = send(stage.address(), stage.fresh(20))
    assert set(answered.versions) == {"1"}, (answered.versions, answered.refusals)
    print(
        f"\ndrift onset to rollback (with traffic): {seconds:.1f} s; rollback seen in the status to the "
        f"first answer from version 1 on the pod started after the promotion: {flip * 1000:.0f} ms"
    )


def test_deleting_the_model_and_uninstalling_leave_nothing(stage: Stage) -> None:
    cluster = stage.cluster
    cluster.kubectl("delete", "gm", MODEL, "-n", NAMESPACE, "--wait=true", "--timeout=90s")
    wait_for("the model's pods gone", lambda: not model_pods(cluster), 90, lambda: explain(cluster))
    uninstall = cluster.helm("uninstall", "gm", "-n", real_pods.OPERATOR_NAMESPACE, "--wait", check=False)
    assert uninstall.returncode == 0, uninstall.stderr
    namespaces = [real_pods.OPERATOR_NAMESPACE, NAMESPACE]
    wait_for(
        "nothing left of the release",
        lambda: not release_leftovers(cluster, "gm", namespaces),
        60,
        lambda: "\n".join(release_leftovers(cluster, "gm", namespaces)),
    )
