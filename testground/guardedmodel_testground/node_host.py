"""What a real node changes on this host, recorded before it starts and undone after it stops.

A kubelet and containerd touch the machine outside their own directories: mounts
(pod volumes, container rootfs, shm, network namespaces under /run/netns), a
bridge, iptables chains (the kubelet's KUBE-* canaries), cgroups (kubepods) and a
few kernel sysctls (the kubelet sets vm.overcommit_memory, kernel.panic...; the
bridge plugin sets ip_forward). Tests and CI run on the same machine afterwards,
so the node takes a snapshot of these at start and `restore` puts back exactly
what it found: only what was not there before is removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

#: Sysctls the kubelet (unless protectKernelDefaults) and the CNI bridge plugin set.
SYSCTLS = (
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.forwarding",
)
IPTABLES = ("iptables", "ip6tables")
CGROUP_ROOT = Path("/sys/fs/cgroup")
NETNS_DIR = Path("/run/netns")
#: containerd 1.6 keeps shim sockets here whatever its configured state dir.
CONTAINERD_RUN = Path("/run/containerd")
#: Fixed paths a kubelet uses whatever its --root-dir: the device-plugin socket directory and the
#: /var/log/containers links. Only a kubelet writes there: removed when they were not there before.
KUBELET_FIXED_DIRS = (Path("/var/lib/kubelet"), Path("/var/log/containers"), Path("/var/log/pods"))
#: libcni's result cache (containerd 1.6 does not configure it) and CNI's config dir, which other
#: tools share (buildah): only their empty directories are removed, when they were not there before.
SHARED_DIRS = (Path("/var/lib/cni"), Path("/etc/cni"))
CNI_RESULTS = Path("/var/lib/cni/results")
#: The node's CNI network name: libcni caches each attachment as <network>-<container id>-<ifname>.
CNI_NETWORK = "guardedmodel"


@dataclass
class HostSnapshot:
    sysctls: dict[str, str] = field(default_factory=dict)
    chains: dict[str, list[str]] = field(default_factory=dict)  # "iptables/filter" -> chains
    cgroups: list[str] = field(default_factory=list)  # kubepods dirs that already existed
    netns: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    nft_tables: list[str] = field(default_factory=list)  # "ip mangle": iptables-nft makes tables on first use
    had_containerd_run: bool = False
    had_netns_dir: bool = False
    had_dirs: list[str] = field(default_factory=list)  # of KUBELET_FIXED_DIRS and SHARED_DIRS

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: Path) -> HostSnapshot:
        return cls(**json.loads(path.read_text()))


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def _chains(tool: str) -> dict[str, list[str]]:
    """Chains per table, from `<tool>-save` (nothing when the tool is missing)."""
    try:
        text = subprocess.run([f"{tool}-save"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    tables: dict[str, list[str]] = {}
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:]
            tables[table] = []
        elif line.startswith(":"):
            tables[table].append(line[1:].split()[0])
    return {f"{tool}/{name}": chains for name, chains in tables.items()}


def _has_no_files(directory: Path) -> bool:
    return all(p.is_dir() for p in directory.rglob("*"))


def _nft_tables() -> list[str]:
    try:
        text = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return sorted(
        line.removeprefix("table ").strip() for line in text.splitlines() if line.startswith("table ")
    )


def _table_is_empty(family: str, table: str) -> bool:
    """Only built-in chains with the default policy and no rules: what iptables-nft creates on first use."""
    tool = {"ip": "iptables", "ip6": "ip6tables"}.get(family)
    if tool is None:
        return False
    rules = subprocess.run([tool, "-t", table, "-S"], capture_output=True, text=True).stdout.splitlines()
    return all(rule.startswith("-P ") and rule.endswith(" ACCEPT") for rule in rules)


def _kubepods_dirs() -> list[str]:
    if not CGROUP_ROOT.is_dir():
        return []
    return sorted(str(p) for p in CGROUP_ROOT.glob("*/kubepods*"))


def _new_veths(snapshot: HostSnapshot) -> list[str]:
    return [name for name in _links() if name.startswith("veth") and name not in snapshot.links]


def _links() -> list[str]:
    return sorted(p.name for p in Path("/sys/class/net").iterdir())


def take_snapshot() -> HostSnapshot:
    sysctls = {}
    for name in SYSCTLS:
        with contextlib.suppress(OSError):
            sysctls[name] = _sysctl_path(name).read_text().strip()
    chains: dict[str, list[str]] = {}
    for tool in IPTABLES:
        chains.update(_chains(tool))
    return HostSnapshot(
        sysctls=sysctls,
        chains=chains,
        cgroups=_kubepods_dirs(),
        netns=sorted(p.name for p in NETNS_DIR.iterdir()) if NETNS_DIR.is_dir() else [],
        links=_links(),
        nft_tables=_nft_tables(),
        had_containerd_run=CONTAINERD_RUN.exists(),
        had_netns_dir=NETNS_DIR.exists(),
        had_dirs=[str(d) for d in (*KUBELET_FIXED_DIRS, *SHARED_DIRS) if d.exists()],
    )


def mounts_under(*roots: Path) -> list[str]:
    """Mount points at or below any of `roots`, deepest first (the order to unmount them)."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if any(point == str(root) or point.startswith(f"{root}/") for root in roots):
            points.append(point)
    return sorted(set(points), key=lambda p: (-p.count("/"), p))


