"""The periodic resync against the real API server: a spec edit whose reconcile failed, and that no
watch event retries, is reconciled within two resync intervals, with nothing written in between
for models in a steady state.

The failure is real: a ValidatingAdmissionPolicy refuses every change to the model's Deployment, so
the reconcile of the edit fails with the API server's refusal (not retried: it is no transient
error). Lifting the policy is no event the operator watches; only the resync can pick the edit up.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from gm_operator_helpers import Namespace, OperatorProcess, eventually, minimal_example
from test_operator_reconcile import wait_ready

pytestmark = pytest.mark.integration

RESYNC_S = 2.0


def freeze_deployments(ns: Namespace) -> Callable[[], None]:
    """Refuse every update of a Deployment in `ns`; returns what lifts it."""
    name = f"freeze-{ns.name}"
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": ["apps"],
                        "apiVersions": ["v1"],
                        "operations": ["UPDATE"],
                        "resources": ["deployments"],
                    }
                ]
            },
            "validations": [{"expression": "false", "message": "Deployments are frozen in this namespace"}],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns.name}}
            },
        },
    }
    ns.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([policy, binding]))
    # The API server takes the policy up a moment after it is created: wait until it refuses.
    eventually(
        "the policy to refuse a Deployment update",
        lambda: "frozen" in ns.kubectl(
            "annotate", "deployment", "classifier", "probe=1", "--dry-run=server", check=False
        ).stderr,
        timeout=30,
    )  # fmt: skip

    def lift() -> None:
        ns.cluster.kubectl(
            "delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", name, check=False
        )

    return lift


def counter(operator: OperatorProcess, name: str, **labels: str) -> float:
    """The sum of `name`'s samples that carry every one of `labels`."""
    return sum(
        value
        for key, value in operator.metrics().items()
        if key.startswith(name + "{") and all(f'{k}="{v}"' in key for k, v in labels.items())
    )


def log_level(ns: Namespace) -> str | None:
    deployment = ns.get("deployment", "classifier")
    assert deployment is not None
    sidecar = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "sidecar")
    return next((e["value"] for e in sidecar["env"] if e["name"] == "GUARDEDMODEL_LOG_LEVEL"), None)


def test_an_edit_whose_reconcile_failed_is_reconciled_by_the_resync(
    namespace: Namespace, start_operator: Callable[..., OperatorProcess]
) -> None:
    ns = namespace
    operator = start_operator(ns.name, f"--resync-interval-s={RESYNC_S}")
    ns.apply(minimal_example())
    wait_ready(ns)

    # Steady state: the resync lists the model at every interval and neither reconciles nor writes.
    writes = operator.writes()
    time.sleep(3 * RESYNC_S)
    assert counter(operator, "guardedmodel_operator_resyncs_total", reason="not_converged") == 0
    assert counter(operator, "guardedmodel_operator_reconciles_total", trigger="resync") == 0
    assert operator.writes() == writes

    lift = freeze_deployments(ns)
    try:
        ns.kubectl(
            "patch", "gm", "classifier", "--type=merge", "-p", '{"spec":{"sidecar":{"logLevel":"debug"}}}'
        )
        eventually(
            "the reconcile of the edit to fail on the frozen Deployment",
            lambda: "Deployments are frozen" in operator.log(),
            timeout=30,
        )
        gm: dict[str, Any] = json.loads(ns.kubectl("get", "gm", "classifier", "-o", "json").stdout)
        assert gm["status"]["observedGeneration"] < gm["metadata"]["generation"]
        assert log_level(ns) != "debug"
    finally:
        lift()
    lifted = time.monotonic()

    eventually(
        "the edit to reach the Deployment", lambda: log_level(ns) == "debug", timeout=10 * RESYNC_S + 20
    )
    healed_after = time.monotonic() - lifted
    gm = wait_ready(ns)
    assert gm["status"]["observedGeneration"] == gm["metadata"]["generation"]
    assert counter(operator, "guardedmodel_operator_resyncs_total", reason="not_converged") >= 1
    assert (
        counter(operator, "guardedmodel_operator_reconciles_total", trigger="resync", result="success") >= 1
    )
    print(
        f"\nresync healed the edit {healed_after:.1f} s after the refusal was lifted (interval {RESYNC_S:g} s)"
    )
