"""`guardedmodel dataset`: exported samples joined with reviewers' labels, as a data set file.

    guardedmodel dataset --export-url s3://loop/prod --model fashion-mnist --since 2026-03-01 \\
        --out s3://loop/sets/reviewed-march.parquet
    guardedmodel fit --model models/fashion-mnist --data val.npz \\
        --data s3://loop/sets/reviewed-march.parquet --ood reviewed=s3://loop/sets/reviewed-march.parquet

reads ``<url>/samples/model=<m>/version=<v>/date=<d>/*.parquet`` (only ``--version``s, dates within
``--since``/``--until`` when given) and every ``<url>/labels/model=<m>/*.parquet``, joins them per row
(dataset_join.py) and writes the data set file (guardedmodel_fit.dataset_file) to a local path or a
bucket. It prints what it read and what it could not join.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from urllib.parse import urlparse

from guardedmodel_cli.dataset_join import JoinCounts, JoinError, join, labels_from_table, samples_from_table
from guardedmodel_cli.loop_layout import (
    LayoutError,
    labels_folder,
    object_names,
    open_location,
    read_tables,
    sample_objects,
    samples_folder,
    selected,
)
from guardedmodel_fit.dataset_file import BUCKET_SCHEMES, dataset_table
from guardedmodel_sidecar.audit_parquet import parquet_bytes
from guardedmodel_sidecar.object_store import ObjectStoreError, object_at


@dataclass(frozen=True)
class DatasetOutcome:
    counts: JoinCounts
    written: str  # where the file went
    rows: int


class DatasetError(RuntimeError):
    """Nothing to write; the message says why."""


def build_dataset(
    export_url: str,
    model: str,
    out: str,
    *,
    versions: tuple[str, ...] = (),
    since: date | None = None,
    until: date | None = None,
    input_name: str | None = None,
) -> DatasetOutcome:
    location = open_location(export_url)
    objects = selected(
        sample_objects(object_names(location, samples_folder(model)), model), versions, since, until
    )
    samples = [
        sample
        for name, table in read_tables(location, [o.name for o in objects])
        for sample in samples_from_table(table, name)
    ]
    label_names = [n for n in object_names(location, labels_folder(model)) if n.endswith(".parquet")]
    labels = [
        label
        for name, table in read_tables(location, label_names)
        for label in labels_from_table(table, name)
    ]
    spec, rows, counts = join(samples, labels, input_name)
    if spec is None or not rows:
        raise DatasetError(
            f"no labelled rows to write for model {model!r} under {export_url} "
            f"({len(objects)} sample object(s), {len(label_names)} labels object(s)):\n  "
            + "\n  ".join(counts.lines())
        )
    data = parquet_bytes(dataset_table(spec, rows))
    return DatasetOutcome(counts, write_output(out, data), len(rows))


def write_output(out: str, data: bytes) -> str:
    if urlparse(out).scheme in BUCKET_SCHEMES:
        bucket, name = object_at(out)
        bucket.put(name, data)
        return bucket.url(name)
    path = Path(out).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--export-url", required=True, help="the model's spec.audit.export.url (s3:// or gs://)"
    )
    parser.add_argument("--model", required=True, help="the GuardedModel's model name")
    parser.add_argument(
        "--version", action="append", default=[], help="only samples of this version (repeatable)"
    )
    parser.add_argument("--since", type=_day, help="only samples of this UTC date or later (YYYY-MM-DD)")
    parser.add_argument("--until", type=_day, help="only samples of this UTC date or earlier (YYYY-MM-DD)")
    parser.add_argument(
        "--input", help="the model input to take rows of (needed when requests carry several)"
    )
    parser.add_argument("--out", required=True, help="the data set file: a local path, s3://… or gs://…")


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date: write YYYY-MM-DD") from None


def run(args: argparse.Namespace) -> int:
    try:
        outcome = build_dataset(
            args.export_url,
            args.model,
            args.out,
            versions=tuple(args.version),
            since=args.since,
            until=args.until,
            input_name=args.input,
        )
    except (DatasetError, JoinError, LayoutError) as error:
        print(f"guardedmodel dataset: error: {error}", file=sys.stderr)
        return 2
    except ObjectStoreError as error:
        print(f"guardedmodel dataset: error: {error}", file=sys.stderr)
        return 1
    print(f"data set of {outcome.rows} row(s) written to {outcome.written}")
    for line in outcome.counts.lines():
        print(f"  {line}")
    return 0
