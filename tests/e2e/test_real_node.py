"""The operator and its trials in real containers, on a real node.

The node is the kubelet 1.20.2 with dockershim and kube-proxy on dockerd (tests/cluster/realnode.py);
the images are built from operator/Dockerfile and trial_image/Dockerfile on a Debian base
(tests/cluster/images.py). The operator is installed with `helm install` from the chart, as a user
does, and runs as the chart's Deployment; trials run the reference trainer of the trial image as
PID 1 of their containers, and report through their ServiceAccount's token to the ``kubernetes``
Service, which kube-proxy routes to the apiserver.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.fixtures import RealCluster
from tests.cluster.images import docker
from tests.cluster.realnode import DockerEvents, pod_container_id
from tests.cluster.rest import ApiError, Kube
from tests.cluster.waiting import wait_for
from tests.support.chart import helm, tool
from tests.support.e2e_study import create_study, get_study, study_manifest, trials_of, wait_phase

pytestmark = pytest.mark.e2e

JSON = dict[str, Any]
REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "hpo-operator"
GROUP_PATH = "/apis/hpo.dev/v1alpha1"
RELEASE = "real"
OPERATOR_NAMESPACE = "hpo-system"
FULLNAME = f"{RELEASE}-hpo-operator"
TRIAL_LABEL = "hpo.dev/trial"
TERMINAL = {"Succeeded", "Failed"}


def _seconds(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# --- the release --------------------------------------------------------------------------------------


@dataclass
class Release:
    kube: Kube
    namespace: str

    def deployment(self) -> JSON:
        found: JSON = self.kube.get(f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{FULLNAME}")
        return found

    def pod(self) -> JSON | None:
        pods = self.kube.get(
            f"/api/v1/namespaces/{self.namespace}/pods?labelSelector=app.kubernetes.io/instance={RELEASE}"
        )["items"]
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        return live[0] if len(live) == 1 else None

    def ready(self) -> bool:
        status = self.deployment().get("status") or {}
        pod = self.pod()
        conditions = {
            c["type"]: c["status"] for c in ((pod or {}).get("status") or {}).get("conditions") or []
        }
        return status.get("readyReplicas") == 1 and conditions.get("Ready") == "True"


@pytest.fixture(scope="module")
def release(real_cluster: RealCluster) -> Iterator[Release]:
    """`helm install` of the chart with the operator image built from operator/Dockerfile."""
    image = real_cluster.images.operator.name
    repository, tag = image.rsplit(":", 1)
    helm(
        real_cluster.cluster,
        "install", RELEASE, str(CHART),
        "--namespace", OPERATOR_NAMESPACE, "--create-namespace",
        "--set", f"image.repository={repository}",
        "--set", f"image.tag={tag}",
        "--set", "image.pullPolicy=Never",
        "--set", "operator.resyncSeconds=5",
    )  # fmt: skip
    kube = real_cluster.admin()
    rel = Release(kube, OPERATOR_NAMESPACE)
    try:
        wait_for(
            rel.ready, 90, 0.5, lambda: f"the operator's Deployment Ready: {rel.deployment().get('status')}"
        )
        yield rel
    finally:
        helm(
            real_cluster.cluster,
            "uninstall",
            RELEASE,
            "--namespace",
            OPERATOR_NAMESPACE,
            "--wait",
            "--timeout",
            "60s",
        )
        kube.close()


# --- studies ------------------------------------------------------------------------------------------


REFERENCE_SPACE = {
    "learning_parameters.learning_rate": {"paramType": "qloguniform", "range": [0.0001, 0.3, 0.0001]},
    "learning_parameters.batch_size": {"paramType": "qloguniform", "range": [16, 128, 16]},
}


def reference_study(
    name: str, image: str, *, deadline: str, max_trials: int, max_resource: int = 4, parallel: int = 2
) -> JSON:
    """The e2e study with the trial image's reference trainer (torch on the CPU, the built-in digits,
    the tiny model) in ``image``, eta 2. ``max_trials`` ends it once what a test needs has run,
    long before its deadline."""
    manifest = study_manifest(
        name, deadline=deadline, parallel=parallel, max_resource=max_resource, hp_space=REFERENCE_SPACE
    )
    spec = manifest["spec"]
    spec |= {"reductionFactor": 2, "seed": 11, "maxTrials": max_trials}
    spec["trialTemplate"]["spec"] = {
        "terminationGracePeriodSeconds": 20,
        "containers": [
            {
                "name": "trial",
                "image": image,
                "imagePullPolicy": "Never",
                "command": ["python", "-m", "hpo_trial.train", "--dataset", "digits", "--model", "tiny"],
                "env": [{"name": "OMP_NUM_THREADS", "value": "1"}],
            }
        ],
    }
    return manifest


def wait_finished(kube: Kube, namespace: str, name: str, timeout: float) -> JSON:
    return wait_phase(kube, namespace, name, TERMINAL, timeout)


def finished_by_its_trial_limit(study: JSON) -> None:
    """The study ended once its maxTrials trials had ended, before its deadline."""
    status = study["status"]
    limit = study["spec"]["maxTrials"]
    assert status["message"] == f"all {limit} trial{'s' if limit != 1 else ''} finished", status
    assert status["budget"]["finishedInsideSeconds"] > 0, status["budget"]


def summary(study: JSON, trials: list[JSON]) -> str:
    """One line per trial (phase, run, reports as resource@seconds after the study's start) for the
    test's output: how long the study took and where its time went."""
    status = study.get("status") or {}
    started = _seconds(status["budget"]["startedAt"])
    lines = [f"{study['metadata']['name']}: {status.get('message')}; budget {status.get('budget')}"]
    for t in trials:
        ts = t.get("status") or {}
        reports = sorted(ts.get("reports") or [], key=lambda r: (r["time"], r["seq"]))
        steps = " ".join(f"{r['resource']:g}={r['value']:.3f}@{r['time'] - started:.1f}" for r in reports)
        lines.append(f"  {t['metadata']['name']} {ts.get('phase')} run {ts.get('run', 0)}: {steps}")
    return "\n".join(lines)


@dataclass
class PodHistory:
    """A watch of the namespace's pods in a thread: each pod's last state, and when it was deleted."""

    kube: Kube
    namespace: str
    last: dict[str, JSON] = field(default_factory=dict)
    gone: set[str] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> PodHistory:
        path = f"/api/v1/namespaces/{self.namespace}/pods"
        ready = threading.Event()
        threading.Thread(target=self._run, args=(path, ready), daemon=True).start()
        assert ready.wait(10), "the pod watch did not start"
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()

    def _run(self, path: str, ready: threading.Event) -> None:
        version = self.kube.get(path)["metadata"]["resourceVersion"]
        ready.set()
        while not self._stop.is_set():
            try:
                for event in self.kube.watch(path, timeout_seconds=5, resourceVersion=version):
                    pod = event["object"]
                    version = pod["metadata"].get("resourceVersion", version)
                    self.last[pod["metadata"]["name"]] = pod
                    if event["type"] == "DELETED":
                        self.gone.add(pod["metadata"]["name"])
            except (ApiError, OSError):
                version = self.kube.get(path)["metadata"]["resourceVersion"]

    def ended(self, name: str) -> bool:
        return name in self.gone or (self.last[name].get("status") or {}).get("phase") in TERMINAL

    def of_trial(self, trial: str) -> list[JSON]:
        return [
            p for p in self.last.values() if (p["metadata"].get("labels") or {}).get(TRIAL_LABEL) == trial
        ]


def terminated(pod: JSON, container: str = "trial") -> JSON | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == container:
            state: JSON | None = (status.get("state") or {}).get("terminated") or (
                status.get("lastState") or {}
            ).get("terminated")
            return state
    return None


# --- the tests ------------------------------------------------------------------------------------------


def test_the_chart_runs_the_operator_image_ready_leading_and_scraped(
    real_cluster: RealCluster, release: Release
) -> None:
    kube = release.kube
    pod = release.pod()
    assert pod is not None
    # The image's user and the chart's security context hold in the real container.
    container_id = pod_container_id(pod, "operator")
    assert container_id, pod["status"]
    inspected = json.loads(docker("inspect", container_id))[0]
    assert inspected["Config"]["User"] == "10001:10001" or inspected["Config"]["User"].startswith("10001")
    assert inspected["HostConfig"]["ReadonlyRootfs"] is True
    assert inspected["Image"] == docker(
        "image", "inspect", real_cluster.images.operator.name, "--format", "{{.Id}}"
    )

    # The leader's Lease names this pod (its hostname is the pod's name).
    lease_path = f"/apis/coordination.k8s.io/v1/namespaces/{OPERATOR_NAMESPACE}/leases/{FULLNAME}"
    wait_for(
        lambda: (
            ((kube.get_or_none(lease_path) or {}).get("spec") or {})
            .get("holderIdentity", "")
            .startswith(pod["metadata"]["name"] + "_")
        ),
        30,
        0.5,
        lambda: f"the Lease held by {pod['metadata']['name']}: {kube.get_or_none(lease_path)}",
    )

    # A real Prometheus scrapes /metrics through the chart's Service (its ClusterIP, by kube-proxy).
    service = kube.get(f"/api/v1/namespaces/{OPERATOR_NAMESPACE}/services/{FULLNAME}")
    target = f"{service['spec']['clusterIP']}:{service['spec']['ports'][0]['port']}"
    with prometheus_scraping(target, real_cluster.cluster.log_dir) as query:
        wait_for(
            lambda: [s for s in query('up{job="hpo-operator"}') if s["value"][1] == "1"],
            60,
            1.0,
            f"Prometheus scraping {target} with up == 1",
        )
        leader = wait_for(lambda: query("hpo_operator_leader"), 30, 1.0, "hpo_operator_leader scraped")
        assert leader[0]["value"][1] == "1", leader


@dataclass
class _Prom:
    url: str

    def __call__(self, promql: str) -> list[JSON]:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.loads(r.read())
        result: list[JSON] = body["data"]["result"]
        return result


class prometheus_scraping:
    """Debian's Prometheus scraping ``target`` every second, on a port of its own."""

    def __init__(self, target: str, log_dir: Path) -> None:
        self.target, self.log = target, log_dir / "prometheus-real.log"
        self.work = Path(tempfile.mkdtemp(prefix="hpo-prometheus-real-"))
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> _Prom:
        binary = tool("prometheus")
        config = self.work / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: hpo-operator\n    static_configs:\n"
            f"      - targets: ['{self.target}']\n"
        )
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.work / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.work,
            )
        prom = _Prom(f"http://127.0.0.1:{port}")

        def ready() -> bool:
            assert self.proc is not None and self.proc.poll() is None, f"prometheus exited; log {self.log}"
            try:
                with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=1) as r:
                    return bool(r.status == 200)
            except (OSError, urllib.error.URLError):
                return False

        wait_for(ready, 30, 0.2, "prometheus /-/ready")
        return prom

    def __exit__(self, *_: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.work, ignore_errors=True)


