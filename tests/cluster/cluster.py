"""A whole local cluster: the control plane plus its nodes.

A node is either a process-kubelet agent (``ClusterSpec.nodes``: containers are local processes, fast
to start, several per machine) or a real node (``ClusterSpec.real_node``: the kubelet with dockershim,
kube-proxy and dockerd, containers from images; one per machine, see realnode.py)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .binaries import REPO_ROOT
from .controlplane import ControlPlane, Timings, kubeconfig_text
from .kubelet import GPU, NOT_READY_TAINT, PROVISIONER, STORAGE_CLASS, AgentConfig
from .procs import ManagedProcess, pid_alive, wait_pid_gone
from .realnode import RealNode, host_ip
from .rest import ApiError, Kube
from .waiting import wait_for

STATE_FILE = "cluster.json"


@dataclass(frozen=True)
class ClusterSpec:
    nodes: int = 2
    gpus_per_node: int = 2
    cpu_per_node: str = "8"
    memory_per_node: str = "32Gi"
    node_prefix: str = "gpu-node"
    timings: Timings = field(default_factory=Timings)
    real_node: bool = False
    """One real node, named ``<node_prefix>-real``, with ``gpus_per_node`` GPUs advertised."""
    pause_image: str = ""
    """The real node's pod-infra image (images.build_images makes one)."""


def venv_bin_dirs() -> list[str]:
    """Where a container's ``python`` and ``hpo`` come from: the project's venv, else this interpreter's."""
    dirs = [REPO_ROOT / ".venv" / "bin", Path(sys.executable).parent]
    out: list[str] = []
    for d in dirs:
        if (d / "python").exists() and str(d) not in out:
            out.append(str(d))
    return out


