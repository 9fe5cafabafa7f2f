"""One real node beside the kwok nodes: a kubelet on Debian's containerd, runc and CNI bridge.

The kubelet is built from the pinned Kubernetes (kubelet_binary); containerd runs
as the test ground's own process, with its own config, root, state and socket
under the cluster's state directory, so a system-wide containerd is never used
or touched. Pods get addresses from a bridge + host-local network, reachable
from this host (no kube-proxy: the tests talk to the pod IP). Images go straight
into containerd (`import_image`), and pods use them with imagePullPolicy Never.

The kubelet authenticates as `system:node:<name>` in `system:nodes` with a static
token, so the API server's Node authorizer and NodeRestriction admission judge
it as they would a production kubelet. The API server reaches the kubelet (logs,
exec) with a client certificate the kubelet trusts (x509 authentication,
webhook authorization), never anonymously.

`stop()` deletes the node's pods through the kubelet (which tears their
sandboxes down through CNI), stops the kubelet and containerd, and then undoes
whatever is still left on the host (node_host.restore).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import yaml

from .kubelet_binary import ensure_kubelet
from .node_host import CNI_NETWORK, HostSnapshot, leftovers, restore, take_snapshot
from .oci_archive import PAUSE_IMAGE, write_image_archive
from .procs import ManagedProcess, StartError, free_port, wait_until

REAL_NODE_LABEL = "guardedmodel.io/node"
#: One real node per host at a time: kubelets share the cgroup root (/kubepods) and would remove
#: each other's pod cgroups, and /var/lib/kubelet/device-plugins is fixed.
HOST_LOCK = Path("/run/lock/guardedmodel-real-node.lock")
#: The `kubernetes` Service's ClusterIP: the first address of the API server's
#: --service-cluster-ip-range (10.96.0.0/16). In-cluster clients (the operator pod) dial it.
KUBERNETES_SERVICE_IP = "10.96.0.1"
#: The nat chain that routes it to the API server on loopback (removed on stop with the bridge).
SERVICE_CHAIN = "GUARDEDMODEL-APISERVER"
CNI_BIN_DIR = Path("/usr/lib/cni")
NODE_PROGRAMS = ("containerd", "ctr", "runc", "iptables", "ip")


@dataclass(frozen=True)
class RealNodeSpec:
    name: str = "real-node"
    #: Not the kwok pods' 10.244.0.0/16 nor the Services' 10.96.0.0/16.
    pod_cidr: str = "10.250.0.0/24"
    bridge: str = "gmcni0"
    labels: dict[str, str] = field(default_factory=lambda: {REAL_NODE_LABEL: "real"})
    max_pods: int = 20

    @property
    def gateway(self) -> str:
        """The host's address on the bridge (the pod network's first address): what pods dial for
        services on the host."""
        return str(next(ipaddress.ip_network(self.pod_cidr).hosts()))


def node_token_line(spec: RealNodeSpec) -> tuple[str, str]:
    """A static token for the kubelet (user system:node:<name>, group system:nodes) and its tokens.csv line."""
    token = secrets.token_hex(24)
    user = f"system:node:{spec.name}"
    return token, f'{token},{user},{user},"system:nodes"\n'


def write_kubelet_client_pki(pki: Path) -> None:
    """A CA the kubelet trusts for client certificates, and the API server's certificate from it."""
    ca_key, ca_crt = pki / "kubelet-client-ca.key", pki / "kubelet-client-ca.crt"
    key, csr, crt = pki / "kubelet-client.key", pki / "kubelet-client.csr", pki / "kubelet-client.crt"
    if crt.exists():
        return
    run = lambda *argv: subprocess.run(argv, check=True, capture_output=True)  # noqa: E731
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
        "-subj", "/CN=guardedmodel-kubelet-client-ca", "-keyout", str(ca_key), "-out", str(ca_crt))  # fmt: skip
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes",
        "-subj", "/O=system:masters/CN=kube-apiserver-kubelet-client", "-keyout", str(key), "-out", str(csr))  # fmt: skip
    run("openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", "30", "-out", str(crt))  # fmt: skip


def apiserver_flags(pki: Path) -> list[str]:
    """What the API server needs to reach a real kubelet (logs, exec, port-forward)."""
    return [
        f"--kubelet-client-certificate={pki / 'kubelet-client.crt'}",
        f"--kubelet-client-key={pki / 'kubelet-client.key'}",
        # The node's name does not resolve on this host; its InternalIP does the job.
        "--kubelet-preferred-address-types=InternalIP,Hostname",
    ]


