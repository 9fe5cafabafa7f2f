"""The operator against the real API server, controllers and scheduler (kwok
plays the GPU nodes' kubelets), driven with kubectl like a user would."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from gm_operator_helpers import Namespace, OperatorProcess, condition, eventually, minimal_example

pytestmark = pytest.mark.integration

CHILDREN = [
    ("deployment", "classifier"),
    ("service", "classifier"),
    ("configmap", "classifier-sidecar"),
    ("serviceaccount", "classifier-sidecar"),
    ("role", "classifier-sidecar"),
    ("rolebinding", "classifier-sidecar"),
    ("networkpolicy", "classifier"),
]


def phase(ns: Namespace, name: str = "classifier") -> str | None:
    gm = ns.get("guardedmodel", name)
    return (gm or {}).get("status", {}).get("phase")


def wait_ready(ns: Namespace, name: str = "classifier", timeout: float = 90) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        gm = ns.get("guardedmodel", name)
        status = (gm or {}).get("status", {})
        if (
            gm
            and status.get("phase") == "Ready"
            and status.get("observedGeneration") == gm["metadata"]["generation"]
        ):
            return gm
        return None

    return eventually(f"GuardedModel {name} to be Ready", ready, timeout)  # type: ignore[no-any-return]


def resource_versions(ns: Namespace) -> dict[str, str]:
    return {f"{kind}/{name}": ns.get(kind, name)["metadata"]["resourceVersion"] for kind, name in CHILDREN}  # type: ignore[index]


def events(ns: Namespace, name: str = "classifier") -> list[str]:
    result = ns.kubectl(
        "get",
        "events",
        "--field-selector",
        f"involvedObject.name={name},involvedObject.kind=GuardedModel",
        "-o",
        "json",
    )
    return [e["reason"] for e in json.loads(result.stdout)["items"]]


@pytest.fixture
def running(
    namespace: Namespace, start_operator: Callable[..., OperatorProcess]
) -> tuple[Namespace, OperatorProcess]:
    operator = start_operator(namespace.name)
    namespace.apply(minimal_example())
    wait_ready(namespace)
    return namespace, operator


def test_minimal_example_becomes_a_ready_guarded_service(running: tuple[Namespace, OperatorProcess]) -> None:
    ns, operator = running
    gm = ns.get("guardedmodel", "classifier")
    assert gm is not None
    uid = gm["metadata"]["uid"]
    for kind, name in CHILDREN:
        child = ns.get(kind, name)
        assert child is not None, f"{kind}/{name} missing"
        owners = child["metadata"]["ownerReferences"]
        assert [(o["kind"], o["name"], o["uid"], o["controller"]) for o in owners] == [
            ("GuardedModel", "classifier", uid, True)
        ]
    # pods Running on a GPU node, with the GPU requested
    pods = json.loads(
        ns.kubectl("get", "pods", "-l", "app.kubernetes.io/instance=classifier", "-o", "json").stdout
    )
    assert len(pods["items"]) == 1
    pod = pods["items"][0]
    assert pod["status"]["phase"] == "Running"
    node = json.loads(ns.cluster.kubectl("get", "node", pod["spec"]["nodeName"], "-o", "json").stdout)
    assert int(node["status"]["capacity"]["nvidia.com/gpu"]) >= 1
    triton = next(c for c in pod["spec"]["containers"] if c["name"] == "triton")
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == "1"
    # status per API conventions, and the routing fields the sidecar follows
    status = gm["status"]
    assert status["observedGeneration"] == gm["metadata"]["generation"]
    assert status["stableVersion"] == "1"
    assert condition(gm, "Ready")["status"] == "True"
    assert condition(gm, "Progressing")["status"] == "False"
    assert condition(gm, "Degraded")["status"] == "False"
    assert [h["version"] for h in status["history"]] == ["1"]
    # the printer columns
    table = ns.kubectl("get", "gm").stdout.splitlines()
    assert table[0].split() == [
        "NAME",
        "PHASE",
        "STABLE",
        "CANARY",
        "WEIGHT",
        "EST-ACCURACY",
        "OOD-RATE",
        "AGE",
    ]
    assert table[1].split()[:3] == ["classifier", "Ready", "1"]
    # decisions are recorded as events, and the operator counts its work
    reasons = eventually(
        "events", lambda: (r := events(ns)) and {"Created", "Promoted", "Ready"} <= set(r) and r
    )
    assert "Restored" not in reasons
    samples = operator.metrics()
    assert samples['guardedmodel_operator_reconciles_total{result="success",trigger="guardedmodel"}'] >= 1
    assert samples['guardedmodel_operator_writes_total{action="create",kind="Deployment"}'] == 1
    assert samples['guardedmodel_operator_models{phase="Ready"}'] == 1


def test_reconcile_with_nothing_changed_writes_nothing(running: tuple[Namespace, OperatorProcess]) -> None:
    ns, operator = running
    time.sleep(2)  # let the watch deliver the last status write
    before_versions, before_writes = resource_versions(ns), operator.writes()
    status_before = ns.get("guardedmodel", "classifier")["status"]  # type: ignore[index]
    reconciles_before = sum(
        v for k, v in operator.metrics().items() if k.startswith("guardedmodel_operator_reconciles")
    )
    # An annotation changes the object (a watch event → a full reconcile) but not the spec.
    ns.kubectl("annotate", "gm", "classifier", "touched=1")
    ns.kubectl("label", "configmap", "classifier-sidecar", "touched=1")
    eventually(
        "two more reconciles",
        lambda: (
            sum(v for k, v in operator.metrics().items() if k.startswith("guardedmodel_operator_reconciles"))
            >= reconciles_before + 2
        ),
    )
    time.sleep(1)
    assert operator.writes() == before_writes
    assert ns.get("guardedmodel", "classifier")["status"] == status_before  # type: ignore[index]
    after = resource_versions(ns)
    changed = {k for k in after if after[k] != before_versions[k]}
    assert changed == {"configmap/classifier-sidecar"}  # only the label we added ourselves


def test_children_deleted_or_edited_by_hand_are_restored(running: tuple[Namespace, OperatorProcess]) -> None:
    ns, _ = running
    old = {kind: ns.get(kind, name)["metadata"]["uid"] for kind, name in CHILDREN}  # type: ignore[index]
    ns.kubectl("delete", "service", "classifier", "--wait=true")
    ns.kubectl("delete", "configmap", "classifier-sidecar", "--wait=true")
    ns.kubectl("delete", "role", "classifier-sidecar", "--wait=true")
    for kind, name in [
        ("service", "classifier"),
        ("configmap", "classifier-sidecar"),
        ("role", "classifier-sidecar"),
    ]:
        restored = eventually(f"{kind}/{name} restored", lambda k=kind, n=name: ns.get(k, n))
        assert restored["metadata"]["uid"] != old[kind]
    # a hand edit of a field the operator owns is put back
    ns.kubectl("set", "image", "deployment/classifier", "triton=evil:latest")
    eventually(
        "the Triton image restored",
        lambda: (
            ns.get("deployment", "classifier")["spec"]["template"]["spec"]["containers"][0]["image"]  # type: ignore[index]
            == "triton:test"
        ),
    )
    ns.kubectl(
        "patch", "networkpolicy", "classifier", "--type=merge", "-p", '{"spec":{"policyTypes":["Egress"]}}'
    )
    eventually(
        "the NetworkPolicy restored",
        lambda: ns.get("networkpolicy", "classifier")["spec"]["policyTypes"] == ["Ingress"],  # type: ignore[index]
    )
    # the Deployment itself, deleted, comes back and the model is Ready again
    ns.kubectl("delete", "deployment", "classifier", "--wait=true")
    eventually("the Deployment restored", lambda: ns.get("deployment", "classifier"))
    wait_ready(ns)
    assert "Restored" in eventually("a Restored event", lambda: (r := events(ns)) and "Restored" in r and r)


def test_a_version_edit_promotes_in_the_same_pods_and_a_pod_edit_rolls_them(
    running: tuple[Namespace, OperatorProcess],
) -> None:
    ns, _ = running

    def template() -> dict[str, Any]:
        deployment = ns.get("deployment", "classifier")
        assert deployment is not None
        return dict(deployment["spec"]["template"])

    def model_pods() -> dict[str, str]:
        pods = json.loads(
            ns.kubectl("get", "pods", "-l", "app.kubernetes.io/instance=classifier", "-o", "json").stdout
        )
        return {
            p["metadata"]["uid"]: p["metadata"]["ownerReferences"][0]["name"]
            for p in pods["items"]
            if not p["metadata"].get("deletionTimestamp")
        }

    before, pods_before = template(), eventually("the model's pod", model_pods)
    # strategy instant: no Prometheus here, and a canary without metrics holds (no data is not success)
    ns.kubectl(
        "patch",
        "gm",
        "classifier",
        "--type=merge",
        "-p",
        '{"spec":{"model":{"version":"2"},"rollout":{"strategy":"instant"}}}',
    )
    gm = eventually(
        "version 2 to become stable",
        lambda: (g := ns.get("guardedmodel", "classifier")) and g["status"].get("stableVersion") == "2" and g,
        timeout=90,
    )
    assert gm["status"]["lastGoodVersion"] == "1"
    assert gm["status"]["phase"] == "Ready"
    assert [h["version"] for h in gm["status"]["history"]] == ["1", "2"]
    # Versions move through routing: the pod template, the pods and their ReplicaSet stay.
    assert template() == before
    assert model_pods() == pods_before
    # the sidecar's starting routing follows the promotion (a pod started later begins there)
    configmap = eventually(
        "the ConfigMap routing to name version 2",
        lambda: (
            (c := ns.get("configmap", "classifier-sidecar"))
            and "stableVersion: '2'" in c["data"]["sidecar.yaml"]
            and c
        ),
    )
    assert "version: '2'" in configmap["data"]["sidecar.yaml"]

    # What a container reads at start does roll the pods (a real rolling update by the controller-manager).
    ns.kubectl("patch", "gm", "classifier", "--type=merge", "-p", '{"spec":{"sidecar":{"logLevel":"debug"}}}')
    eventually(
        "a new pod from a new ReplicaSet",
        lambda: (pods := model_pods()) and not set(pods) & set(pods_before) and pods,
        timeout=60,
    )
    replicasets = json.loads(
        ns.kubectl("get", "rs", "-l", "app.kubernetes.io/instance=classifier", "-o", "json").stdout
    )
    assert len(replicasets["items"]) == 2
    assert (
        template()["metadata"]["annotations"]["guardedmodel.io/pod-hash"]
        != before["metadata"]["annotations"]["guardedmodel.io/pod-hash"]
    )


def test_deleting_the_guardedmodel_removes_every_child(running: tuple[Namespace, OperatorProcess]) -> None:
    ns, _ = running
    ns.kubectl("delete", "gm", "classifier", "--wait=true", "--timeout=60s")
    for kind, name in CHILDREN:
        eventually(f"{kind}/{name} to be garbage-collected", lambda k=kind, n=name: ns.get(k, n) is None)
    eventually(
        "the pods to go",
        lambda: json.loads(ns.kubectl("get", "pods", "-o", "json").stdout)["items"] == [],
    )


def test_not_ready_before_the_pods_are(
    namespace: Namespace, start_operator: Callable[..., OperatorProcess]
) -> None:
    operator = start_operator(namespace.name, "--log-format=json")
    manifest = minimal_example()
    manifest["spec"]["triton"] = {"nodeSelector": {"nvidia.com/gpu.product": "no-such-gpu"}}
    namespace.apply(manifest)
    gm = eventually(
        "a status", lambda: (g := namespace.get("guardedmodel", "classifier")) and g.get("status") and g
    )
    time.sleep(3)
    gm = namespace.get("guardedmodel", "classifier")
    assert gm is not None
    assert gm["status"]["phase"] == "Pending"
    assert condition(gm, "Ready")["status"] == "False"
    assert condition(gm, "Progressing")["status"] == "True"
    assert "stableVersion" not in gm["status"]
    # the fix (a schedulable selector) is rolled out and the model becomes Ready
    namespace.kubectl(
        "patch",
        "gm",
        "classifier",
        "--type=json",
        "-p",
        '[{"op":"remove","path":"/spec/triton/nodeSelector"}]',
    )
    wait_ready(namespace)
    # --log-format=json: every line the operator logged is one JSON object
    records = [
        json.loads(line) for line in operator.process.log_path.read_text().splitlines() if line.strip()
    ]
    assert records and all("message" in r for r in records)


@pytest.mark.slow
def test_operator_restart_mid_way_converges(
    namespace: Namespace, start_operator: Callable[..., OperatorProcess]
) -> None:
    first = start_operator(namespace.name)
    namespace.apply(minimal_example())
    wait_ready(namespace)
    first.stop()
    # While no operator runs: the spec changes and a child disappears.
    namespace.kubectl(
        "patch",
        "gm",
        "classifier",
        "--type=merge",
        "-p",
        '{"spec":{"model":{"version":"3"},"rollout":{"strategy":"instant"}}}',
    )
    namespace.kubectl("delete", "service", "classifier")
    time.sleep(1)
    assert namespace.get("service", "classifier") is None
    # One worker for 8 objects: the start-up listing must not starve (a kopf
    # worker limit would deadlock here, waiting for its indices).
    second = start_operator(namespace.name, "--worker-limit=1")
    eventually("the Service restored", lambda: namespace.get("service", "classifier"))
    gm = eventually(
        "version 3 stable",
        lambda: (
            (g := namespace.get("guardedmodel", "classifier"))
            and g["status"].get("stableVersion") == "3"
            and g
        ),
        timeout=90,
    )
    assert gm["status"]["observedGeneration"] == gm["metadata"]["generation"]
    # a third start with nothing to do writes nothing
    second.stop()
    third = start_operator(namespace.name, "--worker-limit=1")
    eventually(
        "the restarted operator to re-check the model",
        lambda: third.metrics().get(
            'guardedmodel_operator_reconciles_total{result="success",trigger="guardedmodel"}'
        ),
    )
    time.sleep(2)
    assert third.writes() == 0, third.log()
