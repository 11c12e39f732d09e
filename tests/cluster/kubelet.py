"""The process kubelet: one agent per node that plays that node's kubelet with local processes.

Run as ``python -m tests.cluster.node_agent CONFIG.json``. The agent registers its Node (capacity with
``nvidia.com/gpu``, Ready, the not-ready taint removed), renews its Lease and Ready condition every
heartbeat, and runs every pod bound to the node: each container's command as a local process with the
pod's environment and volumes, its lifecycle reported in the pod's status. Stopping the agent stops
the node: its heartbeats end and its processes are killed, as when a machine goes down.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .rest import MERGE_PATCH, STRATEGIC_PATCH, ApiError, Kube

JSON = dict[str, Any]

SA_MOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
NOT_READY_TAINT = "node.kubernetes.io/not-ready"
GPU = "nvidia.com/gpu"
TERMINAL = ("Succeeded", "Failed")
POD_IP = "127.0.0.1"
TOKEN_LIFETIME_S = 3600
STORAGE_CLASS = "standard"
PROVISIONER = "hpo.dev/process-kubelet"
SANDBOX = Path(__file__).with_name("sandbox.py")


@dataclass(frozen=True)
class AgentConfig:
    node: str
    server: str
    token: str
    ca_file: str
    node_dir: str
    """Per-node state: pod folders (emptyDir, configMap and secret volumes, tokens)."""
    log_dir: str
    """Container logs: ``pods/<ns>_<pod>_<uid>/<container>/<restart>.log`` and a stable link per container."""
    pvc_dir: str
    """Host folders of PersistentVolumeClaims: ``<ns>/<claim>``, shared by all nodes, kept after the pod."""
    path_prefix: list[str]
    """Folders put first on a container's PATH (the project's venv): ``python`` and ``hpo`` resolve there."""
    gpus: int = 2
    cpu: str = "8"
    memory: str = "32Gi"
    pods: int = 110
    heartbeat_s: float = 1.0
    status_every: int = 5
    """Post the Ready condition every this many heartbeats (the Lease is renewed every heartbeat)."""
    backoff_base_s: float = 1.0
    backoff_max_s: float = 20.0
    labels: dict[str, str] = field(default_factory=dict)


def image_folders() -> list[str]:
    """What stands in for a container image: the project (its sources and .venv) and the Python
    installation the venv was made from."""
    project = Path(__file__).resolve().parents[2]
    return sorted({str(project), os.path.realpath(sys.base_prefix)})


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str) -> float:
    return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc).timestamp()


def log(message: str) -> None:
    sys.stderr.write(f"{now_micro()} {message}\n")
    sys.stderr.flush()


class ConfigError(Exception):
    """The pod cannot start yet (a missing ConfigMap, Secret or claim); retried like a kubelet does."""


class GpuPool:
    """Device indices of one node's GPUs, handed to containers as NVIDIA_VISIBLE_DEVICES."""

    def __init__(self, count: int) -> None:
        self._free = list(range(count))
        self._lock = threading.Lock()

    def take(self, n: int) -> list[int] | None:
        with self._lock:
            if n > len(self._free):
                return None
            taken, self._free = self._free[:n], self._free[n:]
            return taken

    def give(self, ids: list[int]) -> None:
        with self._lock:
            self._free = sorted(set(self._free) | set(ids))


def _gpu_request(container: JSON) -> int:
    res = container.get("resources") or {}
    value = (res.get("limits") or {}).get(GPU) or (res.get("requests") or {}).get(GPU) or 0
    return int(value)


_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: known names are replaced, $$ escapes, unknown refs stay."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env.get(name, m.group(0))

    return _VAR_REF.sub(sub, text)


