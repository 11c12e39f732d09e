"""The operator's metrics seam: reconciles of fake worlds, their writes made on a fake API, and what
the operator's Prometheus registry says afterwards."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

import pytest
from kubernetes.client import Configuration

from hpo_operator.kube.api import Api, ApiError, ns_path, verb_and_resource
from hpo_operator.kube.engine import Engine, EngineSettings
from hpo_operator.kube.observe import to_rfc3339
from hpo_operator.kube.policy import TrialPolicy
from hpo_operator.kube.prometheus import OperatorMetrics
from hpo_operator.kube.reconcile import reconcile
from hpo_operator.kube.stopping import SCALED_DOWN_AT
from hpo_operator.kube.study_metrics import PrometheusMetrics
from hpo_operator.kube.world import Cluster
from hpo_operator.kube.writes import CreateJob, CreateTrial, Event, World
from tests.support.kube_world import T0, job, pod, running, study, trial, world

JSON = dict[str, Any]
STUDY = {"namespace": "ns", "study": "s"}


class FakeApi:
    """The writes Cluster.apply makes, kept by path; a second create of the same object is a 409."""

    def __init__(self) -> None:
        self.created: dict[str, JSON] = {}
        self.patches: list[tuple[str, Any]] = []
        self.deleted: list[str] = []

    def create(self, path: str, body: JSON) -> JSON | None:
        key = f"{path}/{body['metadata']['name']}"
        if key in self.created:
            return None
        self.created[key] = body
        return {**body, "metadata": {**body["metadata"], "uid": "uid-" + body["metadata"]["name"]}}

    def get(self, path: str) -> JSON:
        return self.created.get(path) or {"metadata": {"name": path.rsplit("/", 1)[-1], "uid": "u"}}

    def patch(self, path: str, body: Any, content_type: str = "") -> JSON:
        self.patches.append((path, body))
        return {}

    def delete(self, path: str, propagation: str = "Background") -> bool:
        self.deleted.append(path)
        return True


class Harness:
    """A Cluster on a fake API and the seam, both on a fixed clock; ``run`` reconciles like the engine."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.metrics = OperatorMetrics()
        self.seam = PrometheusMetrics(self.metrics, clock=lambda: self.now)
        self.api = FakeApi()
        self.cluster = Cluster(cast(Api, self.api), clock=lambda: self.now, metrics=self.seam)

    def run(self, w: World, write_at: float, took: float = 0.05) -> None:
        outcome = reconcile(w, self.now)
        self.now = write_at
        self.cluster.apply(w, outcome)
        self.seam.observe(w, outcome, took)

    def value(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)


def test_a_prune_and_the_start_it_frees_count_once_with_their_latency_from_the_report() -> None:
    h = Harness(T0 + 4)
    t0, t1 = trial(0, (1, 0.9, 2)), trial(1, (1, 0.5, 3))  # s-1 reported at T0 + 3 and misses the cut
    w = world(study(parallelTrials=2), t0, t1, **running(t0, t1))
    h.run(w, write_at=T0 + 4.5)

    assert h.value("hpo_trials_finished_total", **STUDY, outcome="pruned") == 1
    assert h.value("hpo_trials_finished_total", **STUDY, outcome="completed") == 0
    assert h.value("hpo_trials_started_total", **STUDY) == 1  # s-2, in the slot s-1 freed
    assert h.value("hpo_decision_latency_seconds_count") == 2
    assert h.value("hpo_decision_latency_seconds_sum") == pytest.approx(1.5 + 1.5)
    assert h.value("hpo_reconcile_duration_seconds_count") == 1
    # The pruned trial's Job is scaled to no pod and stamped; nothing is deleted (the Job is kept).
    job_path = "/apis/batch/v1/namespaces/ns/jobs/s-1"
    stamp = {SCALED_DOWN_AT: to_rfc3339(T0 + 4, micro=True)}
    scaled = {"metadata": {"annotations": stamp}, "spec": {"parallelism": 0, "activeDeadlineSeconds": None}}
    assert (job_path, scaled) in h.api.patches
    assert h.api.deleted == []

    # The same world reconciled again (a stale read): the verdict's patch repeats, the trial's create
    # is a 409; neither counts again and no latency is observed.
    h.now = T0 + 4
    h.run(w, write_at=T0 + 5)
    assert h.value("hpo_trials_finished_total", **STUDY, outcome="pruned") == 1
    assert h.value("hpo_trials_started_total", **STUDY) == 1
    assert h.value("hpo_decision_latency_seconds_count") == 2
    assert h.value("hpo_reconcile_duration_seconds_count") == 2


