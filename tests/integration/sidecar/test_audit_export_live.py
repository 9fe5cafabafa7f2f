"""Audit export from the real sidecar (in front of a real CPU Triton) into a real MinIO on loopback.

Traffic through the sidecar ends as Parquet objects under the contract's layout; read back (pyarrow
over S3, and the DuckDB query of docs/audit-export.md over a local copy), every record id of the audit
files is there exactly once after de-duplication and every sample decodes to the bytes sent. With the
credentials wrong, then the sidecar SIGKILLed and restarted with the right ones, then the bucket down
and back: requests are served all along, errors are counted, and afterwards nothing is missing.
"""

from __future__ import annotations

import io
import re
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import tritonclient.http as httpclient
from conftest import SidecarProcess, sidecar_config
from review_harness import metric
from sidecar_toy import MODEL, toy_data

from guardedmodel_sidecar.audit_file import iter_records
from guardedmodel_sidecar.object_store import BucketWriter, ObjectStoreError, StoreSettings
from guardedmodel_testground.objstore import FakeGcsServer, MinioServer
from guardedmodel_testground.triton import TritonServer

pytestmark = pytest.mark.integration

BUCKET = "audit-export"
PREFIX = "team/prod"
DOCS = Path(__file__).parents[3] / "docs" / "audit-export.md"


@pytest.fixture(scope="module")
def minio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinioServer]:
    with MinioServer(tmp_path_factory.mktemp("minio")) as server:
        server.create_bucket(BUCKET)
        yield server


@pytest.fixture(scope="module")
def gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGcsServer]:
    with FakeGcsServer(tmp_path_factory.mktemp("gcs"), xml_uploads=True) as server:
        server.create_bucket(BUCKET)
        yield server


def credentials(directory: Path, minio: MinioServer, *, secret: str | None = None) -> Path:
    """The files a mounted Secret gives the sidecar."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "AWS_ACCESS_KEY_ID").write_text(minio.access_key)
    (directory / "AWS_SECRET_ACCESS_KEY").write_text(secret or minio.secret_key)
    return directory


def export_config(
    triton: TritonServer, repository: Path, work: Path, minio: MinioServer, prefix: str, creds: Path
) -> dict[str, Any]:
    spec = {
        "audit": {
            "enabled": True,
            "sampleRate": 0.5,
            "export": {
                "url": f"s3://{BUCKET}/{prefix}",
                "intervalSeconds": 1,
                "storage": {"endpoint": minio.endpoint, "region": minio.region},
            },
        }
    }
    config = sidecar_config(triton, repository, work, spec=spec)
    config["auditExportCredentialsDir"] = str(creds)
    return config


class Client:
    """Requests of the toy model; remembers each request's inputs by its client id."""

    def __init__(self, url: str) -> None:
        self.client = httpclient.InferenceServerClient(url)
        self.sent: dict[str, bytes] = {}
        self.latencies: list[float] = []
        self._n = 0

    def send(self, count: int, *, bad_every: int = 10) -> None:
        data = toy_data()
        for _ in range(count):
            self._n += 1
            client_id = f"c{self._n}"
            bad = self._n % bad_every == 0
            x = np.zeros((1, 3), np.float32) if bad else data.sample(2, seed=self._n)[0]
            inp = httpclient.InferInput("INPUT", list(x.shape), "FP32")
            inp.set_data_from_numpy(np.ascontiguousarray(x))
            started = time.monotonic()
            try:
                self.client.infer(MODEL, [inp], request_id=client_id)
                assert not bad
            except httpclient.InferenceServerException:
                assert bad, "a valid request was refused while the export failed"
            self.latencies.append(time.monotonic() - started)
            self.sent[client_id] = x.tobytes()


def s3_filesystem(minio: MinioServer) -> pafs.S3FileSystem:
    return pafs.S3FileSystem(
        access_key=minio.access_key,
        secret_key=minio.secret_key,
        endpoint_override=minio.endpoint,
        region=minio.region,
        scheme="http",
    )


