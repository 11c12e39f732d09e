"""The operator's metrics as Prometheus sees them: scraped over HTTP and parsed."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hpo_operator.kube.prometheus import (
    DECISION_LATENCY_BUCKETS,
    MetricsServer,
    OperatorMetrics,
    serve,
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class ApiError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"status {status}")
        self.status = status


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def metrics(clock: FakeClock) -> OperatorMetrics:
    return OperatorMetrics(clock=clock, wall_clock=lambda: 1_700_000_000.0)


@pytest.fixture
def server(metrics: OperatorMetrics) -> Iterator[MetricsServer]:
    running = serve(metrics, 0, 0, host="127.0.0.1", max_heartbeat_age=60)
    yield running
    running.close()


def get(port: int, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


def scrape(server: MetricsServer) -> Samples:
    code, content_type, text = get(server.port, "/metrics")
    assert code == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


def test_a_fresh_operator_exposes_its_heartbeat_and_no_study_series(server: MetricsServer) -> None:
    samples = scrape(server)
    assert value(samples, "hpo_operator_heartbeat_timestamp_seconds") == 1_700_000_000.0
    assert value(samples, "hpo_decision_latency_seconds_count") == 0.0
    assert not any(name.startswith(("hpo_study_", "hpo_studies", "hpo_trials_")) for name in names(samples))


def test_trial_counters_are_labelled_by_study_and_outcome(
    metrics: OperatorMetrics, server: MetricsServer
) -> None:
    for _ in range(3):
        metrics.trial_started("team-a", "resnet")
    metrics.trial_completed("team-a", "resnet")
    metrics.trial_pruned("team-a", "resnet")
    metrics.trial_pruned("team-a", "resnet")
    metrics.trial_failed("team-b", "resnet")
    metrics.trial_stopped("team-a", "resnet")
    metrics.trial_finished("team-a", "resnet", "completed")

    samples = scrape(server)
    assert value(samples, "hpo_trials_started_total", namespace="team-a", study="resnet") == 3.0
    finished = {labels: v for (name, labels), v in samples.items() if name == "hpo_trials_finished_total"}
    assert finished == {
        (("namespace", "team-a"), ("outcome", "completed"), ("study", "resnet")): 2.0,
        (("namespace", "team-a"), ("outcome", "pruned"), ("study", "resnet")): 2.0,
        (("namespace", "team-a"), ("outcome", "stopped"), ("study", "resnet")): 1.0,
        (("namespace", "team-b"), ("outcome", "failed"), ("study", "resnet")): 1.0,
    }


def test_an_unknown_outcome_is_refused(metrics: OperatorMetrics) -> None:
    with pytest.raises(ValueError, match="unknown trial outcome 'lost'"):
        metrics.trial_finished("ns", "s", "lost")  # type: ignore[arg-type]


def test_observe_study_sets_the_study_gauges_and_counts_phases(
    metrics: OperatorMetrics, server: MetricsServer
) -> None:
    metrics.observe_study(
        "team-a",
        "resnet",
        "Running",
        running=2,
        gpus=4,
        best=0.91,
        budget_ratio=0.25,
        metric="accuracy",
        trials={"running": 2, "completed": 1, "pruned": 5},
    )
    metrics.observe_study("team-a", "bert", "Running", running=1, gpus=1)
    metrics.observe_study("team-a", "old", "Succeeded", running=0, gpus=0, best=0.5, budget_ratio=0.9)

    samples = scrape(server)
    study = {"namespace": "team-a", "study": "resnet"}
    assert value(samples, "hpo_study_phase", **study, phase="Running") == 1.0
    for other in ("Pending", "Succeeded", "Failed"):
        assert value(samples, "hpo_study_phase", **study, phase=other) == 0.0
    assert value(samples, "hpo_study_running_trials", **study) == 2.0
    assert value(samples, "hpo_study_gpus_in_use", **study) == 4.0
    assert value(samples, "hpo_study_best_value", **study, metric="accuracy") == 0.91
    assert value(samples, "hpo_study_budget_used_ratio", **study) == 0.25
    assert value(samples, "hpo_study_trials", **study, phase="pruned") == 5.0
    assert value(samples, "hpo_studies", namespace="team-a", phase="Running") == 2.0
    assert value(samples, "hpo_studies", namespace="team-a", phase="Succeeded") == 1.0
    assert value(samples, "hpo_studies", namespace="team-a", phase="Pending") == 0.0
    # Nothing reported and no budget yet: no best value and no ratio, rather than a made-up 0.
    bert = {"namespace": "team-a", "study": "bert"}
    assert value(samples, "hpo_study_best_value", **bert, metric="") is None
    assert value(samples, "hpo_study_budget_used_ratio", **bert) is None


def test_a_studys_counters_exist_at_zero_once_it_is_observed(
    metrics: OperatorMetrics, server: MetricsServer
) -> None:
    """So that increase() over the counters counts a study's very first failed trial."""
    metrics.observe_study("ns", "s", "Running", running=0, gpus=0)
    samples = scrape(server)
    assert value(samples, "hpo_trials_started_total", namespace="ns", study="s") == 0.0
    assert value(samples, "hpo_reconcile_errors_total", namespace="ns", study="s") == 0.0
    for outcome in ("completed", "pruned", "failed", "stopped"):
        assert value(samples, "hpo_trials_finished_total", namespace="ns", study="s", outcome=outcome) == 0.0
    metrics.trial_failed("ns", "s")
    metrics.observe_study("ns", "s", "Running", running=0, gpus=0)  # later observations keep the counts
    samples = scrape(server)
    assert value(samples, "hpo_trials_finished_total", namespace="ns", study="s", outcome="failed") == 1.0


