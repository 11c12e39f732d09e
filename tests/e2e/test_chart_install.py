"""The chart installed with `helm install` on the local cluster, the operator running as its pod.

The Deployment's pod is run by the process kubelet under the chart's own ServiceAccount (the
in-cluster config reads that ServiceAccount's token), so the study below finishes under exactly the
RBAC the chart grants. A real Prometheus (Debian's) scrapes the operator every second during the
study; afterwards a PromQL query of trials by outcome must agree with the study's status and with
the HPOTrials' phases. `helm uninstall` must then remove every object of the release, leaving the
CRDs (Helm keeps `crds/` by design) and the user's HPOStudy.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.cluster import LocalCluster
from tests.cluster.rest import ApiError, Kube
from tests.cluster.waiting import wait_for
from tests.support.chart import helm, tool
from tests.support.e2e_study import create_study, get_study, study_manifest, trials_of, wait_phase
from tests.support.operator_process import CHART, OperatorProcess, free_port

pytestmark = pytest.mark.e2e

JSON = dict[str, Any]
RELEASE = "chart-e2e"
FULLNAME = f"{RELEASE}-hpo-operator"
INSTANCE = f"app.kubernetes.io/instance={RELEASE}"
OUTCOMES = ("completed", "pruned", "failed", "stopped")
PHASE_OF_OUTCOME = {"completed": "Completed", "pruned": "Pruned", "failed": "Failed", "stopped": "Stopped"}


# --- Prometheus --------------------------------------------------------------------------------------


@dataclass
class Prometheus:
    """A Prometheus server scraping 127.0.0.1:<metrics_port> every second."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def query(self, promql: str) -> list[JSON]:
        """The instant vector ``promql`` evaluates to now."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        result: list[JSON] = body["data"]["result"]
        return result

    def by_label(self, promql: str, label: str) -> dict[str, float]:
        return {s["metric"].get(label, ""): float(s["value"][1]) for s in self.query(promql)}

    def scalar(self, promql: str) -> float | None:
        result = self.query(promql)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.proc.returncode}:\n{self.tail()}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                return bool(r.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture
def ports() -> tuple[int, int]:
    """The operator's metrics and liveness ports: every pod of the harness shares 127.0.0.1."""
    metrics, liveness = free_port(), free_port()
    while liveness == metrics:
        liveness = free_port()
    return metrics, liveness


@pytest.fixture
def prometheus(ports: tuple[int, int], cluster: LocalCluster) -> Iterator[Prometheus]:
    binary = tool("prometheus")
    work = Path(tempfile.mkdtemp(prefix="hpo-prometheus-"))
    config = work / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: hpo-operator\n"
        "    honor_labels: true\n"
        "    static_configs:\n"
        f"      - targets: ['127.0.0.1:{ports[0]}']\n"
    )
    port = free_port()
    log = cluster.log_dir / "prometheus.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={work / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=work,
        )
    server = Prometheus(proc, f"http://127.0.0.1:{port}", log)
    try:
        wait_for(server.ready, 30, 0.1, lambda: f"prometheus /-/ready; log:\n{server.tail()}")
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        shutil.rmtree(work, ignore_errors=True)


# --- the release ------------------------------------------------------------------------------------


@pytest.fixture
def release_namespace(kube: Kube) -> Iterator[str]:
    name = f"hpo-chart-{uuid.uuid4().hex[:6]}"
    kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    wait_for(
        lambda: (kube.get_or_none(f"/api/v1/namespaces/{name}/serviceaccounts/default") or {}).get("secrets"),
        30,
        message=f"default ServiceAccount of {name} with its token",
    )
    yield name
    kube.delete(f"/api/v1/namespaces/{name}")
    kube.delete(f"/api/v1/namespaces/{name}/pods")


