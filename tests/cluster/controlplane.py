"""etcd, kube-apiserver, kube-controller-manager and kube-scheduler as local processes."""

from __future__ import annotations

import base64
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .binaries import Binaries, find_binaries
from .pki import Pki, make_pki
from .procs import ManagedProcess
from .rest import ApiError, Kube
from .waiting import wait_for


@dataclass(frozen=True)
class Timings:
    """Grace periods of the node-lifecycle machinery.

    Short by default so that a test of node loss takes seconds, not minutes; the node agents
    heartbeat every second, so a healthy node stays far inside these margins.
    """

    node_monitor_period_s: int = 1
    """How often the node-lifecycle controller looks at Leases and conditions (upstream: 5s)."""
    node_monitor_grace_period_s: int = 10
    """How long a node may go without a heartbeat before it is NotReady/Unknown (upstream: 40s)."""
    not_ready_toleration_s: int = 5
    """The toleration admission adds to every pod for not-ready/unreachable nodes (upstream: 300s)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def kubeconfig_text(server: str, ca_crt: Path, token: str, name: str = "hpo-local") -> str:
    ca = base64.b64encode(ca_crt.read_bytes()).decode()
    return (
        "apiVersion: v1\n"
        "kind: Config\n"
        "clusters:\n"
        f"- name: {name}\n"
        f"  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n"
        "users:\n"
        f"- name: {name}-admin\n"
        f"  user:\n    token: {token}\n"
        "contexts:\n"
        f"- name: {name}\n"
        f"  context:\n    cluster: {name}\n    user: {name}-admin\n    namespace: default\n"
        f"current-context: {name}\n"
    )


class ControlPlaneError(RuntimeError):
    pass


@dataclass
class ControlPlane:
    """The control plane of one cluster; all its state lives under ``root``."""

    root: Path
    timings: Timings = field(default_factory=Timings)
    binaries: Binaries | None = None
    processes: list[ManagedProcess] = field(default_factory=list)
    admin_token: str = ""
    apiserver_port: int = 0
    pki: Pki | None = None
    node_ip: str | None = None
    """Where a real node (kubelet, kube-proxy, containers) reaches the apiserver: set, the apiserver
    listens on every address, advertises this one (the ``kubernetes`` Service's endpoint), and
    authorises kubelets with the Node authorizer; None, it listens on loopback only."""
    node_tokens: dict[str, str] = field(default_factory=dict)
    """Node name -> the bearer token of its kubelet (user ``system:node:NAME``, group system:nodes)."""

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "admin.kubeconfig"

    @property
    def ca_crt(self) -> Path:
        assert self.pki is not None
        return self.pki.ca_crt

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    def admin(self) -> Kube:
        return Kube(self.server, self.admin_token, str(self.ca_crt))

    def start(self, timeout: float = 60.0, on_apiserver_ready: Callable[[], None] | None = None) -> None:
        """Start everything and wait until it serves.

        ``on_apiserver_ready`` runs as soon as the apiserver answers, while the controllers start, so
        that node agents can boot in parallel with them.
        """
        bins = self.binaries or find_binaries()
        self.root.mkdir(parents=True, exist_ok=True)
        extra_sans = (f"IP:{self.node_ip}",) if self.node_ip else ()
        self.pki = pki = make_pki(self.root / "pki", extra_sans)
        self.admin_token = secrets.token_hex(24)
        tokens = [f"{self.admin_token},admin,admin,system:masters"]
        tokens += [f'{t},system:node:{n},node-{n},"system:nodes"' for n, t in self.node_tokens.items()]
        (self.root / "tokens.csv").write_text("\n".join(tokens) + "\n")
        etcd_client, etcd_peer = free_port(), free_port()
        self.apiserver_port = free_port()
        self.kubeconfig.write_text(kubeconfig_text(self.server, pki.ca_crt, self.admin_token))
        self.kubeconfig.chmod(0o600)
        logs = self.log_dir
        etcd_url = f"http://127.0.0.1:{etcd_client}"
        self._spawn(
            "etcd",
            [
                str(bins.etcd),
                "--name=hpo-local",
                f"--data-dir={self.root / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-cluster=hpo-local=http://127.0.0.1:{etcd_peer}",
                "--log-level=warn",
                "--logger=zap",
            ],
            logs / "etcd.log",
        )
        t = self.timings
        self._spawn(
            "kube-apiserver",
            [
                str(bins.kube_apiserver),
                f"--etcd-servers={etcd_url}",
                *self._listen_flags(),
                f"--secure-port={self.apiserver_port}",
                "--insecure-port=0",
                f"--cert-dir={self.root / 'apiserver-certs'}",
                f"--tls-cert-file={pki.server_crt}",
                f"--tls-private-key-file={pki.server_key}",
                f"--token-auth-file={self.root / 'tokens.csv'}",
                f"--service-account-key-file={pki.sa_pub}",
                f"--service-account-signing-key-file={pki.sa_key}",
                "--service-account-issuer=https://kubernetes.default.svc",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--allow-privileged=true",
                f"--default-not-ready-toleration-seconds={t.not_ready_toleration_s}",
                f"--default-unreachable-toleration-seconds={t.not_ready_toleration_s}",
                "--profiling=false",
                "--v=1",
            ],
            logs / "kube-apiserver.log",
        )
        admin = self.admin()

        def apiserver_ready() -> bool:
            self._check_alive()
            try:
                return bool(admin.request("GET", "/readyz") == "ok")
            except (ApiError, OSError):
                return False

        wait_for(apiserver_ready, timeout, 0.1, "kube-apiserver /readyz")
        if on_apiserver_ready is not None:
            on_apiserver_ready()
        self._spawn(
            "kube-controller-manager",
            [
                str(bins.kube_controller_manager),
                f"--kubeconfig={self.kubeconfig}",
                f"--service-account-private-key-file={pki.sa_key}",
                f"--root-ca-file={pki.ca_crt}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                "--port=0",
                f"--node-monitor-period={t.node_monitor_period_s}s",
                f"--node-monitor-grace-period={t.node_monitor_grace_period_s}s",
                "--pod-eviction-timeout=5s",
                # Claims bound by the node agents' provisioner are picked up within a couple of seconds.
                "--pvclaimbinder-sync-period=2s",
                "--v=1",
            ],
            logs / "kube-controller-manager.log",
        )
        self._spawn(
            "kube-scheduler",
            [
                str(bins.kube_scheduler),
                f"--kubeconfig={self.kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                "--port=0",
                "--v=1",
            ],
            logs / "kube-scheduler.log",
        )

        def controllers_ready() -> bool:
            # The token controller has run once the default ServiceAccount has its token Secret.
            self._check_alive()
            sa = admin.get_or_none("/api/v1/namespaces/default/serviceaccounts/default")
            return bool(sa and sa.get("secrets"))

        wait_for(
            controllers_ready,
            timeout,
            0.1,
            "the default ServiceAccount (controller-manager)",
            ignore=(ApiError, OSError),
        )
        admin.close()

    def _listen_flags(self) -> list[str]:
        if self.node_ip is None:
            return ["--bind-address=127.0.0.1", "--authorization-mode=RBAC"]
        return [
            "--bind-address=0.0.0.0",
            f"--advertise-address={self.node_ip}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            # Else `kubectl logs` and port-forward look the node's name up in DNS.
            "--kubelet-preferred-address-types=InternalIP,Hostname",
        ]

    def _spawn(self, name: str, argv: list[str], log: Path) -> ManagedProcess:
        proc = ManagedProcess(name, argv, log)
        self.processes.append(proc)
        return proc

    def _check_alive(self) -> None:
        for proc in self.processes:
            if not proc.running():
                raise ControlPlaneError(
                    f"{proc.name} exited with {proc.popen.returncode}; log {proc.log_path}:\n{proc.tail()}"
                )

    def stop(self) -> None:
        """Stop every process by its own pid, the most dependent first."""
        while self.processes:
            proc = self.processes.pop()
            proc.stop(timeout=5.0)

    def restart_apiserver(self, down_seconds: float = 0.0, timeout: float = 60.0) -> None:
        """Stop kube-apiserver (SIGTERM, then SIGKILL), keep it down ``down_seconds``, start it again
        with the same flags and port, and wait until it answers /readyz. etcd and the rest keep running."""
        old = next(p for p in self.processes if p.name == "kube-apiserver")
        old.stop(timeout=5.0)
        if down_seconds > 0:
            time.sleep(down_seconds)
        new = ManagedProcess(old.name, old.argv, old.log_path)
        self.processes[self.processes.index(old)] = new
        admin = self.admin()

        def ready() -> bool:
            self._check_alive()
            try:
                return bool(admin.request("GET", "/readyz") == "ok")
            except (ApiError, OSError):
                return False

        try:
            wait_for(ready, timeout, 0.1, "kube-apiserver /readyz after its restart")
        finally:
            admin.close()

    def pids(self) -> dict[str, int]:
        return {p.name: p.pid for p in self.processes}
