"""Reading a model archive out of an s3:// or gs:// bucket.

obstore (bindings to the Rust ``object_store`` crate) speaks S3, any S3-compatible server and
GCS in one small wheel, with no cloud SDK and no C dependencies; it takes its settings from
the same environment variables the cloud tools use, so the pod is configured by env alone:

- S3: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (/ ``AWS_SESSION_TOKEN``), ``AWS_REGION``,
  ``AWS_ENDPOINT_URL`` for an S3-compatible server, ``AWS_VIRTUAL_HOSTED_STYLE_REQUEST``; without
  keys, the AWS default chain (IRSA web identity token, ECS/EC2 instance roles).
- GCS: ``GOOGLE_SERVICE_ACCOUNT_PATH`` (a service-account key file), ``GOOGLE_BASE_URL``; without
  a key, the default chain (GKE workload identity through the metadata server).

The bucket holds the same layout as an http(s) repository: ``<prefix>/<model>.tar.gz`` and,
optionally, ``<prefix>/<model>.tar.gz.sha256``. The data loop's command-line tools (labels, data sets)
list, read and write objects through the same reader, with the credentials of their shell.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import obstore
from obstore.exceptions import BaseError, PermissionDeniedError, UnauthenticatedError
from obstore.store import GCSStore, S3Store

SCHEMES = ("s3", "gs")
#: Where a command-line tool's credentials come from (for the access-denied hint): its shell's variables.
ENVIRONMENT_CREDENTIALS = "this command's environment (or the machine's default credentials)"
_MODEL_SECRET = "the Secret that spec.model.storage.secretName names"


class ObjectStoreError(RuntimeError):
    """An object could not be read; the message names the bucket, the endpoint and what to fix."""


class BucketReader:
    """Objects under ``<scheme>://<bucket>/<prefix>``, read with the credentials of the environment."""

    def __init__(
        self, repository: str, *, timeout: float = 300.0, credentials_from: str | None = None
    ) -> None:
        url = urlparse(repository)
        if url.scheme not in SCHEMES or not url.netloc:
            raise ObjectStoreError(
                f"{repository!r} is not a bucket URL: write s3://<bucket>/<prefix> or gs://<bucket>/<prefix>"
            )
        self.scheme, self.bucket, self.prefix = url.scheme, url.netloc, url.path.strip("/")
        environ = os.environ  # obstore reads its settings from the same variables
        # A bucket name cannot hold "/", so a prefix is the rest of the path; an endpoint given
        # as http:// is the operator's choice (a cluster-local MinIO), hence allow_http.
        client: Any = {"allow_http": True, "timeout": timedelta(seconds=timeout)}
        retry: Any = {"max_retries": 2, "retry_timeout": timedelta(seconds=min(timeout, 30.0))}
        if self.scheme == "s3":
            self.endpoint = (
                environ.get("AWS_ENDPOINT_URL")
                or environ.get("AWS_ENDPOINT")
                or (
                    f"AWS S3 in region {environ.get('AWS_REGION') or environ.get('AWS_DEFAULT_REGION') or 'us-east-1'}"
                )
            )
            self.credentials_hint = (
                "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in "
                + (credentials_from or f"{_MODEL_SECRET} (or the role of the pod's service account)")
                + f", and that they may read bucket {self.bucket!r}"
            )
            self._store: S3Store | GCSStore = S3Store(self.bucket, client_options=client, retry_config=retry)
        else:
            self.endpoint = (
                environ.get("GOOGLE_BASE_URL") or _key_file_endpoint(environ) or "storage.googleapis.com"
            )
            self.credentials_hint = (
                f"check the key file GOOGLE_SERVICE_ACCOUNT_PATH names in {credentials_from}"
                if credentials_from
                else f"check the key.json of {_MODEL_SECRET} (or the workload identity of the pod's service account)"
            ) + f", and that it may read bucket {self.bucket!r}"
            self._store = GCSStore(self.bucket, client_options=client, retry_config=retry)

    def url(self, name: str) -> str:
        return f"{self.scheme}://{self.bucket}/{self._key(name)}"

    def read_small(self, name: str, limit: int = 4096) -> bytes | None:
        """The first ``limit`` bytes of an object, or None when there is no such object."""
        try:
            return bytes(obstore.get(self._store, self._key(name)).bytes())[:limit]
        except FileNotFoundError:
            return None
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

    def names(self, under: str = "") -> list[str]:
        """The names (relative to the prefix) of every object below ``under``, sorted."""
        start = self._key(under.strip("/")).rstrip("/")
        try:
            listed = [
                entry["path"]
                for chunk in obstore.list(self._store, f"{start}/" if start else None)
                for entry in chunk
            ]
        except (BaseError, OSError, ValueError) as error:
            raise self._error(under, error) from error
        cut = len(self.prefix) + 1 if self.prefix else 0
        return sorted(path[cut:] for path in listed)

    def read(self, name: str) -> bytes:
        """A whole object; a missing one is an error that names it."""
        try:
            return bytes(obstore.get(self._store, self._key(name)).bytes())
        except FileNotFoundError as error:
            raise ObjectStoreError(f"{self.url(name)} does not exist (endpoint {self.endpoint})") from error
        except (BaseError, OSError, ValueError) as error:
            raise self._error(name, error) from error

    def write(self, name: str, data: bytes) -> str:
        """Store ``data`` as object ``name`` (replacing one of that name); its URL."""
        try:
            obstore.put(self._store, self._key(name), data)
        except (BaseError, OSError, ValueError) as error:
            raise self._error(name, error, writing=True) from error
        return self.url(name)

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _error(self, name: str, error: Exception, *, writing: bool = False) -> ObjectStoreError:
        first_line = _summary(error)
        if isinstance(error, (PermissionDeniedError, UnauthenticatedError)) or _looks_denied(str(error)):
            hint = (
                self.credentials_hint.replace(" may read ", " may write ")
                if writing
                else self.credentials_hint
            )
            return ObjectStoreError(
                f"{self.url(name)}: access denied by endpoint {self.endpoint} ({first_line}); " + hint
            )
        how = "write {} to" if writing else "read {} from"
        return ObjectStoreError(f"cannot {how.format(self.url(name))} endpoint {self.endpoint}: {first_line}")


def object_at(url: str, *, credentials_from: str | None = None) -> tuple[BucketReader, str]:
    """The bucket reader of ``<scheme>://<bucket>/<path>/<name>`` and the object's name in it."""
    folder, _, name = url.rstrip("/").rpartition("/")
    if not name or folder.endswith(":/"):
        raise ObjectStoreError(f"{url!r} does not name an object: write s3://<bucket>/<path>/<name>")
    return BucketReader(folder, credentials_from=credentials_from), name


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
