"""Reading a model archive out of an s3:// or gs:// bucket, and writing objects into one (audit export).

obstore (bindings to the Rust ``object_store`` crate) speaks S3, any S3-compatible server and
GCS in one small wheel, with no cloud SDK and no C dependencies; it takes its settings from
the same environment variables the cloud tools use, so the pod is configured by env alone:

- S3: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (/ ``AWS_SESSION_TOKEN``), ``AWS_REGION``,
  ``AWS_ENDPOINT_URL`` for an S3-compatible server, ``AWS_VIRTUAL_HOSTED_STYLE_REQUEST``; without
  keys, the AWS default chain (IRSA web identity token, ECS/EC2 instance roles).
- GCS: ``GOOGLE_SERVICE_ACCOUNT_PATH`` (a service-account key file), ``GOOGLE_BASE_URL``; without
  a key, the default chain (GKE workload identity through the metadata server).

The bucket holds the same layout as an http(s) repository: ``<prefix>/<model>.tar.gz`` and,
optionally, ``<prefix>/<model>.tar.gz.sha256``.

A second bucket with other credentials (``spec.audit.export.storage``) cannot come from the same
variables, which hold one set: ``StoreSettings`` names it explicitly (endpoint, region, and the
directory where a Secret is mounted), and its values win over the environment's.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import obstore
from obstore.exceptions import BaseError, PermissionDeniedError, UnauthenticatedError
from obstore.store import GCSStore, S3Store

SCHEMES = ("s3", "gs")


class ObjectStoreError(RuntimeError):
    """An object could not be read; the message names the bucket, the endpoint and what to fix."""


@dataclass(frozen=True)
class StoreSettings:
    """A bucket's own settings, over the environment's: an S3 endpoint and region, and the directory
    of a mounted Secret (S3: files AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, optional AWS_SESSION_TOKEN;
    GCS: key.json). ``secret_field`` names the API field a person fixes when access is denied."""

    endpoint: str | None = None
    region: str | None = None
    virtual_hosted_style: bool | None = None
    credentials_dir: Path | None = None
    secret_field: str = "spec.model.storage.secretName"


S3_KEY_FILES = (
    ("AWS_ACCESS_KEY_ID", "access_key_id"),
    ("AWS_SECRET_ACCESS_KEY", "secret_access_key"),
    ("AWS_SESSION_TOKEN", "token"),
)
GCS_KEY_FILE = "key.json"


class Bucket:
    """Objects under ``<scheme>://<bucket>/<prefix>``, with the environment's credentials, or with
    ``settings`` over them."""

    def __init__(
        self, repository: str, *, timeout: float = 300.0, settings: StoreSettings | None = None
    ) -> None:
        url = urlparse(repository)
        if url.scheme not in SCHEMES or not url.netloc:
            raise ObjectStoreError(
                f"{repository!r} is not a bucket URL: write s3://<bucket>/<prefix> or gs://<bucket>/<prefix>"
            )
        self.scheme, self.bucket, self.prefix = url.scheme, url.netloc, url.path.strip("/")
        settings = settings or StoreSettings()
        environ = os.environ  # obstore reads its settings from the same variables
        # A bucket name cannot hold "/", so a prefix is the rest of the path; an endpoint given
        # as http:// is the operator's choice (a cluster-local MinIO), hence allow_http.
        client: Any = {"allow_http": True, "timeout": timedelta(seconds=timeout)}
        retry: Any = {"max_retries": 2, "retry_timeout": timedelta(seconds=min(timeout, 30.0))}
        secret = settings.secret_field
        if self.scheme == "s3":
            config = _s3_config(settings)
            region = (
                config.get("region")
                or environ.get("AWS_REGION")
                or environ.get("AWS_DEFAULT_REGION")
                or "us-east-1"
            )
            self.endpoint = (
                config.get("endpoint")
                or environ.get("AWS_ENDPOINT_URL")
                or environ.get("AWS_ENDPOINT")
                or f"AWS S3 in region {region}"
            )
            self.credentials_hint = (
                f"check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the Secret that {secret} names "
                f"(or the role of the pod's service account), and that they may use bucket {self.bucket!r}"
            )
            self._store: S3Store | GCSStore = S3Store(
                self.bucket, config=config, client_options=client, retry_config=retry
            )
        else:
            gcs_config: Any = {}
            key_file = settings.credentials_dir / GCS_KEY_FILE if settings.credentials_dir else None
            if key_file is not None:
                gcs_config["service_account_path"] = str(key_file)
                key_env: Mapping[str, str] = {"GOOGLE_SERVICE_ACCOUNT_PATH": str(key_file)}
            else:
                key_env = environ
            self.endpoint = (
                environ.get("GOOGLE_BASE_URL") or _key_file_endpoint(key_env) or "storage.googleapis.com"
            )
            self.credentials_hint = (
                f"check the key.json of the Secret that {secret} names "
                "(or the workload identity of the pod's service account), "
                f"and that it may use bucket {self.bucket!r}"
            )
            self._store = GCSStore(self.bucket, config=gcs_config, client_options=client, retry_config=retry)

    def url(self, name: str) -> str:
        return f"{self.scheme}://{self.bucket}/{self._key(name)}"

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _error(self, name: str, error: Exception, verb: str = "read") -> ObjectStoreError:
        first_line = _summary(error)
        if isinstance(error, (PermissionDeniedError, UnauthenticatedError)) or _looks_denied(str(error)):
            return ObjectStoreError(
                f"{self.url(name)}: access denied by endpoint {self.endpoint} ({first_line}); "
                + self.credentials_hint
            )
        preposition = {"read": "from", "write": "to"}.get(verb, "at")
        return ObjectStoreError(
            f"cannot {verb} {self.url(name)} {preposition} endpoint {self.endpoint}: {first_line}"
        )


class BucketReader(Bucket):
    """Reads objects (a model archive and its checksum)."""

    def read_small(self, name: str, limit: int = 4096) -> bytes | None:
        """The first ``limit`` bytes of an object, or None when there is no such object."""
        try:
            return bytes(obstore.get(self._store, self._key(name)).bytes())[:limit]
        except FileNotFoundError:
            return None
        except (BaseError, OSError, ValueError) as error:
            raise self._error(name, error) from error

    def read(self, name: str) -> bytes:
        """A whole object (a Parquet file of the audit export, a data set)."""
        try:
            return bytes(obstore.get(self._store, self._key(name)).bytes())
        except FileNotFoundError as error:
            raise ObjectStoreError(f"{self.url(name)} does not exist (endpoint {self.endpoint})") from error
        except (BaseError, OSError, ValueError) as error:
            raise self._error(name, error) from error

    def chunks(self, name: str) -> Iterator[bytes]:
        try:
            result = obstore.get(self._store, self._key(name))
            for chunk in result.stream(min_chunk_size=1 << 20):
                yield bytes(chunk)
        except FileNotFoundError as error:
            raise ObjectStoreError(
                f"{self.url(name)} does not exist (endpoint {self.endpoint}): upload the archive "
                "(tar czf <model>.tar.gz -C <repository> <model>) or correct spec.model.repository"
            ) from error
        except (BaseError, OSError, ValueError) as error:
            raise self._error(name, error) from error


class BucketWriter(BucketReader):
    """Reads, writes and lists objects (audit export, data sets, labels)."""

    def put(self, name: str, data: bytes) -> None:
        """Store ``data`` as one object, replacing any object of that name."""
        try:
            obstore.put(self._store, self._key(name), data)
        except (BaseError, OSError, ValueError) as error:
            raise self._error(name, error, "write") from error

    def list(self, under: str = "") -> list[tuple[str, int]]:
        """(name relative to the prefix, size) of every object whose name starts with ``under``."""
        start = len(self.prefix) + 1 if self.prefix else 0
        try:
            found = []
            for batch in obstore.list(self._store, prefix=self._key(under) if under else self.prefix or None):
                found += [(str(meta["path"])[start:], int(meta["size"])) for meta in batch]
        except (BaseError, OSError, ValueError) as error:
            raise self._error(under, error, "list") from error
        return sorted(found)


def _s3_config(settings: StoreSettings) -> Any:  # obstore's S3Config, a TypedDict
    """The explicit S3 settings; keys read from a mounted Secret's files (one file per key)."""
    config: dict[str, Any] = {}
    if settings.endpoint:
        config["endpoint"] = settings.endpoint
    if settings.region:
        config["region"] = settings.region
    if settings.virtual_hosted_style is not None:
        config["virtual_hosted_style_request"] = settings.virtual_hosted_style
    if settings.credentials_dir is not None:
        for file_name, key in S3_KEY_FILES:
            path = settings.credentials_dir / file_name
            try:
                config[key] = path.read_text().strip()
            except FileNotFoundError:
                if key != "token":
                    raise ObjectStoreError(
                        f"{path} is missing: the Secret that {settings.secret_field} names must hold "
                        "both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (AWS_SESSION_TOKEN optional)"
                    ) from None
            except OSError as error:
                raise ObjectStoreError(f"cannot read {path}: {error}") from error
    return config