def kill_processes_mentioning(needle: str) -> list[int]:
    """SIGKILL the processes whose command line names `needle` (containerd shims keep running
    after containerd exits; they carry its socket path in their arguments)."""
    killed = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGKILL)
                killed.append(int(proc.name))
    return killed


def _remove_new_chains(snapshot: HostSnapshot) -> None:
    now: dict[str, list[str]] = {}
    for tool in IPTABLES:
        now.update(_chains(tool))
    for key, chains in now.items():
        tool, table = key.split("/")
        new = [c for c in chains if c not in snapshot.chains.get(key, [])]
        if not new:
            continue
        rules = subprocess.run([tool, "-t", table, "-S"], capture_output=True, text=True).stdout.splitlines()
        # Rules in the old chains that jump to a new one go first, then the new chains themselves.
        for rule in rules:
            parts = rule.split()
            if parts[:1] == ["-A"] and parts[1] not in new and any(c in parts for c in new):
                subprocess.run([tool, "-t", table, "-D", *parts[1:]], capture_output=True)
        for chain in new:
            subprocess.run([tool, "-t", table, "-F", chain], capture_output=True)
        for chain in new:
            subprocess.run([tool, "-t", table, "-X", chain], capture_output=True)


def _kill_pod_processes(snapshot: HostSnapshot) -> None:
    """SIGKILL what still runs in the node's pod cgroups: containers outlive a killed shim, and
    would hold their network namespace (and veth) and their cgroups."""
    for _ in range(20):
        pids = {
            int(pid)
            for top in _kubepods_dirs()
            if top not in snapshot.cgroups
            for procs in Path(top).rglob("cgroup.procs")
            for pid in procs.read_text().split()
        }
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def _remove_new_cgroups(snapshot: HostSnapshot) -> None:
    for top in _kubepods_dirs():
        if top in snapshot.cgroups:
            continue
        # Children first; rmdir is the only way to remove a cgroup, and it succeeds once empty.
        for directory in sorted(Path(top).rglob("*"), key=lambda p: -len(p.parts)):
            if directory.is_dir():
                with contextlib.suppress(OSError):
                    directory.rmdir()
        with contextlib.suppress(OSError):
            Path(top).rmdir()


