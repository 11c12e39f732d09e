"""HPOStudies of a small SDK trainer on the local cluster: the manifest, reading studies and trials,
a watch that times every trial pod's steps, and the operator's metrics.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.cluster.rest import ApiError, Kube
from tests.cluster.waiting import wait_for
from tests.support.operator_process import REPO, OperatorProcess

JSON = dict[str, Any]
GROUP_PATH = "/apis/hpo.dev/v1alpha1"

# A trial: reads its x, trains R "epochs" of EPOCH_SECONDS each, reports 1 - (x - 0.3)^2 scaled by
# how far it trained. Any x near 0.3 is best; values rise with the resource, as real curves do.
FAKE_TRAINER = """
import os, time, hpo_trial
x = float(hpo_trial.hyperparameters()["x"])
epoch = float(os.environ["EPOCH_SECONDS"])
for resource in range(1, int(os.environ["HPO_MAX_RESOURCE"]) + 1):
    time.sleep(epoch)
    hpo_trial.report(resource, round((1 - (x - 0.3) ** 2) * (1 - 0.5 ** resource), 6))
"""


def study_manifest(
    name: str,
    *,
    deadline: str = "30s",
    parallel: int | str = "auto",
    max_resource: int = 9,
    epoch_seconds: float = 0.2,
    hp_space: JSON | None = None,
) -> JSON:
    return {
        "apiVersion": "hpo.dev/v1alpha1",
        "kind": "HPOStudy",
        "metadata": {"name": name},
        "spec": {
            "metric": "accuracy",
            "mode": "max",
            "hpSpace": hp_space or {"x": {"paramType": "uniform", "range": [0.0, 1.0]}},
            "minimumResource": 1,
            "maximumResource": max_resource,
            "reductionFactor": 3,
            "budget": {"deadline": deadline},
            "parallelTrials": parallel,
            "gpusPerTrial": 1,
            "seed": 7,
            "trialTemplate": {
                "spec": {
                    "containers": [
                        {
                            "name": "trial",
                            "image": "hpo-fake-trainer:local",
                            "command": ["python", "-c", FAKE_TRAINER],
                            "env": [{"name": "EPOCH_SECONDS", "value": str(epoch_seconds)}],
                        }
                    ]
                }
            },
        },
    }


PROMOTE_MAX_RESOURCE = 9


def promote_manifest(name: str, deadline: str = "20s") -> JSON:
    """The study above with the promote variant, the final training and a claim the operator
    creates; the trials run the fixtures' fake trainer, which honours HPO_START_RESOURCE and
    HPO_STOP_RESOURCE and writes its environment to env.json in its checkpoint folder."""
    manifest = study_manifest(name, deadline=deadline, parallel="auto", max_resource=PROMOTE_MAX_RESOURCE)
    spec = manifest["spec"]
    spec |= {
        "seed": 3,
        "sampler": "random",
        "asha": {"variant": "promote"},
        "finalTraining": {"enabled": True},
        "checkpoints": {"size": "1Gi", "storageClassName": "standard"},
    }
    spec["trialTemplate"]["spec"]["containers"][0] |= {
        "command": ["python", "-m", "tests.fixtures.fake_trainer"],
        "workingDir": str(REPO),
        "env": [{"name": "FAKE_EPOCH_SECONDS", "value": "0.3"}],
    }
    return manifest


def study_path(namespace: str, name: str) -> str:
    return f"{GROUP_PATH}/namespaces/{namespace}/hpostudies/{name}"


def create_study(kube: Kube, namespace: str, manifest: JSON) -> JSON:
    created: JSON = kube.create(f"{GROUP_PATH}/namespaces/{namespace}/hpostudies", manifest)
    return created


def get_study(kube: Kube, namespace: str, name: str) -> JSON:
    study: JSON = kube.get(f"{GROUP_PATH}/namespaces/{namespace}/hpostudies/{name}")
    return study


def trials_of(kube: Kube, namespace: str, study: str | None = None) -> list[JSON]:
    """The namespace's HPOTrials (of one study, when named), by index."""
    query = {"labelSelector": f"hpo.dev/study={study}"} if study else {}
    items: list[JSON] = kube.get(f"{GROUP_PATH}/namespaces/{namespace}/hpotrials", **query)["items"]
    return sorted(items, key=lambda t: int(t["spec"]["index"]))


def wait_phase(kube: Kube, namespace: str, name: str, phases: set[str], timeout: float) -> JSON:
    def done() -> JSON | None:
        study = get_study(kube, namespace, name)
        return study if (study.get("status") or {}).get("phase") in phases else None

    def why() -> str:
        study = get_study(kube, namespace, name)
        return f"study {name} in {phases}; status now: {study.get('status')}"

    return wait_for(done, timeout, 0.2, why)


# --- watching pods ----------------------------------------------------------------------------------


@dataclass
class PodTimes:
    """When the test saw each step of one trial pod's life (time.time(), this machine's clock)."""

    trial: str
    added: float
    job: str | None = None
    running: float | None = None
    ended: float | None = None  # phase Succeeded or Failed
    phase: str | None = None
    deleting: float | None = None  # deletionTimestamp set
    gone: float | None = None

    def holds_gpu_until(self) -> float:
        return min(t for t in (self.ended, self.gone, float("inf")) if t is not None)


