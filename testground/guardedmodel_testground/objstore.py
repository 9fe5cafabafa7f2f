"""Real object stores on loopback: MinIO for s3:// and fake-gcs-server for gs://.

Both are built once per machine from the Go module proxy and cached like the cluster binaries:

- MinIO is a complete S3 server (SigV4 signatures, access keys, path-style and virtual-host
  requests), so a wrong key is refused the way AWS refuses it.
- fake-gcs-server is the GCS emulator the Rust ``object_store`` crate (under obstore) runs its own
  tests against. Google's storage-testbench is a Python package installed from GitHub only, which
  this machine cannot reach; the emulator does not check credentials, so refusals are MinIO's part.

A model is published to either the way a model team would: ``pack_model``'s archive and its
``.sha256`` under a prefix of a bucket.
"""

from __future__ import annotations

import fcntl
import http.server
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Self, TextIO

import obstore
from obstore.store import S3Store

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
    """MinIO on ``host`` (loopback; a real node's pods reach it on the node's gateway address) with one
    root key pair; ``env()`` is what a pod's Secret would give."""

    state_dir: Path
    access_key: str = "guardedmodel"
    secret_key: str = "guardedmodel-secret"
    region: str = "us-east-1"
    host: str = "127.0.0.1"
    port: int = field(default=0, init=False)

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self, *, secret_key: str | None = None) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key if secret_key is None else secret_key,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": self.region,
        }

    def start(self) -> Self:
        binary = ensure_go_binary(MINIO_MODULE, MINIO_VERSION)
        # Started again after a stop, it comes back on its port with its data: a bucket outage and
        # its end, as the clients see them.
        self.port = self.port or free_port()
        data = self.state_dir / "minio-data"
        data.mkdir(parents=True, exist_ok=True)
        self.process = ManagedProcess(
            "minio",
            [
                str(binary),
                "server",
                str(data),
                "--address",
                f"{self.host}:{self.port}",
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


class XmlUploadProxy:
    """fake-gcs-server serves GCS's JSON API, but not the XML API's plain object PUT with which
    object_store (under obstore) writes an object, as real GCS takes it. This loopback proxy turns such
    a PUT into the emulator's JSON media upload, answering with the object's ETag as GCS does, and
    passes every other request through unchanged."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                path, _, query = self.path.partition("?")
                bucket, _, name = path.lstrip("/").partition("/")
                if not name or "uploadType" in query:
                    proxy.forward(self)
                    return
                url = f"{proxy.upstream}/upload/storage/v1/b/{bucket}/o?" + urllib.parse.urlencode(
                    {"uploadType": "media", "name": urllib.parse.unquote(name)}
                )
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                request = urllib.request.Request(url, data=body, method="POST")
                request.add_header(
                    "Content-Type", self.headers.get("Content-Type") or "application/octet-stream"
                )
                try:
                    with urllib.request.urlopen(request, timeout=30) as response:
                        meta = json.loads(response.read() or b"{}")
                    self.send_response(200)
                    self.send_header("ETag", f'"{meta.get("etag") or meta.get("md5Hash") or "x"}"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except urllib.error.HTTPError as error:
                    proxy.answer(self, error.code, dict(error.headers), error.read())

            def do_GET(self) -> None:
                proxy.forward(self)

            do_POST = do_DELETE = do_HEAD = do_PATCH = do_GET

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="gcs-xml-proxy", daemon=True)

    def start(self) -> XmlUploadProxy:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def forward(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else None
        request = urllib.request.Request(self.upstream + handler.path, data=body, method=handler.command)
        for key, value in handler.headers.items():
            if key.lower() not in ("host", "content-length", "connection"):
                request.add_header(key, value)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                self.answer(handler, response.status, dict(response.headers), response.read())
        except urllib.error.HTTPError as error:
            self.answer(handler, error.code, dict(error.headers), error.read())

    @staticmethod
    def answer(
        handler: http.server.BaseHTTPRequestHandler, status: int, headers: dict[str, str], body: bytes
    ) -> None:
        handler.send_response(status)
        for key, value in headers.items():
            if key.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)


@dataclass
class FakeGcsServer(LocalServer):
    """fake-gcs-server on 127.0.0.1; ``key_file`` is the service-account file a pod's Secret holds,
    pointing the client at this server. ``xml_uploads``: the key file points at an ``XmlUploadProxy``
    in front of it instead, so clients can write objects as they write to GCS."""

    state_dir: Path
    xml_uploads: bool = False
    port: int = field(default=0, init=False)
    proxy: XmlUploadProxy | None = field(default=None, init=False)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

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
                self.endpoint,
                "-log-level",
                "warn",
            ],
            self.state_dir / "fake-gcs-server.log",
        ).start()
        wait_until(
            "fake-gcs-server", lambda: http_ok(f"{self.endpoint}/storage/v1/b"), 60, process=self.process
        )
        # The emulator takes no OAuth token; object_store's key files say so with disable_oauth.
        if self.xml_uploads:
            self.proxy = XmlUploadProxy(self.endpoint).start()
        key: dict[str, Any] = {
            "gcs_base_url": self.proxy.url if self.proxy else self.endpoint,
            "disable_oauth": True,
            "client_email": "",
            "private_key": "",
            "private_key_id": "",
        }
        self.key_file.write_text(json.dumps(key))
        return self

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None
        super().stop()

    def upload(self, bucket: str, key: str, data: bytes) -> None:
        # The emulator's XML-API upload (object_store's put) does not take a "/" in the name; its
        # JSON-API media upload does.
        request = urllib.request.Request(
            f"{self.endpoint}/upload/storage/v1/b/{bucket}/o?"
            + urllib.parse.urlencode({"uploadType": "media", "name": key}),
            method="POST",
            data=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        with urllib.request.urlopen(request, timeout=30):
            pass

    def create_bucket(self, bucket: str) -> None:
        request = urllib.request.Request(
            f"{self.endpoint}/storage/v1/b",
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
