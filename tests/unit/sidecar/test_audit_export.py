"""The audit exporter over real audit files (AuditLog with tiny rotation) into a directory of objects."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from guardedmodel_sidecar.audit import AuditLog
from guardedmodel_sidecar.audit_export import (
    CHECKPOINT,
    AuditExporter,
    backoff_delay,
    exporter_for,
    writer_name,
)
from guardedmodel_sidecar.config import parse_config
from guardedmodel_sidecar.config_spec import parse_spec
from guardedmodel_sidecar.config_values import ConfigError
from guardedmodel_sidecar.object_store import BucketWriter, ObjectStoreError


class DirectorySink:
    """Objects as files under a directory; ``fail_after`` puts succeed, then every put fails."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fail_after: int | None = None
        self.puts = 0

    def put(self, name: str, data: bytes) -> None:
        if self.fail_after is not None and self.puts >= self.fail_after:
            raise ObjectStoreError(f"cannot write {name}: the bucket is down")
        self.puts += 1
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def ids(self, stream: str = "records") -> list[str]:
        found = []
        for path in sorted((self.root / stream).rglob("*.parquet")):
            found += pq.read_table(io.BytesIO(path.read_bytes())).column("id").to_pylist()
        return found


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def write(log: AuditLog, start: int, count: int, version: str = "1") -> list[str]:
    ids = [f"r{i}" for i in range(start, start + count)]
    for rid in ids:
        log.record(
            {"id": rid, "ts": 1_764_633_600.0 + int(rid[1:]), "model": "m", "version": version, "batch": 1}
        )
        log.flush()  # one write per line: rotation happens between lines, as under traffic
    return ids


@pytest.fixture
def audit(tmp_path: Path) -> AuditLog:
    return AuditLog(tmp_path / "audit", rotate_bytes=2000, retain_files=0)


def exporter(audit: AuditLog, sink: DirectorySink, clock: Clock | None = None, **kw: int) -> AuditExporter:
    return AuditExporter(audit.directory, sink, "pod-a", clock=clock or Clock(), **kw)


def test_rotated_and_current_files_export_once_each_and_survive_the_rotation_rename(
    audit: AuditLog, tmp_path: Path
) -> None:
    sink = DirectorySink(tmp_path / "bucket")
    first = exporter(audit, sink)
    sent = write(audit, 0, 50)  # several rotated files and a current one
    assert first.cycle()
    assert sorted(sink.ids()) == sorted(sent)
    sent += write(audit, 50, 50)  # the current file is renamed by rotation; its id stays
    assert first.cycle()
    assert sorted(sink.ids()) == sorted(sent)  # no line twice
    assert first.stats["records"].rows == 100 and first.stats["records"].pending_bytes == 0
    # A restart reads the checkpoint and has nothing left to export.
    again = exporter(audit, sink)
    assert again.cycle() and again.stats["records"].rows == 0
    names = [p.name for p in (sink.root / "records").rglob("*.parquet")]
    assert all(n.startswith("pod-a-r") and n.endswith(".parquet") for n in names)


def test_bounded_rows_per_object(audit: AuditLog, tmp_path: Path) -> None:
    sink = DirectorySink(tmp_path / "bucket")
    ex = exporter(audit, sink, max_rows=7)
    write(audit, 0, 30)
    assert ex.cycle()
    sizes = [pq.read_metadata(p).num_rows for p in (sink.root / "records").rglob("*.parquet")]
    assert max(sizes) <= 7 and sum(sizes) == 30


def test_partitions_by_version_each_get_their_object(audit: AuditLog, tmp_path: Path) -> None:
    sink = DirectorySink(tmp_path / "bucket")
    write(audit, 0, 3, "1")
    write(audit, 3, 3, "2")
    assert exporter(audit, sink).cycle()
    versions = sorted(p.parent.parent.name for p in (sink.root / "records").rglob("*.parquet"))
    assert set(versions) == {"version=1", "version=2"}


