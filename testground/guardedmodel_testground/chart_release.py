"""What a Helm release of the chart leaves in a cluster, and the Prometheus-operator kinds it may need.

Shared by the chart tests on simulated pods and on the real node: after `helm uninstall` none of
`release_leftovers` may remain.
"""

from __future__ import annotations

import yaml

from .cluster import LocalCluster
from .prometheus_operator_crds import crd_paths

#: Namespaced kinds the chart can create, and its cluster-scoped ones; each carries the release's
#: instance label.
NAMESPACED_KINDS = (
    "deployments,replicasets,pods,services,serviceaccounts,configmaps,roles,rolebindings,networkpolicies,"
    "servicemonitors.monitoring.coreos.com,podmonitors.monitoring.coreos.com,"
    "prometheusrules.monitoring.coreos.com"
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


def install_prometheus_operator_crds(cluster: LocalCluster) -> None:
    """prometheus-operator's ServiceMonitor, PodMonitor and PrometheusRule CRDs, with the schemas its
    release ships, so that the API server validates the chart's monitoring objects as a cluster
    running prometheus-operator would."""
    paths = crd_paths()
    # server-side: the CRDs are too large for the last-applied annotation of a client-side apply
    cluster.kubectl("apply", "--server-side", "--force-conflicts", *(f"--filename={p}" for p in paths))
    names = [f"crd/{yaml.safe_load(p.read_text())['metadata']['name']}" for p in paths]
    cluster.kubectl("wait", "--for=condition=Established", *names)