def handles(pid: int, sig: int) -> bool:
    """The process has a handler for ``sig`` (its bit in SigCgt of /proc/PID/status)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            caught = next(line.split()[1] for line in f if line.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return False
    return bool(int(caught, 16) >> (sig - 1) & 1)


class Container:
    """One container of a pod: its current process, its restarts and what to report about it."""

    def __init__(self, spec: JSON, pod_key: str, log_dir: Path, init: bool = False) -> None:
        self.spec = spec
        self.name: str = spec["name"]
        self.init = init
        self.log_dir = log_dir / "pods" / pod_key / self.name
        self.link = log_dir / "containers" / f"{pod_key.rsplit('_', 1)[0]}_{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.restart_count = 0
        self.started_at: str | None = None
        self.started_mono = 0.0
        self.state: JSON = {"waiting": {"reason": "ContainerCreating"}}
        self.last_state: JSON = {}
        self.next_start = 0.0
        self.crashes = 0
        self.exit_code: int | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(
        self, argv: list[str], env: dict[str, str], cwd: str, mounts: list[JSON], pod_dir: Path
    ) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{self.restart_count}.log"
        self.link.parent.mkdir(parents=True, exist_ok=True)
        tmp_link = self.link.with_name(self.link.name + ".tmp")
        tmp_link.unlink(missing_ok=True)
        tmp_link.symlink_to(log_path)
        tmp_link.replace(self.link)
        spec_path = pod_dir / f"{self.name}.exec.json"
        spec_path.write_text(
            json.dumps(
                {
                    "argv": argv,
                    "env": env,
                    "cwd": cwd,
                    "mounts": mounts,
                    "image": image_folders(),
                    "parent": os.getpid(),
                }
            )
        )
        with open(log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", str(SANDBOX), str(spec_path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={},
                # A process group per container, so that signals reach what its command started.
                start_new_session=True,
            )
        (pod_dir / f"{self.name}.pid").write_text(str(self.proc.pid))
        self.started_at = now()
        self.started_mono = time.monotonic()
        self.exit_code = None
        self.state = {"running": {"startedAt": self.started_at}}

    def signal(self, sig: int) -> None:
        """Signal the container as a runtime does: SIGKILL ends everything in it; another signal goes
        to its first process alone, and only where that process handles it, since the kernel drops a
        signal sent to PID 1 of a container that has no handler for it (the command here is not PID 1
        of a namespace, so that rule is applied by hand; tests/e2e/test_real_node.py shows it)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            if sig == signal.SIGKILL:
                os.killpg(self.proc.pid, sig)
            elif handles(self.proc.pid, sig):
                os.kill(self.proc.pid, sig)

    def reap(self) -> bool:
        """If the process has ended, record how; True when it just ended."""
        if self.proc is None or (self.proc.returncode is not None and self.exit_code is not None):
            return False
        code = self.proc.poll()
        if code is None:
            return False
        # The command's children (its process group) do not outlive the container.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        exit_code = code if code >= 0 else 128 - code
        self.exit_code = exit_code
        terminated: JSON = {
            "exitCode": exit_code,
            "reason": "Completed" if exit_code == 0 else "Error",
            "startedAt": self.started_at,
            "finishedAt": now(),
            "containerID": self.container_id,
        }
        if code < 0:
            terminated["signal"] = -code
        self.state = {"terminated": terminated}
        return True

    @property
    def container_id(self) -> str:
        return f"process://{self.proc.pid}" if self.proc is not None else ""

    def status(self) -> JSON:
        running = "running" in self.state
        out: JSON = {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": f"process://{self.spec.get('image', '')}",
            "ready": running,
            "started": running,
            "restartCount": self.restart_count,
            "state": self.state,
        }
        if self.proc is not None:
            out["containerID"] = self.container_id
        if self.last_state:
            out["lastState"] = self.last_state
        return out