def test_a_study_of_the_trial_image_prunes_by_sigterm_and_succeeds_inside_its_budget(
    real_cluster: RealCluster, release: Release, real_namespace: str
) -> None:
    kube, ns = release.kube, real_namespace
    # Six trials, two at a time (each takes seconds): at each rung only the better half of the values
    # recorded so far goes on, so some are pruned and the best reaches R, long before the deadline.
    manifest = reference_study(
        "digits", real_cluster.images.trial.name, deadline="100s", max_trials=6, max_resource=4
    )
    with PodHistory(kube, ns) as pods, DockerEvents() as runtime:
        create_study(kube, ns, manifest)
        study = wait_finished(kube, ns, "digits", 240)
        trials = trials_of(kube, ns)
        # Every pod of the study ends: a stopped trial's is deleted, a finished one's stays with its Job.
        wait_for(
            lambda: all(pods.ended(name) for name in pods.last), 90, 0.5,
            lambda: f"every trial pod ended: {[n for n in pods.last if not pods.ended(n)]}",
        )  # fmt: skip
    print("\n" + summary(study, trials))
    status = study["status"]
    assert status["phase"] == "Succeeded", status
    finished_by_its_trial_limit(study)
    phases = {t["metadata"]["name"]: (t.get("status") or {}).get("phase") for t in trials}
    pruned = [name for name, phase in phases.items() if phase == "Pruned"]
    assert pruned, phases
    assert "Completed" in phases.values(), phases

    # The best is a trial's own report, at the furthest level reached.
    best = status["best"]
    reports = {t["metadata"]["name"]: (t.get("status") or {}).get("reports") or [] for t in trials}
    assert any(r["value"] == best["value"] for r in reports[best["trial"]]), (best, reports[best["trial"]])
    # Reports came through the trial's token and the `kubernetes` Service: every trial that ran reported.
    for name, phase in phases.items():
        if phase in ("Completed", "Pruned"):
            assert reports[name], name

    # Inside the budget: the study ended before its deadline, and every report before the study's end
    # (a report is written when its epoch ends).
    deadline, finished = _seconds(status["budget"]["deadline"]), _seconds(status["budget"]["finishedAt"])
    assert finished <= deadline, status["budget"]
    for name, rs in reports.items():
        for r in rs:
            assert r["time"] <= finished, (name, r, status["budget"])

    # A pruned trial's trainer, PID 1 of its container, got SIGTERM and ended by itself within the
    # grace period, as the runtime saw it: exit status 128 + 15 from the trainer, no SIGKILL.
    grace = manifest["spec"]["trialTemplate"]["spec"]["terminationGracePeriodSeconds"]
    for name in pruned:
        (pod,) = [p["metadata"]["name"] for p in pods.of_trial(name)]
        seen = runtime.of_pod(pod, "trial")
        signals = [a["signal"] for action, a in seen if action == "kill"]
        died = [a for action, a in seen if action == "die"]
        assert signals and signals[0] in ("15", "SIGTERM") and "9" not in signals, (name, seen)
        assert len(died) == 1 and died[0]["exitCode"] == "143", (name, seen)
        kill_at = next(int(a["time"]) for action, a in seen if action == "kill")
        assert (int(died[0]["time"]) - kill_at) / 1e9 < grace, (name, seen)


