"""The data loop against real object stores on loopback, MinIO (s3://) and fake-gcs-server (gs://):
exported samples (written here as the export contract lays them out), reviewers' labels stored with
`guardedmodel labels put`, `guardedmodel dataset` joining them into a data set file in the bucket, and
`guardedmodel fit --data s3://…` fitting the worked example's guard on it.

Every command runs as a process with only the environment a user's shell would give it."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from loop_exports import ExportedRequest, at, parquet, samples_key, samples_table, tensor

from guardedmodel_fit.data import Dataset
from guardedmodel_fit.dataset_file import INPUT_METADATA_KEY
from guardedmodel_fit.example import DEFAULT_OUT, ExampleBuild, build_example
from guardedmodel_fit.example_data import NEAR_OOD_SET
from guardedmodel_fit.example_network import INPUT_NAME, MODEL_NAME
from guardedmodel_sidecar.guard.artifact import load_artifact
from guardedmodel_sidecar.object_store import environment_bucket
from guardedmodel_testground.objstore import FakeGcsServer, MinioServer

pytestmark = pytest.mark.integration

BUCKET = "loop"
PREFIX = "exports/prod"
DAY1, DAY2 = date(2026, 3, 1), date(2026, 3, 2)
ROWS = 16  # rows per exported request (its batch)


@pytest.fixture(scope="module")
def example() -> ExampleBuild:
    return build_example(DEFAULT_OUT, versions=("1", "2"), progress=False)


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


@pytest.fixture(params=["s3", "gs"])
def store(request: pytest.FixtureRequest) -> tuple[str, MinioServer | FakeGcsServer]:
    return request.param, request.getfixturevalue("minio" if request.param == "s3" else "gcs")


def guardedmodel(
    *args: str, env: dict[str, str], stdin: str | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GOOGLE_"))}
    return subprocess.run(
        [sys.executable, "-m", "guardedmodel_cli.main", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**clean, **env},
    )


def put_labels(
    url: str, source: str, env: dict[str, str], stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return guardedmodel(
        "labels", "put", "--export-url", url, "--model", MODEL_NAME, source, env=env, stdin=stdin
    )


def requests_of(ids: str, data: Dataset, first: int) -> list[ExportedRequest]:
    """Requests ``<ids[k]>`` of ROWS consecutive rows of ``data`` from row ``first`` on."""
    out = []
    for k, request_id in enumerate(ids.split()):
        rows = data.inputs[first + k * ROWS : first + (k + 1) * ROWS]
        out.append(ExportedRequest(request_id, at(DAY1), [tensor(INPUT_NAME, rows)]))
    return out


def export_samples(server: MinioServer | FakeGcsServer, prefix: str, example: ExampleBuild) -> None:
    """Version 1: requests v0..v5 (in-distribution) and n0, n1 (held-out classes) over two days, and a
    re-export of v2, v3 under another offset (at least once); version 2: request w0."""
    validation, near = example.dataset("validation"), example.dataset(NEAR_OOD_SET)
    v = requests_of("v0 v1 v2 v3 v4 v5", validation, 0)
    n = requests_of("n0 n1", near, 0)
    objects = {
        samples_key(prefix, MODEL_NAME, "1", DAY1, "pod-a", "f1", 0): v[:4],
        samples_key(prefix, MODEL_NAME, "1", DAY1, "pod-a", "f1", 2): v[2:4],
        samples_key(prefix, MODEL_NAME, "1", DAY2, "pod-b", "f7", 0): [*v[4:], *n],
        samples_key(prefix, MODEL_NAME, "2", DAY2, "pod-c", "f9", 0): requests_of("w0", validation, 500),
    }
    for key, requests in objects.items():
        server.upload(BUCKET, key, parquet(samples_table(requests)))


def review_labels(example: ExampleBuild) -> tuple[str, str]:
    """(JSON lines, CSV): true classes of v0..v5, ood for n0, n1, a label for a request never exported
    and one for version 2's request; the CSV, put later, relabels v0 row 3."""
    labels = example.dataset("validation").labels
    assert labels is not None
    lines = [
        {"id": f"v{k}", "row": r, "label": int(labels[k * ROWS + r]), "reviewer": "ana"}
        for k in range(6)
        for r in range(ROWS)
    ]
    lines += [{"id": f"n{k}", "row": r, "label": None, "ood": True} for k in range(2) for r in range(ROWS)]
    lines += [{"id": "never-exported", "row": 0, "label": 1}, {"id": "w0", "row": 0, "label": 1}]
    relabel = (int(labels[3]) + 1) % 8
    return "\n".join(json.dumps(line) for line in lines) + "\n", f"id,row,label,reviewer\nv0,3,{relabel},bo\n"


