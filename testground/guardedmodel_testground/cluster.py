"""A real Kubernetes control plane on loopback: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and kwok.

Everything except the kubelet is the real thing: manifests are validated and
admitted by the real API server (OpenAPI, CEL, RBAC, admission plugins),
Deployments and ReplicaSets are rolled by the real controllers, pods are
bound by the real scheduler against the nodes' `nvidia.com/gpu` capacity.
kwok plays the kubelets: it marks its fake nodes Ready and the pods bound to
them Running, without running a container.

Authentication uses a static admin token in `system:masters`, which is the
simplest credential the API server accepts and is fine on loopback.

Every request made with a service account's token (the chart's operator, a model's sidecar)
lands in an audit log with its response code: the least-privilege tests count the refusals
there, where nothing can swallow them. The admin's and the controllers' requests are not
logged (they are most of the traffic and never refused). OwnerReferencesPermissionEnforcement
is on, as in clusters that enforce it: an owner reference with blockOwnerDeletion needs the
right to update the owner's finalizers.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from .cluster_access import write_credentials, write_kubeconfig
from .k8s_binaries import K8sBinaries, ensure_k8s_binaries
from .kwok_nodes import DEFAULT_NODES, KWOK_ANNOTATION, FakeNode, node_manifest
from .procs import ManagedProcess, StartError, free_port, http_ok, terminate_groups, wait_until
from .real_node import (
    RealNode,
    RealNodeSpec,
    apiserver_flags,
    node_token_line,
    sweep,
    write_kubelet_client_pki,
)

# Every write, once each: who, what, when and the answer's code, and for GuardedModels what was sent
# (status patches are small): a test counts a component's writes by its user agent (e.g. no write
# storm after an operator restart) and can say what each one changed. And every request a service
# account makes, reads included, with its response code: a least-privilege test finds each refusal.
WRITE_VERBS = ["create", "update", "patch", "delete", "deletecollection"]
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived", "ResponseStarted"],
    "rules": [
        {"level": "Request", "verbs": WRITE_VERBS, "resources": [{"group": "guardedmodel.io"}]},
        {"level": "Metadata", "verbs": WRITE_VERBS},
        {"level": "Metadata", "userGroups": ["system:serviceaccounts"]},
        {"level": "None"},
    ],
}


class LocalCluster:
    """Start/stop a control plane whose state lives in `state_dir`.

    `up()` writes `state.json` (ports, pids) so another process can find the
    cluster (`guardedmodel cluster env`) or stop it (`guardedmodel cluster down`).
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        nodes: Sequence[FakeNode] = DEFAULT_NODES,
        real_node: RealNodeSpec | None = None,
    ) -> None:
        """`real_node` (opt-in, root only) adds a real kubelet on containerd beside the kwok nodes."""
        self.state_dir = Path(state_dir).resolve()
        self.nodes = tuple(nodes)
        self.real_node_spec = real_node
        self.real_node: RealNode | None = None
        self.processes: list[ManagedProcess] = []
        self.binaries: K8sBinaries | None = None
        self.apiserver_port = 0
        self._token = ""
        self._started_in_s = 0.0

    # -- paths -------------------------------------------------------------
    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def audit_log(self) -> Path:
        """Every write, and every service-account request, one JSON line each (`api_audit` reads it)."""
        return self.logs_dir / "audit.log"

    def audit_events(self, username: str) -> list[dict]:
        """The audit events of `username` (e.g. system:serviceaccount:NS:NAME), oldest first."""
        if not self.audit_log.exists():
            return []
        events = (json.loads(line) for line in self.audit_log.read_text().splitlines() if line.strip())
        return [e for e in events if e.get("user", {}).get("username") == username]

    @property
    def server_url(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def env(self) -> dict[str, str]:
        """Environment for subprocesses (kubectl, the operator) that talk to this cluster."""
        assert self.binaries is not None
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{self.binaries.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    # -- clients -----------------------------------------------------------
    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        assert self.binaries is not None
        return self._client(self.binaries.kubectl, args, input=input, check=check, timeout=timeout)

    def kubectl_json(self, *args: str) -> dict:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def helm(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        assert self.binaries is not None
        # helm keeps caches and repositories in the cluster's state, not in the user's home.
        helm_home = self.state_dir / "helm"
        env = {
            **self.env,
            "HELM_CACHE_HOME": str(helm_home / "cache"),
            "HELM_CONFIG_HOME": str(helm_home / "config"),
            "HELM_DATA_HOME": str(helm_home / "data"),
        }
        return self._client(self.binaries.helm, args, env=env, check=check, timeout=timeout)

    def _client(
        self,
        program: Path,
        args: Sequence[str],
        *,
        check: bool,
        timeout: float,
        input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a client binary against this cluster; a failure carries its stderr."""
        result = subprocess.run(
            [str(program), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise subprocess.CalledProcessError(result.returncode, result.args, result.stdout, result.stderr)
        return result

    # -- lifecycle ---------------------------------------------------------
    def up(self, timeout: float = 120) -> LocalCluster:
        started = time.monotonic()
        self.binaries = ensure_k8s_binaries()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(exist_ok=True)
        try:
            self._token = write_credentials(self.state_dir / "pki")
            node_token = self._write_node_credentials()
            etcd_url = self._start_etcd(timeout)
            self._start_apiserver(etcd_url, timeout)
            self._start_controllers()
            self._start_kwok()
            self._create_nodes(timeout)
            if node_token is not None:
                self._start_real_node(node_token, timeout)
        except BaseException:
            self.down()
            raise
        self._started_in_s = time.monotonic() - started
        self._write_state()
        return self

    # -- outages -----------------------------------------------------------
    def stop_control_plane(self, *, kill: bool = False) -> None:
        """Take the API server and etcd down, leaving everything else running: every client
        (controllers, kwok, the operator, sidecars) loses the API until `start_control_plane`.
        `kill` sends SIGKILL (a crash: no graceful close of watches) instead of SIGTERM."""
        for name in ("kube-apiserver", "etcd"):  # the API server first: it must not outlive its store
            process = self._process(name)
            if kill:
                process.kill()
            else:
                process.stop()

    def start_control_plane(self, timeout: float = 60) -> None:
        """Start etcd and the API server again in place: same ports, data directory, certificates
        and tokens, so every client's kubeconfig and resourceVersions stay valid. Returns once the
        API server is ready."""
        etcd, apiserver = self._process("etcd"), self._process("kube-apiserver")
        if etcd.alive() or apiserver.alive():
            raise StartError("the control plane is running: stop it first (stop_control_plane)")
        self._wait_etcd(etcd.start(), timeout)
        self._wait_apiserver(apiserver.start(), timeout)
        self._write_state()

    def _process(self, name: str) -> ManagedProcess:
        found = next((p for p in self.processes if p.name == name), None)
        if found is None:
            raise StartError(f"{name} is not run by this LocalCluster (was up() called here?)")
        return found

    def down(self) -> None:
        state = self.state_dir / "state.json"
        # The real node first, while the API server can still tell its kubelet to stop the pods.
        if self.real_node is not None:
            self.real_node.stop()
            self.real_node = None
        recorded = json.loads(state.read_text()) if state.exists() else {}
        pids = [p.pid for p in self.processes if p.popen is not None]
        if state.exists():
            # Also a cluster started by another process (the CLI): stop it by pid.
            pids += recorded.get("pids", [])
        # The data is thrown away, so there is nothing to wait for beyond a short grace period.
        terminate_groups(sorted(set(pids)), timeout=5)
        for process in self.processes:
            process.stop(timeout=1)
        if recorded.get("real_node_dir"):
            # A real node started by another process (the CLI): its kubelet and containerd were
            # among the pids; what they left on the host goes now.
            sweep(Path(recorded["real_node_dir"]), self.real_node_spec or RealNodeSpec())
        self.processes.clear()
        state.unlink(missing_ok=True)

    def __enter__(self) -> LocalCluster:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    # -- steps -------------------------------------------------------------
    def _run(self, name: str, argv: Sequence[str]) -> ManagedProcess:
        process = ManagedProcess(name, argv, self.logs_dir / f"{name}.log").start()
        self.processes.append(process)
        return process

    def _start_etcd(self, timeout: float) -> str:
        assert self.binaries is not None
        client_port, peer_port = free_port(), free_port()
        client_url, peer_url = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
        process = self._run(
            "etcd",
            [
                str(self.binaries.path("etcd")),
                "--name=default",
                f"--data-dir={self.state_dir / 'etcd'}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=default={peer_url}",
                # Tests throw the data away; fsync only slows them down.
                "--unsafe-no-fsync",
                "--quota-backend-bytes=4294967296",
                "--log-level=warn",
            ],
        )
        self._wait_etcd(process, timeout)
        return client_url

    @staticmethod
    def _wait_etcd(process: ManagedProcess, timeout: float) -> None:
        client_url = next(a for a in process.argv if a.startswith("--listen-client-urls=")).split("=", 1)[1]
        wait_until("etcd to be healthy", lambda: http_ok(f"{client_url}/health"), timeout, process=process)

    def _start_apiserver(self, etcd_url: str, timeout: float) -> None:
        assert self.binaries is not None
        pki = self.state_dir / "pki"
        self.apiserver_port = free_port()
        audit_policy = self.state_dir / "audit-policy.yaml"
        audit_policy.write_text(yaml.safe_dump(AUDIT_POLICY))
        process = self._run(
            "kube-apiserver",
            [
                str(self.binaries.path("kube-apiserver")),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.apiserver_port}",
                f"--cert-dir={pki}",
                f"--token-auth-file={pki / 'tokens.csv'}",
                "--authorization-mode=Node,RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--enable-admission-plugins=NodeRestriction,OwnerReferencesPermissionEnforcement",
                f"--audit-policy-file={audit_policy}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
                "--audit-log-mode=blocking",
                "--audit-log-maxsize=200",
                "--audit-log-maxbackup=1",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
                *(apiserver_flags(pki) if self.real_node_spec is not None else []),
            ],
        )
        self._wait_apiserver(process, timeout)
        write_kubeconfig(self.kubeconfig, self.server_url, self._token, pki / "apiserver.crt")

    def _wait_apiserver(self, process: ManagedProcess, timeout: float) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        headers = {"Authorization": f"Bearer {self._token}"}
        wait_until(
            "kube-apiserver /readyz",
            lambda: http_ok(f"{self.server_url}/readyz", headers=headers, context=context),
            timeout,
            process=process,
        )

    def _start_controllers(self) -> None:
        assert self.binaries is not None
        pki = self.state_dir / "pki"
        common = [
            f"--kubeconfig={self.kubeconfig}",
            f"--authentication-kubeconfig={self.kubeconfig}",
            f"--authorization-kubeconfig={self.kubeconfig}",
            "--bind-address=127.0.0.1",
            "--leader-elect=false",
        ]
        self._run(
            "kube-controller-manager",
            [
                str(self.binaries.path("kube-controller-manager")),
                *common,
                f"--secure-port={free_port()}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'apiserver.crt'}",
                "--use-service-account-credentials=false",
                "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-route",
                "--concurrent-deployment-syncs=10",
                "--concurrent-replicaset-syncs=10",
                "--kube-api-qps=200",
                "--kube-api-burst=400",
                "--v=1",
            ],
        )
        self._run(
            "kube-scheduler",
            [
                str(self.binaries.path("kube-scheduler")),
                *common,
                f"--secure-port={free_port()}",
                "--v=1",
            ],
        )

    def _start_kwok(self) -> None:
        assert self.binaries is not None
        self._run(
            "kwok",
            [
                str(self.binaries.kwok),
                f"--kubeconfig={self.kubeconfig}",
                f"--config={Path(__file__).with_name('kwok_stages.yaml')}",
                f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake",
                "--cidr=10.244.0.1/16",
                "--node-ip=10.0.0.1",
                f"--server-address=127.0.0.1:{free_port()}",
            ],
        )

    def _create_nodes(self, timeout: float) -> None:
        manifest = "\n---\n".join(yaml.safe_dump(node_manifest(node)) for node in self.nodes)
        self.kubectl("apply", "-f", "-", input=manifest)

        def nodes_ready() -> bool:
            items = self.kubectl_json("get", "nodes")["items"]
            ready = {
                item["metadata"]["name"]
                for item in items
                if any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in item["status"].get("conditions", [])
                )
            }
            return ready >= {node.name for node in self.nodes}

        kwok = next(p for p in self.processes if p.name == "kwok")
        wait_until("kwok nodes to be Ready", nodes_ready, timeout, process=kwok, interval=0.5)
        # The namespace controller and service-account controller must be up
        # before a test creates pods: pods need the "default" service account.
        wait_until(
            "the default service account",
            lambda: self.kubectl("get", "serviceaccount", "default", check=False).returncode == 0,
            timeout,
        )

    def _write_node_credentials(self) -> str | None:
        """With a real node: its kubelet's token (in tokens.csv before the API server reads it)
        and the client certificate the API server shows the kubelet."""
        if self.real_node_spec is None:
            return None
        pki = self.state_dir / "pki"
        write_kubelet_client_pki(pki)
        token, line = node_token_line(self.real_node_spec)
        with open(pki / "tokens.csv", "a") as tokens:
            tokens.write(line)
        return token

    def _start_real_node(self, node_token: str, timeout: float) -> None:
        assert self.binaries is not None and self.real_node_spec is not None
        self.real_node = RealNode(
            self.state_dir / "node",
            server_url=self.server_url,
            ca_file=self.state_dir / "pki" / "apiserver.crt",
            node_token=node_token,
            admin_kubeconfig=self.kubeconfig,
            kubectl=self.binaries.kubectl,
            spec=self.real_node_spec,
        ).start(timeout)

    def _write_state(self) -> None:
        state = {
            "server": self.server_url,
            "kubeconfig": str(self.kubeconfig),
            "bin_dir": str(self.binaries.bin_dir) if self.binaries else None,
            "pids": [p.pid for p in self.processes] + (self.real_node.pids if self.real_node else []),
            "real_node_dir": str(self.real_node.node_dir) if self.real_node else None,
            "started_in_seconds": round(self._started_in_s, 2),
        }
        (self.state_dir / "state.json").write_text(json.dumps(state, indent=2))


def read_state(state_dir: Path) -> dict:
    path = Path(state_dir) / "state.json"
    if not path.exists():
        raise StartError(f"no cluster is running from {state_dir} (start one with `guardedmodel cluster up`)")
    return json.loads(path.read_text())