def test_the_promote_variant_resumes_from_a_checkpoint_another_container_wrote(
    real_cluster: RealCluster, release: Release, real_namespace: str
) -> None:
    kube, ns = release.kube, real_namespace
    folder = real_cluster.cluster.root / "volumes" / ns
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o777)  # the trial image's user (uid 10001) writes there
    pv_name = f"checkpoints-{ns}"
    kube.create(
        "/api/v1/persistentvolumes",
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": pv_name},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "real-node-local",
                "hostPath": {"path": str(folder), "type": "Directory"},
            },
        },
    )
    try:
        # Two trials pause at rung 1; the better is promoted to rung 2 (a resumed run), and the best,
        # not yet at R, is trained on to R (another).
        manifest = reference_study(
            "promo", real_cluster.images.trial.name, deadline="90s", max_trials=2, max_resource=4
        )
        manifest["spec"] |= {
            "sampler": "random",
            "asha": {"variant": "promote"},
            "finalTraining": {"enabled": True},
            "checkpoints": {"size": "1Gi", "storageClassName": "real-node-local"},
        }
        create_study(kube, ns, manifest)
        study = wait_finished(kube, ns, "promo", 300)
        status = study["status"]
        trials = trials_of(kube, ns)
        print("\n" + summary(study, trials))
        phases = [(t["metadata"]["name"], (t.get("status") or {}).get("phase")) for t in trials]
        assert status["phase"] == "Succeeded", (status, phases)
        resumed = [t for t in trials if ((t.get("status") or {}).get("run") or 0) >= 1]
        assert resumed, [(t["metadata"]["name"], t.get("status")) for t in trials]
        for t in resumed:
            reports = sorted(t["status"].get("reports") or [], key=lambda r: (r["time"], r["seq"]))
            resources = [r["resource"] for r in reports]
            # The resumed run's first epoch follows the paused run's last: it loaded that checkpoint.
            assert resources == list(range(1, len(resources) + 1)), (t["metadata"]["name"], resources)
        final = status["final"]
        assert final["phase"] == "Succeeded" and final["resource"] == 4, final
        checkpoint = final["checkpoint"]
        assert (folder / checkpoint["path"] / "epoch-0004.pt").is_file(), sorted(folder.rglob("*"))
    finally:
        kube.delete(f"/api/v1/persistentvolumes/{pv_name}")


