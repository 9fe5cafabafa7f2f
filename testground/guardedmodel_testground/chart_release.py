"""What a Helm release of the chart leaves in a cluster, and the Prometheus-operator kinds it may need.

Shared by the chart tests on simulated pods and on the real node: after `helm uninstall` none of
`release_leftovers` may remain.
"""

from __future__ import annotations

from typing import Any

import yaml

from .cluster import LocalCluster

#: Namespaced kinds the chart can create, and its cluster-scoped ones; each carries the release's
#: instance label.
NAMESPACED_KINDS = (
    "deployments,replicasets,pods,services,serviceaccounts,configmaps,roles,rolebindings,networkpolicies,"
    "servicemonitors.monitoring.coreos.com,prometheusrules.monitoring.coreos.com"
)
CLUSTER_KINDS = "clusterroles,clusterrolebindings"


def release_leftovers(cluster: LocalCluster, release: str, namespaces: list[str]) -> list[str]:
    """Objects of `release` still in `namespaces` or cluster-wide (empty once it is gone)."""
    selector = f"app.kubernetes.io/instance={release}"
    found = []
    for namespace in namespaces:
        out = cluster.kubectl(
            "get", NAMESPACED_KINDS, "-n", namespace, "-l", selector, "-o", "name", check=False
        )
        found += out.stdout.split()
        # kopf's peering objects carry no labels: look them up by kind
        out = cluster.kubectl("get", "kopfpeerings.kopf.dev", "-n", namespace, "-o", "name", check=False)
        found += out.stdout.split()
    found += cluster.kubectl("get", CLUSTER_KINDS, "-l", selector, "-o", "name", check=False).stdout.split()
    out = cluster.kubectl("get", "clusterkopfpeerings.kopf.dev", "-o", "name", check=False)
    found += out.stdout.split()
    return found


def prometheus_operator_crds() -> list[dict[str, Any]]:
    """The two Prometheus-operator kinds the chart can create, as a cluster with that operator
    serves them (schema-less here: the chart's objects are checked by helm's own schema)."""

    def crd(kind: str, plural: str) -> dict[str, Any]:
        return {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.monitoring.coreos.com"},
            "spec": {
                "group": "monitoring.coreos.com",
                "scope": "Namespaced",
                "names": {"kind": kind, "plural": plural},
                "versions": [
                    {
                        "name": "v1",
                        "served": True,
                        "storage": True,
                        "schema": {
                            "openAPIV3Schema": {
                                "type": "object",
                                "x-kubernetes-preserve-unknown-fields": True,
                            }
                        },
                    }
                ],
            },
        }

    return [crd("ServiceMonitor", "servicemonitors"), crd("PrometheusRule", "prometheusrules")]


def install_prometheus_operator_crds(cluster: LocalCluster) -> None:
    cluster.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(prometheus_operator_crds()))
    cluster.kubectl("wait", "--for=condition=Established", "crd/servicemonitors.monitoring.coreos.com",
                    "crd/prometheusrules.monitoring.coreos.com")  # fmt: skip
