"""`guardedmodel labels put`: a review tool's labels, stored beside the exported samples.

    guardedmodel labels put --export-url s3://loop/prod --model fashion-mnist reviewed.jsonl

reads JSON lines or CSV (a header row naming the columns) with the fields

    id        the audit record id the review item carried as ``id``
    row       the row's index in the request's batch (an entry of the item's ``review_rows``)
    label     the class index, or empty/null when the input is not a valid input (then ood is true)
    ood       true: not a valid input for this model (out of distribution); absent: false
    reviewer  optional, who labelled it
    ts        optional, when (ISO 8601, naive = UTC, or Unix seconds); absent: the time of the put

checks every line (an error names the line and the field) and writes them as ONE Parquet object
``<url>/labels/model=<model>/<UTC time>-<random>.parquet``: a name no other put takes, so review
tools never overwrite each other; a later label for the same (id, row) wins (by ts, then name).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import secrets
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from guardedmodel_cli.loop_layout import labels_folder, open_location
from guardedmodel_sidecar.audit_parquet import parquet_bytes
from guardedmodel_sidecar.object_store import ObjectStoreError

FIELDS = ("id", "row", "label", "ood", "reviewer", "ts")
SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("row", pa.int32(), nullable=False),
        pa.field("label", pa.int64()),
        pa.field("ood", pa.bool_(), nullable=False),
        pa.field("reviewer", pa.string()),
        pa.field("ts", pa.timestamp("us", tz="UTC")),
    ]
)
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no", ""}
_MAX_ERRORS_SHOWN = 20
_INT32_MAX = 2**31 - 1


class LabelError(ValueError):
    """Label lines that cannot be stored; the message names each bad line and field."""


@dataclass(frozen=True)
class Label:
    id: str
    row: int
    label: int | None
    ood: bool
    reviewer: str | None
    ts: datetime | None


def parse_labels(text: str, *, csv_format: bool) -> list[Label]:
    """Every label in ``text`` (JSON lines, or CSV with a header); all bad lines in one LabelError."""
    records = _csv_records(text) if csv_format else _json_records(text)
    labels: list[Label] = []
    errors: list[str] = []
    for line, record in records:
        if isinstance(record, str):
            errors.append(f"line {line}: {record}")
            continue
        try:
            labels.append(label_from(record))
        except _FieldError as error:
            errors.append(f"line {line}, field {error.field!r}: {error.problem}")
    if errors:
        shown = errors[:_MAX_ERRORS_SHOWN]
        more = f"\n  ... and {len(errors) - len(shown)} more" if len(errors) > len(shown) else ""
        raise LabelError(f"{len(errors)} bad label line(s):\n  " + "\n  ".join(shown) + more)
    if not labels:
        raise LabelError("no labels in the input")
    return labels


def looks_like_csv(text: str, filename: str | None) -> bool:
    """CSV by the file's suffix (.csv; .jsonl, .json: JSON lines); otherwise anything that does not
    start with a JSON object."""
    suffix = Path(filename).suffix.lower() if filename and filename != "-" else ""
    if suffix in (".csv", ".jsonl", ".json"):
        return suffix == ".csv"
    return not text.lstrip().startswith("{")


class _FieldError(Exception):
    def __init__(self, field: str, problem: str) -> None:
        self.field, self.problem = field, problem


def label_from(record: Mapping[str, Any]) -> Label:
    """One label from a line's fields (JSON values, or CSV strings), checked."""
    unknown = sorted(set(record) - set(FIELDS))
    if unknown:
        raise _FieldError(unknown[0], f"unknown field; the fields are {', '.join(FIELDS)}")
    record_id = record.get("id")
    if not isinstance(record_id, str) or not record_id.strip():
        raise _FieldError("id", "must be the review item's non-empty id")
    row = _integer(record.get("row"), "row")
    if row is None or not 0 <= row <= _INT32_MAX:
        raise _FieldError(
            "row", f"must be a row index >= 0 (an entry of review_rows), got {record.get('row')!r}"
        )
    label = _integer(record.get("label"), "label")
    ood = _boolean(record.get("ood"))
    if label is not None and label < 0:
        raise _FieldError("label", f"must be a class index >= 0, got {label}")
    if ood and label is not None:
        raise _FieldError("label", "must be empty when ood is true (an input that is not valid has no class)")
    if not ood and label is None:
        raise _FieldError(
            "label", "is empty: give the class index, or ood true for an input that is not valid"
        )
    reviewer = record.get("reviewer")
    if reviewer is not None and not isinstance(reviewer, str):
        raise _FieldError("reviewer", f"must be text, got {reviewer!r}")
    return Label(record_id, row, label, ood, reviewer or None, _timestamp(record.get("ts")))