def restarts(release: Release) -> int:
    statuses = ((release.pod() or {}).get("status") or {}).get("containerStatuses") or [{}]
    return int(statuses[0].get("restartCount", 0))


def test_the_operator_container_killed_mid_study_finishes_it_without_a_duplicate(
    real_cluster: RealCluster, release: Release, real_namespace: str
) -> None:
    kube, ns = release.kube, real_namespace
    # Six trials, two at a time (each takes seconds): the operator is killed while the first two run,
    # and the one that comes back starts the others.
    manifest = reference_study(
        "survivor", real_cluster.images.trial.name, deadline="90s", max_trials=6, max_resource=4
    )
    with PodHistory(kube, ns) as pods:
        create_study(kube, ns, manifest)
        wait_for(
            lambda: sum(bool((t.get("status") or {}).get("reports")) for t in trials_of(kube, ns)) >= 2,
            120, 0.5, "two trials reporting",
        )  # fmt: skip
        pod = release.pod()
        assert pod is not None
        restarts_before = restarts(release)
        assert get_study(kube, ns, "survivor")["status"]["phase"] == "Running"
        container_id = pod_container_id(pod, "operator")
        assert container_id
        docker("kill", "--signal", "KILL", container_id)
        # The kubelet restarts the container in the same pod; the new process leads again.
        wait_for(lambda: restarts(release) > restarts_before, 60, 0.5, "the operator's container restarted")
        study = wait_finished(kube, ns, "survivor", 300)
    trials = trials_of(kube, ns)
    print("\n" + summary(study, trials))
    assert study["status"]["phase"] == "Succeeded", study["status"]
    finished_by_its_trial_limit(study)
    indices = [int(t["spec"]["index"]) for t in trials]
    assert indices == list(range(6)), indices
    # One Job per trial run, and no trial ran two pods of the same run.
    runs: dict[tuple[str, str], int] = {}
    for p in pods.last.values():
        labels = p["metadata"].get("labels") or {}
        key = (labels.get(TRIAL_LABEL, ""), labels.get("hpo.dev/run", "0"))
        runs[key] = runs.get(key, 0) + 1
    assert all(n == 1 for n in runs.values()), runs
    for t in trials:
        seqs = sorted(r["seq"] for r in (t.get("status") or {}).get("reports") or [])
        assert seqs == list(range(len(seqs))), (t["metadata"]["name"], seqs)