def _key_file_endpoint(environ: Mapping[str, str]) -> str | None:
    """The endpoint a service-account key file names (``gcs_base_url``, as an emulator's does)."""
    path = environ.get("GOOGLE_SERVICE_ACCOUNT_PATH") or environ.get("GOOGLE_SERVICE_ACCOUNT")
    if not path:
        return None
    try:
        value = json.loads(Path(path).read_text()).get("gcs_base_url")
    except (OSError, ValueError, AttributeError) as error:
        raise ObjectStoreError(
            f"cannot read the GCS service-account key file {path}: {error}; the Secret that "
            "spec.model.storage.secretName names must hold the JSON key under key.json"
        ) from error
    return str(value) if value else None


def _summary(error: Exception) -> str:
    """The server's own error code (S3's <Code>SignatureDoesNotMatch</Code>) and the status, not the
    client's whole retry trace."""
    text = str(error).strip()
    code = re.search(r"<Code>([^<]+)</Code>", text)
    status = re.search(r"status code: (\d{3}[^:]*)", text)
    if code or status:
        return ", ".join(part for part in (status and f"HTTP {status[1]}", code and code[1]) if part)
    return text.splitlines()[0][:300] if text else type(error).__name__


def _looks_denied(text: str) -> bool:
    # object_store reports some refusals (an S3 "InvalidAccessKeyId" 403 on a GET) as generic errors.
    # The status is matched as the client words it: a bare "403" also occurs in ports and paths.
    markers = ("status code: 403", "status code: 401", "<Code>AccessDenied<", "<Code>InvalidAccessKeyId<")
    return any(marker in text for marker in markers)