class PodWorker(threading.Thread):
    """Runs one pod from its binding to its deletion."""

    def __init__(self, agent: Agent, pod: JSON) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}-{meta['name']}", daemon=True)
        self.agent = agent
        self.cfg = agent.cfg
        self.kube = agent.kube
        self.pod = pod
        self.ns: str = meta["namespace"]
        self.pod_name: str = meta["name"]
        self.uid: str = meta["uid"]
        self.key = f"{self.ns}_{self.pod_name}_{self.uid}"
        self.dir = Path(self.cfg.node_dir) / "pods" / self.uid
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.finished = False
        self.gone = False
        self.stopping = False
        spec = pod["spec"]
        log_dir = Path(self.cfg.log_dir)
        self.init_containers = [
            Container(c, self.key, log_dir, init=True) for c in spec.get("initContainers") or []
        ]
        self.containers = [Container(c, self.key, log_dir) for c in spec["containers"]]
        self.gpus: dict[str, list[int]] = {}
        """GPU indices held by each container, from its first start until the pod ends."""
        self.start_time: str = (pod.get("status") or {}).get("startTime") or now()
        self.phase = "Pending"
        self.reason: str | None = None
        self.message: str | None = None
        self.initialized = not self.init_containers
        self.conditions: dict[str, JSON] = {}
        self.last_report: JSON | None = None
        self.token_expires = 0.0
        self.prepared: tuple[dict[str, Path], dict[str, str]] | None = None

    # -- called from the agent's watch thread ---------------------------------------------------

    def update(self, pod: JSON | None) -> bool:
        """Hand the worker the pod's latest state (None: the pod is gone); False if it has finished."""
        with self.lock:
            if self.finished:
                return False
            if pod is None:
                self.gone = True
            else:
                self.pod = pod
            self.wake.set()
            return True

    def kill_now(self) -> None:
        """The node is going down: end every process at once, tell the apiserver nothing."""
        self.stopping = True
        for c in self.init_containers + self.containers:
            c.signal(signal.SIGKILL)
        self.wake.set()

    # -- the pod's life ------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._run()
        except Exception:
            log(f"pod {self.ns}/{self.pod_name}: {traceback.format_exc()}")
            for c in self.init_containers + self.containers:
                c.signal(signal.SIGKILL)
        finally:
            self._release_gpus()
            with self.lock:
                self.finished = True

    def _deleting(self) -> bool:
        return bool(self.pod["metadata"].get("deletionTimestamp"))

    def _run(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._report()
        while not self.stopping:
            if self.gone:
                self._kill_all(0)
                self._cleanup()
                return
            if self._deleting():
                grace = self.pod["metadata"].get("deletionGracePeriodSeconds")
                if grace is None:
                    grace = self.pod["spec"].get("terminationGracePeriodSeconds", 30)
                self._kill_all(float(grace))
                self._release_gpus()
                self._finish_deletion()
                return
            if self.phase not in TERMINAL:
                self._step()
            self._report()
            self.wake.wait(0.1 if self.phase not in TERMINAL else 5.0)
            self.wake.clear()

    def _step(self) -> None:
        spec = self.pod["spec"]
        deadline = spec.get("activeDeadlineSeconds")
        if deadline is not None and time.time() - parse_time(self.start_time) >= deadline:
            self._kill_all(float(spec.get("terminationGracePeriodSeconds", 30)))
            self._terminal(
                "Failed",
                "DeadlineExceeded",
                f"Pod was active on the node longer than the specified deadline ({deadline}s)",
            )
            return
        if self.prepared is None:
            try:
                self.prepared = self._prepare()
            except ConfigError as e:
                for c in self.init_containers + self.containers:
                    c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(e)}}
                return
        self._refresh_token()
        policy = spec.get("restartPolicy", "Always")
        if not self.initialized:
            for c in self.init_containers:
                if c.exit_code == 0 and not c.running:
                    continue
                self._drive(c, "OnFailure" if policy == "Always" else policy)
                if c.running or c.exit_code != 0:
                    if c.exit_code not in (None, 0) and policy == "Never":
                        self._terminal("Failed", None, f"init container {c.name} failed")
                    return
            self.initialized = True
            # Init containers have finished: their GPUs go back for the app containers.
            for c in self.init_containers:
                self.agent.gpus.give(self.gpus.pop(c.name, []))
        for c in self.containers:
            self._drive(c, policy)
        if any(c.running for c in self.containers):
            self.phase = "Running"
            return
        done = all(c.exit_code is not None and not self._will_restart(c, policy) for c in self.containers)
        if done:
            failed = any(c.exit_code != 0 for c in self.containers)
            self._terminal("Failed" if failed else "Succeeded", None, None)
        elif any(c.started_at for c in self.containers):
            self.phase = "Running"

    def _will_restart(self, c: Container, policy: str) -> bool:
        return policy == "Always" or (policy == "OnFailure" and c.exit_code not in (None, 0))

    def _drive(self, c: Container, policy: str) -> None:
        """Start, reap or restart one container according to the restart policy."""
        if c.running:
            return
        if c.proc is not None and c.reap():
            ran = time.monotonic() - c.started_mono
            # A container that ran for a while starts over with a short back-off.
            c.crashes = 1 if ran > 60 else c.crashes + 1
            if self._will_restart(c, policy):
                delay = min(self.cfg.backoff_max_s, self.cfg.backoff_base_s * 2 ** (c.crashes - 1))
                c.next_start = time.monotonic() + delay
            return
        if c.proc is not None and not self._will_restart(c, policy):
            return
        if c.proc is not None:
            if time.monotonic() < c.next_start:
                if "terminated" in c.state:
                    c.last_state = {"terminated": c.state["terminated"]}
                    c.state = {
                        "waiting": {
                            "reason": "CrashLoopBackOff",
                            "message": f"back-off restarting failed container {c.name}",
                        }
                    }
                return
            if "terminated" in c.state:
                c.last_state = {"terminated": c.state["terminated"]}
            c.restart_count += 1
        self._start(c)

    def _start(self, c: Container) -> None:
        assert self.prepared is not None
        volumes, base_env = self.prepared
        need = _gpu_request(c.spec)
        env = dict(base_env)
        env.update(self._container_env(c.spec, env))
        if need:
            if c.name not in self.gpus:
                got = self.agent.gpus.take(need)
                if got is None:
                    c.state = {
                        "waiting": {"reason": "ContainerCreating", "message": f"waiting for {need} {GPU}"}
                    }
                    return
                self.gpus[c.name] = got
            env["NVIDIA_VISIBLE_DEVICES"] = ",".join(str(i) for i in self.gpus[c.name])
        argv = [expand(a, env) for a in (c.spec.get("command") or []) + (c.spec.get("args") or [])]
        if not argv:
            c.state = {
                "waiting": {
                    "reason": "CreateContainerError",
                    "message": "no command: the process kubelet has no image entrypoint",
                }
            }
            return
        mounts = []
        for vm in c.spec.get("volumeMounts") or []:
            target = vm["mountPath"]
            if target.rstrip("/") == SA_MOUNT_PATH:
                source = self.dir / "serviceaccount"
            elif vm["name"] in volumes:
                source = volumes[vm["name"]]
            else:
                continue
            sub = vm.get("subPath")
            if sub:
                source = source / sub
                if not source.exists():
                    source.mkdir(parents=True, exist_ok=True)
            mounts.append({"source": str(source), "target": target, "readOnly": bool(vm.get("readOnly"))})
        cwd = c.spec.get("workingDir") or str(self.dir / "work" / c.name)
        c.start(argv, env, cwd, mounts, self.dir)
        log(f"pod {self.ns}/{self.pod_name} container {c.name} started pid {c.container_id}")

    def _terminal(self, phase: str, reason: str | None, message: str | None) -> None:
        self.phase = phase
        self.reason = reason
        self.message = message
        # Free the GPUs before the scheduler learns of the end, so a pod it binds next finds them free.
        self._release_gpus()

    def _release_gpus(self) -> None:
        for ids in self.gpus.values():
            self.agent.gpus.give(ids)
        self.gpus = {}

    def _kill_all(self, grace: float) -> None:
        everyone = self.init_containers + self.containers
        for c in everyone:
            c.signal(signal.SIGTERM if grace > 0 else signal.SIGKILL)
        deadline = time.monotonic() + grace
        while any(c.running for c in everyone) and time.monotonic() < deadline and not self.gone:
            time.sleep(0.05)
        for c in everyone:
            c.signal(signal.SIGKILL)
            if c.proc is not None:
                c.proc.wait()
                c.reap()

    def _finish_deletion(self) -> None:
        self._report(force=True)
        try:
            self.kube.delete(
                f"/api/v1/namespaces/{self.ns}/pods/{self.pod_name}",
                {
                    "apiVersion": "v1",
                    "kind": "DeleteOptions",
                    "gracePeriodSeconds": 0,
                    "preconditions": {"uid": self.uid},
                },
            )
        except ApiError as e:
            if e.status != 409:  # 409: a newer pod of the same name; ours is gone already
                raise
        self._cleanup()

    def _cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- volumes, environment, token ------------------------------------------------------------

    def _prepare(self) -> tuple[dict[str, Path], dict[str, str]]:
        volumes: dict[str, Path] = {}
        vol_root = self.dir / "volumes"
        for vol in self.pod["spec"].get("volumes") or []:
            name = vol["name"]
            path = vol_root / name
            if "emptyDir" in vol:
                path.mkdir(parents=True, exist_ok=True)
            elif "configMap" in vol:
                self._materialise(
                    path, vol["configMap"], "configmaps", vol["configMap"].get("name", ""), False
                )
            elif "secret" in vol:
                self._materialise(path, vol["secret"], "secrets", vol["secret"].get("secretName", ""), True)
            elif "persistentVolumeClaim" in vol:
                path = self._claim_path(vol["persistentVolumeClaim"]["claimName"])
            elif "hostPath" in vol:
                path = Path(vol["hostPath"]["path"])
                if vol["hostPath"].get("type") in ("DirectoryOrCreate", None, ""):
                    path.mkdir(parents=True, exist_ok=True)
            elif "downwardAPI" in vol or "projected" in vol:
                continue
            else:
                raise ConfigError(f"volume {name}: type not supported by the process kubelet")
            volumes[name] = path
        self._refresh_token(force=True)
        env = {
            "PATH": ":".join(
                [
                    *self.cfg.path_prefix,
                    "/usr/local/sbin",
                    "/usr/local/bin",
                    "/usr/sbin",
                    "/usr/bin",
                    "/sbin",
                    "/bin",
                ]
            ),
            "HOME": "/root",
            "HOSTNAME": self.pod_name,
            "LANG": "C.UTF-8",
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(self.agent.api_port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(self.agent.api_port),
            "KUBERNETES_PORT": f"tcp://127.0.0.1:{self.agent.api_port}",
        }
        for c in self.init_containers + self.containers:
            self._container_env(c.spec, env)  # fail early on a missing ConfigMap or Secret
        return volumes, env

    def _materialise(self, path: Path, src: JSON, kind: str, name: str, is_secret: bool) -> None:
        obj = self.kube.get_or_none(f"/api/v1/namespaces/{self.ns}/{kind}/{name}")
        if obj is None:
            if src.get("optional"):
                path.mkdir(parents=True, exist_ok=True)
                return
            raise ConfigError(f"{kind[:-1]} {name!r} not found")
        data: dict[str, bytes] = {}
        for k, v in (obj.get("data") or {}).items():
            data[k] = base64.b64decode(v) if is_secret else v.encode()
        for k, v in (obj.get("binaryData") or {}).items():
            data[k] = base64.b64decode(v)
        items = src.get("items")
        files = (
            {i["path"]: (data.get(i["key"]), i.get("mode")) for i in items}
            if items
            else {k: (v, None) for k, v in data.items()}
        )
        staging = path.with_name(path.name + ".new")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for rel, (content, mode) in files.items():
            if content is None:
                raise ConfigError(f"{kind[:-1]} {name!r} has no such key for {rel!r}")
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
            target.chmod(mode if mode is not None else src.get("defaultMode", 0o644))
        shutil.rmtree(path, ignore_errors=True)
        staging.rename(path)

    def _claim_path(self, claim: str) -> Path:
        pvc = self.kube.get_or_none(f"/api/v1/namespaces/{self.ns}/persistentvolumeclaims/{claim}")
        if pvc is None:
            raise ConfigError(f"persistentvolumeclaim {claim!r} not found")
        path = Path(self.cfg.pvc_dir) / self.ns / claim
        volume = (pvc.get("spec") or {}).get("volumeName")
        if volume:
            pv = self.kube.get_or_none(f"/api/v1/persistentvolumes/{volume}")
            host = ((pv or {}).get("spec") or {}).get("hostPath") or {}
            if host.get("path"):
                path = Path(host["path"])
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _refresh_token(self, force: bool = False) -> None:
        if not force and time.time() < self.token_expires - TOKEN_LIFETIME_S * 0.2:
            return
        sa = self.pod["spec"].get("serviceAccountName") or "default"
        try:
            resp = self.kube.create(
                f"/api/v1/namespaces/{self.ns}/serviceaccounts/{sa}/token",
                {
                    "apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenRequest",
                    "spec": {
                        "audiences": ["https://kubernetes.default.svc"],
                        "expirationSeconds": TOKEN_LIFETIME_S,
                        "boundObjectRef": {
                            "apiVersion": "v1",
                            "kind": "Pod",
                            "name": self.pod_name,
                            "uid": self.uid,
                        },
                    },
                },
            )
        except ApiError as e:
            if force:
                raise ConfigError(f"token for serviceaccount {sa!r}: {e}") from e
            return
        folder = self.dir / "serviceaccount"
        folder.mkdir(parents=True, exist_ok=True)
        # Replace files by rename: a process reading the token never sees half of one.
        for name, content in (
            ("token", resp["status"]["token"]),
            ("ca.crt", Path(self.cfg.ca_file).read_text()),
            ("namespace", self.ns),
        ):
            tmp = folder / f".{name}.tmp"
            tmp.write_text(content)
            tmp.replace(folder / name)
        self.token_expires = time.time() + TOKEN_LIFETIME_S

    def _field(self, path: str) -> str:
        meta = self.pod["metadata"]
        simple = {
            "metadata.name": self.pod_name,
            "metadata.namespace": self.ns,
            "metadata.uid": self.uid,
            "spec.nodeName": self.cfg.node,
            "spec.serviceAccountName": self.pod["spec"].get("serviceAccountName", "default"),
            "status.podIP": POD_IP,
            "status.podIPs": POD_IP,
            "status.hostIP": POD_IP,
        }
        if path in simple:
            return str(simple[path])
        m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if m:
            return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
        raise ConfigError(f"fieldRef {path!r} not supported")

    def _key_ref(self, kind: str, ref: JSON) -> str | None:
        obj = self.kube.get_or_none(f"/api/v1/namespaces/{self.ns}/{kind}/{ref.get('name', '')}")
        data = (obj or {}).get("data") or {}
        if ref["key"] not in data:
            if ref.get("optional"):
                return None
            what = "not found" if obj is None else f"has no key {ref['key']!r}"
            raise ConfigError(f"{kind[:-1]} {ref.get('name')!r} {what}")
        value: str = data[ref["key"]]
        return base64.b64decode(value).decode() if kind == "secrets" else value

    def _container_env(self, spec: JSON, base: dict[str, str]) -> dict[str, str]:
        env = dict(base)
        for src in spec.get("envFrom") or []:
            prefix = src.get("prefix", "")
            for kind, key in (("configmaps", "configMapRef"), ("secrets", "secretRef")):
                ref = src.get(key)
                if ref is None:
                    continue
                obj = self.kube.get_or_none(f"/api/v1/namespaces/{self.ns}/{kind}/{ref.get('name', '')}")
                if obj is None:
                    if ref.get("optional"):
                        continue
                    raise ConfigError(f"{kind[:-1]} {ref.get('name')!r} not found")
                for k, v in (obj.get("data") or {}).items():
                    env[prefix + k] = base64.b64decode(v).decode() if kind == "secrets" else v
        for var in spec.get("env") or []:
            name = var["name"]
            if "valueFrom" not in var:
                env[name] = expand(var.get("value", ""), env)
                continue
            vf = var["valueFrom"]
            value: str | None
            if "fieldRef" in vf:
                value = self._field(vf["fieldRef"]["fieldPath"])
            elif "configMapKeyRef" in vf:
                value = self._key_ref("configmaps", vf["configMapKeyRef"])
            elif "secretKeyRef" in vf:
                value = self._key_ref("secrets", vf["secretKeyRef"])
            elif "resourceFieldRef" in vf:
                ref = vf["resourceFieldRef"]
                kind, _, res = ref["resource"].partition(".")
                value = str(((spec.get("resources") or {}).get(kind) or {}).get(res, "0"))
            else:
                raise ConfigError(f"env {name}: valueFrom not supported")
            if value is not None:
                env[name] = value
        return env

    # -- status --------------------------------------------------------------------------------

    def _condition(self, kind: str, status: bool, reason: str | None = None) -> JSON:
        value = "True" if status else "False"
        old = self.conditions.get(kind)
        if old is None or old["status"] != value:
            old = {"type": kind, "status": value, "lastProbeTime": None, "lastTransitionTime": now()}
            if reason:
                old["reason"] = reason
            self.conditions[kind] = old
        return old

    def _report(self, force: bool = False) -> None:
        ready = self.phase == "Running" and all(c.running for c in self.containers)
        done_reason = "PodCompleted" if self.phase in TERMINAL else None
        scheduled = [
            c
            for c in (self.pod.get("status") or {}).get("conditions") or []
            if c.get("type") == "PodScheduled"
        ]
        status: JSON = {
            "phase": self.phase,
            "hostIP": POD_IP,
            "podIP": POD_IP,
            "podIPs": [{"ip": POD_IP}],
            "startTime": self.start_time,
            "qosClass": (self.pod.get("status") or {}).get("qosClass"),
            "conditions": [
                *scheduled,
                self._condition("Initialized", self.initialized),
                self._condition("ContainersReady", ready, done_reason),
                self._condition("Ready", ready, done_reason),
            ],
            "containerStatuses": [c.status() for c in self.containers],
            "reason": self.reason,
            "message": self.message,
        }
        if self.init_containers:
            status["initContainerStatuses"] = [c.status() for c in self.init_containers]
        if status == self.last_report and not force:
            return
        try:
            self.kube.patch(
                f"/api/v1/namespaces/{self.ns}/pods/{self.pod_name}/status", {"status": status}, MERGE_PATCH
            )
            self.last_report = status
        except ApiError as e:
            if e.status == 404:
                self.gone = True
            else:
                log(f"pod {self.ns}/{self.pod_name}: status: {e}")


class Agent:
    """One node: its registration, heartbeats and pods."""

    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.kube = Kube(cfg.server, cfg.token, cfg.ca_file)
        self.api_port = int(cfg.server.rsplit(":", 1)[1])
        self.gpus = GpuPool(cfg.gpus)
        self.workers: dict[str, PodWorker] = {}
        self.workers_lock = threading.Lock()
        self.stop = threading.Event()
        self.started = now()
        self.boot_id = f"{os.getpid()}-{int(time.time())}"

    # -- the node ------------------------------------------------------------------------------

    def node_status(self) -> JSON:
        resources = {
            "cpu": self.cfg.cpu,
            "memory": self.cfg.memory,
            "pods": str(self.cfg.pods),
            GPU: str(self.cfg.gpus),
            "ephemeral-storage": "100Gi",
        }
        t = now()

        def cond(kind: str, status: str, reason: str, message: str) -> JSON:
            return {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": t,
                "lastTransitionTime": self.started,
            }

        return {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                cond(
                    "MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory"
                ),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                cond(
                    "PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"
                ),
                cond("Ready", "True", "KubeletReady", "process kubelet is posting ready status"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": POD_IP},
                {"type": "Hostname", "address": self.cfg.node},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "machineID": self.cfg.node,
                "systemUUID": self.cfg.node,
                "bootID": self.boot_id,
                "kernelVersion": os.uname().release,
                "osImage": "hpo-operator process kubelet",
                "containerRuntimeVersion": "process://1",
                "kubeletVersion": "v1.20.2",
                "kubeProxyVersion": "v1.20.2",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    def register(self) -> None:
        labels = {
            "kubernetes.io/hostname": self.cfg.node,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "nvidia.com/gpu.present": "true",
            **self.cfg.labels,
        }
        try:
            self.kube.create(
                "/api/v1/nodes",
                {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.cfg.node, "labels": labels}},
            )
        except ApiError as e:
            if e.status != 409:
                raise
        self.post_status()
        for _ in range(20):
            node = self.kube.get(f"/api/v1/nodes/{self.cfg.node}")
            taints = node["spec"].get("taints") or []
            kept = [t for t in taints if not (t["key"] == NOT_READY_TAINT and t["effect"] == "NoSchedule")]
            if kept == taints:
                break
            try:
                # resourceVersion makes this a compare-and-swap: a taint added meanwhile is not lost.
                self.kube.patch(
                    f"/api/v1/nodes/{self.cfg.node}",
                    {
                        "metadata": {"resourceVersion": node["metadata"]["resourceVersion"]},
                        "spec": {"taints": kept or None},
                    },
                )
                break
            except ApiError as e:
                if e.status != 409:
                    raise
        self.renew_lease()

    def post_status(self) -> None:
        self.kube.patch(
            f"/api/v1/nodes/{self.cfg.node}/status", {"status": self.node_status()}, STRATEGIC_PATCH
        )

    def renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.cfg.node}"
        spec = {"holderIdentity": self.cfg.node, "leaseDurationSeconds": 40, "renewTime": now_micro()}
        try:
            self.kube.patch(path, {"spec": spec})
        except ApiError as e:
            if e.status != 404:
                raise
            self.kube.create(
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": self.cfg.node},
                    "spec": spec,
                },
            )

    def heartbeat_loop(self) -> None:
        beat = 0
        while not self.stop.wait(self.cfg.heartbeat_s):
            beat += 1
            try:
                self.renew_lease()
                if beat % self.cfg.status_every == 0:
                    self.post_status()
            except ApiError as e:
                if e.status == 404:
                    # The Node was deleted: register again, as a kubelet does.
                    try:
                        self.register()
                    except Exception as err:
                        log(f"re-register: {err}")
                else:
                    log(f"heartbeat: {e}")
            except OSError as e:
                log(f"heartbeat: {e}")

    # -- volumes -------------------------------------------------------------------------------

    def provision_loop(self) -> None:
        """Bind every pending claim of the ``standard`` class (or none) to a host folder.

        Every agent runs this; the PersistentVolume's deterministic name makes a second create a no-op.
        """
        while not self.stop.wait(1.0):
            try:
                for pvc in self.kube.get("/api/v1/persistentvolumeclaims")["items"]:
                    self.provision(pvc)
            except Exception as e:
                log(f"provisioner: {e}")

    def provision(self, pvc: JSON) -> None:
        spec, meta = pvc["spec"], pvc["metadata"]
        if spec.get("volumeName") or (pvc.get("status") or {}).get("phase") != "Pending":
            return
        if spec.get("storageClassName") not in (None, "", STORAGE_CLASS) or meta.get("deletionTimestamp"):
            return
        path = Path(self.cfg.pvc_dir) / meta["namespace"] / meta["name"]
        path.mkdir(parents=True, exist_ok=True)
        size = ((spec.get("resources") or {}).get("requests") or {}).get("storage", "1Gi")
        pv = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {
                "name": f"pvc-{meta['uid']}",
                "labels": {"hpo.dev/process-kubelet": "true"},
                "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER},
            },
            "spec": {
                "capacity": {"storage": size},
                "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": spec.get("storageClassName") or "",
                "claimRef": {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "namespace": meta["namespace"],
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
            },
        }
        try:
            self.kube.create("/api/v1/persistentvolumes", pv)
        except ApiError as e:
            if e.status != 409:
                raise

    # -- pods ----------------------------------------------------------------------------------

    def handle(self, pod: JSON) -> None:
        uid = pod["metadata"]["uid"]
        with self.workers_lock:
            worker = self.workers.get(uid)
            if worker is not None and worker.update(pod):
                return
            if pod["metadata"].get("deletionTimestamp"):
                self.workers.pop(uid, None)
                threading.Thread(target=self._force_delete, args=(pod,), daemon=True).start()
                return
            if (pod.get("status") or {}).get("phase") in TERMINAL or worker is not None:
                return
            worker = PodWorker(self, pod)
            self.workers[uid] = worker
            worker.start()

    def _force_delete(self, pod: JSON) -> None:
        meta = pod["metadata"]
        try:
            self.kube.delete(
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                {
                    "apiVersion": "v1",
                    "kind": "DeleteOptions",
                    "gracePeriodSeconds": 0,
                    "preconditions": {"uid": meta["uid"]},
                },
            )
        except ApiError as e:
            if e.status != 409:
                log(f"delete {meta['namespace']}/{meta['name']}: {e}")

    def gone(self, uid: str) -> None:
        with self.workers_lock:
            worker = self.workers.pop(uid, None)
        if worker is not None:
            worker.update(None)

    def pod_loop(self) -> None:
        selector = f"spec.nodeName={self.cfg.node}"
        while not self.stop.is_set():
            try:
                listing = self.kube.get("/api/v1/pods", fieldSelector=selector)
                seen = set()
                for pod in listing["items"]:
                    seen.add(pod["metadata"]["uid"])
                    self.handle(pod)
                with self.workers_lock:
                    missing = [uid for uid in self.workers if uid not in seen]
                for uid in missing:
                    self.gone(uid)
                rv = listing["metadata"]["resourceVersion"]
                for event in self.kube.watch(
                    "/api/v1/pods", timeout_seconds=30, fieldSelector=selector, resourceVersion=rv
                ):
                    if self.stop.is_set():
                        return
                    kind, obj = event["type"], event["object"]
                    if kind == "ERROR":
                        break
                    if kind == "DELETED":
                        self.gone(obj["metadata"]["uid"])
                    elif kind in ("ADDED", "MODIFIED"):
                        self.handle(obj)
            except Exception:
                log(f"pod loop: {traceback.format_exc()}")
                self.stop.wait(1.0)

    def run(self) -> None:
        self.register()
        log(f"node {self.cfg.node} registered")
        threading.Thread(target=self.heartbeat_loop, name="heartbeat", daemon=True).start()
        threading.Thread(target=self.pod_loop, name="pods", daemon=True).start()
        threading.Thread(target=self.provision_loop, name="provisioner", daemon=True).start()
        while not self.stop.wait(0.5):
            pass
        log(f"node {self.cfg.node} stopping")
        with self.workers_lock:
            workers = list(self.workers.values())
        for w in workers:
            w.kill_now()
        for w in workers:
            for c in w.init_containers + w.containers:
                if c.proc is not None:
                    c.proc.wait()


def main() -> None:
    raw = json.loads(Path(sys.argv[1]).read_text())
    agent = Agent(AgentConfig(**raw))

    def on_signal(signum: int, _frame: object) -> None:
        agent.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    agent.run()


if __name__ == "__main__":
    main()