def test_a_trial_killed_for_memory_is_failed_with_that_reason(
    real_cluster: RealCluster, release: Release, real_namespace: str
) -> None:
    kube, ns = release.kube, real_namespace
    manifest = reference_study(
        "hungry", real_cluster.images.trial.name, deadline="60s", max_trials=1, max_resource=2, parallel=1
    )
    container = manifest["spec"]["trialTemplate"]["spec"]["containers"][0]
    container["command"] = ["python", "-c", "x = bytearray(512 * 1024 * 1024); print(len(x))"]
    container["resources"] = {"limits": {"memory": "64Mi"}}
    create_study(kube, ns, manifest)

    def oom_failed() -> JSON | None:
        for t in trials_of(kube, ns):
            status = t.get("status") or {}
            if status.get("phase") == "Failed":
                return t
        return None

    trial = wait_for(
        oom_failed, 120, 0.5, lambda: f"a Failed trial: {[t.get('status') for t in trials_of(kube, ns)]}"
    )
    assert trial["status"].get("reason") == "OOMKilled", trial["status"]
    assert trial["status"].get("exitCode") == 137, trial["status"]
    kube.delete(f"{GROUP_PATH}/namespaces/{ns}/hpostudies/hungry")


def test_the_trainer_as_pid_1_ends_on_sigterm_while_it_starts(
    real_cluster: RealCluster, real_namespace: str
) -> None:
    """A trial stopped before its first epoch: the reference trainer ends at once (its handler is in
    place before torch is imported); a script without a handler ignores SIGTERM as PID 1 and is
    killed at the end of the grace period, which is what the trainer's early handler avoids."""
    kube, ns, grace = real_cluster.admin(), real_namespace, 8

    def pod(name: str, command: list[str]) -> JSON:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": grace,
                "containers": [
                    {
                        "name": "trial",
                        "image": real_cluster.images.trial.name,
                        "imagePullPolicy": "Never",
                        "command": command,
                        "env": [{"name": "OMP_NUM_THREADS", "value": "1"}],
                    }
                ],
            },
        }

    trainer = ["python", "-m", "hpo_trial.train", "--dataset", "digits", "--model", "tiny", "--epochs", "50"]
    plain = ["python", "-c", "import time; time.sleep(120)"]
    with DockerEvents() as runtime:
        for name, command in (("trainer", trainer), ("plain", plain)):
            kube.create(f"/api/v1/namespaces/{ns}/pods", pod(name, command))
        for name in ("trainer", "plain"):
            # Deleted once the kubelet has reported it Running (the sync that started it is over: a
            # deletion that arrives during that sync was seen to wait more than 28 s for a later one).
            wait_for(
                lambda name=name: kube.get(f"/api/v1/namespaces/{ns}/pods/{name}")["status"].get("phase")
                == "Running",
                60, 0.05, f"{name} Running",
            )  # fmt: skip
            kube.delete(f"/api/v1/namespaces/{ns}/pods/{name}")
        for name in ("trainer", "plain"):
            wait_for(
                lambda name=name: [a for a, _ in runtime.of_pod(name, "trial") if a == "die"],
                grace + 20,
                0.2,
                lambda name=name: f"{name}'s container ended: {runtime.actions(name, 'trial')}",
            )
    try:
        for name, code, signals in (("trainer", "143", ["15"]), ("plain", "137", ["15", "9"])):
            seen = runtime.of_pod(name, "trial")
            kills = [(int(a["time"]), a["signal"]) for action, a in seen if action == "kill"]
            died = [(int(a["time"]), a["exitCode"]) for action, a in seen if action == "die"]
            assert [s for _, s in kills] == signals and died[0][1] == code, (name, seen)
            took = (died[0][0] - kills[0][0]) / 1e9
            assert took < 3.0 if name == "trainer" else took >= grace - 1, (name, took, seen)
    finally:
        kube.close()


