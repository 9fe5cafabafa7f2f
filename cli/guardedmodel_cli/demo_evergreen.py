"""`guardedmodel demo --evergreen`: one turn of the data loop, end to end, on one machine.

The stage is the default demo's (control plane with kwok, operator, Prometheus, real Triton and the
sidecar as local processes on the operator-rendered config), with the model in a bucket instead of a
folder: MinIO on loopback holds the worked example's repository, the GuardedModel points at it with an
``s3://`` URL, and the model's Triton serves the copy ``fetch-model`` made of it, as the pod's init
container does. The story:

1. traffic, some of it hard: in-distribution rows (a few answered with low confidence), held-out classes
   and handwritten digits (out of distribution, sent to review: ``ood.action: review``); every request is
   sampled (``audit.sampleRate: 1.0``) and exported to the bucket (``audit.export``);
2. the review webhook receives the items; the demo plays the reviewer with the ground truth it knows
   (the class of an in-distribution row, "not a valid input" for the others) and stores the labels
   (``guardedmodel labels put``);
3. ``guardedmodel dataset`` joins the exported samples with the labels; ``guardedmodel fit`` fits a new
   guard on the example's validation set AND the reviewed set; ``guardedmodel publish`` puts it into the
   bucket as version 2 (version 1's weights with the new guard);
4. the GuardedModel is edited to version 2: the sidecar fetches the new version from the bucket and the
   operator's canary (shadow, replay, then 25/50/100 %) promotes it;
5. the same kinds of inputs, fresh rows, through the guard of version 1 and of version 2, side by side.

A step whose command this installation lacks (the export, labels and dataset parts of the loop come from
their own packages) is said so and left out; the fit then uses the validation set alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from guardedmodel_cli import demo_output as out
from guardedmodel_cli.demo import Demo, DemoError
from guardedmodel_cli.demo_output import say
from guardedmodel_cli.demo_traffic import FreshRows, Outcome, send
from guardedmodel_testground.cluster import LocalCluster
from guardedmodel_testground.objstore import MinioServer, publish_model
from guardedmodel_testground.procs import log_tail
from guardedmodel_testground.review_inbox import ReviewInbox

BUCKET = "models"
REPOSITORY = f"s3://{BUCKET}/team"
EXPORT_URL = f"s3://{BUCKET}/audit"
DATASET_URL = f"s3://{BUCKET}/datasets/fashion-mnist-reviewed.parquet"
MODEL = "fashion-mnist"
#: The hard kinds of input and what a reviewer says of them: None = a valid input (its class is the
#: label), True = not a valid input for this model (out of distribution).
KINDS = {
    "validation": "in-distribution",
    "held-out-classes": "held-out classes (near-OOD)",
    "digits": "digits (far-OOD)",
}

#: The lines of a command's output the story shows (fit's summary is long; its report has it all).
SHOWN_LINES = (
    "data set of",
    "labelled rows",
    "OOD rows",
    "labels without sample",
    "guard for",
    "temperature",
    "mahalanobis ",
    "method auto",
    "published",
    "replaced",
    "finished",
)


@dataclass(frozen=True)
class Truth:
    """What the demo knows of a request it sent: the input's kind and, in distribution, its class."""

    kind: str
    label: int | None


