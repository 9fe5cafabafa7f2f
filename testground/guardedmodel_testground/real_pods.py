"""The product on real pods, set up the way a user's cluster would be, from the host's side.

What the real-pod tests and `guardedmodel demo --real-pods` share:

- the images built from the Dockerfile (cached) and imported into the real node's containerd,
  the product image also under the name the chart's ci values use (`guardedmodel:dev`);
- Prometheus and Alertmanager on the host, Prometheus listening on the bridge's gateway address
  so the operator pod can query it, and finding the model pods through the API server by their
  `prometheus.io/*` annotations (`pod_discovery`; a pod that rolls is followed to its new address);
- the model repository packed and served over http:// on the gateway address (the `fetch-model`
  init container downloads it, as it would from object storage);
- `helm install` of the chart with a ci scenario's values, the operator pinned to the real node
  and pointed at that Prometheus;
- a GuardedModel manifest made to run on the CPU node from the local images, through the spec's
  documented overrides (`spec.triton.resources` replaces the GPU request), never a test-only
  branch in the operator;
- the model's Service resolved to a ready endpoint through its EndpointSlices. The node has no
  kube-proxy, so a ClusterIP does not route from the host; the endpoint is what a Service would
  pick, and it moves when the pod rolls.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import images
from .cluster import LocalCluster
from .model_server import pack_model, serve_folder
from .paths import repo_root
from .pod_discovery import PodDiscovery
from .prometheus import FileDiscoveryJob
from .real_node import REAL_NODE_LABEL, RealNode, RealNodeSpec
from .stack import Monitoring, chart_alert_rules, start_monitoring

CHART = repo_root() / "charts" / "guardedmodel"
#: The product image's name in the chart's ci values (`guardedmodel:dev`), once normalised.
CHART_IMAGE = "docker.io/library/guardedmodel:dev"
OPERATOR_NAMESPACE = "guardedmodel-system"
#: What Triton asks for on a CPU node: replaces the default GPU limit as a whole.
CPU_TRITON_RESOURCES = {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}}
SIDECAR_RESOURCES = {"requests": {"cpu": "200m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}
#: Prometheus scrapes every second here, so a few seconds of samples are enough for one check
#: (the chart's default, 60 s, suits a 15-30 s scrape interval).
MIN_WINDOW_SECONDS = 5


@dataclass(frozen=True)
class Images:
    product: images.BuiltImage
    triton: images.BuiltImage


def ensure_images() -> Images:
    """The product and CPU Triton images, built once per content hash."""
    return Images(product=images.ensure_product_image(), triton=images.ensure_triton_image())


def import_images(node: RealNode, built: Images) -> list[str]:
    """Both images into the node's containerd, the product image also as the chart's `guardedmodel:dev`;
    returns what the node then holds."""
    node.import_image(built.product.archive)
    node.import_image(built.triton.archive)
    node.ctr("images", "tag", "--force", built.product.reference, CHART_IMAGE)
    return node.images()


def start_pod_monitoring(
    stack: contextlib.ExitStack, state_dir: Path, cluster: LocalCluster, namespaces: Sequence[str]
) -> Monitoring:
    """Prometheus on the gateway address discovering the pods of `namespaces`, evaluating the chart's
    alert rules (their `for` shortened to 5 s), and an Alertmanager it sends to."""
    rules = chart_alert_rules(state_dir / "alerts.yaml", fire_after="5s")
    discovery = stack.enter_context(PodDiscovery(cluster, namespaces, state_dir / "pod-targets.json"))
    job = FileDiscoveryJob("kubernetes-pods", discovery.path)
    return start_monitoring(stack, state_dir, [job], [rules], host=RealNodeSpec().gateway)


@contextlib.contextmanager
def serve_model(
    model_dir: Path, workdir: Path, versions: Collection[str] | None = None
) -> Iterator[tuple[str, list[str]]]:
    """The model folder packed as `<model>.tar.gz` (+ .sha256; only `versions`, when given) and served
    over http:// on the gateway address; yields the repository URL and the paths requested so far.
    `publish` packs it again, as a model team publishing a new version would."""
    public = workdir / "public"
    pack_model(model_dir, public, versions)
    with serve_folder(public, RealNodeSpec().gateway) as served:
        yield served


def publish(model_dir: Path, workdir: Path, versions: Collection[str] | None = None) -> None:
    """Re-publish the model served by `serve_model` with `versions` (all when None)."""
    pack_model(model_dir, workdir / "public", versions)


def operator_values(workdir: Path, prometheus_url: str | None) -> Path:
    """What the real node adds to a ci scenario's values.

    The operator pod goes on the real node: the kwok nodes are untainted, so without a selector it
    could land on a simulated node and only pretend to run. No DNS is needed: the operator dials
    the API server at KUBERNETES_SERVICE_HOST, the `kubernetes` Service's address, which the node
    routes to the API server, and Prometheus by its address.
    """
    values: dict[str, Any] = {"nodeSelector": {REAL_NODE_LABEL: "real"}}
    if prometheus_url:
        values["rollout"] = {"prometheusUrl": prometheus_url, "minWindowSeconds": MIN_WINDOW_SECONDS}
    path = workdir / "real-node-values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def helm_release(
    cluster: LocalCluster,
    verb: str,
    release: str,
    namespace: str,
    values: Sequence[Path],
    timeout: float = 180,
) -> subprocess.CompletedProcess[str]:
    """`helm install|upgrade <release>` of the chart, waiting for its pods; not checked (the caller
    says what failed, with the pods' state)."""
    files = [arg for path in values for arg in ("-f", str(path))]
    return cluster.helm(
        verb, release, str(CHART), "-n", namespace, "--create-namespace", *files,
        "--wait", "--timeout", f"{int(timeout)}s", check=False, timeout=timeout + 60,
    )  # fmt: skip


def real_node_manifest(manifest: dict[str, Any], *, repository: str, built: Images) -> dict[str, Any]:
    """A GuardedModel manifest made to run on the CPU node from the local images: Triton's GPU
    request replaced through `spec.triton.resources`, both images local, the repository over http."""
    manifest = yaml.safe_load(yaml.safe_dump(manifest))  # a deep copy
    spec = manifest["spec"]
    spec["model"]["repository"] = repository
    spec["triton"] = {
        **(spec.get("triton") or {}),
        "image": built.triton.reference,
        "resources": CPU_TRITON_RESOURCES,
        "nodeSelector": {REAL_NODE_LABEL: "real"},
        "tolerations": [],
        "shmSize": "64Mi",
    }
    spec["sidecar"] = {
        **(spec.get("sidecar") or {}),
        "image": built.product.reference,
        "resources": SIDECAR_RESOURCES,
    }
    return manifest


def ready_endpoint(cluster: LocalCluster, namespace: str, service: str, port_name: str) -> str | None:
    """`address:port` of a ready endpoint of `service` (from its EndpointSlices), or None."""
    slices = cluster.kubectl_json(
        "get", "endpointslices", "-n", namespace, "-l", f"kubernetes.io/service-name={service}"
    )["items"]
    for endpoint_slice in slices:
        ports = {p.get("name"): p.get("port") for p in endpoint_slice.get("ports") or []}
        if ports.get(port_name) is None:
            continue
        for endpoint in endpoint_slice.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready") and endpoint.get("addresses"):
                return f"{endpoint['addresses'][0]}:{ports[port_name]}"
    return None
