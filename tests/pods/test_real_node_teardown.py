"""Stopping a cluster with a real node leaves the host as it found it.

Its own module, so that the node of test_real_node.py is gone before this one starts: one real
node per host at a time.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from guardedmodel_testground.cluster import LocalCluster
from guardedmodel_testground.node_host import take_snapshot
from guardedmodel_testground.real_node import RealNodeSpec, containerd_socket, node_leftovers
from guardedmodel_testground.web_pod import run_web_pod

pytestmark = pytest.mark.pods


def test_stopping_the_cluster_leaves_the_host_as_it_was(tmp_path: Path) -> None:
    before = take_snapshot()
    cluster = LocalCluster(tmp_path / "cluster", real_node=RealNodeSpec())
    with cluster:
        run_web_pod(cluster, "web", tmp_path)
        assert cluster.real_node is not None
        node = cluster.real_node
        node_dir, pids = node.node_dir, node.pids
    print(
        f"real node stopped in {node.timings['stop_s']:.1f}s (pods drained in {node.timings['drain_s']:.1f}s)"
    )
    assert node_leftovers(node_dir, RealNodeSpec(), before) == []
    assert not Path("/sys/class/net/gmcni0").exists()
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
    assert _processes_mentioning(str(containerd_socket(node_dir))) == []
    assert take_snapshot().sysctls == before.sysctls


def _processes_mentioning(needle: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if needle in cmdline:
                found.append(f"{proc.name}: {cmdline}")
    return found


NODE_THEN_WAIT = """
import sys, time
from pathlib import Path
from guardedmodel_testground.cluster import LocalCluster
from guardedmodel_testground.real_node import RealNodeSpec
from guardedmodel_testground.web_pod import run_web_pod
cluster = LocalCluster(Path(sys.argv[1]), real_node=RealNodeSpec()).up()
run_web_pod(cluster, "web", Path(sys.argv[1]))
print("running", flush=True)
time.sleep(600)
"""


def test_the_next_start_cleans_up_after_a_test_process_killed_with_its_node(tmp_path: Path) -> None:
    """A CI job killed mid-run: the test process, the kubelet and containerd all SIGKILLed, the pod's
    containers and shims left running. The next real node's start restores the host."""
    before = take_snapshot()
    first = tmp_path / "first"
    first.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-c", NODE_THEN_WAIT, str(first)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "running"
        pids = json.loads((first / "state.json").read_text())["pids"]
    finally:
        process.kill()
        process.wait()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    assert node_leftovers(first / "node", RealNodeSpec(), before) != []  # the mess to clean up

    with LocalCluster(tmp_path / "second", real_node=RealNodeSpec()) as second:
        assert second.real_node is not None
    assert node_leftovers(first / "node", RealNodeSpec(), before) == []
    assert node_leftovers(tmp_path / "second" / "node", RealNodeSpec(), before) == []
    assert _processes_mentioning(str(first)) == []