def restore(snapshot: HostSnapshot, *, roots: Sequence[Path], bridge: str, shim_needle: str) -> list[str]:
    """Undo what the node left behind; returns what could not be undone (empty when clean)."""
    kill_processes_mentioning(shim_needle)
    _kill_pod_processes(snapshot)
    new_netns = (
        [NETNS_DIR / n for n in os.listdir(NETNS_DIR) if n not in snapshot.netns]
        if NETNS_DIR.is_dir()
        else []
    )
    for point in mounts_under(*roots, *new_netns):
        subprocess.run(["umount", "-l", point], capture_output=True)
    for path in new_netns:
        with contextlib.suppress(OSError):
            path.unlink()
    # A freed network namespace takes its veth pair with it, asynchronously; a veth still
    # there after a few seconds (its namespace held by a process that is gone now) is deleted.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _new_veths(snapshot):
        time.sleep(0.2)
    for veth in _new_veths(snapshot):
        subprocess.run(["ip", "link", "delete", veth], capture_output=True)
    if bridge not in snapshot.links and (Path("/sys/class/net") / bridge).exists():
        subprocess.run(["ip", "link", "delete", bridge], capture_output=True)
    _remove_new_chains(snapshot)
    for new_table in sorted(set(_nft_tables()) - set(snapshot.nft_tables)):
        family, table = new_table.split()
        if _table_is_empty(family, table):
            subprocess.run(["nft", "delete", "table", family, table], capture_output=True)
    _remove_new_cgroups(snapshot)
    for name, value in snapshot.sysctls.items():
        with contextlib.suppress(OSError):
            if _sysctl_path(name).read_text().strip() != value:
                _sysctl_path(name).write_text(value)
    _remove_new_dirs(snapshot, roots)
    if not snapshot.had_netns_dir and NETNS_DIR.is_dir() and not os.listdir(NETNS_DIR):
        NETNS_DIR.rmdir()
    if not snapshot.had_containerd_run and CONTAINERD_RUN.exists():
        subprocess.run(["rm", "-rf", "--one-file-system", str(CONTAINERD_RUN)], capture_output=True)
    return leftovers(snapshot, roots=roots, bridge=bridge)


def _remove_cni_results() -> None:
    """libcni's cached results of our sandboxes that never got a CNI DEL (a killed node), with the
    loopback results of the same containers."""
    if not CNI_RESULTS.is_dir():
        return
    for result in CNI_RESULTS.glob(f"{CNI_NETWORK}-*"):
        container = result.name.removeprefix(f"{CNI_NETWORK}-").rsplit("-", 1)[0]
        for path in (result, *CNI_RESULTS.glob(f"cni-loopback-{container}-*")):
            path.unlink(missing_ok=True)


def _remove_new_dirs(snapshot: HostSnapshot, roots: Sequence[Path]) -> None:
    _remove_cni_results()
    logs = Path("/var/log/containers")
    if logs.is_dir():  # the kubelet's links to our pods' logs, also where the directory was there before
        for link in logs.iterdir():
            target = os.readlink(link) if link.is_symlink() else ""
            if any(target.startswith(f"{root}/") for root in roots):
                link.unlink()
    for directory in KUBELET_FIXED_DIRS:
        if str(directory) not in snapshot.had_dirs and directory.exists():
            subprocess.run(["rm", "-rf", "--one-file-system", str(directory)], capture_output=True)
    for directory in SHARED_DIRS:
        if str(directory) not in snapshot.had_dirs and directory.is_dir():
            for sub in sorted(directory.rglob("*"), key=lambda p: -len(p.parts)):
                if sub.is_dir() and not sub.is_symlink():
                    with contextlib.suppress(OSError):
                        sub.rmdir()
            with contextlib.suppress(OSError):
                directory.rmdir()


def leftovers(snapshot: HostSnapshot, *, roots: Sequence[Path], bridge: str) -> list[str]:
    """What is still different from the snapshot: mounts, links, netns, chains, cgroups."""
    found = [f"mount {p}" for p in mounts_under(*roots)]
    found += [f"link {name}" for name in _links() if name not in snapshot.links]
    if NETNS_DIR.is_dir():
        found += [f"netns {n}" for n in os.listdir(NETNS_DIR) if n not in snapshot.netns]
    for tool in IPTABLES:
        for key, chains in _chains(tool).items():
            if key in snapshot.chains:
                found += [f"{key} chain {c}" for c in chains if c not in snapshot.chains[key]]
    found += [f"nft table {t}" for t in _nft_tables() if t not in snapshot.nft_tables]
    found += [
        f"directory {d}"
        for d in (*KUBELET_FIXED_DIRS, *SHARED_DIRS)
        if d.exists() and str(d) not in snapshot.had_dirs and (d in KUBELET_FIXED_DIRS or _has_no_files(d))
    ]
    found += [
        f"directory {d}"
        for d, had in ((NETNS_DIR, snapshot.had_netns_dir), (CONTAINERD_RUN, snapshot.had_containerd_run))
        if d.exists() and not had
    ]
    found += [f"cgroup {d}" for d in _kubepods_dirs() if d not in snapshot.cgroups]
    if CNI_RESULTS.is_dir():
        found += [f"cni result {p.name}" for p in CNI_RESULTS.glob(f"{CNI_NETWORK}-*")]
    return found
