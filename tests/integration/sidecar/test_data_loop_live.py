"""The data loop from the request path on: the real sidecar in front of a real CPU Triton serving the
worked Fashion-MNIST example, exporting to a real MinIO on loopback.

Traffic of the example's validation rows; the rows the scorer is unsure of go to a review webhook; the
sidecar keeps the payload of every reviewed request (the sampling rate alone would keep almost none) and
exports it. The reviewer's labels (the true classes, looked up by the review item's rows) go into the
bucket with `guardedmodel labels put`; `guardedmodel dataset` joins them with the exported samples, and
every reviewed row is in the data set, its input the bytes that were sent; `guardedmodel fit --data`
fits a guard on the validation set plus that data set.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import tritonclient.http as httpclient
from conftest import SidecarProcess, WebhookReceiver, copy_example_version, launch_sidecar
from review_harness import metric

from guardedmodel_fit.example import DEFAULT_OUT, ExampleBuild, build_example
from guardedmodel_fit.example_network import INPUT_NAME, MODEL_NAME
from guardedmodel_sidecar.guard.artifact import load_artifact
from guardedmodel_sidecar.object_store import BucketReader, StoreSettings
from guardedmodel_testground.objstore import MinioServer
from guardedmodel_testground.procs import log_tail
from guardedmodel_testground.sidecar_config import sidecar_config
from guardedmodel_testground.triton import TritonServer

pytestmark = pytest.mark.integration

BUCKET = "evergreen"
EXPORT = f"s3://{BUCKET}/audit"
DATASET = f"s3://{BUCKET}/datasets/reviewed.parquet"
REQUESTS, BATCH = 60, 8
REVIEW_BELOW = 0.75  # high enough that some validation rows ask for review
SAMPLE_RATE = 0.01  # below one request in REQUESTS: reviewed payloads are kept regardless


@pytest.fixture(scope="module")
def example() -> ExampleBuild:
    return build_example(DEFAULT_OUT, versions=("1",), progress=False)


@pytest.fixture(scope="module")
def repository(example: ExampleBuild, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Version 1 without its guard's report, copied: the cached example may be refitted meanwhile."""
    return copy_example_version(example.model_dir, tmp_path_factory.mktemp("fashion") / "models")


@pytest.fixture(scope="module")
def minio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinioServer]:
    with MinioServer(tmp_path_factory.mktemp("minio")) as server:
        server.create_bucket(BUCKET)
        yield server


def spec(webhook: str, minio: MinioServer) -> dict[str, Any]:
    return {
        "model": {"name": MODEL_NAME, "version": "1"},
        "gate": {
            "inputs": [
                {"name": INPUT_NAME, "datatype": "FP32", "shape": [1, 28, 28], "min": 0.0, "max": 1.0}
            ],
            "batchPolicy": "perRow",
        },
        "confidence": {"reviewBelow": REVIEW_BELOW, "review": {"webhook": webhook, "maxFraction": 1.0}},
        "audit": {
            "enabled": True,
            "sampleRate": SAMPLE_RATE,
            "export": {
                "url": EXPORT,
                "intervalSeconds": 1,
                "storage": {"endpoint": minio.endpoint, "region": minio.region},
            },
        },
    }