@pytest.fixture
def no_other_operator(request: pytest.FixtureRequest) -> None:
    """Stop the session's cluster-wide operator (tests/e2e/conftest.py) if a test started it: it would
    reconcile this test's study too. Its `operator` fixture starts it again for the tests that use it."""
    defs = request._fixturemanager.getfixturedefs("hpo_operator", request.node)
    for fixturedef in defs or ():
        cached = fixturedef.cached_result
        if cached is not None and isinstance(cached[0], OperatorProcess):
            cached[0].stop()


def operator_pod(kube: Kube, namespace: str) -> JSON | None:
    pods: list[JSON] = kube.get(f"/api/v1/namespaces/{namespace}/pods?labelSelector={INSTANCE}")["items"]
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    return live[0] if len(live) == 1 else None


def healthz(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
            return bool(r.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def manifest_objects(manifest: str) -> list[tuple[str, str, str]]:
    """(kind, namespace, name) of every object in `helm get manifest` output."""
    import yaml

    return [
        (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])
        for o in yaml.safe_load_all(manifest)
        if o
    ]


def object_path(kind: str, namespace: str, name: str) -> str:
    core = {"Service": "services", "ServiceAccount": "serviceaccounts", "ConfigMap": "configmaps"}
    if kind in core:
        return f"/api/v1/namespaces/{namespace}/{core[kind]}/{name}"
    if kind == "Deployment":
        return f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}"
    rbac = {"ClusterRole": "clusterroles", "ClusterRoleBinding": "clusterrolebindings"}
    if kind in rbac:
        return f"/apis/rbac.authorization.k8s.io/v1/{rbac[kind]}/{name}"
    if kind == "FlowSchema":  # 1.20's version, which the chart picks for the local cluster
        return f"/apis/flowcontrol.apiserver.k8s.io/v1beta1/flowschemas/{name}"
    plural = {"Role": "roles", "RoleBinding": "rolebindings"}
    return f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/{plural[kind]}/{name}"


def remaining(kube: Kube, namespace: str, objects: list[tuple[str, str, str]]) -> list[str]:
    """What of the release still exists: its manifest's objects, and anything labelled with it."""
    left = [
        f"{kind} {ns}/{name}"
        for kind, ns, name in objects
        if kube.get_or_none(object_path(kind, ns or namespace, name)) is not None
    ]
    for path in (
        f"/api/v1/namespaces/{namespace}/pods",
        f"/apis/apps/v1/namespaces/{namespace}/replicasets",
        f"/api/v1/namespaces/{namespace}/configmaps",
        f"/api/v1/namespaces/{namespace}/services",
    ):
        items = kube.get(f"{path}?labelSelector={INSTANCE}")["items"]
        left += [f"{path.rsplit('/', 1)[1]} {i['metadata']['name']}" for i in items]
    # Helm's own record of the release (Secrets sh.helm.release.v1.<release>.vN).
    secrets = kube.get(f"/api/v1/namespaces/{namespace}/secrets?labelSelector=owner=helm")["items"]
    left += [f"secret {s['metadata']['name']}" for s in secrets]
    return left


# --- the test ---------------------------------------------------------------------------------------