def test_a_completed_trial_counts_and_the_next_start_is_timed_from_its_last_report() -> None:
    t0 = trial(0, (1, 0.5, 2), (3, 0.7, 4), (9, 0.8, 10))
    h = Harness(T0 + 11)
    w = world(study(parallelTrials=1), t0, jobs=[job("s-0")], pods={"s-0": [pod("s-0", "Succeeded")]})
    h.run(w, write_at=T0 + 10.25)
    assert h.value("hpo_trials_finished_total", **STUDY, outcome="completed") == 1
    assert h.value("hpo_trials_started_total", **STUDY) == 1
    assert h.value("hpo_decision_latency_seconds_count") == 1
    assert h.value("hpo_decision_latency_seconds_sum") == pytest.approx(0.25)


def test_starts_without_an_end_have_no_latency_and_a_failed_trial_without_reports_has_none() -> None:
    h = Harness(T0)
    h.run(world(study(), free=3), write_at=T0 + 0.1)
    assert h.value("hpo_trials_started_total", **STUDY) == 3
    assert h.value("hpo_decision_latency_seconds_count") == 0

    h = Harness(T0)
    t0 = trial(0)
    failed = world(
        study(parallelTrials=1), t0, jobs=[job("s-0", "Failed")], pods={"s-0": [pod("s-0", "Failed", 1)]}
    )
    h.run(failed, write_at=T0 + 1)
    assert h.value("hpo_trials_finished_total", **STUDY, outcome="failed") == 1
    assert h.value("hpo_trials_started_total", **STUDY) == 1
    assert h.value("hpo_decision_latency_seconds_count") == 0


def test_the_study_gauges_follow_the_status_the_reconcile_wrote() -> None:
    t0, t1 = trial(0, (1, 0.9, 2)), trial(1, (1, 0.5, 3))
    h = Harness(T0 + 4)
    h.run(world(study(parallelTrials=2, gpusPerTrial=2), t0, t1, **running(t0, t1)), write_at=T0 + 4.5)
    assert h.value("hpo_study_phase", **STUDY, phase="Running") == 1
    assert h.value("hpo_study_phase", **STUDY, phase="Succeeded") == 0
    assert h.value("hpo_study_running_trials", **STUDY) == 1  # s-0 runs; s-1 pruned, s-2 pending
    assert h.value("hpo_study_gpus_in_use", **STUDY) == 2
    assert h.value("hpo_study_trials", **STUDY, phase="pruned") == 1
    assert h.value("hpo_study_trials", **STUDY, phase="pending") == 1
    assert h.value("hpo_study_trials", **STUDY, phase="total") is None
    assert h.value("hpo_study_best_value", **STUDY, metric="accuracy") == 0.9
    # 90 s of budget, measured up to the seam's clock (4.5 s in).
    assert h.value("hpo_study_budget_used_ratio", **STUDY) == pytest.approx(4.5 / 90)


def test_a_finished_study_stops_what_still_runs_and_reports_its_final_budget() -> None:
    status = {
        "phase": "Succeeded",
        "trials": {"running": 1, "completed": 2, "total": 3},
        "best": {"value": 0.8},
        "budget": {"startedAt": to_rfc3339(T0, micro=True), "budgetSeconds": 90.0, "usedSeconds": 45.0,
                   "finishedAt": to_rfc3339(T0 + 45, micro=True)},
    }  # fmt: skip
    t2 = trial(2, (1, 0.3, 40))
    h = Harness(T0 + 60)
    h.run(world(study(status=status), t2, **running(t2)), write_at=T0 + 60)
    assert h.value("hpo_trials_finished_total", **STUDY, outcome="stopped") == 1
    assert h.value("hpo_decision_latency_seconds_count") == 0
    assert h.value("hpo_study_phase", **STUDY, phase="Succeeded") == 1
    assert h.value("hpo_study_budget_used_ratio", **STUDY) == pytest.approx(0.5)
    assert h.value("hpo_study_best_value", **STUDY, metric="accuracy") == 0.8


# --- the engine ---------------------------------------------------------------------------------------


