"""Starting, watching and stopping the local servers the test ground runs.

Every server runs in its own process group with its output in a log file, so
a failure message can quote the log tail, and a stop takes down the children a
server may have forked (Triton's Python backend stubs, for instance).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self


class StartError(RuntimeError):
    """A local server did not come up; the message carries its log tail."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class ManagedProcess:
    """One server process with its log; stop() is idempotent."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    popen: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it for its lifetime
        try:
            self.popen = subprocess.Popen(
                list(self.argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(self.env) if self.env is not None else None,
                cwd=self.cwd,
                start_new_session=True,
            )
        finally:
            log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was never started"
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            code = self.popen.returncode if self.popen else None
            raise StartError(
                f"{self.name} exited (code {code}); log {self.log_path}:\n{log_tail(self.log_path)}"
            )

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen is None:
            return
        self.resume()  # a stopped (paused) group would sit out SIGTERM until the SIGKILL
        terminate_group(self.popen.pid, timeout)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=1)

    def pause(self) -> None:
        """SIGSTOP the whole group: the server hangs (its sockets still accept, nothing answers), as a
        process stuck in the kernel or a frozen cgroup does; ``resume`` lets it go on."""
        self._signal_group(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal_group(signal.SIGCONT)

    def _signal_group(self, sig: signal.Signals) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole group at once: for tests of what happens when a server dies."""
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)


class LocalServer:
    """A server the test ground runs in a ManagedProcess; as a context manager, started on entry and
    stopped on exit. A subclass's ``start`` launches ``process`` and waits until it answers."""

    process: ManagedProcess | None = None

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        if self.process:
            self.process.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def terminate_group(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM a process group, then SIGKILL what is left after `timeout`."""
    terminate_groups([pid], timeout)


def terminate_groups(pids: Sequence[int], timeout: float = 10.0) -> None:
    """Stop several process groups at once, so their shutdowns overlap."""
    pending = []
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGTERM)
            pending.append(pid)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for pid in list(pending):
            # Reap our own child if it is one, so its group can disappear.
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            try:
                os.killpg(pid, 0)
            except (ProcessLookupError, PermissionError):
                pending.remove(pid)
        time.sleep(0.1)
    for pid in pending:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def wait_until(
    what: str,
    probe: Callable[[], bool],
    timeout: float,
    *,
    process: ManagedProcess | None = None,
    interval: float = 0.2,
) -> None:
    """Poll `probe` until it is true; fail fast if `process` dies meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None:
            process.check_alive()
        try:
            if probe():
                return
        except Exception:
            pass
        time.sleep(interval)
    detail = f"; log {process.log_path}:\n{log_tail(process.log_path)}" if process else ""
    raise StartError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")


def http_ok(
    url: str, *, headers: Mapping[str, str] | None = None, context: ssl.SSLContext | None = None
) -> bool:
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=2, context=context) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False
