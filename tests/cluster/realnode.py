"""A real node: the kubelet 1.20.2 with its dockershim, and kube-proxy in iptables mode, on dockerd.

Pods run as real containers (Docker's default bridge, 172.17.0.0/16, no CNI plugin) and reach the
apiserver through the ``kubernetes`` Service's ClusterIP, which kube-proxy maps to the address the
apiserver advertises. The node has no GPUs; its status advertises ``nvidia.com/gpu`` (a JSON patch
that the kubelet keeps across its status updates), which is all the scheduler and admission look at.

What a kubelet and kube-proxy change on the host is undone by :meth:`RealNode.stop`, in this order,
even after a failed test: the processes by pid, the ``k8s_*`` containers, kube-proxy's rules
(``kube-proxy --cleanup``) and the kubelet's ``KUBE-*`` iptables chains, the mounts under its root
folder, the ``kubepods`` cgroups, and the sysctls both set.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .binaries import node_bin_dir
from .controlplane import kubeconfig_text
from .images import docker, docker_cli
from .kubelet import GPU
from .procs import ManagedProcess
from .rest import JSON_PATCH, Kube

# What the kubelet and kube-proxy set (they log that they do); put back as found.
SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
    "net/ipv4/ip_forward",
)
DOCKER_BRIDGE_CIDR = "172.17.0.0/16"
CGROUP_ROOT = Path("/sys/fs/cgroup")


def host_ip() -> str:
    """This machine's IPv4 address on the interface of its default route, else its first global one
    that is not a container bridge's."""
    routes = subprocess.run(["ip", "-4", "-o", "route", "show", "default"], capture_output=True, text=True)
    words = routes.stdout.split()
    device = words[words.index("dev") + 1] if "dev" in words else None
    listing = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True
    )
    candidates = []
    for line in listing.stdout.splitlines():
        fields = line.split()  # "2: eth0    inet 192.0.2.2/24 brd ... scope global eth0"
        if len(fields) > 3 and fields[2] == "inet":
            candidates.append((fields[1], fields[3].split("/")[0]))
    for dev, ip in candidates:
        if dev == device:
            return ip
    for dev, ip in candidates:
        if not dev.startswith(("docker", "br-", "veth")):
            return ip
    raise RuntimeError("no non-loopback IPv4 address for the real node (`ip -4 addr` shows none)")


def _read_sysctls() -> dict[str, str]:
    found = {}
    for name in SYSCTLS:
        with contextlib.suppress(OSError):
            found[name] = (Path("/proc/sys") / name).read_text().strip()
    return found


def _restore_sysctls(saved: dict[str, str]) -> None:
    for name, value in saved.items():
        with contextlib.suppress(OSError):
            path = Path("/proc/sys") / name
            if path.read_text().strip() != value:
                path.write_text(value + "\n")


def _iptables(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["iptables", "-w", "5", *args], capture_output=True, text=True, timeout=30)


def remove_kube_chains() -> None:
    """Every ``KUBE-*`` chain, and the rules of other chains that jump to one, in every table."""
    for table in ("filter", "nat", "mangle"):
        listing = _iptables("-t", table, "-S")
        if listing.returncode != 0:
            continue
        chains = [line.split()[1] for line in listing.stdout.splitlines() if line.startswith("-N KUBE-")]
        for line in listing.stdout.splitlines():
            parts = line.split()
            jumps_to_kube = "-j" in parts and parts[parts.index("-j") + 1].startswith("KUBE-")
            if parts[:1] == ["-A"] and not parts[1].startswith("KUBE-") and jumps_to_kube:
                _iptables("-t", table, "-D", *parts[1:])
        for chain in chains:
            _iptables("-t", table, "-F", chain)
        for chain in chains:
            _iptables("-t", table, "-X", chain)


def _unmount_under(folder: Path) -> None:
    prefix = str(folder.resolve())
    with open("/proc/mounts") as f:
        points = [line.split()[1].encode().decode("unicode_escape") for line in f]
    for point in sorted(
        (p for p in points if p == prefix or p.startswith(prefix + "/")), key=len, reverse=True
    ):
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=30)