class StubCluster:
    """read() answers the given world (None: the study is gone) or raises; apply() does nothing."""

    def __init__(self, w: World | None, error: Exception | None = None) -> None:
        self.world, self.error = w, error
        self.api = self
        self.caches = None
        self.policy = TrialPolicy()
        self.applied: list[Any] = []
        self.events: list[tuple[JSON, Any]] = []
        self.studies: list[JSON] = [{"metadata": {"namespace": "ns", "name": "s"}}]

    def list_page(self, path: str) -> JSON:
        return {"items": self.list(path)}

    def read(self, namespace: str, name: str) -> World | None:
        if self.error is not None:
            raise self.error
        return self.world

    def apply(self, w: World, outcome: Any) -> None:
        self.applied.append(outcome)

    def list(self, path: str) -> list[JSON]:
        return [
            s
            for s in self.studies
            if path.endswith("/hpostudies") or f"/{s['metadata']['namespace']}/" in path
        ]

    def event(self, study: JSON, event: Any) -> None:
        self.events.append((study, event))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def engine_with(cluster: StubCluster, metrics: OperatorMetrics) -> Engine:
    return Engine(
        cast(Cluster, cluster),
        settings=EngineSettings(workers=1, resync_seconds=0.05, error_backoff_seconds=60),
        clock=lambda: T0,
        metrics=PrometheusMetrics(metrics, clock=lambda: T0),
    )


def test_a_reconcile_beats_the_heartbeat_and_a_deleted_study_loses_its_series() -> None:
    clock = Clock()
    metrics = OperatorMetrics(clock=clock)
    cluster = StubCluster(world(study(), free=0))
    engine = engine_with(cluster, metrics)
    clock.now = 50.0
    engine.reconcile_once(("ns", "s"))
    assert metrics.heartbeat_age() == 0
    assert metrics.registry.get_sample_value("hpo_study_phase", {**STUDY, "phase": "Running"}) == 1

    engine.study_event("DELETED", {"metadata": {"namespace": "ns", "name": "s"}})
    assert metrics.registry.get_sample_value("hpo_study_phase", {**STUDY, "phase": "Running"}) is None
    assert metrics.registry.get_sample_value("hpo_trials_started_total", STUDY) is None

    # A study found gone by its reconcile (its deletion missed) is forgotten too.
    engine.reconcile_once(("ns", "s"))
    assert metrics.registry.get_sample_value("hpo_study_phase", {**STUDY, "phase": "Running"}) == 1
    cluster.world = None
    engine.reconcile_once(("ns", "s"))
    assert metrics.registry.get_sample_value("hpo_study_phase", {**STUDY, "phase": "Running"}) is None


def test_a_failed_reconcile_counts_an_error_and_the_resync_loop_beats() -> None:
    clock = Clock()
    metrics = OperatorMetrics(clock=clock)
    engine = engine_with(StubCluster(None, ApiError(500, "GET", "/x", "boom")), metrics)
    clock.now = 500.0

    async def scenario() -> None:
        await engine.start()
        try:
            for _ in range(200):
                errors = metrics.registry.get_sample_value("hpo_reconcile_errors_total", STUDY)
                if errors and metrics.heartbeat_age() == 0:
                    return
                await asyncio.sleep(0.01)
            raise AssertionError(f"errors {errors}, heartbeat age {metrics.heartbeat_age()}")
        finally:
            await engine.stop()

    asyncio.run(scenario())
    assert metrics.registry.get_sample_value("hpo_reconcile_errors_total", STUDY) == 1


# --- the API client ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "labels"),
    [
        ("GET", "/api/v1/nodes", ("list", "nodes")),
        ("GET", "/api/v1/namespaces/ns/pods", ("list", "pods")),
        ("GET", "/apis/hpo.dev/v1alpha1/hpostudies", ("list", "hpostudies")),
        ("GET", "/apis/hpo.dev/v1alpha1/namespaces/ns/hpostudies/s", ("get", "hpostudies")),
        ("PATCH", "/apis/hpo.dev/v1alpha1/namespaces/ns/hpotrials/s-0/status", ("patch", "hpotrials")),
        ("POST", "/apis/batch/v1/namespaces/ns/jobs", ("create", "jobs")),
        ("DELETE", "/api/v1/namespaces/ns/pods/p", ("delete", "pods")),
        ("GET", "/api/v1/namespaces/ns", ("get", "namespaces")),
        ("GET", "/version", ("get", "version")),
    ],
)
def test_requests_are_labelled_by_verb_and_resource(method: str, path: str, labels: tuple[str, str]) -> None:
    assert verb_and_resource(method, path) == labels


def test_a_path_names_one_namespace_or_every_one() -> None:
    assert ns_path("", "v1", "ns", "pods", "p") == "/api/v1/namespaces/ns/pods/p"
    assert ns_path("batch", "v1", "ns", "jobs") == "/apis/batch/v1/namespaces/ns/jobs"
    assert ns_path("", "v1", "", "pods") == "/api/v1/pods"
    assert ns_path("hpo.dev", "v1alpha1", "", "hpotrials") == "/apis/hpo.dev/v1alpha1/hpotrials"