def _integer(value: Any, field: str) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise _FieldError(field, f"must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise _FieldError(field, f"must be an integer, got {value!r}")


def _boolean(value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise _FieldError("ood", f"must be true or false, got {value!r}")


def _timestamp(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return datetime.fromtimestamp(value, UTC)
        moment = datetime.fromisoformat(str(value).strip())
    except (ValueError, OverflowError, OSError) as error:
        raise _FieldError("ts", f"must be ISO 8601 or Unix seconds, got {value!r} ({error})") from error
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _json_records(text: str) -> Iterable[tuple[int, dict[str, Any] | str]]:
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as error:
            yield number, f"not JSON ({error})"
            continue
        yield (
            number,
            value if isinstance(value, dict) else f"must be a JSON object, got {type(value).__name__}",
        )


def _csv_records(text: str) -> Iterable[tuple[int, dict[str, Any] | str]]:
    reader = csv.DictReader(io.StringIO(text))
    header = [name.strip() for name in reader.fieldnames or []]
    missing = [name for name in ("id", "row") if name not in header]
    if missing or not ({"label", "ood"} & set(header)):
        need = ", ".join(missing + ([] if {"label", "ood"} & set(header) else ["label or ood"]))
        yield 1, f"the CSV header {','.join(header)!r} lacks {need} (columns: {', '.join(FIELDS)})"
        return
    reader.fieldnames = header
    for record in reader:
        if None in record:
            yield reader.line_num, f"more values than the header's {len(header)} columns"
            continue
        yield reader.line_num, {k: (v.strip() if isinstance(v, str) else v) for k, v in record.items()}


def labels_table(labels: Iterable[Label], default_ts: datetime) -> pa.Table:
    """The labels table; a label without ``ts`` gets ``default_ts`` (the time of the put)."""
    rows = list(labels)
    return pa.Table.from_pydict(
        {
            "id": [r.id for r in rows],
            "row": [r.row for r in rows],
            "label": [r.label for r in rows],
            "ood": [r.ood for r in rows],
            "reviewer": [r.reviewer for r in rows],
            "ts": [r.ts or default_ts for r in rows],
        },
        schema=SCHEMA,
    )


def object_name(model: str, now: datetime) -> str:
    """``labels/model=<m>/<UTC time>-<random>.parquet``: sorts by time, never taken twice."""
    return f"{labels_folder(model)}/{now.astimezone(UTC):%Y%m%dT%H%M%S%fZ}-{secrets.token_hex(6)}.parquet"


# ------------------------------------------------------------------------------------ command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    put = actions.add_parser("put", help="store reviewed labels (JSON lines or CSV) in the export location")
    put.add_argument("--export-url", required=True, help="the model's spec.audit.export.url (s3:// or gs://)")
    put.add_argument("--model", required=True, help="the GuardedModel's model name")
    put.add_argument("file", help="JSON lines or CSV file of labels; - reads stdin")
    put.add_argument("--csv", action="store_true", help="the input is CSV whatever its name")


def run(args: argparse.Namespace) -> int:
    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    except OSError as error:
        print(f"guardedmodel labels put: error: cannot read {args.file}: {error}", file=sys.stderr)
        return 2
    try:
        labels = parse_labels(text, csv_format=args.csv or looks_like_csv(text, args.file))
        now = datetime.now(UTC)
        location, name = open_location(args.export_url), object_name(args.model, now)
        location.put(name, parquet_bytes(labels_table(labels, now)))
        url = location.url(name)
    except LabelError as error:
        print(f"guardedmodel labels put: error in {args.file}: {error}", file=sys.stderr)
        return 2
    except ObjectStoreError as error:
        print(f"guardedmodel labels put: error: {error}", file=sys.stderr)
        return 1
    ood = sum(label.ood for label in labels)
    print(f"{len(labels)} label(s) ({len(labels) - ood} with a class, {ood} ood) written to {url}")
    return 0