def read_table(store: MinioServer | FakeGcsServer, prefix: str, stream: str) -> list[dict[str, Any]]:
    """Rows of a stream's objects with their partition columns: from MinIO as a pyarrow dataset with
    Hive partitioning; from the GCS emulator object by object, the partitions read off the names."""
    if isinstance(store, FakeGcsServer):
        bucket = BucketWriter(
            f"gs://{BUCKET}/{prefix}", settings=StoreSettings(credentials_dir=gcs_key_dir(store))
        )
        rows = []
        for name, _ in bucket.list(f"{stream}/"):
            data = bucket.read(name)
            parts = dict(part.split("=", 1) for part in name.split("/")[1:4])
            rows += [{**row, **parts} for row in pq.read_table(io.BytesIO(data)).to_pylist()]
        return rows
    fs = s3_filesystem(store)
    where = f"{BUCKET}/{prefix}/{stream}"
    if fs.get_file_info(where).type == pafs.FileType.NotFound:
        return []
    partitioning = ds.partitioning(
        pa.schema([("model", pa.string()), ("version", pa.string()), ("date", pa.string())]), flavor="hive"
    )
    return (
        ds.dataset(where, filesystem=fs, format="parquet", partitioning=partitioning).to_table().to_pylist()
    )


def gcs_key_dir(gcs: FakeGcsServer) -> Path:
    """The mounted Secret of a gs:// export: key.json."""
    directory = gcs.state_dir / "secret"
    directory.mkdir(exist_ok=True)
    (directory / "key.json").write_text(gcs.key_file.read_text())
    return directory


def audit_ids(audit_dir: Path, stem: str = "audit") -> list[str]:
    return [r["id"] for r in iter_records(audit_dir, stem)]


def wait_exported(minio: MinioServer | FakeGcsServer, prefix: str, audit_dir: Path, timeout: float) -> float:
    """Seconds until every record id of the audit files is in the bucket."""
    started = time.monotonic()
    while True:
        want = set(audit_ids(audit_dir))
        have = {row["id"] for row in read_table(minio, prefix, "records")}
        if want and want <= have:
            return time.monotonic() - started
        assert time.monotonic() - started < timeout, f"{len(want - have)} of {len(want)} records not exported"
        time.sleep(0.2)


def check_complete(
    minio: MinioServer | FakeGcsServer, prefix: str, audit_dir: Path, sent: dict[str, bytes]
) -> None:
    records = read_table(minio, prefix, "records")
    ids = [r["id"] for r in records]
    want = audit_ids(audit_dir)
    assert len(want) == len(set(want))
    assert set(ids) == set(want), "exported ids differ from the audit files' ids"
    duplicates = {i for i in ids if ids.count(i) > 1}
    for rid in duplicates:  # at least once: a repeat is the same record, never another one
        assert len({r["record"] for r in records if r["id"] == rid}) == 1
    by_id = {r["id"]: r for r in records}
    assert {r["kind"] for r in records} == {"scored", "failure"}
    assert {(r["model"], r["version"]) for r in records} == {(MODEL, "1")}, {
        (r["model"], r["version"]) for r in records
    }
    samples = {s["id"]: s for s in read_table(minio, prefix, "samples")}
    assert set(samples) == set(audit_ids(audit_dir, "samples")) and samples
    for rid, sample in samples.items():
        (tensor,) = sample["inputs"]
        assert tensor["name"] == "INPUT" and tensor["datatype"] == "FP32"
        assert tensor["data"] == sent[by_id[rid]["client_id"]], f"sample {rid} is not the bytes sent"


