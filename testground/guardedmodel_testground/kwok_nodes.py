"""The fake GPU nodes kwok manages in the local cluster: what each looks like to the scheduler."""

from __future__ import annotations

from dataclasses import dataclass, field

GPU_RESOURCE = "nvidia.com/gpu"
KWOK_ANNOTATION = "kwok.x-k8s.io/node"


@dataclass(frozen=True)
class FakeNode:
    name: str
    gpus: int = 4
    cpu: str = "32"
    memory: str = "256Gi"
    labels: dict[str, str] = field(default_factory=dict)


DEFAULT_NODES = (
    FakeNode("gpu-node-a", labels={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}),
    FakeNode("gpu-node-b", labels={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}),
)


def node_manifest(node: FakeNode) -> dict:
    """The Node object kwok manages: a GPU node as the NVIDIA device plugin would report it."""
    capacity = {"cpu": node.cpu, "memory": node.memory, "pods": "110", GPU_RESOURCE: str(node.gpus)}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node.name,
            "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": node.name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                "nvidia.com/gpu.present": "true",
                **node.labels,
            },
        },
        "spec": {},
        "status": {"capacity": capacity, "allocatable": capacity},
    }
