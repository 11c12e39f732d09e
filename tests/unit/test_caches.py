"""The reconcile's reads from the watch-fed caches (kube/caches.py through kube/world.py's Cluster): no
read before every cache is listed, no request once they are, and the operator's own writes seen by
the next read without waiting for a watch event."""

from __future__ import annotations

import copy
import itertools
import threading
from collections import deque
from collections.abc import Iterator, Mapping
from typing import Any, cast

import pytest

from hpo_operator.kube.api import Api
from hpo_operator.kube.builders import build_trial_identity
from hpo_operator.kube.caches import ACCOUNTS, GPU_PODS, JOBS, NODES, PODS, TRIALS, Caches, NotSynced
from hpo_operator.kube.reconcile import reconcile
from hpo_operator.kube.resources import GROUP, STUDY_LABEL
from hpo_operator.kube.store import Store
from hpo_operator.kube.world import Cluster
from hpo_operator.kube.writes import CreateIdentity, CreateJob, CreateTrial, DeleteJob, Outcome
from tests.cluster.waiting import wait_for
from tests.support.kube_world import T0, study

JSON = dict[str, Any]
TRIAL_LABEL = f"{GROUP}/trial"
NODES_PATH, ALL_PODS = "/api/v1/nodes", "/api/v1/pods"
TRIALS_PATH = f"/apis/{GROUP}/v1alpha1/namespaces/ns/hpotrials"
JOBS_PATH, PODS_PATH = "/apis/batch/v1/namespaces/ns/jobs", "/api/v1/namespaces/ns/pods"
ACCOUNTS_PATH = "/api/v1/namespaces/ns/serviceaccounts"