def test_a_later_observation_replaces_the_earlier_one(
    metrics: OperatorMetrics, server: MetricsServer
) -> None:
    metrics.observe_study("ns", "s", "Running", running=3, gpus=3, best=0.5, metric="mAP")
    metrics.observe_study("ns", "s", "Succeeded", running=0, gpus=0, best=0.7, metric="mAP")
    samples = scrape(server)
    assert value(samples, "hpo_study_phase", namespace="ns", study="s", phase="Running") == 0.0
    assert value(samples, "hpo_study_phase", namespace="ns", study="s", phase="Succeeded") == 1.0
    assert value(samples, "hpo_study_running_trials", namespace="ns", study="s") == 0.0
    assert value(samples, "hpo_study_best_value", namespace="ns", study="s", metric="mAP") == 0.7
    assert value(samples, "hpo_studies", namespace="ns", phase="Running") == 0.0


def test_forget_study_drops_every_series_of_that_study_only(
    metrics: OperatorMetrics, server: MetricsServer
) -> None:
    for name in ("gone", "kept"):
        metrics.observe_study("ns", name, "Running", running=1, gpus=1, best=1.0, budget_ratio=0.5)
        metrics.trial_started("ns", name)
        metrics.trial_pruned("ns", name)
        metrics.reconcile_error("ns", name)
    metrics.forget_study("ns", "gone")
    metrics.forget_study("ns", "never-seen")  # harmless

    samples = scrape(server)
    assert not [key for key in samples if ("study", "gone") in key[1]]
    assert value(samples, "hpo_trials_started_total", namespace="ns", study="kept") == 1.0
    assert value(samples, "hpo_reconcile_errors_total", namespace="ns", study="kept") == 1.0
    assert value(samples, "hpo_studies", namespace="ns", phase="Running") == 1.0


def test_an_unknown_phase_is_exposed_as_it_is(metrics: OperatorMetrics, server: MetricsServer) -> None:
    metrics.observe_study("ns", "s", "Stopping", running=0, gpus=0)
    samples = scrape(server)
    assert value(samples, "hpo_study_phase", namespace="ns", study="s", phase="Stopping") == 1.0
    assert value(samples, "hpo_study_phase", namespace="ns", study="s", phase="Running") == 0.0


def test_decision_latency_lands_in_buckets_from_10ms_to_60s(
    metrics: OperatorMetrics, server: MetricsServer
) -> None:
    for seconds in (0.004, 0.3, 45.0, 120.0):
        metrics.observe_decision_latency(seconds)
    samples = scrape(server)
    bucket = "hpo_decision_latency_seconds_bucket"
    assert DECISION_LATENCY_BUCKETS[0] == 0.01 and DECISION_LATENCY_BUCKETS[-1] == 60.0
    assert value(samples, bucket, le="0.01") == 1.0
    assert value(samples, bucket, le="0.5") == 2.0
    assert value(samples, bucket, le="60.0") == 3.0
    assert value(samples, bucket, le="+Inf") == 4.0
    assert value(samples, "hpo_decision_latency_seconds_count") == 4.0
    assert value(samples, "hpo_decision_latency_seconds_sum") == pytest.approx(165.304)


def test_reconcile_duration_is_a_histogram(metrics: OperatorMetrics, server: MetricsServer) -> None:
    metrics.observe_reconcile(0.02)
    samples = scrape(server)
    assert value(samples, "hpo_reconcile_duration_seconds_bucket", le="0.025") == 1.0
    assert value(samples, "hpo_reconcile_duration_seconds_count") == 1.0


