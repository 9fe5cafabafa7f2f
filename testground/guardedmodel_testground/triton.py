"""A real Triton Inference Server from the `nvidia-pytriton` wheel, on loopback.

The wheel bundles `tritonserver`, its shared libraries and the Python backend,
but keeps the backend's stub executable apart (one per Python version); Triton
looks for the stub next to `libtriton_python.so`, so we assemble a backend
directory once per machine. The stub starts the model's Python with whatever
`python3` comes first on PATH, which is why the virtualenv's `bin` goes first:
PYTHONPATH alone does not give the stub numpy.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path

from .paths import cache_dir
from .procs import LocalServer, ManagedProcess, StartError, free_port, http_ok, wait_until


def _pytriton_root() -> Path:
    try:
        import pytriton
    except ImportError as error:  # pragma: no cover - a setup problem, explained
        raise StartError(
            "the nvidia-pytriton wheel is needed for a local Triton (pip install -e '.[test]')"
        ) from error
    return Path(pytriton.__file__).parent


def triton_executable() -> Path:
    return _pytriton_root() / "tritonserver" / "bin" / "tritonserver"


def triton_libs() -> Path:
    return _pytriton_root().parent / "nvidia_pytriton.libs"


def backend_directory() -> Path:
    """A backends dir whose python/ holds the backend library and this Python's stub."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    source = _pytriton_root() / "tritonserver"
    target = cache_dir() / "triton-backends" / version
    python_dir = target / "python"
    stub = python_dir / "triton_python_backend_stub"
    if not stub.exists():
        python_dir.mkdir(parents=True, exist_ok=True)
        for item in (source / "backends" / "python").iterdir():
            if item.is_file():
                shutil.copy2(item, python_dir / item.name)
        shutil.copy2(source / "python_backend_stubs" / version / "triton_python_backend_stub", stub)
    return target


class TritonServer(LocalServer):
    """Start/stop one tritonserver; use as a context manager.

    `model_control_mode="explicit"` starts with no model loaded except
    `load_models`; others go through the repository API, as in production.
    """

    def __init__(
        self,
        model_repository: Path,
        *,
        model_control_mode: str = "none",
        load_models: Sequence[str] = (),
        extra_args: Sequence[str] = (),
        log_dir: Path | None = None,
    ) -> None:
        self.model_repository = Path(model_repository).resolve()
        self.model_control_mode = model_control_mode
        self.load_models = tuple(load_models)
        self.extra_args = tuple(extra_args)
        self.log_dir = Path(log_dir) if log_dir else self.model_repository.parent
        self.http_port = self.grpc_port = self.metrics_port = 0
        self.process: ManagedProcess | None = None

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def argv(self) -> list[str]:
        argv = [
            str(triton_executable()),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backend_directory()}",
            f"--model-control-mode={self.model_control_mode}",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--allow-metrics=true",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--exit-on-error=true",
            "--strict-readiness=true",
            "--log-verbose=0",
        ]
        argv += [f"--load-model={name}" for name in self.load_models]
        return argv + list(self.extra_args)

    def environment(self) -> dict[str, str]:
        venv_bin = sysconfig.get_path("scripts")
        env = dict(os.environ)
        env["PATH"] = f"{venv_bin}{os.pathsep}{env.get('PATH', '')}"
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            filter(None, [str(triton_libs()), env.get("LD_LIBRARY_PATH")])
        )
        return env

    def start(self, timeout: float = 90) -> TritonServer:
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        self._launch(f"tritonserver-{self.http_port}.log", timeout)
        return self

    def restart(self, timeout: float = 90) -> TritonServer:
        """Start again on the same ports, as a pod's Triton container comes back after a crash."""
        self.stop()
        self._launch(f"tritonserver-{self.http_port}-restart.log", timeout)
        return self

    def _launch(self, log_name: str, timeout: float) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.process = ManagedProcess(
            "tritonserver", self.argv(), self.log_dir / log_name, env=self.environment()
        )
        self.process.start()
        wait_until(
            "Triton /v2/health/ready",
            lambda: http_ok(f"http://{self.http_url}/v2/health/ready"),
            timeout,
            process=self.process,
        )

    def ready(self) -> bool:
        return http_ok(f"http://{self.http_url}/v2/health/ready")

    def kill(self) -> None:
        if self.process:
            self.process.kill()

    def pause(self) -> None:
        """Hang Triton (SIGSTOP to it and its backend stubs); ``resume`` (SIGCONT) lets it go on."""
        if self.process:
            self.process.pause()

    def resume(self) -> None:
        if self.process:
            self.process.resume()
