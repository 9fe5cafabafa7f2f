"""A model served out of an s3:// bucket on real pods, with the audit log exported to another bucket.

MinIO listens on the real node's gateway address, where the pods reach the host. The operator is
installed from the chart; the GuardedModel names the model's bucket and a Secret of keys for it, and
an export bucket with a Secret of its own.

1. The model's Secret holds a wrong key: the real `fetch-model` init container fails, its message
   (bucket, endpoint, what to fix) is its terminated state's message, and the operator copies it
   into the GuardedModel's `ModelFetched` condition within a resync interval, without any event.
2. The Secret is corrected and the failing pod deleted (what an SRE does): the new pod fetches the
   model, becomes ready, and `ModelFetched` turns True.
3. Traffic through the pod's sidecar ends up as Parquet records in the export bucket, written by the
   sidecar with the keys of the export Secret (mounted into the sidecar only).

Needs root, the node packages and the image builders (`make test-pods`).
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from pod_helpers import (
    describe,
    example_manifest,
    pods,
    ready,
    real_node_ground,
    serve_on_real_node,
    wait_for,
)

from guardedmodel_cli.demo_traffic import MODEL as TRITON_MODEL
from guardedmodel_cli.demo_traffic import FreshRows, send
from guardedmodel_sidecar.object_store import BucketWriter, StoreSettings
from guardedmodel_testground import real_pods
from guardedmodel_testground.cluster import LocalCluster
from guardedmodel_testground.objstore import MinioServer, publish_model
from guardedmodel_testground.real_node import RealNodeSpec

pytestmark = [pytest.mark.pods, pytest.mark.integration]

NAMESPACE = "bucket"
MODEL = "fashion"  # the GuardedModel; the export partitions by the model Triton serves (TRITON_MODEL)
MODELS_BUCKET, PREFIX = "models", "team/prod"
AUDIT_BUCKET = "audit"
RESYNC_S = 10  # the chart's watch.resyncIntervalSeconds, shortened so the test waits less


@dataclass
class Stage:
    cluster: LocalCluster
    minio: MinioServer
    rows: FreshRows
    credentials: Path  # the export bucket's keys as files, to read it back


def secret(cluster: LocalCluster, name: str, access_key: str, secret_key: str) -> None:
    """Create or replace Secret `name` with S3 keys, as `kubectl create secret ... | apply` would."""
    manifest = cluster.kubectl(
        "create", "secret", "generic", name, "-n", NAMESPACE, "--dry-run=client", "-o", "yaml",
        f"--from-literal=AWS_ACCESS_KEY_ID={access_key}", f"--from-literal=AWS_SECRET_ACCESS_KEY={secret_key}",
    ).stdout  # fmt: skip
    cluster.kubectl("apply", "-f", "-", input=manifest)


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    with real_node_ground(tmp_path_factory, "bucket-on-real-pods") as ground:
        cluster, workdir = ground.cluster, ground.workdir
        # Entered first, so it stops after the operator and the pods' forwarding that the stack also holds.
        minio = ground.stack.enter_context(MinioServer(workdir / "minio", host=RealNodeSpec().gateway))
        for bucket in (MODELS_BUCKET, AUDIT_BUCKET):
            minio.create_bucket(bucket)
        publish_model(
            minio, MODELS_BUCKET, PREFIX, ground.example.model_dir, workdir / "published", versions=("1",)
        )
        manifest = example_manifest(MODEL, NAMESPACE)
        spec = manifest["spec"]
        spec["replicas"] = {"min": 1, "max": 1}
        spec["rollout"]["continuousGuard"] = False  # no Prometheus here
        spec["model"]["storage"] = {
            "secretName": "models-s3",
            "endpoint": minio.endpoint,
            "region": minio.region,
        }
        spec["audit"] = {
            "enabled": True,
            "sampleRate": 0.5,
            "export": {
                "url": f"s3://{AUDIT_BUCKET}/prod",
                "intervalSeconds": 2,
                "storage": {"secretName": "audit-s3", "endpoint": minio.endpoint, "region": minio.region},
            },
        }

        def secrets() -> None:
            secret(cluster, "models-s3", minio.access_key, "not-the-key")
            secret(cluster, "audit-s3", minio.access_key, minio.secret_key)

        values = workdir / "resync-values.yaml"
        values.write_text(f"watch:\n  resyncIntervalSeconds: {RESYNC_S}\n")
        serve_on_real_node(
            ground, manifest, None,
            repository=f"s3://{MODELS_BUCKET}/{PREFIX}", before_apply=secrets, extra_values=[values],
        )  # fmt: skip
        credentials = workdir / "audit-keys"
        credentials.mkdir()
        (credentials / "AWS_ACCESS_KEY_ID").write_text(minio.access_key)
        (credentials / "AWS_SECRET_ACCESS_KEY").write_text(minio.secret_key)
        yield Stage(cluster, minio, ground.fresh_rows(), credentials)


def model_pods(cluster: LocalCluster) -> list[dict]:
    return pods(cluster, NAMESPACE, f"app.kubernetes.io/instance={MODEL}")


def explain(cluster: LocalCluster) -> str:
    gm = cluster.kubectl("get", "gm", MODEL, "-n", NAMESPACE, "-o", "yaml", check=False).stdout
    return f"{gm}\n{describe(cluster, NAMESPACE, 'pods')}"


def fetched_condition(cluster: LocalCluster) -> dict[str, Any]:
    gm = cluster.kubectl_json("get", "gm", MODEL, "-n", NAMESPACE)
    conditions = (gm.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == "ModelFetched"), {})


def fetch_message(pod: dict) -> str:
    for container in (pod.get("status") or {}).get("initContainerStatuses") or []:
        if container.get("name") == "fetch-model":
            terminated = (container.get("state") or {}).get("terminated") or (
                container.get("lastState") or {}
            ).get("terminated")
            if terminated and terminated.get("exitCode"):
                return str(terminated.get("message") or "")
    return ""


def test_wrong_keys_are_named_in_the_pod_and_the_model_status_then_fixed_by_the_secret(stage: Stage) -> None:
    cluster = stage.cluster
    started = time.monotonic()
    failed = wait_for(
        "ModelFetched False",
        lambda: (c := fetched_condition(cluster)).get("status") == "False" and c,
        120 + 2 * RESYNC_S,
        lambda: explain(cluster),
    )
    print(
        f"ModelFetched False {time.monotonic() - started:.1f}s into the test (the manifest was applied before)"
    )
    assert failed["reason"] == "FetchFailed", failed
    expected = f"s3://{MODELS_BUCKET}/{PREFIX}/{MODEL}"
    assert "access denied" in failed["message"] and expected in failed["message"], failed
    assert "spec.model.storage.secretName" in failed["message"], failed  # what to fix
    (pod,) = model_pods(cluster)
    assert "access denied" in fetch_message(pod), describe(cluster, NAMESPACE, "pods")
    assert pod["metadata"]["name"] in failed["message"]

    secret(cluster, "models-s3", stage.minio.access_key, stage.minio.secret_key)
    cluster.kubectl("delete", "pod", "-n", NAMESPACE, pod["metadata"]["name"], "--wait=false")
    wait_for(
        "a ready pod with the model fetched",
        lambda: any(ready(p) for p in model_pods(cluster)),
        240,
        lambda: explain(cluster),
    )
    fixed = wait_for(
        "ModelFetched True",
        lambda: (c := fetched_condition(cluster)).get("status") == "True" and c,
        60,
        lambda: explain(cluster),
    )
    assert fixed["reason"] == "NoFetchFailure", fixed
    print(f"ready with the model fetched {time.monotonic() - started:.1f}s into the test")


def test_traffic_on_the_pod_is_exported_to_the_audit_bucket(stage: Stage) -> None:
    cluster = stage.cluster
    address = wait_for(
        "a ready endpoint",
        lambda: real_pods.ready_endpoint(cluster, NAMESPACE, MODEL, "http"),
        240,
        lambda: explain(cluster),
    )
    sent = 40
    outcome = send(address, stage.rows.next(sent), request_ids=[f"bucket-{i}" for i in range(sent)])
    assert sum(outcome.decisions.values()) == sent, outcome.decisions
    bucket = BucketWriter(
        f"s3://{AUDIT_BUCKET}/prod",
        settings=StoreSettings(
            endpoint=stage.minio.endpoint, region=stage.minio.region, credentials_dir=stage.credentials
        ),
    )

    def exported_ids() -> set[str]:
        ids: set[str] = set()
        for name, _ in bucket.list(f"records/model={TRITON_MODEL}/"):
            table = pq.read_table(io.BytesIO(bucket.read(name)), columns=["client_id"])
            ids.update(str(v) for v in table.column("client_id").to_pylist() if v)
        return ids

    wanted = {f"bucket-{i}" for i in range(sent)}
    deadline = time.monotonic() + 60
    while not wanted <= (found := exported_ids()) and time.monotonic() < deadline:
        time.sleep(2)
    if not wanted <= found:
        logs = "".join(
            cluster.kubectl(
                "logs", "-n", NAMESPACE, p["metadata"]["name"], "-c", "sidecar", "--tail=60", check=False
            ).stdout
            for p in model_pods(cluster)
        )
        raise AssertionError(
            f"{len(wanted - found)} requests not exported; objects: {bucket.list('')}\n{logs}\n{explain(cluster)}"
        )
    assert bucket.list(f"samples/model={TRITON_MODEL}/"), "the sampled payloads were exported too"