class FakeApi:
    """What Cluster and Caches call, answered as the API server would, every call recorded.
    Creates and patches answer with a new resourceVersion; ``removals`` scripts DELETE's answers;
    ``streams`` scripts each path's first watch (later ones are quiet streams that end soon)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.objects: dict[str, JSON] = {}
        self.removals: dict[str, JSON] = {}
        self.streams: dict[str, deque[list[JSON]]] = {}
        self._versions = itertools.count(100)
        self._lock = threading.Lock()
        self._closed = threading.Event()

    def _call(self, verb: str, path: str) -> None:
        with self._lock:
            self.calls.append((verb, path))

    def requests(self) -> list[tuple[str, str]]:
        """Everything but the events posted in the background."""
        with self._lock:
            return [c for c in self.calls if not c[1].endswith("/events")]

    def version(self) -> tuple[int, int]:
        self._call("version", "/version")
        return 1, 30

    def create(self, path: str, body: JSON) -> JSON | None:
        self._call("create", path)
        name = body["metadata"]["name"]
        namespace = path.split("/namespaces/")[1].split("/")[0]
        with self._lock:
            if f"{path}/{name}" in self.objects:
                return None
            meta = {**body["metadata"], "namespace": namespace, "uid": f"uid-{name}"}
            made = {**body, "metadata": {**meta, "resourceVersion": str(next(self._versions))}}
            self.objects[f"{path}/{name}"] = made
        return copy.deepcopy(made)

    def patch(self, path: str, body: Any, content_type: str = "") -> JSON:
        self._call("patch", path)
        return {}  # no resourceVersion: the caches take nothing from it

    def remove(self, path: str, propagation: str = "Background") -> JSON | None:
        self._call("remove", path)
        return self.removals.get(path, {"kind": "Status", "status": "Success"})

    def get(self, path: str) -> JSON:
        self._call("get", path)
        raise AssertionError(f"unexpected GET {path}")

    def get_or_none(self, path: str) -> JSON | None:
        self._call("get", path)
        with self._lock:
            found = self.objects.get(path)
        return copy.deepcopy(found) if found is not None else None

    def list(self, path: str, **query: str | int) -> list[JSON]:
        self._call("list", path)
        raise AssertionError(f"unexpected list of {path}")

    def list_page(self, path: str, **query: str | int) -> JSON:
        self._call("list", path)
        return {"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": []}

    def watch(self, path: str, query: Mapping[str, str | int], timeout: float) -> Iterator[JSON]:
        self._call("watch", path)
        with self._lock:
            pending = self.streams.get(path)
            script = pending.popleft() if pending else None
        if script is None:
            self._closed.wait(0.01)  # a quiet stream the server ends soon
            return
        yield from script

    def close(self) -> None:
        self._closed.set()


def store(caches: Caches, kind: str) -> Store:
    """The cache of one kind, filled by the tests with a listing as its informer would."""
    return caches._store(kind, "ns")


def node(name: str, gpus: int, version: int = 1) -> JSON:
    return {
        "metadata": {"name": name, "resourceVersion": str(version)},
        "status": {
            "allocatable": {"nvidia.com/gpu": str(gpus)},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def child(name: str, version: int, trial: str = "s-0", **extra: Any) -> JSON:
    labels = {STUDY_LABEL: "s", TRIAL_LABEL: trial}
    return {
        "metadata": {"name": name, "namespace": "ns", "resourceVersion": str(version), "labels": labels},
        **extra,
    }


def gpu_pod(name: str, version: int) -> JSON:
    spec = {"nodeName": "n1", "containers": [{"name": "t", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}
    return child(name, version, spec=spec, status={"phase": "Running"})


def listed(
    caches: Caches, gpus: int = 1, jobs: list[JSON] | None = None, pods: list[JSON] | None = None
) -> None:
    """Every cache listed at resourceVersion 10: the study, a node with ``gpus``, ``jobs`` and ``pods``."""
    caches.studies_listed([{**study(), "metadata": {**study()["metadata"], "resourceVersion": "5"}}], "10")
    store(caches, TRIALS).replace([], "10")
    store(caches, JOBS).replace(jobs or [], "10")
    store(caches, PODS).replace(pods or [], "10")
    store(caches, ACCOUNTS).replace([], "10")
    store(caches, GPU_PODS).replace(pods or [], "10")
    store(caches, NODES).replace([node("n1", gpus)], "10")


def cached_cluster(sync_timeout: float = 5.0) -> tuple[FakeApi, Cluster]:
    api = FakeApi()
    caches = Caches(cast(Api, api), namespaces=("ns",), sync_timeout=sync_timeout)
    return api, Cluster(cast(Api, api), clock=lambda: T0, caches=caches)


def test_no_read_before_every_cache_is_listed() -> None:
    api, cluster = cached_cluster(sync_timeout=0.05)
    assert cluster.caches is not None
    with pytest.raises(NotSynced):
        cluster.read("ns", "s")
    listed(cluster.caches)
    store(cluster.caches, NODES)._synced.clear()  # as if the nodes had not been listed yet
    with pytest.raises(NotSynced) as raised:
        cluster.read("ns", "s")
    assert (
        raised.value.status == 503 and "nodes" in str(raised.value) and "hpostudies" not in str(raised.value)
    )
    assert api.requests() == []


def test_a_read_from_listed_caches_makes_no_request() -> None:
    api, cluster = cached_cluster()
    assert cluster.caches is not None
    listed(cluster.caches, gpus=2, jobs=[child("s-0", 11)], pods=[gpu_pod("s-0-pod", 12)])
    world = cluster.read("ns", "s")
    assert world is not None
    assert world.study["metadata"]["name"] == "s"
    assert world.trials == ()  # an empty cache of a served namespace reads as empty
    assert list(world.jobs) == ["s-0"]
    assert [p["metadata"]["name"] for p in world.pods["s-0"]] == ["s-0-pod"]
    assert (world.capacity.total, world.capacity.used) == (2, 1)
    assert cluster.read("ns", "other") is None
    assert [verb for verb, _ in api.requests()] == ["version"]  # asked once, then remembered


def test_a_created_trial_and_its_job_are_read_back_at_once_and_not_created_again() -> None:
    _, cluster = cached_cluster()
    assert cluster.caches is not None
    listed(cluster.caches, gpus=1)
    before = cluster.read("ns", "s")
    assert before is not None and before.trials == ()
    outcome = reconcile(before, T0)
    created = [w for w in outcome.writes if isinstance(w, CreateTrial)]
    assert len(created) == 1 and created[0].job is not None
    trial_name, job_name = created[0].trial["metadata"]["name"], created[0].job["metadata"]["name"]
    cluster.apply(before, outcome)

    after = cluster.read("ns", "s")  # no watch event has come: only the API's answers to the writes
    assert after is not None
    assert [t["metadata"]["name"] for t in after.trials] == [trial_name]
    assert list(after.jobs) == [job_name]
    assert after.jobs[job_name]["metadata"]["ownerReferences"][0]["uid"] == f"uid-{trial_name}"
    again = reconcile(after, T0 + 0.1)
    made_again = [w for w in again.writes if isinstance(w, CreateTrial | CreateJob)]
    assert made_again == []
    # What the test rests on: the world read before the writes would have the trial created again.
    assert [
        w.trial["metadata"]["name"] for w in reconcile(before, T0 + 0.1).writes if isinstance(w, CreateTrial)
    ] == [trial_name]
    # The watch's own copy of the created Job, arriving later, changes nothing.
    job = store(cluster.caches, JOBS).get("ns", job_name)
    assert job is not None and store(cluster.caches, JOBS).apply("ADDED", job) is None


def test_a_deleted_job_is_gone_from_the_next_read_and_a_pod_being_deleted_stays() -> None:
    api, cluster = cached_cluster()
    assert cluster.caches is not None
    listed(cluster.caches, gpus=1, jobs=[child("s-0", 11)], pods=[gpu_pod("s-0-pod", 12)])
    pod_path = f"{PODS_PATH}/s-0-pod"
    being_deleted = gpu_pod("s-0-pod", 13)
    being_deleted["metadata"]["deletionTimestamp"] = "2027-01-01T00:00:00Z"
    api.removals[pod_path] = being_deleted  # the job's answer is a Status (FakeApi's default)
    world = cluster.read("ns", "s")
    assert world is not None and list(world.jobs) == ["s-0"]
    cluster.apply(world, Outcome(writes=[DeleteJob("s-0", pods=("s-0-pod",))]))
    assert ("remove", f"{JOBS_PATH}/s-0") in api.requests() and ("remove", pod_path) in api.requests()

    after = cluster.read("ns", "s")
    assert after is not None
    assert after.jobs == {}
    (pod,) = after.pods["s-0"]
    assert pod["metadata"]["deletionTimestamp"] and pod["metadata"]["resourceVersion"] == "13"
    assert after.capacity.used == 1  # it holds its GPU until it is gone
    # The old Job's events, late from the watch, do not bring it back.
    assert store(cluster.caches, JOBS).apply("MODIFIED", child("s-0", 14)) is None
    assert "s-0" not in (cluster.read("ns", "s") or after).jobs


def test_a_trial_s_service_account_is_read_from_the_cache_and_one_that_existed_is_read_once() -> None:
    api, cluster = cached_cluster()
    assert cluster.caches is not None
    listed(cluster.caches, gpus=1)
    trial = {"apiVersion": f"{GROUP}/v1alpha1", "kind": "HPOTrial", **child("s-0", 20)}
    trial["metadata"]["uid"] = "uid-s-0"
    store(cluster.caches, TRIALS).written(trial)  # a trial without a Job: its identity is read
    accounts = ACCOUNTS_PATH

    world = cluster.read("ns", "s")
    assert world is not None and world.identities == {"s-0": "missing"}
    cluster.apply(world, Outcome(writes=[CreateIdentity("s-0", tuple(build_trial_identity(trial)))]))
    after = cluster.read("ns", "s")  # the created account, from the API's answer
    assert after is not None and after.identities == {"s-0": "ready"}
    assert [c for c in api.requests() if c[0] == "get"] == []

    # An account of that name that is not the trial's: its create answers 409, and it is read once.
    api2, other = cached_cluster()
    assert other.caches is not None
    listed(other.caches, gpus=1)
    store(other.caches, TRIALS).written(trial)
    api2.objects[f"{accounts}/s-0"] = {"metadata": {"name": "s-0", "namespace": "ns", "resourceVersion": "7"}}
    world = other.read("ns", "s")
    assert world is not None
    other.apply(world, Outcome(writes=[CreateIdentity("s-0", tuple(build_trial_identity(trial)))]))
    for _ in range(2):
        again = other.read("ns", "s")
        assert again is not None and again.identities == {"s-0": "foreign"}
    assert [c for c in api2.requests() if c[0] == "get"] == [("get", f"{accounts}/s-0")]


def test_a_pod_deleted_with_a_status_answer_is_gone_from_the_next_read() -> None:
    _, cluster = cached_cluster()
    assert cluster.caches is not None
    listed(cluster.caches, gpus=1, pods=[gpu_pod("s-0-pod", 12)])
    world = cluster.read("ns", "s")
    assert world is not None and "s-0" in world.pods
    cluster.apply(world, Outcome(writes=[DeleteJob("s-0", pods=("s-0-pod",))]))
    after = cluster.read("ns", "s")
    assert after is not None and after.pods == {}


def test_the_listener_hears_of_a_study_s_trials_jobs_pods_and_accounts_and_not_of_nodes() -> None:
    api = FakeApi()
    trial = {"kind": "HPOTrial", **child("s-0", 2)}
    other_study_pod = child("t-0-pod", 4, trial="t-0")
    other_study_pod["metadata"]["labels"][STUDY_LABEL] = "t"
    api.streams = {
        TRIALS_PATH: deque([[{"type": "ADDED", "object": trial}]]),
        JOBS_PATH: deque([[{"type": "ADDED", "object": child("s-1", 3, trial="s-1")}]]),
        PODS_PATH: deque([[{"type": "MODIFIED", "object": other_study_pod}]]),
        ACCOUNTS_PATH: deque([[{"type": "MODIFIED", "object": child("s-2", 5, trial="s-2")}]]),
        # The second node and pod follow the first on the same stream: once they are stored, the
        # first's change has been handed on.
        NODES_PATH: deque(
            [[{"type": "ADDED", "object": node("n1", 1, 2)}, {"type": "ADDED", "object": node("n2", 1, 3)}]]
        ),
        ALL_PODS: deque(
            [[{"type": "ADDED", "object": gpu_pod("p", 2)}, {"type": "ADDED", "object": gpu_pod("q", 3)}]]
        ),
    }
    caches = Caches(cast(Api, api), namespaces=("ns",))
    heard: list[tuple[str, str]] = []
    lock = threading.Lock()

    def listener(namespace: str, name: str) -> None:
        with lock:
            heard.append((namespace, name))

    caches.listen(listener)
    caches.start()
    try:
        caches.studies_listed([], "1")  # the engine's listing
        caches.wait_synced()
        wait_for(
            lambda: len(caches.nodes()) == 2 and len(caches.gpu_pods()) == 2,
            5.0,
            0.005,
            "node and pod events",
        )
        wait_for(lambda: len(heard) >= 4, 5.0, 0.005, "four changes")
        with lock:
            assert sorted(heard) == [("ns", "s"), ("ns", "s"), ("ns", "s"), ("ns", "t")]
        assert [p["metadata"]["name"] for p in caches.children(PODS, "ns", "t")] == ["t-0-pod"]
    finally:
        caches.stop()
        api.close()
    listed_paths = sorted(path for verb, path in api.calls if verb == "list")
    assert listed_paths == sorted([TRIALS_PATH, JOBS_PATH, PODS_PATH, ACCOUNTS_PATH, NODES_PATH, ALL_PODS])