def test_a_failed_store_backs_off_then_everything_arrives(audit: AuditLog, tmp_path: Path) -> None:
    sink, clock = DirectorySink(tmp_path / "bucket"), Clock()
    ex = exporter(audit, sink, clock)
    sent = write(audit, 0, 40)
    sink.fail_after = 0
    delays = []
    for _ in range(4):
        assert not ex.cycle()
        delays.append(ex._next_at - clock.now)
        assert not ex.due()
        clock.now = ex._next_at
        assert ex.due()
    assert delays == [1.0, 2.0, 4.0, 8.0]
    assert ex.stats["records"].errors == 4 and ex.stats["records"].pending_bytes > 0
    sink.fail_after = None
    assert ex.cycle()
    assert sorted(sink.ids()) == sorted(sent) and ex.failures == 0 and ex.last_success is not None


def test_a_crash_between_objects_repeats_the_batch_under_the_same_names(
    audit: AuditLog, tmp_path: Path
) -> None:
    sink = DirectorySink(tmp_path / "bucket")
    write(audit, 0, 3, "1")
    sent = ["r0", "r1", "r2", "r3", "r4", "r5"]
    write(audit, 3, 3, "2")
    sink.fail_after = 1  # the first partition's object is stored, the second fails: no checkpoint
    assert not exporter(audit, sink).cycle()
    first_names = {p.relative_to(sink.root) for p in sink.root.rglob("*.parquet")}
    sink.fail_after = None
    assert exporter(audit, sink).cycle()  # a new process from the same checkpoint
    names = {p.relative_to(sink.root) for p in sink.root.rglob("*.parquet")}
    assert first_names < names and len(names) == 2
    assert sorted(sink.ids()) == sent  # overwritten, not duplicated


