"""Fixtures for the sidecar against a real Triton: the toy repository, Triton, the sidecar process
and a real webhook receiver on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from guardedmodel_testground.procs import free_port, log_tail
from guardedmodel_testground.sidecar_config import sidecar_command
from guardedmodel_testground.sidecar_config import sidecar_config as local_sidecar_config
from guardedmodel_testground.triton import TritonServer

sys.path.insert(0, str(Path(__file__).parent))
from sidecar_toy import MODEL, write_toy_repository


def copy_example_version(model_dir: Path, target: Path, version: str = "1") -> Path:
    """A repository at ``target`` with ``version`` of the worked example (its model folder
    ``model_dir``) and its guard, copied: the cached example may be refitted while a module runs."""
    model = target / model_dir.name
    model.mkdir(parents=True)
    shutil.copy(model_dir / "config.pbtxt", model / "config.pbtxt")
    shutil.copytree(model_dir / version, model / version, ignore=shutil.ignore_patterns("__pycache__"))
    return target


@pytest.fixture(scope="session")
def toy_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_repository(tmp_path_factory.mktemp("toy"))


@pytest.fixture
def toy_triton(toy_repository: Path, triton_server_factory: Callable[..., TritonServer]) -> TritonServer:
    """Explicit model control, nothing loaded: the sidecar loads what routing needs."""
    return triton_server_factory(toy_repository, model_control_mode="explicit")


def sidecar_config(
    triton: TritonServer,
    repository: Path,
    workdir: Path,
    *,
    spec: dict[str, Any] | None = None,
    routing: dict[str, Any] | None = None,
    tuning: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The toy model's sidecar document; `spec` replaces whole sections of the toy spec."""
    base_spec: dict[str, Any] = {
        "model": {"name": MODEL, "repository": f"file://{repository}", "version": "1"},
        "gate": {
            "inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [8], "min": 0.0, "max": 1.0}],
            "ood": {"method": "mahalanobis", "action": "review"},
        },
        "confidence": {"reviewBelow": 0.8, "review": {"webhook": None, "maxFraction": 1.0}},
        "audit": {"enabled": True, "sampleRate": 0.1},
        "drift": {"window": "2s"},
    }
    for key, value in (spec or {}).items():
        base_spec[key] = value
    return local_sidecar_config(
        base_spec,
        triton=triton,
        repository=repository,
        workdir=workdir,
        routing=routing,
        triton_metrics_port=triton.metrics_port,
        tuning=tuning or {},
        limits=limits,
    )


@dataclass
class SidecarProcess:
    config: dict[str, Any]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.config['listen']['http']}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.config['listen']['grpc']}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.config['listen']['metrics']}/metrics"

    @property
    def audit_dir(self) -> Path:
        return Path(self.config["auditDir"])

    @property
    def spool_dir(self) -> Path:
        return Path(self.config["spoolDir"])

    def status(self, path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}{path}", timeout=2) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            return 0

    def wait_ready(self, timeout: float = 60.0, want: int = 200) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.popen is not None
            if self.popen.poll() is not None:
                raise RuntimeError(f"sidecar exited ({self.popen.returncode}):\n{log_tail(self.log_path)}")
            if self.status("/v2/health/ready") == want:
                return
            time.sleep(0.1)
        raise TimeoutError(f"sidecar /v2/health/ready never returned {want}:\n{log_tail(self.log_path)}")

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            return response.read().decode()

    def stop(self) -> int:
        if self.popen is None or self.popen.poll() is not None:
            return self.popen.returncode if self.popen else 0
        self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait(timeout=5)


def launch_sidecar(
    config: dict[str, Any], workdir: Path, name: str, *, extra_args: tuple[str, ...] = ()
) -> SidecarProcess:
    """Start ``guardedmodel sidecar`` on ``config`` as its own process (not yet waited for)."""
    config_path = workdir / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    proc = SidecarProcess(config, workdir / f"{name}.log")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with proc.log_path.open("ab") as log:
        proc.popen = subprocess.Popen(
            sidecar_command(config_path, *extra_args),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    return proc


@contextlib.contextmanager
def triton_and_sidecar(
    repository: Path, work: Path, **config: Any
) -> Iterator[tuple[TritonServer, SidecarProcess]]:
    """Triton (explicit model control) and a ready sidecar in front of it, both stopped on exit;
    ``config``: the keyword arguments of ``sidecar_config``."""
    triton = TritonServer(repository, model_control_mode="explicit", log_dir=work / "logs")
    triton.start()
    try:
        proc = launch_sidecar(sidecar_config(triton, repository, work, **config), work, "sidecar")
        try:
            proc.wait_ready()
            yield triton, proc
        finally:
            proc.stop()
    finally:
        triton.stop()


@pytest.fixture
def sidecar_factory(tmp_path: Path) -> Iterator[Callable[..., SidecarProcess]]:
    started: list[SidecarProcess] = []

    def start(
        config: dict[str, Any], *, extra_args: tuple[str, ...] = (), wait: bool = True
    ) -> SidecarProcess:
        proc = launch_sidecar(config, tmp_path, f"sidecar-{len(started)}", extra_args=extra_args)
        started.append(proc)
        if wait:
            proc.wait_ready()
        return proc

    yield start
    for proc in started:
        proc.stop()


@dataclass
class WebhookReceiver:
    """A real HTTP server on loopback that records what it receives (optionally failing first)."""

    fail_first: int = 0
    received: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 0
    url: str = ""
    port: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None
    _site: web.TCPSite | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        body = await request.json()
        if self.attempts <= self.fail_first:
            return web.Response(status=503, text="not yet")
        self.received.append(body)
        return web.Response(status=204)

    def start(self) -> WebhookReceiver:
        self.port = free_port()
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            app.router.add_post("/review", self._handle)
            self._runner = web.AppRunner(app)
            loop.run_until_complete(self._runner.setup())
            loop.run_until_complete(self._open())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        self.url = f"http://127.0.0.1:{self.port}/review"
        return self

    async def _open(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await self._site.start()

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)


@pytest.fixture
def webhook_receiver() -> Iterator[Callable[..., WebhookReceiver]]:
    receivers: list[WebhookReceiver] = []

    def start(fail_first: int = 0) -> WebhookReceiver:
        receiver = WebhookReceiver(fail_first=fail_first).start()
        receivers.append(receiver)
        return receiver

    yield start
    for receiver in receivers:
        receiver.stop()
