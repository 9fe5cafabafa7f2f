"""Append-only audit log: one line per record, rotation, exact payload sampling, nothing dropped."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import numpy as np

from guardedmodel_sidecar.audit import AuditLog, iter_records
from guardedmodel_sidecar.protocol.model import Tensor


def test_every_record_survives_rotation_in_order(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, rotate_bytes=2000)
    for i in range(500):
        log.record({"id": f"r{i}", "decision": "accept", "confidence": np.array([0.5, 0.25])})
        if i % 37 == 0:
            log.flush()
    log.close()
    rotated = list(tmp_path.glob("audit-*.jsonl"))
    assert len(rotated) >= 5
    records = list(iter_records(tmp_path))
    assert [r["id"] for r in records] == [f"r{i}" for i in range(500)]
    assert records[0]["confidence"] == [0.5, 0.25]
    assert log.records_written == 500


def test_sampling_keeps_exactly_the_rate_with_the_payload(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, sample_rate=0.1)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    kept = [log.maybe_sample(f"r{i}", [Tensor("X", "FP32", x.shape, x.tobytes(), x)]) for i in range(200)]
    log.close()
    assert sum(kept) == 20
    samples = list(iter_records(tmp_path, "samples"))
    assert len(samples) == 20
    first = samples[0]["inputs"][0]
    restored = np.frombuffer(base64.b64decode(first["b64"]), dtype=np.float32).reshape(first["shape"])
    np.testing.assert_array_equal(restored, x)


def test_disabled_audit_writes_nothing(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit", enabled=False, sample_rate=1.0)
    log.record({"id": "x"})
    assert not log.maybe_sample("x", [])
    log.close()
    assert not (tmp_path / "audit").exists()


def test_a_failed_write_keeps_the_lines_for_the_next_flush(tmp_path: Path) -> None:
    blocker = tmp_path / "audit"
    blocker.write_text("a file where the directory should be")
    log = AuditLog(blocker)
    log.record({"id": "kept"})
    log.flush()
    assert log.write_errors == 1
    os.remove(blocker)
    log.flush()
    log.close()
    assert [r["id"] for r in iter_records(blocker)] == ["kept"]
