"""`guardedmodel cluster up|down|env|status`: the local control plane from a shell.

`up` builds the binaries on first use (minutes, once per machine), starts the
cluster in the background and prints how to reach it; `env` prints shell
exports (`eval "$(guardedmodel cluster env)"`); `down` stops it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .cluster import LocalCluster, read_state
from .k8s_binaries import ensure_k8s_binaries
from .objstore import FAKE_GCS_MODULE, FAKE_GCS_VERSION, MINIO_MODULE, MINIO_VERSION, ensure_go_binary
from .paths import default_state_dir
from .prometheus_operator_crds import ensure_prometheus_operator_crds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["up", "down", "env", "status", "build"])
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where the cluster keeps data, logs and its kubeconfig (default: .state/cluster in the checkout)",
    )


def run(args: argparse.Namespace) -> int:
    state_dir = args.state_dir or default_state_dir() / "cluster"
    if args.action == "build":
        started = time.monotonic()
        binaries = ensure_k8s_binaries()
        print(f"binaries in {binaries.bin_dir} ({time.monotonic() - started:.1f}s)")
        # the chart's monitoring objects are checked against these
        print(f"prometheus-operator CRDs in {ensure_prometheus_operator_crds()}")
        # fetch-model's s3:// and gs:// tests read from these
        for module, version in ((MINIO_MODULE, MINIO_VERSION), (FAKE_GCS_MODULE, FAKE_GCS_VERSION)):
            print(f"object store server {ensure_go_binary(module, version)}")
        return 0
    if args.action == "up":
        if (state_dir / "state.json").exists():
            print(
                f"a cluster is already running from {state_dir}; `guardedmodel cluster down` first",
                file=sys.stderr,
            )
            return 1
        cluster = LocalCluster(state_dir).up()
        # The servers run in their own sessions and outlive this command.
        cluster.processes.clear()
        state = read_state(state_dir)
        print(f"cluster up in {state['started_in_seconds']}s at {state['server']}")
        print(f"use it with: export KUBECONFIG={state['kubeconfig']} PATH={state['bin_dir']}:$PATH")
        return 0
    if args.action == "down":
        LocalCluster(state_dir).down()
        print("cluster stopped")
        return 0
    state = read_state(state_dir)
    if args.action == "env":
        print(f"export KUBECONFIG={state['kubeconfig']}")
        print(f"export PATH={state['bin_dir']}:$PATH")
        return 0
    print(json.dumps(state, indent=2))
    return 0
