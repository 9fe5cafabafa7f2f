"""Run the real operator process against the local cluster, reading one Prometheus."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from guardedmodel_testground.cluster import LocalCluster


def start_operator(
    cluster: LocalCluster,
    namespace: str,
    prometheus_url: str,
    log_path: Path,
    env: Mapping[str, str],
    args: Sequence[str] = (),
) -> Callable[[], None]:
    """`guardedmodel operator` watching `namespace`; returns the function that stops it.
    `args` come last, so they override the flags set here (e.g. --metrics-port)."""
    log = log_path.open("w")
    operator = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "guardedmodel"),
            "operator",
            "--namespace",
            namespace,
            "--metrics-port",
            "0",
            "--health-endpoint",
            "",
            *args,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**cluster.env, "GUARDEDMODEL_PROMETHEUS_URL": prometheus_url, **env},
        start_new_session=True,
    )

    def stop() -> None:
        if operator.poll() is None:
            os.killpg(operator.pid, signal.SIGTERM)
            try:
                operator.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(operator.pid, signal.SIGKILL)
                operator.wait(timeout=5)
        log.close()

    return stop