def _remove_cgroups(name: str = "kubepods") -> None:
    for controller in CGROUP_ROOT.iterdir() if CGROUP_ROOT.is_dir() else []:
        top = controller / name
        if not top.is_dir():
            continue
        for folder in sorted(
            (p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
        ):
            with contextlib.suppress(OSError):
                folder.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


@dataclass
class RealNode:
    """One real node; ``server`` is the apiserver at the address the node reaches it on."""

    name: str
    root: Path
    ip: str
    server: str
    ca_file: Path
    node_token: str
    proxy_token: str
    pause_image: str
    gpus: int
    log_dir: Path
    processes: list[ManagedProcess] = field(default_factory=list)
    saved_sysctls: dict[str, str] = field(default_factory=dict)

    @property
    def kubelet_dir(self) -> Path:
        return self.root / "kubelet"

    def start(self) -> None:
        bins = node_bin_dir()
        self.root.mkdir(parents=True, exist_ok=True)
        self.saved_sysctls = self.saved_sysctls or _read_sysctls()
        kubelet_kc = self.root / "kubelet.kubeconfig"
        kubelet_kc.write_text(kubeconfig_text(self.server, self.ca_file, self.node_token, name=self.name))
        proxy_kc = self.root / "kube-proxy.kubeconfig"
        proxy_kc.write_text(
            kubeconfig_text(self.server, self.ca_file, self.proxy_token, name=f"{self.name}-proxy")
        )
        for kc in (kubelet_kc, proxy_kc):
            kc.chmod(0o600)
        self.processes.append(
            ManagedProcess(
                "kubelet",
                [
                    str(bins / "kubelet"),
                    f"--kubeconfig={kubelet_kc}",
                    f"--hostname-override={self.name}",
                    f"--node-ip={self.ip}",
                    f"--address={self.ip}",
                    "--container-runtime=docker",
                    "--cgroup-driver=cgroupfs",
                    "--fail-swap-on=false",
                    f"--pod-infra-container-image={self.pause_image}",
                    f"--root-dir={self.kubelet_dir}",
                    f"--cert-dir={self.root / 'pki'}",
                    f"--volume-plugin-dir={self.root / 'volume-plugins'}",
                    "--read-only-port=0",
                    # Images are built here, not pulled: never collect them.
                    "--image-gc-high-threshold=100",
                    "--image-gc-low-threshold=99",
                    "--eviction-hard=memory.available<100Mi,nodefs.available<1%,imagefs.available<1%",
                    "--oom-score-adj=0",
                    f"--node-labels=hpo.dev/test-node={self.name}",
                    "--v=1",
                ],
                self.log_dir / f"kubelet-{self.name}.log",
            )
        )
        self.processes.append(
            ManagedProcess(
                "kube-proxy",
                [
                    str(bins / "kube-proxy"),
                    f"--kubeconfig={proxy_kc}",
                    f"--hostname-override={self.name}",
                    "--proxy-mode=iptables",
                    f"--cluster-cidr={DOCKER_BRIDGE_CIDR}",
                    "--conntrack-max-per-core=0",
                    "--conntrack-tcp-timeout-established=0",
                    "--conntrack-tcp-timeout-close-wait=0",
                    "--oom-score-adj=0",
                    "--v=1",
                ],
                self.log_dir / f"kube-proxy-{self.name}.log",
            )
        )

    def check_alive(self) -> None:
        for proc in self.processes:
            if not proc.running():
                raise RuntimeError(f"{proc.name} of {self.name} exited; log {proc.log_path}:\n{proc.tail()}")

    def advertise_gpus(self, admin: Kube) -> None:
        """Add ``nvidia.com/gpu`` to the node's capacity; the kubelet copies it into allocatable."""
        admin.patch(
            f"/api/v1/nodes/{self.name}/status",
            [{"op": "add", "path": f"/status/capacity/{GPU.replace('/', '~1')}", "value": str(self.gpus)}],
            content_type=JSON_PATCH,
        )

    def containers(self) -> list[str]:
        """The ids of the containers the kubelet made (dockershim names them ``k8s_...``)."""
        out = docker("ps", "-aq", "--filter", "name=^k8s_", check=False)
        return out.split()

    def stop(self) -> None:
        while self.processes:
            self.processes.pop().stop(timeout=10.0)
        ids = self.containers()
        if ids:
            docker("rm", "-f", *ids, timeout=120, check=False)
        with contextlib.suppress(Exception):
            subprocess.run(
                [str(node_bin_dir() / "kube-proxy"), "--cleanup"], capture_output=True, timeout=60
            )  # exits 1 without ipset, having removed its rules
        remove_kube_chains()
        _unmount_under(self.root)
        _remove_cgroups()
        _restore_sysctls(self.saved_sysctls)


def pod_container_id(pod: dict[str, object], container: str) -> str | None:
    """The Docker id of a pod's container (``docker://<id>`` in its status), or None."""
    status = pod.get("status")
    statuses = status.get("containerStatuses") if isinstance(status, dict) else None
    for s in statuses or []:
        if s.get("name") == container and s.get("containerID"):
            return str(s["containerID"]).removeprefix("docker://")
    return None


def environment_problem() -> str | None:
    """Why a real node cannot start on this machine, or None."""
    if os.geteuid() != 0:
        return "a real node needs root (dockerd, iptables, mounts)"
    for tool in ("iptables", "conntrack"):
        if subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode != 0:
            return f"{tool} not found: scripts/install-cluster-tools installs it"
    return None


class DockerEvents:
    """``docker events`` of containers while in use: what the runtime itself saw, such as the
    signals the kubelet sent a container (``kill``, with ``signal``) and its exit status (``die``,
    with ``exitCode``), which the pod's status may not keep once the pod is deleted."""

    def __init__(self) -> None:
        self.events: list[dict[str, object]] = []
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> DockerEvents:
        self._proc = subprocess.Popen(
            [docker_cli(), "events", "--format", "{{json .}}", "--filter", "type=container"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            with contextlib.suppress(json.JSONDecodeError):
                self.events.append(json.loads(line))

    def __exit__(self, *_: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(10)
        if self._thread is not None:
            self._thread.join(5)

    def actions(self, pod: str, container: str) -> list[str]:
        """What happened to that container, for messages: ``kill 15``, ``die 143``, ..."""
        return [
            " ".join(filter(None, (action, a.get("signal"), a.get("exitCode"))))
            for action, a in self.of_pod(pod, container)
        ]

    def of_pod(self, pod: str, container: str) -> list[tuple[str, dict[str, str]]]:
        """(action, attributes) of that container of the pod, in order."""
        out = []
        for e in list(self.events):
            actor = e.get("Actor")
            attrs = actor.get("Attributes") if isinstance(actor, dict) else None
            if (
                isinstance(attrs, dict)
                and attrs.get("io.kubernetes.pod.name") == pod
                and attrs.get("io.kubernetes.container.name") == container
            ):
                out.append((str(e.get("Action")), {**attrs, "time": str(e.get("timeNano", ""))}))
        return out