def test_helm_installed_operator_runs_a_study_that_prometheus_counts_and_uninstall_cleans_up(
    cluster: LocalCluster,
    kube: Kube,
    namespace: str,
    release_namespace: str,
    ports: tuple[int, int],
    prometheus: Prometheus,
    no_other_operator: None,
) -> None:
    metrics_port, liveness_port = ports
    helm(
        cluster,
        "install", RELEASE, str(CHART),
        "--namespace", release_namespace,
        "--set", f"metrics.port={metrics_port}",
        "--set", f"livenessProbe.port={liveness_port}",
        "--set", f"watchNamespaces={{{namespace}}}",
        "--set", "operator.resyncSeconds=5",
        "--set", "grafanaDashboard.enabled=true",
    )  # fmt: skip
    objects = manifest_objects(helm(cluster, "get", "manifest", RELEASE, "--namespace", release_namespace))
    kinds = {kind for kind, _, _ in objects}
    assert {
        "Deployment",
        "Service",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "FlowSchema",
    } <= kinds

    # The operator runs as the Deployment's pod, under the chart's ServiceAccount.
    pod = wait_for(
        lambda: (p := operator_pod(kube, release_namespace)) and p["status"].get("phase") == "Running" and p,
        60,
        0.2,
        lambda: f"the operator pod Running; pods: {kube.get(f'/api/v1/namespaces/{release_namespace}/pods')}",
    )
    assert pod["spec"]["serviceAccountName"] == FULLNAME
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
    assert pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    log = cluster.container_log(release_namespace, pod["metadata"]["name"], "operator")
    wait_for(lambda: healthz(liveness_port), 30, 0.2, lambda: f"operator /healthz; log:\n{log.read_text()}")
    wait_for(
        lambda: prometheus.scalar('up{job="hpo-operator"}') == 1,
        30,
        0.2,
        lambda: f"prometheus scraping the operator; targets: {prometheus.query('up')}",
    )

    # A whole study, under the chart's RBAC.
    labels = f'namespace="{namespace}",study="chart"'
    create_study(kube, namespace, study_manifest("chart", deadline="20s", max_resource=9, epoch_seconds=0.2))
    study = wait_phase(kube, namespace, "chart", {"Succeeded", "Failed"}, 60)
    status = study["status"]
    assert status["phase"] == "Succeeded", status
    counts = status["trials"]
    trials = trials_of(kube, namespace)
    phases = Counter((t.get("status") or {}).get("phase") for t in trials)
    assert counts["total"] == len(trials) > 0, (counts, phases)
    assert counts["running"] == counts["pending"] == 0, counts
    for outcome in OUTCOMES:
        assert counts[outcome] == phases[PHASE_OF_OUTCOME[outcome]], (counts, phases)

    # Prometheus saw the study run, and its last scrape shows the study's final state.
    wait_for(
        lambda: prometheus.scalar(f'hpo_study_phase{{{labels},phase="Succeeded"}}') == 1,
        20,
        0.2,
        lambda: (
            f"Succeeded scraped; hpo_study_phase: {prometheus.query(f'hpo_study_phase{{{labels}}} == 1')}"
        ),
    )
    assert (prometheus.scalar(f"max_over_time(hpo_study_running_trials{{{labels}}}[5m])") or 0) >= 1
    finished = prometheus.by_label(f"sum by (outcome) (hpo_trials_finished_total{{{labels}}})", "outcome")
    started = prometheus.scalar(f"sum(hpo_trials_started_total{{{labels}}})")
    by_phase = prometheus.by_label(f"hpo_study_trials{{{labels}}}", "phase")
    print(
        f"\nPromQL: started {started}, finished {finished}; status.trials {counts}; HPOTrials {dict(phases)}"
    )
    assert started == len(trials), (started, counts)
    assert {o: finished.get(o, 0.0) for o in OUTCOMES} == {o: float(counts[o]) for o in OUTCOMES}, (
        finished,
        counts,
    )
    assert {p: by_phase.get(p) for p in counts if p != "total"} == {
        p: float(v) for p, v in counts.items() if p != "total"
    }, (by_phase, counts)

    # helm uninstall: nothing of the release is left; the CRDs and the user's study are.
    helm(cluster, "uninstall", RELEASE, "--namespace", release_namespace)
    wait_for(
        lambda: not remaining(kube, release_namespace, objects),
        60,
        0.2,
        lambda: f"every object of the release gone; left: {remaining(kube, release_namespace, objects)}",
    )
    wait_for(lambda: not healthz(liveness_port), 15, 0.2, "the operator process stopped")
    for crd in ("hpostudies.hpo.dev", "hpotrials.hpo.dev"):
        assert kube.get_or_none(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd}") is not None
    assert get_study(kube, namespace, "chart")["status"]["phase"] == "Succeeded"
    try:
        assert kube.get(f"/api/v1/namespaces/{release_namespace}/pods")["items"] == []
    except ApiError as err:  # the namespace is going: then so are its pods
        raise AssertionError(err) from err