class EvergreenDemo(Demo):
    """The default demo's stage and helpers, with the data loop's acts."""

    def __init__(self, state_dir: Path, *, requests: int, timeout: float, keep: bool) -> None:
        super().__init__(state_dir, requests=requests, timeout=timeout, keep=keep)
        self.truth: dict[str, Truth] = {}
        self.rows: dict[str, FreshRows] = {}
        self.labels_of: dict[str, np.ndarray] = {}

    def run(self) -> None:
        with self.stack:
            build = self.build_example()
            self.load_inputs(build)
            self.start_bucket(build)
            self.inbox = self.stack.enter_context(ReviewInbox())
            self.cluster = self.stack.enter_context(LocalCluster(self.state_dir / "cluster"))
            print(f"cluster up: {self.cluster.server_url}")
            self.start_monitoring()
            self.start_operator()
            self.apply_manifest(self.evergreen_manifest, note=f"repository {REPOSITORY}, reviews, export")
            self.start_pod_copy()
            say("Traffic with hard cases (every request sampled; OOD and low-confidence rows go to review)")
            before = self.hard_traffic("1")
            out.print_table(before)
            items = self.wait_for_reviews()
            labels = self.review(items)
            self.put_labels(labels)
            dataset = self.export_and_join()
            guard = self.fit_new_guard(build, dataset)
            self.publish_version_2(guard)
            fresh = self.fresh_rows()
            before_guard = self.guard_figures("1", fresh)
            self.rollout_canary("the same weights with the new guard")
            after_guard = self.guard_figures("2", fresh)
            after = {"1": before_guard, "2": after_guard}
            self.record["evergreen"] = {
                "review_items": len(items),
                "labels": dict(Counter("ood" if lab["ood"] else "class" for lab in labels)),
                "dataset": dataset,
                "first_traffic": {k: dict(o.decisions) for k, o in before.items()},
                "guards": {
                    v: {k: dict(o.decisions) for k, o in outcomes.items()} for v, outcomes in after.items()
                },
            }
            self.summary()
            if self.keep:
                self.wait_for_interrupt()

    # -- the stage -----------------------------------------------------------------------------
    def load_inputs(self, build: Any) -> None:
        for name in KINDS:
            data = build.dataset(name)
            inputs = np.asarray(data.inputs, dtype=np.float32)
            order = np.random.default_rng(5).permutation(len(inputs))  # each kind's rows, in a fixed shuffle
            self.rows[name] = FreshRows(inputs[order])
            if data.labels is not None:
                self.labels_of[name] = np.asarray(data.labels)[order]
        self.validation = self.rows["validation"]

    def start_bucket(self, build: Any) -> None:
        say(
            f"MinIO on loopback; the worked example's version 1 published to {REPOSITORY} (archive + .sha256)"
        )
        self.minio = self.stack.enter_context(MinioServer(self.state_dir / "minio"))
        self.minio.create_bucket(BUCKET)
        publish_model(
            self.minio, BUCKET, "team", build.model_dir, self.state_dir / "published", versions=("1",)
        )
        print(f"MinIO {self.minio.endpoint}; the shell and the pod get AWS_* variables for it")

    def evergreen_manifest(self, manifest: dict[str, Any]) -> dict[str, Any]:
        spec = manifest["spec"]
        spec["model"]["repository"] = REPOSITORY
        # Out-of-distribution rows go to people too, so that reviewers can say what they are.
        spec["gate"]["ood"]["action"] = "review"
        spec["confidence"]["review"] = {"webhook": self.inbox.url, "maxFraction": 1.0}
        spec["audit"] = {
            "enabled": True,
            "sampleRate": 1.0,
            "export": {"url": EXPORT_URL, "intervalSeconds": 5},
        }
        return manifest

    def start_pod_copy(self) -> None:
        say("The pod's init step: guardedmodel fetch-model copies the model out of the bucket")
        local = self.state_dir / "pod-models"
        self.command("fetch-model", f"--repository={REPOSITORY}", f"--model={MODEL}", f"--dest={local}")
        self.start_data_plane(local, model_source=REPOSITORY, env={**self.cluster.env, **self.minio.env()})
        self.pod_models = local

    # -- the loop ------------------------------------------------------------------------------
    def hard_traffic(self, version: str) -> dict[str, Outcome]:
        """Every kind through the guard of ``version``; in-distribution rows are four times as many (most
        are easy; the hard ones among them are what people review)."""
        outcomes: dict[str, Outcome] = {}
        for name, title in KINDS.items():
            count = self.requests * (4 if name == "validation" else 1)
            start = self.rows[name].sent
            inputs = self.rows[name].next(count)
            ids = [f"{name}-{i}" for i in range(start, start + count)]
            for request_id, index in zip(ids, range(start, start + count), strict=True):
                label = self.labels_of.get(name)
                self.truth[request_id] = Truth(
                    name, None if label is None else int(label[index % len(label)])
                )
            outcomes[title] = send(self.sidecar_address(), inputs, request_ids=ids, version=version)
        return outcomes

    def wait_for_reviews(self) -> list[dict[str, Any]]:
        """The review items the webhook received, once no more arrive."""
        deadline, count, quiet = time.monotonic() + 60, -1, 0
        while time.monotonic() < deadline and quiet < 3:
            items = self.inbox.items()
            quiet = quiet + 1 if len(items) == count else 0
            count = len(items)
            time.sleep(1)
        items = self.inbox.items()
        say(f"The review webhook received {len(items)} items")
        return items

    def review(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The demo as the reviewer: per reviewed row, the class it knows, or "not a valid input"."""
        labels: list[dict[str, Any]] = []
        unknown = 0
        for item in items:
            truth = self.truth.get(str(item.get("client_id")))
            if truth is None:
                unknown += 1  # not a request of this act (none are sent otherwise)
                continue
            for row in item.get("review_rows") or []:
                ood = truth.label is None
                labels.append(
                    {"id": item["id"], "row": row, "label": truth.label, "ood": ood, "reviewer": "demo"}
                )
        kinds = Counter(
            self.truth[str(i.get("client_id"))].kind for i in items if str(i.get("client_id")) in self.truth
        )
        print("  reviewed: " + ", ".join(f"{n} {KINDS[k]}" for k, n in sorted(kinds.items())))
        print(
            f"  labels: {sum(not lab['ood'] for lab in labels)} with a class, {sum(lab['ood'] for lab in labels)} marked ood"
        )
        if unknown:
            print(f"  {unknown} items of requests the demo did not send were left alone")
        path = self.state_dir / "labels.jsonl"
        path.write_text("".join(json.dumps(lab) + "\n" for lab in labels))
        return labels

    def put_labels(self, labels: list[dict[str, Any]]) -> None:
        say("The review tool stores the labels beside the exported samples")
        self.command(
            "labels",
            "put",
            f"--export-url={EXPORT_URL}",
            f"--model={MODEL}",
            str(self.state_dir / "labels.jsonl"),
        )

    def export_and_join(self) -> str:
        """The data set URL, once the samples are exported and joined with their labels."""
        say(f"The sidecar exports the sampled payloads to {EXPORT_URL} (Parquet, Hive-partitioned)")
        self.wait_for_export()
        say("guardedmodel dataset: the exported samples joined with their labels, one row per reviewed row")
        self.command(
            "dataset",
            f"--export-url={EXPORT_URL}",
            f"--model={MODEL}",
            f"--out={DATASET_URL}",
            show_output=True,
        )
        return DATASET_URL

    def wait_for_export(self) -> None:
        """Until the exporter's last success follows the traffic and nothing waits to be exported."""
        sent_at = time.time()
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            text = self.metrics_text()
            pending = metric_values(text, "guardedmodel_audit_export_pending_bytes")
            success = metric_values(text, "guardedmodel_audit_export_last_success_timestamp_seconds")
            if success and max(success) >= sent_at and pending and not any(pending):
                rows = metric_values(text, "guardedmodel_audit_export_rows_total")
                print(f"  exported: {sum(rows):.0f} rows in all streams")
                return
            time.sleep(1)
        raise DemoError(
            f"the audit export did not catch up in {self.timeout:.0f}s; sidecar log:\n{log_tail(self.sidecar.log_path)}"
        )

    def fit_new_guard(self, build: Any, dataset: str) -> Path:
        guard = self.state_dir / "guard-v2"
        data = build.data_dir
        reviewed = [f"--data={dataset}", f"--ood=reviewed={dataset}"]
        args = [
            f"--model={self.pod_models / MODEL}",
            "--version=1",
            f"--data={data / 'validation.npz'}",
            *reviewed,
            f"--fit-data={data / 'fit.npz'}",
            f"--ood=near={data / 'held-out-classes.npz'}",
            "--mahalanobis-normalise",  # the example's recipe
            f"--out={guard}",
            "--no-progress",
        ]
        on = (
            "the validation set AND the reviewed set"
            if dataset
            else "the validation set (no reviewed set here)"
        )
        say(f"guardedmodel fit: a new guard for version 1's weights, on {on}")
        self.command("fit", *args, show_output=True)
        report = json.loads((guard / "report" / "report.json").read_text())
        self.record["fit"] = {
            "samples": report["samples"],
            "auto": report["auto"]["method"],
            "temperature": report["calibration"]["temperature"],
        }
        return guard

    def publish_version_2(self, guard: Path) -> None:
        say("guardedmodel publish: version 2 = version 1's model files + the new guard, into the bucket")
        self.command(
            "publish",
            f"--repository={REPOSITORY}",
            f"--model={MODEL}",
            "--from-version=1",
            "--version=2",
            f"--guard={guard}",
            show_output=True,
        )

    def fresh_rows(self) -> dict[str, int]:
        """Where each kind's unsent rows begin: the rows both guards are measured on."""
        marks = {name: rows.sent for name, rows in self.rows.items()}
        for rows in self.rows.values():
            rows.sent += self.requests * 4  # kept apart from the rollout's traffic
        return marks

    def guard_figures(self, version: str, marks: dict[str, int]) -> dict[str, Outcome]:
        """The rows at ``marks`` through the guard of ``version`` (the one serving then)."""
        resume = {name: rows.sent for name, rows in self.rows.items()}
        for name, rows in self.rows.items():
            rows.sent = marks[name]
        outcomes = self.hard_traffic(version)
        for name, rows in self.rows.items():
            rows.sent = resume[name]
        say(f"The guard of version {version} on fresh rows of each kind (the same rows for both versions)")
        out.print_table(outcomes)
        return outcomes

    # -- talking to the stack ------------------------------------------------------------------
    def command(self, *args: str, show_output: bool = False) -> str:
        """`guardedmodel <args>`, printed as typed, with the shell's MinIO credentials."""
        print(f"  $ guardedmodel {' '.join(args)}", flush=True)
        result = subprocess.run(
            [sys.executable, "-m", "guardedmodel_cli.main", *args],
            capture_output=True,
            text=True,
            timeout=max(self.timeout, 300),
            env={**os.environ, **self.minio.env()},
        )
        if result.returncode != 0:
            raise DemoError(
                f"guardedmodel {args[0]} failed ({result.returncode}):\n{result.stderr}{result.stdout}"
            )
        if show_output:
            shown = [line for line in result.stdout.splitlines() if line.strip().startswith(SHOWN_LINES)]
            print("\n".join(f"    {line.strip()}" for line in shown))
        return result.stdout

    def metrics_text(self) -> str:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.ports['metrics']}/metrics", timeout=10
        ) as answer:
            return str(answer.read().decode())


def metric_values(text: str, name: str) -> list[float]:
    """Every sample of metric ``name`` in a Prometheus text exposition."""
    values = []
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            values.append(float(line.rsplit(" ", 1)[1]))
    return values
