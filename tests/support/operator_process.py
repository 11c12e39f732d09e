"""The operator as its Helm chart installs it, for a local cluster (tests/cluster).

The CRDs and the chart's RBAC are applied with kubectl; the operator runs as a subprocess
(`hpo operator`) with a kubeconfig that holds a TokenRequest token of the chart's ServiceAccount, so
it has exactly the rights the chart grants. Used by the e2e tests and by benchmarks/.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

from tests.cluster.binaries import K8S_VERSION
from tests.cluster.cluster import LocalCluster
from tests.cluster.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "hpo-operator"
OPERATOR_NAMESPACE = "hpo-system"
RELEASE = "hpo"
SERVICE_ACCOUNT = f"{RELEASE}-hpo-operator"


def kubectl(cluster: LocalCluster, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        ["kubectl", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, **cluster.env()},
        timeout=60,
    )
    if done.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def helm_template() -> str:
    helm = shutil.which("helm")
    if helm is None:
        pytest.skip("helm is not on PATH (scripts/install-cluster-tools installs it)")
    # The harness's Kubernetes, whose API versions the chart picks (its FlowSchema's).
    kube = ["--kube-version", K8S_VERSION]
    done = subprocess.run(
        [helm, "template", RELEASE, str(CHART), "--namespace", OPERATOR_NAMESPACE, *kube],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class OperatorProcess:
    """`hpo operator` as a child process; started, killed and restarted by its pid only."""

    def __init__(self, kubeconfig: Path, log_path: Path, args: Sequence[str] = ()) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.args = tuple(args)  # more arguments to `hpo operator`
        self.port = free_port()  # /healthz
        self.metrics_port = free_port()  # /metrics
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hpo_operator", "operator", "--kubeconfig", str(self.kubeconfig),
             "--liveness-port", str(self.port), "--metrics-port", str(self.metrics_port), "--resync", "5",
             *self.args],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
            env={k: v for k, v in os.environ.items() if k != "KUBECONFIG"},
        )  # fmt: skip
        log.close()
        wait_for(self._healthy, timeout, 0.1, lambda: f"operator /healthz; log:\n{self.tail()}")

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the operator exited with {self.proc.returncode}:\n{self.tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def get(self, path: str, port: int | None = None) -> tuple[int, str]:
        """GET ``path`` from the operator's metrics port (or ``port``): the status and the body."""
        url = f"http://127.0.0.1:{port or self.metrics_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as err:
            return int(err.code), err.read().decode()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no cleanup handler runs, as when a node dies under the operator."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def install_chart_without_operator(cluster: LocalCluster) -> Path:
    """CRDs and the chart's RBAC applied; a kubeconfig acting as the chart's ServiceAccount."""
    kubectl(cluster, "apply", "-f", str(CHART / "crds"))
    for crd in ("hpostudies.hpo.dev", "hpotrials.hpo.dev"):
        kubectl(cluster, "wait", "--for=condition=Established", f"crd/{crd}", "--timeout=30s")
    kubectl(cluster, "create", "namespace", OPERATOR_NAMESPACE)
    # Everything but the Deployment: the operator runs here as a subprocess, and the Deployment's
    # pod (which the process kubelet runs too) would be a second operator racing it.
    manifests = [d for d in yaml.safe_load_all(helm_template()) if d and d.get("kind") != "Deployment"]
    kubectl(cluster, "apply", "-f", "-", stdin=yaml.safe_dump_all(manifests))
    return cluster.service_account_kubeconfig(OPERATOR_NAMESPACE, SERVICE_ACCOUNT)
