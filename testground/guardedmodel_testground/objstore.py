"""Real object stores on loopback: MinIO for s3:// and fake-gcs-server for gs://.

Both are built once per machine from the Go module proxy and cached like the cluster binaries:

- MinIO is a complete S3 server (SigV4 signatures, access keys, path-style and virtual-host
  requests), so a wrong key is refused the way AWS refuses it.
- fake-gcs-server is the GCS emulator the Rust ``object_store`` crate (under obstore) runs its own
  tests against. Google's storage-testbench is a Python package installed from GitHub only, which
  this machine cannot reach; the emulator does not check credentials, so refusals are MinIO's part.
  Clients reach it through ``GcsPutProxy``, which adds the XML API's object PUT the emulator lacks.

A model is published to either the way a model team would: ``pack_model``'s archive and its
``.sha256`` under a prefix of a bucket.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Self, TextIO

import obstore
from obstore.store import S3Store

from .gcs_put_proxy import GcsPutProxy
from .model_server import pack_model
from .paths import cache_dir, go_command
from .procs import LocalServer, ManagedProcess, free_port, http_ok, wait_until

MINIO_MODULE = "github.com/minio/minio"
#: The newest MinIO the module proxy serves (its releases are not tagged as Go versions).
MINIO_VERSION = "v0.0.0-20260212201848-7aac2a2c5b7c"
FAKE_GCS_MODULE = "github.com/fsouza/fake-gcs-server"
FAKE_GCS_VERSION = "v1.56.1"


def ensure_go_binary(module: str, version: str, *, log: TextIO = sys.stderr) -> Path:
    """``go install module@version`` into the cache, once per machine; the path of the binary."""
    name = module.rsplit("/", 1)[-1]
    entry = cache_dir() / "objstore" / name / version
    binary = entry / "bin" / name
    if (entry / ".complete").exists() and binary.is_file():
        return binary
    entry.mkdir(parents=True, exist_ok=True)
    with open(entry / ".lock", "w") as lock:  # two test runs build one copy
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (entry / ".complete").exists():
            started = time.monotonic()
            print(f"building {module}@{version} (cached after the first build) ...", file=log, flush=True)
            result = subprocess.run(
                [go_command(), "install", f"{module}@{version}"],
                env=dict(os.environ, GOFLAGS="-mod=mod", GOBIN=str(entry / "bin")),
                capture_output=True,
                text=True,
                timeout=3600,
            )
            if result.returncode != 0 or not binary.is_file():
                raise RuntimeError(f"go install {module}@{version} failed:\n{result.stdout}\n{result.stderr}")
            print(f"built {name} in {time.monotonic() - started:.0f}s", file=log, flush=True)
            (entry / ".complete").write_text(version)
    return binary


@dataclass
class MinioServer(LocalServer):
    """MinIO on 127.0.0.1 with one root key pair; ``env()`` is what a pod's Secret would give."""

    state_dir: Path
    access_key: str = "guardedmodel"
    secret_key: str = "guardedmodel-secret"
    region: str = "us-east-1"
    port: int = field(default=0, init=False)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, *, secret_key: str | None = None) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key if secret_key is None else secret_key,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": self.region,
        }

    def start(self) -> Self:
        binary = ensure_go_binary(MINIO_MODULE, MINIO_VERSION)
        self.port = free_port()
        data = self.state_dir / "minio-data"
        data.mkdir(parents=True, exist_ok=True)
        self.process = ManagedProcess(
            "minio",
            [
                str(binary),
                "server",
                str(data),
                "--address",
                f"127.0.0.1:{self.port}",
                "--console-address",
                f"127.0.0.1:{free_port()}",
                "--quiet",
            ],
            self.state_dir / "minio.log",
            env=dict(
                os.environ,
                MINIO_ROOT_USER=self.access_key,
                MINIO_ROOT_PASSWORD=self.secret_key,
                MINIO_BROWSER="off",
                MINIO_UPDATE="off",
                MINIO_REGION=self.region,
            ),
        ).start()
        wait_until("MinIO", lambda: http_ok(f"{self.endpoint}/minio/health/live"), 60, process=self.process)
        return self

    def store(self, bucket: str) -> S3Store:
        return S3Store(
            bucket,
            config={
                "endpoint": self.endpoint,
                "access_key_id": self.access_key,
                "secret_access_key": self.secret_key,
                "region": self.region,
            },
            client_options={"allow_http": True},
        )

    def upload(self, bucket: str, key: str, data: bytes) -> None:
        obstore.put(self.store(bucket), key, data)

    def create_bucket(self, bucket: str) -> None:
        # S3's CreateBucket is a signed PUT of the bucket's own URL; obstore signs it as the
        # bucket's root, so no second S3 client is needed.
        url = obstore.sign(self.store(bucket), "PUT", "", timedelta(seconds=60))
        request = urllib.request.Request(str(url), method="PUT", data=b"")
        with urllib.request.urlopen(request, timeout=10) as response:
            if response.status != 200:
                raise RuntimeError(f"MinIO did not create bucket {bucket!r}: HTTP {response.status}")