def test_labels_dataset_and_fit_close_the_loop_through_the_bucket(
    store: tuple[str, MinioServer | FakeGcsServer],
    example: ExampleBuild,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scheme, server = store
    prefix = f"{PREFIX}/{tmp_path.name}"
    url = f"{scheme}://{BUCKET}/{prefix}"
    env = server.env()
    export_samples(server, prefix, example)
    jsonl, csv_text = review_labels(example)

    put = put_labels(url, "-", env, jsonl)
    assert put.returncode == 0, put.stderr
    assert (
        "130 label(s) (98 with a class, 32 ood) written to " + f"{url}/labels/model={MODEL_NAME}/"
        in put.stdout
    )
    (tmp_path / "relabel.csv").write_text(csv_text)
    put = put_labels(url, str(tmp_path / "relabel.csv"), env)
    assert put.returncode == 0, put.stderr
    bad = put_labels(url, "-", env, '{"id": "v0", "row": -2, "label": 1}\n')
    assert bad.returncode == 2 and "line 1, field 'row'" in bad.stderr, bad.stderr

    out = f"{scheme}://{BUCKET}/{prefix}/sets/reviewed.parquet"
    made = guardedmodel(
        "dataset", "--export-url", url, "--model", MODEL_NAME, "--version", "1", "--out", out, env=env
    )
    assert made.returncode == 0, made.stderr
    print(made.stdout)
    printed = " ".join(made.stdout.split())
    assert f"data set of {6 * ROWS + 2 * ROWS} row(s) written to {out}" in printed
    for count in (
        "samples read 10",  # 4 + 2 re-exported + 4
        "duplicates dropped 2",
        "labels read 131 (1 superseded by later ones)",
        f"labelled rows {6 * ROWS}",
        f"OOD rows {2 * ROWS}",
        "labels without sample 2 (e.g. never-exported)",  # and w0's: version 2 was not asked for
        "labels outside batch 0",
    ):
        assert count in printed, printed

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    table = pq.read_table(io.BytesIO(environment_bucket(url).read("sets/reviewed.parquet")))
    assert json.loads(table.schema.metadata[INPUT_METADATA_KEY]) == {
        "name": INPUT_NAME,
        "datatype": "FP32",
        "shape": [1, 28, 28],
    }
    validation, near = example.dataset("validation"), example.dataset(NEAR_OOD_SET)
    by_key = {(r["id"], r["row"]): r for r in table.to_pylist()}
    for k in range(6):
        for r in range(ROWS):
            row = by_key[(f"v{k}", r)]
            assert np.array_equal(
                np.frombuffer(row["input"], "<f4").reshape(1, 28, 28), validation.inputs[k * ROWS + r]
            )
            assert row["ood"] is False
    assert by_key[("v0", 3)]["label"] == (int(validation.labels[3]) + 1) % 8  # the later put wins
    assert by_key[("v1", 0)]["label"] == int(validation.labels[ROWS])
    assert all(
        by_key[(f"n{k}", r)]["ood"] and by_key[(f"n{k}", r)]["label"] is None
        for k in range(2)
        for r in range(ROWS)
    )
    assert np.array_equal(
        np.frombuffer(by_key[("n1", 5)]["input"], "<f4").reshape(1, 28, 28), near.inputs[ROWS + 5]
    )

    local = tmp_path / "sets" / "reviewed.parquet"
    again = guardedmodel(
        "dataset", "--export-url", url, "--model", MODEL_NAME, "--version", "1", "--out", str(local), env=env
    )
    assert again.returncode == 0, again.stderr
    assert pq.read_table(local).equals(table)  # the same rows, in the same order, locally
    none = guardedmodel(
        "dataset", "--export-url", url, "--model", "absent", "--out", str(tmp_path / "none.parquet"), env=env
    )
    assert none.returncode == 2 and "no labelled rows to write for model 'absent'" in none.stderr, none.stderr
    assert not (tmp_path / "none.parquet").exists()

    model = tmp_path / "models" / MODEL_NAME
    shutil.copytree(example.model_dir, model, ignore=shutil.ignore_patterns("guard", "2"))
    fitted = guardedmodel(
        "fit",
        "--model",
        str(model),
        "--version",
        "1",
        "--data",
        out,
        "--ood",
        f"reviewed={out}",
        "--methods",
        "energy,msp",
        "--no-progress",
        env=env,
    )
    assert fitted.returncode == 0, fitted.stderr
    artifact = load_artifact(model / "1" / "guard")
    assert artifact.model_version == "1" and set(artifact.thresholds) >= {"energy", "msp"}
    report = json.loads((model / "1" / "guard" / "report" / "report.json").read_text())
    assert report["samples"]["ood:reviewed"] == 2 * ROWS
    assert sum(report["samples"][k] for k in ("fit", "calibration", "evaluation")) == 6 * ROWS


def test_wrong_keys_name_the_bucket_and_the_variables_to_fix(
    minio: MinioServer, example: ExampleBuild, tmp_path: Path
) -> None:
    url = f"s3://{BUCKET}/{PREFIX}/denied"
    env = minio.env(secret_key="not-the-key")
    put = put_labels(url, "-", env, '{"id": "a", "row": 0, "label": 1}\n')
    made = guardedmodel(
        "dataset", "--export-url", url, "--model", MODEL_NAME, "--out", str(tmp_path / "x.parquet"), env=env
    )
    fit = guardedmodel(
        "fit",
        "--model",
        str(example.model_dir),
        "--out",
        str(tmp_path / "g"),
        "--data",
        f"{url}/set.parquet",
        env=env,
    )
    for result, code, what in (
        (put, 1, f"{url}/labels/model={MODEL_NAME}/"),
        (made, 1, f"{url}/samples/model={MODEL_NAME}"),
        (fit, 2, f"{url}/set.parquet"),
    ):
        assert result.returncode == code, result.stderr
        print(result.stderr)
        for fragment in (
            what,
            "access denied",
            f"endpoint {minio.endpoint}",
            "AWS_SECRET_ACCESS_KEY",
            f"bucket '{BUCKET}'",
        ):
            assert fragment in result.stderr, result.stderr
    assert not (tmp_path / "x.parquet").exists()