# A trainer that, like many, saves and exits 0 on SIGTERM; one report a second.
EXITS_0_ON_SIGTERM = """
import signal, sys, time, hpo_trial
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
for resource in range(1, int(hpo_trial.max_resource()) + 1):
    time.sleep(1.0)
    hpo_trial.report(resource, 0.1 * resource)
"""


def test_a_trial_whose_pod_is_evicted_and_exits_0_goes_on_in_the_jobs_next_pod(
    real_cluster: RealCluster, release: Release, real_namespace: str
) -> None:
    """Kubernetes 1.20 counts the evicted pod's exit 0 as the Job's success, while the pod the Job made
    in its place runs on: the trial follows that pod, and is Completed only when it is."""
    kube, ns = release.kube, real_namespace
    # One trial: the study ends once it has, in the pod in the victim's place.
    manifest = reference_study(
        "evicted", real_cluster.images.trial.name, deadline="90s", max_trials=1, max_resource=12, parallel=1
    )
    manifest["spec"]["trialTemplate"]["spec"]["containers"][0]["command"] = [
        "python",
        "-c",
        EXITS_0_ON_SIGTERM,
    ]
    create_study(kube, ns, manifest)
    with PodHistory(kube, ns) as pods:

        def first_reporting() -> JSON | None:
            return next((t for t in trials_of(kube, ns) if (t.get("status") or {}).get("reports")), None)

        trial = wait_for(first_reporting, 120, 0.5, "a trial reporting")
        name = trial["metadata"]["name"]
        (victim,) = [p["metadata"]["name"] for p in pods.of_trial(name)]
        kube.delete(f"/api/v1/namespaces/{ns}/pods/{victim}")  # as an eviction or a drain does
        job_path = f"/apis/batch/v1/namespaces/{ns}/jobs/{name}"  # run 0's Job is named as the trial

        def complete_with_a_pod_in_its_place() -> bool:
            job = kube.get_or_none(job_path) or {}
            complete = any(
                c["type"] == "Complete" and c["status"] == "True"
                for c in (job.get("status") or {}).get("conditions") or []
            )
            others = [p for p in pods.of_trial(name) if p["metadata"]["name"] != victim]
            running = [p for p in others if (p.get("status") or {}).get("phase") == "Running"]
            return complete and bool(running)

        wait_for(
            complete_with_a_pod_in_its_place, 60, 0.2, f"the Job of {name} Complete while a new pod runs"
        )
        # Until that pod ends, the trial is not Completed: it goes on in the pod in the victim's place.
        trial_path = f"{GROUP_PATH}/namespaces/{ns}/hpotrials/{name}"
        seen: list[tuple[float, str]] = []

        def replacement_ended() -> list[JSON]:
            seen.append((time.time(), (kube.get(trial_path).get("status") or {}).get("phase", "")))
            others = [p for p in pods.of_trial(name) if p["metadata"]["name"] != victim]
            return others if others and all(pods.ended(p["metadata"]["name"]) for p in others) else []

        (replacement,) = wait_for(replacement_ended, 60, 0.2, f"the pod in {victim}'s place ended")
        state = terminated(replacement)
        assert state is not None and state["exitCode"] == 0, replacement.get("status")
        ended_at = _seconds(state["finishedAt"])  # whole seconds
        assert [phase for t, phase in seen if t < ended_at - 1.0 and phase == "Completed"] == [], seen
        study = wait_finished(kube, ns, "evicted", 180)
    print("\n" + summary(study, trials_of(kube, ns)))
    finished_by_its_trial_limit(study)
    final = kube.get(f"{GROUP_PATH}/namespaces/{ns}/hpotrials/{name}")["status"]
    # Alone at every rung, it goes on to R: trained there by the pod in the victim's place.
    assert final["phase"] == "Completed", final
    assert max(r["resource"] for r in final.get("reports") or []) == 12, final
    assert study["status"]["phase"] == "Succeeded", study["status"]