class LocalCluster:
    """Bring up with :meth:`up`, end with :meth:`down`; every path and credential is an attribute."""

    def __init__(self, spec: ClusterSpec | None = None, root: Path | None = None) -> None:
        self.spec = spec or ClusterSpec()
        self.root = root or Path(tempfile.mkdtemp(prefix="hpo-cluster-"))
        self.control_plane = ControlPlane(self.root, self.spec.timings)
        self.agents: dict[str, ManagedProcess] = {}
        self.real: RealNode | None = None
        self.bring_up_s = 0.0
        if self.spec.real_node:
            self.control_plane.node_ip = host_ip()
            self.control_plane.node_tokens[self.real_node_name] = secrets.token_hex(24)

    # -- facts about the running cluster ---------------------------------------------------------

    @property
    def server(self) -> str:
        return self.control_plane.server

    @property
    def kubeconfig(self) -> Path:
        return self.control_plane.kubeconfig

    @property
    def admin_token(self) -> str:
        return self.control_plane.admin_token

    @property
    def ca_file(self) -> Path:
        return self.control_plane.ca_crt

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    @property
    def real_node_name(self) -> str:
        return f"{self.spec.node_prefix}-real"

    @property
    def node_names(self) -> list[str]:
        names = [f"{self.spec.node_prefix}-{i}" for i in range(self.spec.nodes)]
        return names + ([self.real_node_name] if self.spec.real_node else [])

    def admin(self) -> Kube:
        """The harness's own JSON client with the admin token (system:masters)."""
        return Kube(self.server, self.admin_token, str(self.ca_file))

    def container_log(self, namespace: str, pod: str, container: str) -> Path:
        """The log of the container's current (latest) run; earlier runs lie beside it, by restart number."""
        return self.log_dir / "containers" / f"{namespace}_{pod}_{container}.log"

    def process_logs(self) -> dict[str, Path]:
        logs = {p.name: p.log_path for p in self.control_plane.processes}
        logs.update({f"agent {name}": p.log_path for name, p in self.agents.items()})
        if self.real is not None:
            logs.update({f"{p.name} {self.real.name}": p.log_path for p in self.real.processes})
        return logs

    def service_account_token(
        self, namespace: str, service_account: str = "default", expiration_s: int = 3600
    ) -> str:
        """A token of the ServiceAccount from the TokenRequest API: exactly its RBAC, nothing more."""
        resp = self.admin().create(
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"audiences": ["https://kubernetes.default.svc"], "expirationSeconds": expiration_s},
            },
        )
        token: str = resp["status"]["token"]
        return token

    def service_account_kubeconfig(
        self, namespace: str, service_account: str = "default", path: Path | None = None
    ) -> Path:
        """A kubeconfig that acts as the ServiceAccount, for a local process (kopf, kubectl, a script)."""
        token = self.service_account_token(namespace, service_account)
        path = path or self.root / "kubeconfigs" / f"{namespace}_{service_account}.kubeconfig"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            kubeconfig_text(self.server, self.ca_file, token, name=f"{namespace}-{service_account}")
        )
        path.chmod(0o600)
        return path

    def env(self) -> dict[str, str]:
        """Environment for a subprocess (kubectl, helm, kopf) that should talk to this cluster as admin."""
        return {"KUBECONFIG": str(self.kubeconfig)}

    # -- life cycle -----------------------------------------------------------------------------

    def up(self, timeout: float = 90.0) -> None:
        started = time.monotonic()
        try:
            self.control_plane.start(timeout, on_apiserver_ready=self._boot_nodes)
            for name in self.node_names:
                self.wait_node_ready(name, timeout)
        except BaseException:
            self.down()
            raise
        self.bring_up_s = time.monotonic() - started
        self._write_state()

    def _boot_nodes(self) -> None:
        if self.spec.nodes:
            # Its provisioner is the process agents'; a real node's volumes are PersistentVolumes.
            self._create_storage_class()
        for name in self.node_names:
            if name == self.real_node_name:
                self._start_real_node()
            else:
                self.start_node(name, wait=False)

    def _start_real_node(self) -> None:
        ip = self.control_plane.node_ip
        assert ip is not None
        self.real = RealNode(
            name=self.real_node_name,
            root=self.root / "nodes" / self.real_node_name,
            ip=ip,
            server=f"https://{ip}:{self.control_plane.apiserver_port}",
            ca_file=self.ca_file,
            node_token=self.control_plane.node_tokens[self.real_node_name],
            proxy_token=self.admin_token,
            pause_image=self.spec.pause_image,
            gpus=self.spec.gpus_per_node,
            log_dir=self.log_dir,
        )
        self.real.start()

    def _create_storage_class(self) -> None:
        sc = {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {
                "name": STORAGE_CLASS,
                "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
            },
            "provisioner": PROVISIONER,
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate",
        }
        try:
            self.admin().create("/apis/storage.k8s.io/v1/storageclasses", sc)
        except ApiError as e:
            if e.status != 409:
                raise

    def _agent_config(self, name: str) -> AgentConfig:
        return AgentConfig(
            node=name,
            server=self.server,
            token=self.admin_token,
            ca_file=str(self.ca_file),
            node_dir=str(self.root / "nodes" / name),
            log_dir=str(self.log_dir),
            pvc_dir=str(self.root / "volumes"),
            path_prefix=venv_bin_dirs(),
            gpus=self.spec.gpus_per_node,
            cpu=self.spec.cpu_per_node,
            memory=self.spec.memory_per_node,
        )

    def start_node(self, name: str, wait: bool = True, timeout: float = 30.0) -> None:
        """Start (or restart) the agent of node ``name``."""
        old = self.agents.get(name)
        if old is not None and old.running():
            return
        cfg_path = self.root / "nodes" / name / "agent.json"
        cfg_path.parent.mkdir(parents=True, exist_ok=True)
        cfg_path.write_text(json.dumps(asdict(self._agent_config(name))))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        self.agents[name] = ManagedProcess(
            f"agent-{name}",
            [sys.executable, "-m", "tests.cluster.node_agent", str(cfg_path)],
            self.log_dir / f"agent-{name}.log",
            env=env,
            cwd=REPO_ROOT,
        )
        if wait:
            self.wait_node_ready(name, timeout)

    def stop_node(self, name: str) -> None:
        """Stop the node's agent: heartbeats end, its processes die, the API is told nothing."""
        agent = self.agents.get(name)
        if agent is not None:
            agent.stop(timeout=10.0)

    def restart_apiserver(self, down_seconds: float = 0.0, timeout: float = 60.0) -> None:
        """Restart kube-apiserver in place (same port, certificates and etcd); returns once it serves."""
        self.control_plane.restart_apiserver(down_seconds, timeout)

    def node_ready(self, name: str) -> bool:
        node = self.admin().get_or_none(f"/api/v1/nodes/{name}")
        if node is None:
            return False
        ready = any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in node.get("status", {}).get("conditions", [])
        )
        tainted = any(
            t["key"] in (NOT_READY_TAINT, "node.kubernetes.io/unreachable")
            for t in node["spec"].get("taints") or []
        )
        has_gpus = node.get("status", {}).get("allocatable", {}).get(GPU) == str(self.spec.gpus_per_node)
        return ready and not tainted and has_gpus

    def wait_node_ready(self, name: str, timeout: float = 30.0) -> None:
        def check() -> bool:
            agent = self.agents.get(name)
            if agent is not None and not agent.running():
                raise RuntimeError(f"agent of {name} exited; log {agent.log_path}:\n{agent.tail()}")
            if self.real is not None and name == self.real.name:
                self.real.check_alive()
                node = self.admin().get_or_none(f"/api/v1/nodes/{name}")
                if node is not None and GPU not in node.get("status", {}).get("capacity", {}):
                    self.real.advertise_gpus(self.admin())
            return self.node_ready(name)

        wait_for(check, timeout, 0.1, f"node {name} Ready and untainted", ignore=(ApiError, OSError))

    def down(self) -> float:
        """Stop every process this cluster started, by pid; returns the seconds it took."""
        started = time.monotonic()
        for agent in self.agents.values():
            agent.stop(timeout=10.0)
        if self.real is not None:
            self.real.stop()
        self._sweep_containers()
        self.control_plane.stop()
        state = self.root / STATE_FILE
        state.unlink(missing_ok=True)
        return time.monotonic() - started

    def _sweep_containers(self) -> None:
        # Agents kill their containers when stopped; this catches any an agent left behind.
        for pid_file in (self.root / "nodes").glob("*/pods/*/*.pid"):
            try:
                pid = int(pid_file.read_text())
            except (OSError, ValueError):
                continue
            if pid_alive(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                wait_pid_gone(pid, 5.0)

    def remove(self) -> None:
        """Delete the state folder (only after :meth:`down`)."""
        shutil.rmtree(self.root, ignore_errors=True)

    def _write_state(self) -> None:
        state: dict[str, Any] = {
            "root": str(self.root),
            "server": self.server,
            "kubeconfig": str(self.kubeconfig),
            "pids": {**self.control_plane.pids(), **{f"agent-{n}": p.pid for n, p in self.agents.items()}},
            "logs": {k: str(v) for k, v in self.process_logs().items()},
            "bring_up_s": round(self.bring_up_s, 2),
        }
        (self.root / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