# The data loop's command-line tools (labels, data sets, fit on a data set in a bucket) use the
# credentials of the environment they run in, and read whole objects.

_ENVIRONMENT_HINTS = {
    "s3": "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in this command's environment (or the "
    "machine's role), and that they may use bucket {bucket!r}",
    "gs": "check the key file GOOGLE_SERVICE_ACCOUNT_PATH names in this command's environment (or the "
    "machine's default credentials), and that it may use bucket {bucket!r}",
}


def environment_bucket(url: str, *, timeout: float = 300.0) -> BucketWriter:
    """The bucket of ``<scheme>://<bucket>/<prefix>`` for a command run by a person or a tool, whose
    access-denied errors point at the command's environment rather than a pod's Secret."""
    bucket = BucketWriter(url, timeout=timeout)
    bucket.credentials_hint = _ENVIRONMENT_HINTS[bucket.scheme].format(bucket=bucket.bucket)
    return bucket


def object_at(url: str) -> tuple[BucketWriter, str]:
    """The bucket of ``<scheme>://<bucket>/<path>/<name>`` (as ``environment_bucket``) and the name."""
    folder, _, name = url.rstrip("/").rpartition("/")
    if not name or folder.endswith(":/"):
        raise ObjectStoreError(f"{url!r} does not name an object: write s3://<bucket>/<path>/<name>")
    return environment_bucket(folder), name