def cli_env(minio: MinioServer) -> dict[str, str]:
    """A user's shell: the bucket's keys and endpoint, nothing else of the cloud's."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GOOGLE_"))}
    return {
        **clean,
        "AWS_ACCESS_KEY_ID": minio.access_key,
        "AWS_SECRET_ACCESS_KEY": minio.secret_key,
        "AWS_ENDPOINT_URL": minio.endpoint,
        "AWS_REGION": minio.region,
    }


def guardedmodel(
    *args: str, env: dict[str, str], stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "guardedmodel_cli.main", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, f"guardedmodel {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done


def wait_for_export(proc: SidecarProcess, samples: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metric(proc.metrics(), "guardedmodel_audit_export_rows_total", stream="samples") >= samples:
            return
        time.sleep(0.5)
    raise AssertionError(
        f"fewer than {samples} samples exported in {timeout:.0f}s:\n{log_tail(proc.log_path)}"
    )


def test_reviewed_requests_come_back_as_a_data_set_that_fits_a_guard(
    example: ExampleBuild, repository: Path, minio: MinioServer, tmp_path: Path
) -> None:
    validation = example.dataset("validation")
    assert validation.labels is not None
    x = np.ascontiguousarray(validation.inputs[: REQUESTS * BATCH], dtype=np.float32)
    truth = validation.labels[: REQUESTS * BATCH]
    credentials = tmp_path / "export-credentials"
    credentials.mkdir()
    (credentials / "AWS_ACCESS_KEY_ID").write_text(minio.access_key)
    (credentials / "AWS_SECRET_ACCESS_KEY").write_text(minio.secret_key)

    triton = TritonServer(repository, model_control_mode="explicit", log_dir=tmp_path / "logs")
    triton.start()
    receiver = WebhookReceiver().start()
    proc: SidecarProcess | None = None
    try:
        config = sidecar_config(
            spec(receiver.url, minio), triton=triton, repository=repository, workdir=tmp_path
        )
        config["auditExportCredentialsDir"] = str(credentials)
        proc = launch_sidecar(config, tmp_path, "sidecar")
        proc.wait_ready()
        client = httpclient.InferenceServerClient(proc.http_url)
        for n in range(REQUESTS):
            rows = x[n * BATCH : (n + 1) * BATCH]
            tensor = httpclient.InferInput(INPUT_NAME, list(rows.shape), "FP32")
            tensor.set_data_from_numpy(rows, binary_data=True)
            client.infer(MODEL_NAME, [tensor], request_id=f"req-{n}")
        client.close()

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and metric(proc.metrics(), "guardedmodel_reviews_total") > len(
            receiver.received
        ):
            time.sleep(0.2)
        items = list(receiver.received)
        assert 3 <= len(items) < REQUESTS, f"{len(items)} review items: pick another REVIEW_BELOW"
        wait_for_export(proc, len(items))
    finally:
        if proc is not None:
            proc.stop()
        receiver.stop()
        triton.stop()

    # The reviewer: the true class of every row a review item asks about.
    sent_row = {}  # (record id, row) -> index into x
    labels = []
    for item in items:
        first = int(item["client_id"].removeprefix("req-")) * BATCH
        for row in item["review_rows"]:
            sent_row[(item["id"], row)] = first + row
            labels.append({"id": item["id"], "row": row, "label": int(truth[first + row]), "reviewer": "ana"})
    env = cli_env(minio)
    guardedmodel(
        "labels", "put", "--export-url", EXPORT, "--model", MODEL_NAME, "-",
        env=env, stdin="".join(json.dumps(line) + "\n" for line in labels),
    )  # fmt: skip
    made = guardedmodel("dataset", "--export-url", EXPORT, "--model", MODEL_NAME, "--out", DATASET, env=env)
    print(made.stdout)
    assert "labels without sample  0" in made.stdout, made.stdout

    bucket = BucketReader(
        f"s3://{BUCKET}",
        settings=StoreSettings(endpoint=minio.endpoint, region=minio.region, credentials_dir=credentials),
    )
    table = pq.read_table(io.BytesIO(bucket.read(DATASET.removeprefix(f"s3://{BUCKET}/")))).to_pylist()
    assert {(r["id"], r["row"]) for r in table} == set(sent_row), "every reviewed row, nothing else"
    for r in table:
        index = sent_row[(r["id"], r["row"])]
        assert r["label"] == int(truth[index]) and not r["ood"]
        assert r["input"] == x[index].tobytes(), "the exported input is the bytes that were sent"

    model = tmp_path / "refit" / MODEL_NAME
    shutil.copytree(repository / MODEL_NAME, model, ignore=shutil.ignore_patterns("guard"))
    guardedmodel(
        "fit", "--model", str(model), "--version", "1",
        "--data", str(example.data_dir / "validation.npz"), "--data", DATASET,
        "--methods", "energy,msp", "--no-progress",
        env=env,
    )  # fmt: skip
    artifact = load_artifact(model / "1" / "guard")
    assert artifact.model_version == "1" and set(artifact.thresholds) >= {"energy", "msp"}
    report = json.loads((model / "1" / "guard" / "report" / "report.json").read_text())
    fitted_on = sum(report["samples"][k] for k in ("fit", "calibration", "evaluation"))
    assert fitted_on == len(validation.inputs) + len(table), report["samples"]