@dataclass
class FakeGcsServer(LocalServer):
    """fake-gcs-server on 127.0.0.1; ``key_file`` is the service-account file a pod's Secret holds,
    pointing the client at this server (through its PUT proxy, ``endpoint``)."""

    state_dir: Path
    port: int = field(default=0, init=False)
    proxy: GcsPutProxy | None = field(default=None, init=False)

    @property
    def emulator_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> str:
        return self.proxy.endpoint if self.proxy else self.emulator_url

    @property
    def key_file(self) -> Path:
        return self.state_dir / "gcs-key.json"

    def env(self) -> dict[str, str]:
        return {"GOOGLE_SERVICE_ACCOUNT_PATH": str(self.key_file)}

    def start(self) -> Self:
        binary = ensure_go_binary(FAKE_GCS_MODULE, FAKE_GCS_VERSION)
        self.port = free_port()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.process = ManagedProcess(
            "fake-gcs-server",
            [
                str(binary),
                "-scheme",
                "http",
                "-host",
                "127.0.0.1",
                "-port",
                str(self.port),
                "-backend",
                "memory",
                "-public-host",
                f"127.0.0.1:{self.port}",
                "-external-url",
                self.emulator_url,
                "-log-level",
                "warn",
            ],
            self.state_dir / "fake-gcs-server.log",
        ).start()
        wait_until(
            "fake-gcs-server", lambda: http_ok(f"{self.emulator_url}/storage/v1/b"), 60, process=self.process
        )
        self.proxy = GcsPutProxy(self.emulator_url).start()
        # The emulator takes no OAuth token; object_store's key files say so with disable_oauth.
        key: dict[str, Any] = {
            "gcs_base_url": self.endpoint,
            "disable_oauth": True,
            "client_email": "",
            "private_key": "",
            "private_key_id": "",
        }
        self.key_file.write_text(json.dumps(key))
        return self

    def stop(self) -> None:
        if self.proxy:
            self.proxy.stop()
        super().stop()

    def upload(self, bucket: str, key: str, data: bytes) -> None:
        # The emulator's XML-API upload (object_store's put) does not take a "/" in the name; its
        # JSON-API media upload does.
        request = urllib.request.Request(
            f"{self.emulator_url}/upload/storage/v1/b/{bucket}/o?"
            + urllib.parse.urlencode({"uploadType": "media", "name": key}),
            method="POST",
            data=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        with urllib.request.urlopen(request, timeout=30):
            pass

    def create_bucket(self, bucket: str) -> None:
        request = urllib.request.Request(
            f"{self.emulator_url}/storage/v1/b",
            method="POST",
            data=json.dumps({"name": bucket}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10):
            pass


def publish_model(
    server: MinioServer | FakeGcsServer,
    bucket: str,
    prefix: str,
    model_dir: Path,
    work: Path,
    versions: Collection[str] | None = None,
) -> None:
    """Pack ``model_dir`` (``pack_model``, with only ``versions`` if given) and upload the archive and
    its ``.sha256`` under ``prefix`` of ``bucket``, replacing what was there."""
    archive = pack_model(model_dir, work, versions)
    for path in (archive, archive.with_name(archive.name + ".sha256")):
        server.upload(bucket, f"{prefix.strip('/')}/{path.name}".lstrip("/"), path.read_bytes())