@pytest.fixture
def api_server() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = self.path.startswith("/api/v1/namespaces/ns/pods")
            body = json.dumps({"items": []} if found else {"kind": "Status", "code": 404}).encode()
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_every_api_request_is_timed_and_a_failed_one_counted_by_its_code(api_server: str) -> None:
    metrics = OperatorMetrics()
    configuration = Configuration()
    configuration.host = api_server
    api = Api(configuration, timeout=5, timer=metrics)
    assert api.list("/api/v1/namespaces/ns/pods") == []
    assert api.get_or_none("/api/v1/namespaces/ns/serviceaccounts/sa") is None
    value = metrics.registry.get_sample_value
    assert value("hpo_kube_api_request_duration_seconds_count", {"verb": "list", "resource": "pods"}) == 1
    get_sa = {"verb": "get", "resource": "serviceaccounts"}
    assert value("hpo_kube_api_request_duration_seconds_count", get_sa) == 1
    assert value("hpo_kube_api_errors_total", {**get_sa, "code": "404"}) == 1
    assert value("hpo_kube_api_errors_total", {"verb": "list", "resource": "pods", "code": "404"}) is None


def test_a_resumed_run_is_the_same_trial_going_on_not_a_new_start() -> None:
    h = Harness(T0 + 4)
    w = world(study(), trial(0, (1, 0.9, 2), phase="Paused"))
    h.seam.written(w, CreateJob("s-0", {"metadata": {"name": "s-0-run1"}}), T0 + 4)
    assert not h.value("hpo_trials_started_total", **STUDY)
    h.seam.written(w, CreateJob("s-0", {"metadata": {"name": "s-0"}}), T0 + 4)  # its first Job
    assert h.value("hpo_trials_started_total", **STUDY) == 1


def test_a_trial_whose_job_waits_for_its_accounts_token_starts_once_with_its_job() -> None:
    h = Harness(T0 + 4)
    w = world(study())
    h.seam.written(w, CreateTrial({"metadata": {"name": "s-1"}}, None, Event("TrialStarted", "")), T0 + 4)
    assert not h.value("hpo_trials_started_total", **STUDY)
    h.seam.written(w, CreateJob("s-1", {"metadata": {"name": "s-1"}}), T0 + 5)
    assert h.value("hpo_trials_started_total", **STUDY) == 1


def test_a_reconcile_that_raises_fails_its_study_once_with_the_error_and_is_not_retried(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import hpo_operator.kube.engine as engine_module

    def broken(*_: Any) -> Any:
        raise OverflowError("int too large to convert to float")

    monkeypatch.setattr(engine_module, "reconcile", broken)
    cluster = StubCluster(world(study(), free=0))
    engine = engine_with(cluster, OperatorMetrics())
    assert engine.reconcile_once(("ns", "s")) is None
    assert engine.reconcile_once(("ns", "s")) is None
    outcome = cluster.applied[0]
    assert outcome.status["phase"] == "Failed" and outcome.writes == []
    invalid = next(c for c in outcome.status["conditions"] if c["type"] == "Invalid")
    assert invalid["reason"] == "ReconcileError" and "OverflowError: int too large" in invalid["message"]
    assert len([r for r in caplog.records if "marked Failed" in r.getMessage()]) == 1
    # A study already finished is left as it is.
    done = StubCluster(world(study(status={"phase": "Succeeded"}), free=0))
    engine_with(done, OperatorMetrics()).reconcile_once(("ns", "s"))
    assert done.applied[0].status is None and done.applied[0].writes == []


def test_a_study_no_operator_serves_gets_one_warning_event_from_an_operator_that_sees_it() -> None:
    cluster = StubCluster(None)
    old, fresh = to_rfc3339(T0 - 120), to_rfc3339(T0 - 1)
    cluster.studies = [
        {"metadata": {"namespace": "team-a", "name": "served", "uid": "1", "creationTimestamp": old}},
        {"metadata": {"namespace": "team-b", "name": "lost", "uid": "2", "creationTimestamp": old}},
        {"metadata": {"namespace": "team-b", "name": "new", "uid": "3", "creationTimestamp": fresh}},
        {"metadata": {"namespace": "team-c", "name": "other", "uid": "4", "creationTimestamp": old},
         "status": {"phase": "Running"}},
    ]  # fmt: skip
    settings = EngineSettings(resync_seconds=30)
    engine = Engine(cast(Cluster, cluster), namespaces=("team-a",), settings=settings, clock=lambda: T0)
    engine._tell_unserved()
    engine._tell_unserved()
    assert [(s["metadata"]["name"], e.reason, e.type) for s, e in cluster.events] == [
        ("lost", "NotServed", "Warning")
    ]
    assert "team-a" in cluster.events[0][1].message