def test_files_deleted_by_retention_before_export_are_counted_lost(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit", rotate_bytes=2000, retain_files=1)
    sink = DirectorySink(tmp_path / "bucket")
    ex = exporter(log, sink)
    written = []
    for start in range(0, 105, 5):  # the exporter counts every second (its tick); the bucket is down
        written += write(log, start, 5)  # rotations, and retention deletes the older files
        ex.scan()
    assert ex.cycle()
    stats = ex.stats["records"]
    exported = set(sink.ids())
    assert stats.lost_lines > 0 and stats.lost_lines + len(exported) == 105
    assert exported <= set(written) and "r104" in exported


def test_a_torn_line_is_counted_lost_and_the_rest_exported(audit: AuditLog, tmp_path: Path) -> None:
    sink = DirectorySink(tmp_path / "bucket")
    write(audit, 0, 2)
    with (audit.directory / "audit.jsonl").open("ab") as fh:
        fh.write(b'{"id":"torn","ts":\n')
    write(audit, 2, 2)
    ex = exporter(audit, sink)
    assert ex.cycle()
    assert sorted(sink.ids()) == ["r0", "r1", "r2", "r3"] and ex.stats["records"].lost_lines == 1


def test_checkpoint_is_json_in_the_audit_dir(audit: AuditLog, tmp_path: Path) -> None:
    write(audit, 0, 3)
    assert exporter(audit, DirectorySink(tmp_path / "bucket")).cycle()
    saved = json.loads((audit.directory / CHECKPOINT).read_text())
    assert saved["records"]["file"] == "r0" and saved["records"]["line"] == 3
    assert (audit.directory / CHECKPOINT).stat().st_mode & 0o777 == 0o600


def test_many_waiting_bytes_export_before_the_interval(audit: AuditLog, tmp_path: Path) -> None:
    clock = Clock()
    ex = exporter(audit, DirectorySink(tmp_path / "bucket"), clock, max_bytes=500)
    write(audit, 0, 2)
    ex.scan()
    assert not ex.due()
    write(audit, 2, 20)
    ex.scan()
    assert ex.due()


def test_backoff_schedule_doubles_from_one_second_to_five_minutes() -> None:
    assert [backoff_delay(n) for n in range(0, 12)] == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    assert backoff_delay(10_000) == 300


BASE_SPEC = {"model": {"name": "m"}}


@pytest.mark.parametrize(
    ("export", "message"),
    [
        ({"url": "https://bucket/x"}, "must be s3://<bucket>/<prefix>"),
        ({"url": "s3://"}, "must be s3://<bucket>/<prefix>"),
        ({}, "must be s3://<bucket>/<prefix>"),
        ({"url": "s3://b/p", "intervalSeconds": 0}, "intervalSeconds"),
        ({"url": "s3://b/p", "intervalSeconds": True}, "intervalSeconds"),
        ("s3://b/p", "must be a mapping"),
        ({"url": "gs://b/p", "storage": {"region": "eu-west-1"}}, "are for s3:// URLs"),
    ],
)
def test_a_bad_export_section_is_refused_with_what_to_write(export: object, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_spec({**BASE_SPEC, "audit": {"export": export}})


def test_the_export_section_reaches_the_exporter(tmp_path: Path) -> None:
    creds = tmp_path / "secret"
    creds.mkdir()
    (creds / "AWS_ACCESS_KEY_ID").write_text("id\n")
    (creds / "AWS_SECRET_ACCESS_KEY").write_text("secret")
    export = {"url": "s3://audit/p", "intervalSeconds": 5, "storage": {"endpoint": "http://127.0.0.1:9"}}
    config = parse_config(
        {"spec": {**BASE_SPEC, "audit": {"export": export}}, "auditDir": str(tmp_path / "a")}
    )
    config = config.with_overrides(audit_export_credentials=creds)
    made = exporter_for(config)
    assert made is not None and made.interval_s == 5.0
    assert isinstance(made.bucket, BucketWriter) and made.bucket.endpoint == "http://127.0.0.1:9"
    off = parse_config({"spec": {**BASE_SPEC, "audit": {"enabled": False, "export": export}}})
    assert exporter_for(off) is None
    assert exporter_for(parse_config({"spec": BASE_SPEC})) is None


def test_a_secret_without_its_key_file_names_the_file_and_the_field(tmp_path: Path) -> None:
    export = {"url": "s3://audit/p"}
    config = parse_config({"spec": {**BASE_SPEC, "audit": {"export": export}}})
    with pytest.raises(
        ConfigError, match=r"AWS_ACCESS_KEY_ID is missing.*spec\.audit\.export\.storage\.secretName"
    ):
        exporter_for(config.with_overrides(audit_export_credentials=tmp_path))


def test_the_writer_is_the_pod_and_the_worker() -> None:
    assert writer_name({"POD_NAME": "clf-7d9-x"}, 0, 1) == "clf-7d9-x"
    assert writer_name({"POD_NAME": "clf-7d9-x"}, 2, 4) == "clf-7d9-x-w2"
    assert writer_name({}, 0, 1)  # the host name


def test_an_unexpected_error_backs_off_like_a_bucket_error_and_is_counted(
    audit: AuditLog, tmp_path: Path
) -> None:
    class BrokenSink(DirectorySink):
        def put(self, name: str, data: bytes) -> None:
            raise RuntimeError("a bug in the writer")

    clock = Clock()
    ex = exporter(audit, BrokenSink(tmp_path / "bucket"), clock)
    write(audit, 0, 3)
    assert not ex.cycle() and not ex.cycle()
    assert ex.stats["records"].errors == 2 and ex._next_at - clock.now == 2.0
    ex.bucket = DirectorySink(tmp_path / "bucket")
    assert ex.cycle() and ex.stats["records"].rows == 3


def test_the_bounded_drain_exports_what_was_written_last(audit: AuditLog, tmp_path: Path) -> None:
    sink = DirectorySink(tmp_path / "bucket")
    ex = exporter(audit, sink)
    sent = write(audit, 0, 5)
    assert ex.drain_bounded(5.0).wait(10.0)
    assert sorted(sink.ids()) == sorted(sent)


def test_a_rotated_file_ending_in_a_torn_line_is_passed_with_the_line_counted(
    audit: AuditLog, tmp_path: Path
) -> None:
    write(audit, 0, 2)
    current = audit.directory / "audit.jsonl"
    current.write_bytes(current.read_bytes() + b'{"id":"torn"')
    current.rename(audit.directory / "audit-20261202T000000Z-1.jsonl")  # as rotation names it
    write(AuditLog(audit.directory), 2, 2)  # a new process, a new current file
    sink = DirectorySink(tmp_path / "bucket")
    ex = exporter(audit, sink)
    assert ex.cycle()
    assert sorted(sink.ids()) == ["r0", "r1", "r2", "r3"] and ex.stats["records"].lost_lines == 1