@dataclass
class PodWatch:
    """Watches on the namespace's pods and Jobs in threads, recording every trial pod's steps and
    when each Job was scaled to no pod (the operator gives a stopped trial's pod up then)."""

    kube: Kube
    namespace: str
    pods: dict[str, PodTimes] = field(default_factory=dict)
    added_per_trial: dict[str, int] = field(default_factory=dict)
    # Pods that reached Running, per trial. A pod the Job controller adds from a stale cache just as
    # a pruned trial's Job and pod are deleted is removed by the garbage collector; it must not run.
    running_per_trial: dict[str, int] = field(default_factory=dict)
    scaled_down: dict[str, float] = field(default_factory=dict)  # Job name -> parallelism 0 seen
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> PodWatch:
        watches = [
            (f"/api/v1/namespaces/{self.namespace}/pods", self._record),
            (f"/apis/batch/v1/namespaces/{self.namespace}/jobs", self._record_job),
        ]
        for path, record in watches:
            ready = threading.Event()
            thread = threading.Thread(target=self._run, args=(path, record, ready), daemon=True)
            thread.start()
            self._threads.append(thread)
            assert ready.wait(10), f"the watch of {path} did not start"
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()

    def _run(self, path: str, record: Callable[[str, JSON, float], None], ready: threading.Event) -> None:
        version = self.kube.get(path)["metadata"]["resourceVersion"]
        ready.set()
        while not self._stop.is_set():
            try:
                for event in self.kube.watch(path, timeout_seconds=5, resourceVersion=version):
                    version = event["object"]["metadata"].get("resourceVersion", version)
                    record(event["type"], event["object"], time.time())
                    if self._stop.is_set():
                        return
            except (ApiError, OSError):
                version = self.kube.get(path)["metadata"]["resourceVersion"]

    def _record_job(self, kind: str, job: JSON, now: float) -> None:
        name = job["metadata"]["name"]
        if (job.get("spec") or {}).get("parallelism") == 0 and name not in self.scaled_down:
            self.scaled_down[name] = now

    def _record(self, kind: str, pod: JSON, now: float) -> None:
        name = pod["metadata"]["name"]
        trial = pod["metadata"].get("labels", {}).get("hpo.dev/trial")
        if trial is None:
            return
        if name not in self.pods:
            owners = pod["metadata"].get("ownerReferences") or [{}]
            self.pods[name] = PodTimes(trial, now, owners[0].get("name"))
            self.added_per_trial[trial] = self.added_per_trial.get(trial, 0) + 1
        times = self.pods[name]
        phase = (pod.get("status") or {}).get("phase")
        if phase == "Running" and times.running is None:
            times.running = now
            self.running_per_trial[trial] = self.running_per_trial.get(trial, 0) + 1
        if phase in ("Succeeded", "Failed") and times.ended is None:
            times.ended, times.phase = now, phase
        if pod["metadata"].get("deletionTimestamp") and times.deleting is None:
            times.deleting = now
        if kind == "DELETED" and times.gone is None:
            times.gone = now

    def by_trial(self) -> dict[str, PodTimes]:
        return {p.trial: p for p in list(self.pods.values())}

    def max_at_once(self, since: str = "running") -> int:
        """The most trial pods at one moment, from their start (``since="running"``) or creation
        (``since="added"``) until they end, their deletion starts, or their Job is scaled to no pod
        (a pruned trial's successor is created then; the scheduler keeps it from a GPU the old pod
        still holds)."""
        spans = []
        for p in list(self.pods.values()):
            start = p.running if since == "running" else p.added
            if start is not None:
                given_up = self.scaled_down.get(p.job or "", float("inf"))
                spans += [(start, 1), (min(p.holds_gpu_until(), p.deleting or float("inf"), given_up), -1)]
        edges = sorted(spans, key=lambda e: (e[0], e[1]))
        most = current = 0
        for _, step in edges:
            current += step
            most = max(most, current)
        return most


# --- checks of a finished study -------------------------------------------------------------------


def first_report_at(trial: JSON, resource: float) -> JSON:
    reports = sorted((trial.get("status") or {}).get("reports") or [], key=lambda r: r["time"])
    return next(r for r in reports if r["resource"] >= resource)


def expected_best(trials: list[JSON], levels: list[float]) -> tuple[str, float]:
    """The best as documented: at the highest level any trial reached, by its first report there."""
    reached = {
        t["metadata"]["name"]: max(r["resource"] for r in t["status"]["reports"])
        for t in trials
        if (t.get("status") or {}).get("reports")
    }
    top = max(lv for lv in levels if any(r >= lv for r in reached.values()))
    candidates = [
        (first_report_at(t, top)["value"], -int(t["spec"]["index"]), t["metadata"]["name"])
        for t in trials
        if reached.get(t["metadata"]["name"], 0) >= top
    ]
    value, _, name = max(candidates)
    return name, value


def summary(label: str, values: list[float]) -> str:
    if not values:
        return f"{label}: no samples"
    return (
        f"{label}: n={len(values)} median {statistics.median(values) * 1000:.0f} ms, "
        f"max {max(values) * 1000:.0f} ms"
    )


def next_pod_latencies(watch: PodWatch) -> list[float]:
    """For each trial pod that ended while others waited for a GPU: its end -> the next pod's creation."""
    pods = sorted(watch.pods.values(), key=lambda p: p.added)
    ends = sorted(p.holds_gpu_until() for p in pods if p.holds_gpu_until() != float("inf"))
    out = []
    for end in ends:
        later = [p.added for p in pods if p.added >= end]
        if later and later[0] - end < 30:
            out.append(later[0] - end)
    return out


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(operator: OperatorProcess) -> Samples:
    """The operator's /metrics: every sample by name and labels."""
    code, text = operator.get("/metrics")
    assert code == 200, text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), float("nan"))


def reporting(kube: Kube, namespace: str) -> int:
    return sum(bool((t.get("status") or {}).get("reports")) for t in trials_of(kube, namespace))