def test_traffic_arrives_as_parquet_once_per_id_and_the_docs_query_counts_it(
    minio: MinioServer,
    toy_repository: Path,
    toy_triton: TritonServer,
    sidecar_factory: Callable[..., SidecarProcess],
    tmp_path: Path,
) -> None:
    prefix = f"{PREFIX}/healthy"
    config = export_config(
        toy_triton, toy_repository, tmp_path, minio, prefix, credentials(tmp_path / "s", minio)
    )
    sidecar = sidecar_factory(config)
    client = Client(sidecar.http_url)
    started = time.monotonic()
    client.send(40)
    lag = wait_exported(minio, prefix, sidecar.audit_dir, timeout=30)
    print(
        f"40 requests to objects at intervalSeconds=1: {time.monotonic() - started:.1f} s (after the last: {lag:.1f} s)"
    )
    check_complete(minio, prefix, sidecar.audit_dir, client.sent)
    text = sidecar.metrics()
    assert metric(text, "guardedmodel_audit_export_rows_total", stream="records") == 40
    assert metric(text, "guardedmodel_audit_export_errors_total", stream="records") == 0
    assert metric(text, "guardedmodel_audit_export_last_success_timestamp_seconds") > 0
    assert sidecar.stop() == 0

    # The documented DuckDB query, over a local copy of the bucket (production reads s3:// via httpfs).
    mirror = tmp_path / "mirror"
    pafs.copy_files(f"{BUCKET}/{prefix}", str(mirror), source_filesystem=s3_filesystem(minio))
    sql = re.search(r"```sql\n(.*?)```", DOCS.read_text(), re.S)
    assert sql is not None
    query = sql[1].replace("s3://ml-audit/guardedmodel/prod", str(mirror))
    con = duckdb.connect()
    *views, final = [q for q in query.split(";") if q.strip()]
    for view in views:
        con.execute(view)
    rows = con.execute(final).fetchall()
    records = list(iter_records(sidecar.audit_dir))
    failures = sum(1 for r in records if "stage" in r)
    reviews = sum(1 for r in records if r.get("decision") == "review")
    sampled = len(audit_ids(sidecar.audit_dir, "samples"))
    assert sorted(rows) == sorted(
        [
            (MODEL, "1", "failure", failures, 0, 0),
            (MODEL, "1", "scored", len(records) - failures, reviews, sampled),
        ]
    )


def test_wrong_credentials_a_kill_and_a_bucket_outage_lose_nothing_and_never_block_requests(
    minio: MinioServer,
    toy_repository: Path,
    toy_triton: TritonServer,
    sidecar_factory: Callable[..., SidecarProcess],
    tmp_path: Path,
) -> None:
    prefix = f"{PREFIX}/outage"
    creds = credentials(tmp_path / "s", minio, secret="not-the-secret")
    config = export_config(toy_triton, toy_repository, tmp_path, minio, prefix, creds)
    first = sidecar_factory(config)
    client = Client(first.http_url)
    client.send(30)
    time.sleep(2.5)  # a few failed exports, backing off
    text = first.metrics()
    assert metric(text, "guardedmodel_audit_export_errors_total", stream="records") >= 1
    assert metric(text, "guardedmodel_audit_export_rows_total", stream="records") == 0
    assert metric(text, "guardedmodel_audit_export_pending_bytes", stream="records") > 0
    assert "access denied" in first.log_path.read_text()
    assert read_table(minio, prefix, "records") == []

    # Killed mid-way (no drain); restarted on the same audit volume with the right Secret.
    assert first.popen is not None
    first.popen.kill()
    first.popen.wait(timeout=10)
    credentials(creds, minio)
    second = sidecar_factory(config)
    client.client = httpclient.InferenceServerClient(second.http_url)
    before = len(client.latencies)
    client.send(30)
    healthy_p50 = statistics.median(client.latencies[before:])
    wait_exported(minio, prefix, second.audit_dir, timeout=30)

    # The bucket goes away under traffic, then comes back on the same address.
    minio.stop()
    before = len(client.latencies)
    client.send(30)
    outage_p50 = statistics.median(client.latencies[before:])
    time.sleep(3.0)
    text = second.metrics()
    assert metric(text, "guardedmodel_audit_export_errors_total", stream="records") >= 1
    assert outage_p50 < max(3 * healthy_p50, healthy_p50 + 0.05), (healthy_p50, outage_p50)
    minio.start()
    wait_exported(minio, prefix, second.audit_dir, timeout=60)
    assert second.stop() == 0  # a graceful stop drains the rest (samples included)
    check_complete(minio, prefix, second.audit_dir, client.sent)
    print(f"p50 latency: healthy {healthy_p50 * 1000:.1f} ms, bucket down {outage_p50 * 1000:.1f} ms")