def host_ip() -> str:
    """The address of the default route's interface: the node's InternalIP (loopback is refused)."""
    out = subprocess.run(["ip", "-j", "route", "get", "1.1.1.1"], capture_output=True, text=True, check=True)
    return str(json.loads(out.stdout)[0]["prefsrc"])


def missing_programs() -> list[str]:
    missing = [p for p in NODE_PROGRAMS if shutil.which(p) is None]
    missing += [
        f"CNI plugin {p}" for p in ("bridge", "host-local", "loopback") if not (CNI_BIN_DIR / p).exists()
    ]
    return missing


def containerd_config(node_dir: Path, spec: RealNodeSpec) -> str:
    root = node_dir / "containerd"
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{root / "root"}"
state = "{root / "state"}"
# Snapshotters this host cannot use only add start-up noise.
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = "{containerd_socket(node_dir)}"
[ttrpc]
  address = "{containerd_socket(node_dir)}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{root / "opt"}"

[{cri}]
  sandbox_image = "{PAUSE_IMAGE.name}"
  # The streaming server (exec, attach, port-forward) on loopback, on a free port.
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  # Without CAP_SYS_RESOURCE (as in this sandboxed VM) no process may lower its oom_score_adj: runc
  # fails with "failed to update /proc/self/oom_score_adj: Permission denied" for the pause
  # container's -998. Restricting clamps each container's value to containerd's own.
  restrict_oom_score_adj = true
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "{shutil.which("runc") or "runc"}"
        Root = "{root / "runc"}"
  [{cri}.cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{node_dir / "cni" / "net.d"}"
    max_conf_num = 1
"""


def cni_conflist(node_dir: Path, spec: RealNodeSpec) -> dict:
    """A bridge with the host as gateway, so the host reaches pod IPs; no masquerade, no port maps,
    hence no iptables rules of its own."""
    return {
        "cniVersion": "0.4.0",
        "name": CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": spec.bridge,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": spec.pod_cidr}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(node_dir / "cni" / "ipam"),
                },
            }
        ],
    }


def kubelet_config(node_dir: Path, spec: RealNodeSpec, *, address: str, port: int, healthz_port: int) -> dict:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # This machine mounts cgroup v1 with v2 unified beside it; the kubelet refuses v1 unless told.
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "failSwapOn": False,
        # The kubelet would lower its own oom_score_adj to -999, which needs CAP_SYS_RESOURCE.
        "oomScoreAdj": 0,
        "address": address,
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(node_dir.parent / "pki" / "kubelet-client-ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": f"unix://{containerd_socket(node_dir)}",
        "podLogsDir": str(node_dir / "pod-logs"),
        "podCIDR": spec.pod_cidr,
        "resolvConf": "/etc/resolv.conf",
        "maxPods": spec.max_pods,
        # A shared, busy test machine: never evict for disk or memory, never collect our imported images.
        "evictionHard": {"memory.available": "1Mi", "nodefs.available": "0%", "imagefs.available": "0%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "nodeStatusUpdateFrequency": "5s",
        "syncFrequency": "10s",
        "shutdownGracePeriod": "0s",
    }


def short_dir(node_dir: Path) -> Path:
    """A short directory for the sockets (containerd's, and the kubelet's under its root dir): a unix
    socket path has at most 104 bytes, which a pytest tmp_path exceeds ("unix socket path too long",
    "bind: invalid argument"). On disk, not /run, since pod volumes (emptyDir) live in the kubelet's
    root dir. One per node directory; removed when the node stops."""
    digest = hashlib.sha256(str(node_dir).encode()).hexdigest()[:12]
    return Path("/var/lib/guardedmodel") / f"node-{digest}"


def containerd_socket(node_dir: Path) -> Path:
    return short_dir(node_dir) / "containerd.sock"


def kubelet_root(node_dir: Path) -> Path:
    return short_dir(node_dir) / "kubelet"


class RealNode:
    """A kubelet and containerd registered with a LocalCluster's API server."""

    def __init__(
        self,
        node_dir: Path,
        *,
        server_url: str,
        ca_file: Path,
        node_token: str,
        admin_kubeconfig: Path,
        kubectl: Path,
        spec: RealNodeSpec | None = None,
    ) -> None:
        self.node_dir = Path(node_dir)
        self.server_url = server_url
        self.ca_file = ca_file
        self.node_token = node_token
        self.admin_kubeconfig = admin_kubeconfig
        self.kubectl_path = kubectl
        self.spec = spec or RealNodeSpec()
        self.containerd: ManagedProcess | None = None
        self.kubelet: ManagedProcess | None = None
        self.timings: dict[str, float] = {}
        self._lock: TextIO | None = None

    @property
    def logs_dir(self) -> Path:
        return self.node_dir / "logs"

    @property
    def socket(self) -> Path:
        return containerd_socket(self.node_dir)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in (self.containerd, self.kubelet) if p is not None and p.popen is not None]

    @property
    def snapshot_path(self) -> Path:
        return self.node_dir / "host-snapshot.json"

    # -- lifecycle ---------------------------------------------------------
    def start(self, timeout: float = 120) -> RealNode:
        missing = missing_programs()
        if missing:
            raise StartError(
                f"the real node needs {', '.join(missing)}: run scripts/install-node-deps.sh (as root)"
            )
        self._take_host_lock()
        started = time.monotonic()
        kubelet = ensure_kubelet()
        self.timings["kubelet_binary_s"] = time.monotonic() - started
        self.node_dir.mkdir(parents=True, exist_ok=True)
        if not self.snapshot_path.exists():  # a restart keeps the first, clean snapshot
            take_snapshot().save(self.snapshot_path)
        try:
            self._route_kubernetes_service()
            self._start_containerd(timeout)
            self._record_in_lock()
            self.import_image(write_image_archive(PAUSE_IMAGE, self.node_dir / "images" / "pause.tar"))
            self._start_kubelet(kubelet, timeout)
            self._record_in_lock()
        except BaseException:
            self.stop()
            raise
        self.timings["node_ready_s"] = time.monotonic() - started
        return self

    def stop(self, timeout: float = 60) -> list[str]:
        """Stop everything and restore the host; returns what is left over (empty when clean)."""
        started = time.monotonic()
        if self.kubelet is not None and self.kubelet.alive():
            self._drain(timeout)
        self.timings["drain_s"] = time.monotonic() - started
        if self.kubelet is not None:
            self.kubelet.stop(timeout=10)
        if self.containerd is not None and self.containerd.alive():
            self._kill_tasks()
        if self.containerd is not None:
            self.containerd.stop(timeout=10)
        self.kubelet = self.containerd = None
        left = sweep(self.node_dir, self.spec)
        self.timings["stop_s"] = time.monotonic() - started
        if self._lock is not None:
            HOST_LOCK.unlink(missing_ok=True)
            self._lock.close()
            self._lock = None
        return left

    def _take_host_lock(self) -> None:
        HOST_LOCK.parent.mkdir(parents=True, exist_ok=True)
        lock = open(HOST_LOCK, "a+")  # noqa: SIM115 - held for the node's lifetime
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip()
            lock.close()
            raise StartError(
                f"another real node runs on this host ({holder}); one at a time: stop it first "
                "(guardedmodel cluster down, or LocalCluster.down())"
            ) from None
        lock.seek(0)
        previous = lock.read().strip()
        try:
            _recover_abandoned_node(previous)
        except StartError:
            lock.close()
            raise
        self._lock = lock
        self._record_in_lock()

    def _record_in_lock(self) -> None:
        """Who holds the host now, and its processes: a later start recovers from a holder that died."""
        assert self._lock is not None
        record = {
            "pid": os.getpid(),
            "node_dir": str(self.node_dir),
            "bridge": self.spec.bridge,
            "pids": self.pids,
        }
        self._lock.seek(0)
        self._lock.truncate(0)
        self._lock.write(json.dumps(record) + "\n")
        self._lock.flush()

    def __enter__(self) -> RealNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- images --------------------------------------------------------------
    def ctr(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ctr", "--address", str(self.socket), "--namespace", "k8s.io", *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    def import_image(self, archive: Path) -> list[str]:
        """Import an image archive (OCI layout or docker-archive tar) into the node's containerd;
        returns the image names it holds afterwards."""
        result = self.ctr("images", "import", "--no-unpack=false", str(archive), check=False)
        if result.returncode != 0:
            raise StartError(f"ctr images import {archive} failed: {result.stderr.strip()}")
        return self.images()

    def images(self) -> list[str]:
        return self.ctr("images", "list", "--quiet").stdout.split()

    # -- steps ---------------------------------------------------------------
    def _route_kubernetes_service(self) -> None:
        """Pods reach the API server through the `kubernetes` Service IP, as on a real cluster.

        No kube-proxy: one DNAT rule does the only routing the real pods need, from the Service's
        443 to the API server, which stays on 127.0.0.1. The bridge is made here, before CNI
        adopts it, so that `route_localnet` (loopback destinations for packets from this
        interface only) is set on it and goes away with it. It gets the gateway address now too
        (CNI would add it with the first pod), so that host services for the pods (the model
        repository, Prometheus) can listen on it from the start.
        """
        bridge = self.spec.bridge
        port = self.server_url.rsplit(":", 1)[1]
        if not (Path("/sys/class/net") / bridge).exists():
            _run("ip", "link", "add", bridge, "type", "bridge")
        prefix = ipaddress.ip_network(self.spec.pod_cidr).prefixlen
        _run("ip", "addr", "replace", f"{self.spec.gateway}/{prefix}", "dev", bridge)
        _run("ip", "link", "set", bridge, "up")
        Path(f"/proc/sys/net/ipv4/conf/{bridge}/route_localnet").write_text("1")
        nat = ("iptables", "-t", "nat")
        _run(*nat, "-N", SERVICE_CHAIN)
        _run(*nat, "-A", SERVICE_CHAIN, "-d", f"{KUBERNETES_SERVICE_IP}/32", "-p", "tcp", "--dport", "443",
             "-j", "DNAT", "--to-destination", f"127.0.0.1:{port}")  # fmt: skip
        _run(*nat, "-I", "PREROUTING", "-i", bridge, "-j", SERVICE_CHAIN)

    def _start_containerd(self, timeout: float) -> None:
        conf_dir = self.node_dir / "cni" / "net.d"
        conf_dir.mkdir(parents=True, exist_ok=True)
        (conf_dir / "10-guardedmodel.conflist").write_text(
            json.dumps(cni_conflist(self.node_dir, self.spec), indent=1)
        )
        config = self.node_dir / "containerd" / "config.toml"
        config.parent.mkdir(parents=True, exist_ok=True)
        short_dir(self.node_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        config.write_text(containerd_config(self.node_dir, self.spec))
        self.containerd = ManagedProcess(
            "containerd", ["containerd", "--config", str(config)], self.logs_dir / "containerd.log"
        ).start()
        wait_until(
            "containerd to answer",
            lambda: self.ctr("version", check=False, timeout=5).returncode == 0,
            timeout,
            process=self.containerd,
        )

    def _start_kubelet(self, kubelet: Path, timeout: float) -> None:
        root = kubelet_root(self.node_dir)
        root.mkdir(parents=True, exist_ok=True)
        (self.node_dir / "pod-logs").mkdir(exist_ok=True)
        address = host_ip()
        config = kubelet_config(
            self.node_dir, self.spec, address=address, port=free_port(), healthz_port=free_port()
        )
        (root / "config.yaml").write_text(yaml.safe_dump(config))
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "local",
                    "cluster": {"server": self.server_url, "certificate-authority": str(self.ca_file)},
                }
            ],
            "users": [{"name": "node", "user": {"token": self.node_token}}],
            "contexts": [{"name": "node", "context": {"cluster": "local", "user": "node"}}],
            "current-context": "node",
        }
        (root / "kubeconfig").write_text(yaml.safe_dump(kubeconfig))
        (root / "kubeconfig").chmod(0o600)
        labels = ",".join(f"{k}={v}" for k, v in self.spec.labels.items())
        self.kubelet = ManagedProcess(
            "kubelet",
            [
                str(kubelet),
                f"--config={root / 'config.yaml'}",
                f"--kubeconfig={root / 'kubeconfig'}",
                f"--root-dir={root}",
                # Its default is /var/lib/kubelet/pki whatever the root dir.
                f"--cert-dir={root / 'pki'}",
                f"--hostname-override={self.spec.name}",
                f"--node-ip={address}",
                f"--node-labels={labels}",
                "--v=1",
            ],
            self.logs_dir / "kubelet.log",
        ).start()
        wait_until(
            f"node {self.spec.name} to be Ready", self._ready, timeout, process=self.kubelet, interval=0.5
        )

    def _kubectl(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.kubectl_path), f"--kubeconfig={self.admin_kubeconfig}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def _ready(self) -> bool:
        result = self._kubectl("get", "node", self.spec.name, "-o", "json")
        if result.returncode != 0:
            return False
        conditions = json.loads(result.stdout)["status"].get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def _drain(self, timeout: float) -> None:
        """Delete the node's pods while the kubelet runs, so it stops their sandboxes through CNI."""
        selector = f"spec.nodeName={self.spec.name}"
        # Cordoned first: a Deployment's replacement for a deleted pod would otherwise be scheduled
        # right back here, and the drain would wait out its timeout.
        self._kubectl("cordon", self.spec.name)
        self._kubectl("delete", "pods", "--all-namespaces", f"--field-selector={selector}", "--wait=false",
                      "--grace-period=1")  # fmt: skip

        def sandboxes_gone() -> bool:
            # The kubelet lets the API object go only once it has killed the containers and
            # stopped the sandbox (CNI DEL: veth, IP, network namespace).
            pods = self._kubectl(
                "get", "pods", "--all-namespaces", f"--field-selector={selector}", "-o", "name"
            )
            return pods.returncode == 0 and not pods.stdout.strip()

        with contextlib.suppress(StartError):  # the sweep after the stop takes what is left
            wait_until("the real node's pods to stop", sandboxes_gone, timeout, interval=0.5)
            # A finished pod's API object goes at once, its sandbox only when the kubelet gets to it.
            wait_until(
                "the real node's sandboxes to stop",
                lambda: not self.ctr("tasks", "list", "--quiet", check=False).stdout.split(),
                10,
                interval=0.5,
            )

    def _kill_tasks(self) -> None:
        for task in self.ctr("tasks", "list", "--quiet", check=False).stdout.split():
            self.ctr("tasks", "kill", "--signal", "SIGKILL", task, check=False)
        time.sleep(0.5)
        for task in self.ctr("tasks", "list", "--quiet", check=False).stdout.split():
            self.ctr("tasks", "delete", "--force", task, check=False)


