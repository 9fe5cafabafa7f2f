"""Where the data loop's tables lie under an export location, and reading them.

    <url>/samples/model=<model>/version=<version>/date=<YYYY-MM-DD>/<writer>-<fileid>-<offset>.parquet
    <url>/labels/model=<model>/<name>.parquet

Partition values come from the path (Hive style, escaped as Hive escapes them), never from inside
the files.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.parquet as pq

# Paths as the exporter writes them: one escaping for both sides.
from guardedmodel_sidecar.audit_parquet import partition_value
from guardedmodel_sidecar.object_store import BucketReader, BucketWriter, environment_bucket


class LayoutError(ValueError):
    """An object under the export location does not fit the layout or cannot be read as a table."""


def samples_folder(model: str) -> str:
    return f"samples/model={partition_value(model)}"


def labels_folder(model: str) -> str:
    return f"labels/model={partition_value(model)}"


@dataclass(frozen=True)
class SampleObject:
    name: str  # relative to the export location
    version: str
    day: date


def sample_objects(names: Sequence[str], model: str) -> list[SampleObject]:
    """The Parquet objects among ``names`` in the samples partitions of ``model``; an object whose
    path lacks the version or date partition is an error that names it."""
    found = []
    root = samples_folder(model) + "/"
    for name in names:
        if not name.startswith(root) or not name.endswith(".parquet"):
            continue
        parts = dict(p.split("=", 1) for p in name[len(root) :].split("/")[:-1] if "=" in p)
        try:
            found.append(SampleObject(name, unquote(parts["version"]), date.fromisoformat(parts["date"])))
        except (KeyError, ValueError) as error:
            raise LayoutError(
                f"{name}: not under samples/model=<m>/version=<v>/date=<YYYY-MM-DD>/ ({error})"
            ) from error
    return found


def selected(
    objects: Sequence[SampleObject],
    versions: Sequence[str] = (),
    since: date | None = None,
    until: date | None = None,
) -> list[SampleObject]:
    """The objects of the given versions (all when none) with dates in [since, until]."""
    return [
        o
        for o in objects
        if (not versions or o.version in versions)
        and (since is None or o.day >= since)
        and (until is None or o.day <= until)
    ]


def open_location(url: str) -> BucketWriter:
    return environment_bucket(url)


def object_names(bucket: BucketWriter, folder: str) -> list[str]:
    """The names of the objects in ``folder`` (and below it), relative to the export location."""
    return [name for name, _ in bucket.list(folder)]


def read_tables(reader: BucketReader, names: Sequence[str]) -> Iterator[tuple[str, pa.Table]]:
    """Each named Parquet object as a table; one that is not Parquet is an error that names it."""
    for name in names:
        data = reader.read(name)
        try:
            yield name, pq.read_table(io.BytesIO(data))
        except (pa.ArrowException, OSError) as error:
            raise LayoutError(f"{reader.url(name)} is not a readable Parquet file: {error}") from error