def test_traffic_arrives_in_a_gcs_bucket_with_a_mounted_key(
    gcs: FakeGcsServer,
    toy_repository: Path,
    toy_triton: TritonServer,
    sidecar_factory: Callable[..., SidecarProcess],
    tmp_path: Path,
) -> None:
    prefix = f"{PREFIX}/gcs"
    spec = {
        "audit": {
            "enabled": True,
            "sampleRate": 0.5,
            "export": {"url": f"gs://{BUCKET}/{prefix}", "intervalSeconds": 1},
        }
    }
    config = sidecar_config(toy_triton, toy_repository, tmp_path, spec=spec)
    config["auditExportCredentialsDir"] = str(gcs_key_dir(gcs))
    sidecar = sidecar_factory(config)
    client = Client(sidecar.http_url)
    client.send(30)
    wait_exported(gcs, prefix, sidecar.audit_dir, timeout=30)
    assert sidecar.stop() == 0
    check_complete(gcs, prefix, sidecar.audit_dir, client.sent)


@pytest.mark.slow
def test_at_the_default_interval_a_request_reaches_the_bucket_within_a_minute(
    minio: MinioServer,
    toy_repository: Path,
    toy_triton: TritonServer,
    sidecar_factory: Callable[..., SidecarProcess],
    tmp_path: Path,
) -> None:
    prefix = f"{PREFIX}/default-interval"
    config = export_config(
        toy_triton, toy_repository, tmp_path, minio, prefix, credentials(tmp_path / "s", minio)
    )
    del config["spec"]["audit"]["export"]["intervalSeconds"]  # 60 s
    sidecar = sidecar_factory(config)
    client = Client(sidecar.http_url)
    time.sleep(5)  # the request comes some time into the exporter's first interval
    client.send(1)
    lag = wait_exported(minio, prefix, sidecar.audit_dir, timeout=90)
    print(f"request to object at the default interval: {lag:.1f} s")
    assert lag <= 60 + 5


@pytest.mark.parametrize("scheme", ["s3", "gs"])
@pytest.mark.parametrize("prefix", ["", "deep/er"])
def test_bucket_writer_puts_overwrites_lists_and_reads(
    scheme: str, prefix: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if scheme == "s3":
        minio: MinioServer = request.getfixturevalue("minio")
        settings = StoreSettings(
            endpoint=minio.endpoint, region=minio.region, credentials_dir=credentials(tmp_path, minio)
        )
    else:
        settings = StoreSettings(credentials_dir=gcs_key_dir(request.getfixturevalue("gcs")))
    root = f"{scheme}://{BUCKET}/writer-{prefix.replace('/', '-') or 'root'}"
    bucket = BucketWriter(f"{root}/{prefix}".rstrip("/"), settings=settings)
    bucket.put("a/x=1/one.parquet", b"first")
    bucket.put("a/x=1/one.parquet", b"second")  # overwritten, not added
    bucket.put("b/two.parquet", b"2")
    assert bucket.list("a/") == [("a/x=1/one.parquet", 6)]
    assert bucket.list() == [("a/x=1/one.parquet", 6), ("b/two.parquet", 1)]
    assert bucket.read("a/x=1/one.parquet") == b"second"
    with pytest.raises(ObjectStoreError, match="does not exist"):
        bucket.read("a/none.parquet")