def _recover_abandoned_node(record_text: str) -> None:
    """The lock was free, but the last holder may have died without stopping its node (a killed
    test run): when its processes are gone, restore the host from its snapshot; when they still
    run (a node started by a process that has exited since), refuse rather than kill them."""
    try:
        record = json.loads(record_text)
        node_dir = Path(record["node_dir"])
    except (ValueError, KeyError, TypeError):
        return
    running = [pid for pid in record.get("pids", []) if _runs_from(pid, node_dir)]
    if running:
        raise StartError(
            f"a real node from {node_dir} still runs (pids {running}) though the process that started it "
            f"has exited; stop it first: LocalCluster({node_dir.parent}).down() or guardedmodel cluster down"
        )
    if (node_dir / "host-snapshot.json").exists():
        sweep(node_dir, RealNodeSpec(bridge=record.get("bridge", RealNodeSpec().bridge)))


def _runs_from(pid: int, node_dir: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return str(node_dir) in cmdline or str(short_dir(node_dir)) in cmdline


def _run(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise StartError(f"{' '.join(argv)} failed: {result.stderr.strip()}")


def sweep(node_dir: Path, spec: RealNodeSpec) -> list[str]:
    """Restore the host from the node's snapshot (also for a node whose processes are gone)."""
    snapshot_path = node_dir / "host-snapshot.json"
    if not snapshot_path.exists():
        return []
    snapshot = HostSnapshot.load(snapshot_path)
    roots = (node_dir, short_dir(node_dir))
    left = restore(snapshot, roots=roots, bridge=spec.bridge, shim_needle=str(containerd_socket(node_dir)))
    if not any(line.startswith("mount ") for line in left):
        subprocess.run(["rm", "-rf", "--one-file-system", str(short_dir(node_dir))], capture_output=True)
        with contextlib.suppress(OSError):
            short_dir(node_dir).parent.rmdir()  # only when no other node uses it
    if not left:
        snapshot_path.unlink()
    return left


def node_leftovers(node_dir: Path, spec: RealNodeSpec, snapshot: HostSnapshot) -> list[str]:
    """What a stopped node left on the host compared with `snapshot` (empty when clean)."""
    left = leftovers(snapshot, roots=(node_dir, short_dir(node_dir)), bridge=spec.bridge)
    return left + ([f"directory {short_dir(node_dir)}"] if short_dir(node_dir).exists() else [])