def test_time_api_measures_requests_and_counts_errors_by_code(
    metrics: OperatorMetrics, clock: FakeClock, server: MetricsServer
) -> None:
    with metrics.time_api("GET", "hpotrials"):
        clock.now += 0.02
    with pytest.raises(ApiError), metrics.time_api("patch", "hpostudies"):
        clock.now += 0.2
        raise ApiError(409)
    with pytest.raises(ConnectionRefusedError), metrics.time_api("list", "pods"):
        raise ConnectionRefusedError()

    samples = scrape(server)
    duration = "hpo_kube_api_request_duration_seconds"
    assert value(samples, f"{duration}_count", verb="get", resource="hpotrials") == 1.0
    assert value(samples, f"{duration}_bucket", verb="get", resource="hpotrials", le="0.025") == 1.0
    assert value(samples, f"{duration}_bucket", verb="get", resource="hpotrials", le="0.01") == 0.0
    assert value(samples, f"{duration}_sum", verb="patch", resource="hpostudies") == pytest.approx(0.2)
    errors = "hpo_kube_api_errors_total"
    assert value(samples, errors, verb="patch", resource="hpostudies", code="409") == 1.0
    assert value(samples, errors, verb="list", resource="pods", code="<error>") == 1.0
    assert value(samples, errors, verb="get", resource="hpotrials", code="200") is None


def test_the_registry_is_the_operators_own(metrics: OperatorMetrics, server: MetricsServer) -> None:
    assert not [name for name in names(scrape(server)) if name.startswith(("python_", "process_"))]
    # A second operator object in the same process has its own series.
    other = OperatorMetrics()
    other.trial_started("ns", "s")
    assert value(scrape(server), "hpo_trials_started_total", namespace="ns", study="s") is None


def test_every_metric_follows_the_naming_conventions(metrics: OperatorMetrics, server: MetricsServer) -> None:
    metrics.observe_study(
        "ns", "s", "Running", running=1, gpus=1, best=1.0, budget_ratio=0.1, trials={"a": 1}
    )
    metrics.trial_started("ns", "s")
    metrics.trial_failed("ns", "s")
    metrics.reconcile_error("ns", "s")
    metrics.observe_api("get", "pods", 0.1, 500)
    _, _, text = get(server.port, "/metrics")
    # prometheus-client adds a <name>_created gauge beside each counter and histogram: the standard
    # exposition of their creation time, not metrics of their own.
    families = {
        family.name: family.type
        for family in text_string_to_metric_families(text)
        if not family.name.endswith("_created")
    }
    assert all(name.startswith("hpo_") for name in families)
    for name, kind in families.items():
        if kind == "counter":
            assert f"{name}_total" in text
        if kind == "histogram":
            assert name.endswith("_seconds")
    assert families == {
        "hpo_trials_started": "counter",
        "hpo_trials_finished": "counter",
        "hpo_reconcile_errors": "counter",
        "hpo_kube_api_errors": "counter",
        "hpo_decision_latency_seconds": "histogram",
        "hpo_reconcile_duration_seconds": "histogram",
        "hpo_kube_api_request_duration_seconds": "histogram",
        "hpo_study_phase": "gauge",
        "hpo_study_running_trials": "gauge",
        "hpo_study_gpus_in_use": "gauge",
        "hpo_study_trials": "gauge",
        "hpo_study_best_value": "gauge",
        "hpo_study_budget_used_ratio": "gauge",
        "hpo_studies": "gauge",
        "hpo_operator_heartbeat_timestamp_seconds": "gauge",
        "hpo_operator_leader": "gauge",
        "hpo_operator_watch_failures": "counter",
    }


def test_openmetrics_is_served_when_asked_for(server: MetricsServer) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/metrics", headers={"Accept": "application/openmetrics-text"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        assert response.read().decode().endswith("# EOF\n")


def test_healthz_follows_the_heartbeat(
    metrics: OperatorMetrics, clock: FakeClock, server: MetricsServer
) -> None:
    for port in (server.port, server.liveness_port):
        assert get(port, "/healthz")[:1] == (200,)
    clock.now += 61
    code, _, text = get(server.liveness_port, "/healthz")
    assert (code, text) == (503, "no heartbeat for 61s (limit 60s)\n")
    assert get(server.port, "/healthz")[0] == 503
    metrics.heartbeat()
    assert get(server.liveness_port, "/healthz")[0] == 200
    assert metrics.heartbeat_age() == 0.0


def test_the_liveness_port_serves_no_metrics_and_unknown_paths_are_404(server: MetricsServer) -> None:
    assert server.liveness_port != server.port
    assert get(server.liveness_port, "/metrics")[0] == 404
    assert get(server.port, "/nothing")[0] == 404


def test_one_port_can_serve_both(metrics: OperatorMetrics) -> None:
    running = serve(metrics, 0, host="127.0.0.1")
    try:
        assert running.liveness_port == running.port
        assert get(running.port, "/healthz")[0] == 200
        assert get(running.port, "/metrics")[0] == 200
    finally:
        running.close()
