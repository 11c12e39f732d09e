"""The operator's Prometheus metrics, on a registry of their own, and its /metrics and /healthz server.

The operator owns one :class:`OperatorMetrics` and calls it as things happen; :func:`serve` exposes
it over HTTP. Every series of a study carries the labels ``namespace`` and ``study``;
:meth:`OperatorMetrics.forget_study` drops them all when the study is deleted.

What each metric means (docs/observability.md has the alerts and dashboard built on them):

Per study, set by :meth:`OperatorMetrics.observe_study` after every reconcile (gauges):

``hpo_study_phase{namespace, study, phase}``
    1 for the study's current phase, 0 for the other known phases (Pending, Running, Succeeded,
    Failed), as kube-state-metrics does for pods.
``hpo_study_running_trials{namespace, study}``
    Trials of the study whose pods run now.
``hpo_study_gpus_in_use{namespace, study}``
    ``nvidia.com/gpu`` held by the study's running trials.
``hpo_study_trials{namespace, study, phase}``
    Trials by phase as the study's status counts them (running, completed, pruned, failed, ...);
    it survives an operator restart, unlike the counters below.
``hpo_study_best_value{namespace, study, metric}``
    The best value of the study's metric so far (absent until a trial reported).
``hpo_study_budget_used_ratio{namespace, study}``
    Wall-clock time used over the time budget: 0 at the start, 1 at the deadline.

Across studies (gauges, computed from the per-study state at scrape time):

``hpo_studies{namespace, phase}``
    Studies in each phase.
``hpo_operator_heartbeat_timestamp_seconds``
    Unix time of the operator's last :meth:`OperatorMetrics.heartbeat`.

Counters, since this process started:

``hpo_trials_started_total{namespace, study}``
    Trials the operator started (HPOTrial and Job created).
``hpo_trials_finished_total{namespace, study, outcome}``
    Trials that ended, by ``outcome``: ``completed`` (trained to the maximum resource), ``pruned``
    (stopped by ASHA), ``failed`` (the pod failed) or ``stopped`` (at the deadline or study end).
``hpo_reconcile_errors_total{namespace, study}``
    Reconciles that raised (each is retried).
``hpo_kube_api_errors_total{verb, resource, code}``
    Kubernetes API requests that failed; ``code`` is the HTTP status, or ``<error>`` when no answer
    came (connection refused, timeout).

Histograms:

``hpo_decision_latency_seconds``
    From a trial's report (its ``time``) to the action it caused being written (a prune, the next
    trial's start); buckets 10 ms to 60 s.
``hpo_reconcile_duration_seconds``
    One reconcile of one study: read, decide, write.
``hpo_kube_api_request_duration_seconds{verb, resource}``
    Kubernetes API requests, timed by :meth:`OperatorMetrics.time_api`; ``verb`` is lower case
    (get, list, create, patch, delete), ``resource`` the plural (hpotrials, jobs, pods, ...).

Liveness: ``/healthz`` answers 200 while the last heartbeat is younger than ``max_heartbeat_age``
seconds, else 503; the operator calls :meth:`OperatorMetrics.heartbeat` from a loop that runs
only while it works (its periodic resync, and each reconcile that succeeded), so a hung event loop
fails the probe.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Final, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

STUDY_PHASES: Final = ("Pending", "Running", "Succeeded", "Failed")
TrialOutcome = Literal["completed", "pruned", "failed", "stopped"]
TRIAL_OUTCOMES: Final[tuple[TrialOutcome, ...]] = ("completed", "pruned", "failed", "stopped")

DECISION_LATENCY_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Seconds: a decision normally lands within a reconcile (tens of ms); a minute means a stuck queue."""
API_DURATION_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Seconds: API calls take milliseconds; 30 s is the client's timeout."""
RECONCILE_DURATION_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Seconds: a reconcile is a handful of API calls; more than a minute means the API is struggling."""
DEFAULT_MAX_HEARTBEAT_AGE: Final = 120.0
"""Seconds without a heartbeat before /healthz fails: four of the operator's 30 s resyncs."""

NO_ANSWER: Final = "<error>"


@dataclass(frozen=True)
class StudyState:
    """What the last reconcile of one study saw; the gauges are computed from these at scrape time."""

    phase: str
    running_trials: int
    gpus_in_use: float
    best_value: float | None = None
    metric: str = ""
    budget_used_ratio: float | None = None
    trials: Mapping[str, int] = field(default_factory=dict)


class OperatorMetrics:
    """Every metric of the operator, on ``self.registry``; thread-safe.

    ``clock`` (monotonic seconds) measures heartbeat ages and API durations; ``wall_clock`` (Unix
    seconds) stamps the heartbeat gauge. Tests inject both.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._studies: dict[tuple[str, str], StudyState] = {}
        self._heartbeat = clock()
        self._heartbeat_wall = wall_clock()

        study = ("namespace", "study")
        self._started = Counter(
            "hpo_trials_started",
            "Trials the operator started (HPOTrial and Job created).",
            study,
            registry=self.registry,
        )
        self._finished = Counter(
            "hpo_trials_finished",
            "Trials that ended, by outcome: completed, pruned, failed or stopped.",
            (*study, "outcome"),
            registry=self.registry,
        )
        self._reconcile_errors = Counter(
            "hpo_reconcile_errors",
            "Reconciles of a study that raised; each is retried.",
            study,
            registry=self.registry,
        )
        self._decision_latency = Histogram(
            "hpo_decision_latency_seconds",
            "From a trial's report to the action it caused being written.",
            buckets=DECISION_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._reconcile_duration = Histogram(
            "hpo_reconcile_duration_seconds",
            "One reconcile of one study: read, decide, write.",
            buckets=RECONCILE_DURATION_BUCKETS,
            registry=self.registry,
        )
        self._api_duration = Histogram(
            "hpo_kube_api_request_duration_seconds",
            "Kubernetes API requests by verb and resource, failed ones included.",
            ("verb", "resource"),
            buckets=API_DURATION_BUCKETS,
            registry=self.registry,
        )
        self._api_errors = Counter(
            "hpo_kube_api_errors",
            "Kubernetes API requests that failed, by HTTP status code (<error>: no answer).",
            ("verb", "resource", "code"),
            registry=self.registry,
        )
        self._watch_failures = Counter(
            "hpo_operator_watch_failures",
            "Times kopf ended on a failed watch and the operator started it again in the same process.",
            registry=self.registry,
        )
        self._leader = Gauge(
            "hpo_operator_leader",
            "1 while this replica reconciles: it holds the leader Lease, or runs without leader election.",
            registry=self.registry,
        )
        self.registry.register(_StudyCollector(self))

    # --- trials -----------------------------------------------------------------------------------

    def trial_started(self, namespace: str, study: str) -> None:
        self._started.labels(namespace, study).inc()

    def trial_finished(self, namespace: str, study: str, outcome: TrialOutcome) -> None:
        if outcome not in TRIAL_OUTCOMES:
            raise ValueError(
                f"unknown trial outcome {outcome!r}; expected one of {', '.join(TRIAL_OUTCOMES)}"
            )
        self._finished.labels(namespace, study, outcome).inc()

    def trial_completed(self, namespace: str, study: str) -> None:
        self.trial_finished(namespace, study, "completed")

    def trial_pruned(self, namespace: str, study: str) -> None:
        self.trial_finished(namespace, study, "pruned")

    def trial_failed(self, namespace: str, study: str) -> None:
        self.trial_finished(namespace, study, "failed")

    def trial_stopped(self, namespace: str, study: str) -> None:
        self.trial_finished(namespace, study, "stopped")

    # --- studies ----------------------------------------------------------------------------------

    def observe_study(
        self,
        namespace: str,
        study: str,
        phase: str,
        running: int,
        gpus: float,
        best: float | None = None,
        budget_ratio: float | None = None,
        *,
        metric: str = "",
        trials: Mapping[str, int] | None = None,
    ) -> None:
        """The state of one study after a reconcile; replaces what was observed of it before.

        ``best`` is the best value of ``metric`` so far (None: nothing reported yet);
        ``budget_ratio`` is used seconds over budget seconds (None: the budget is not known yet);
        ``trials`` counts trials by phase as the study's status does. The first observation of a
        study also creates its counters at 0.
        """
        state = StudyState(
            phase=phase,
            running_trials=running,
            gpus_in_use=gpus,
            best_value=best,
            metric=metric,
            budget_used_ratio=budget_ratio,
            trials=dict(trials or {}),
        )
        with self._lock:
            new = (namespace, study) not in self._studies
            self._studies[(namespace, study)] = state
        if new:
            # The study's counters start at 0, so that increase() and rate() see its first trial end.
            self._started.labels(namespace, study)
            self._reconcile_errors.labels(namespace, study)
            for outcome in TRIAL_OUTCOMES:
                self._finished.labels(namespace, study, outcome)

    def forget_study(self, namespace: str, study: str) -> None:
        """Drop every series of a deleted study, counters included."""
        with self._lock:
            self._studies.pop((namespace, study), None)
        for counter, extra in (
            (self._started, ()),
            (self._reconcile_errors, ()),
            *((self._finished, (outcome,)) for outcome in TRIAL_OUTCOMES),
        ):
            with contextlib.suppress(KeyError):
                counter.remove(namespace, study, *extra)

    def reconcile_error(self, namespace: str, study: str) -> None:
        self._reconcile_errors.labels(namespace, study).inc()

    def observe_reconcile(self, seconds: float) -> None:
        self._reconcile_duration.observe(seconds)

    def observe_decision_latency(self, seconds: float) -> None:
        """Seconds from a report (its ``time``) to the write of the action it caused."""
        self._decision_latency.observe(max(0.0, seconds))

    # --- the Kubernetes API -----------------------------------------------------------------------

    def observe_api(self, verb: str, resource: str, seconds: float, code: int | str | None = None) -> None:
        """One API request; ``code`` is the HTTP status of a failed one (None: it succeeded)."""
        self._api_duration.labels(verb.lower(), resource).observe(seconds)
        if code is not None:
            self._api_errors.labels(verb.lower(), resource, str(code)).inc()

    @contextlib.contextmanager
    def time_api(self, verb: str, resource: str) -> Iterator[None]:
        """Time the request in the block; an exception counts as an error and propagates.

        The error's ``status`` attribute (an int, as on the operator's ApiError) is the code;
        an exception without one (no answer) counts as ``<error>``.
        """
        started = self._clock()
        try:
            yield
        except BaseException as err:
            status = getattr(err, "status", None)
            code = status if isinstance(status, int) else NO_ANSWER
            self.observe_api(verb, resource, self._clock() - started, code)
            raise
        self.observe_api(verb, resource, self._clock() - started)

    def watches_failed(self) -> None:
        self._watch_failures.inc()

    def set_leader(self, leading: bool) -> None:
        self._leader.set(1 if leading else 0)

    # --- liveness ---------------------------------------------------------------------------------

    def heartbeat(self) -> None:
        """The operator is working; /healthz stays healthy for ``max_heartbeat_age`` from now."""
        with self._lock:
            self._heartbeat = self._clock()
            self._heartbeat_wall = self._wall_clock()

    def heartbeat_age(self) -> float:
        """Seconds since the last heartbeat (or since this object was made)."""
        with self._lock:
            return self._clock() - self._heartbeat

    # --- for the collector ------------------------------------------------------------------------

    def _snapshot(self) -> tuple[dict[tuple[str, str], StudyState], float]:
        with self._lock:
            return dict(self._studies), self._heartbeat_wall


class _StudyCollector(Collector):
    """The gauges computed from the per-study states, so a forgotten study leaves no series behind."""

    def __init__(self, metrics: OperatorMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        studies, heartbeat = self._metrics._snapshot()
        families = self._families()
        phase, running, gpus, trials, best, budget, by_phase, beat = families
        counts: dict[tuple[str, str], int] = {}
        for (namespace, name), state in sorted(studies.items()):
            phases = (*STUDY_PHASES, state.phase) if state.phase not in STUDY_PHASES else STUDY_PHASES
            for p in phases:
                phase.add_metric([namespace, name, p], 1.0 if p == state.phase else 0.0)
                counts.setdefault((namespace, p), 0)
            counts[(namespace, state.phase)] += 1
            running.add_metric([namespace, name], float(state.running_trials))
            gpus.add_metric([namespace, name], float(state.gpus_in_use))
            for trial_phase, count in sorted(state.trials.items()):
                trials.add_metric([namespace, name, trial_phase], float(count))
            if state.best_value is not None:
                best.add_metric([namespace, name, state.metric], state.best_value)
            if state.budget_used_ratio is not None:
                budget.add_metric([namespace, name], state.budget_used_ratio)
        for (namespace, p), count in sorted(counts.items()):
            by_phase.add_metric([namespace, p], float(count))
        beat.add_metric([], heartbeat)
        return families

    @staticmethod
    def _families() -> list[GaugeMetricFamily]:
        study = ["namespace", "study"]
        return [
            GaugeMetricFamily(
                "hpo_study_phase",
                "1 for the study's current phase, 0 for the others.",
                labels=[*study, "phase"],
            ),
            GaugeMetricFamily(
                "hpo_study_running_trials", "Trials of the study whose pods run now.", labels=study
            ),
            GaugeMetricFamily(
                "hpo_study_gpus_in_use", "nvidia.com/gpu held by the study's running trials.", labels=study
            ),
            GaugeMetricFamily(
                "hpo_study_trials",
                "Trials by phase, as the study's status counts them.",
                labels=[*study, "phase"],
            ),
            GaugeMetricFamily(
                "hpo_study_best_value",
                "The best value of the study's metric so far.",
                labels=[*study, "metric"],
            ),
            GaugeMetricFamily(
                "hpo_study_budget_used_ratio",
                "Wall-clock time used over the study's time budget (1 = the deadline).",
                labels=study,
            ),
            GaugeMetricFamily("hpo_studies", "Studies in each phase.", labels=["namespace", "phase"]),
            GaugeMetricFamily(
                "hpo_operator_heartbeat_timestamp_seconds", "Unix time of the operator's last heartbeat."
            ),
        ]


# --- HTTP -------------------------------------------------------------------------------------------


@dataclass
class MetricsServer:
    """The running HTTP servers; ``port`` and ``liveness_port`` are the bound ports (useful with 0)."""

    servers: list[ThreadingHTTPServer]
    threads: list[threading.Thread]

    @property
    def port(self) -> int:
        return int(self.servers[0].server_address[1])

    @property
    def liveness_port(self) -> int:
        return int(self.servers[-1].server_address[1])

    def close(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()
        for thread in self.threads:
            thread.join()


def serve(
    metrics: OperatorMetrics,
    port: int,
    liveness_port: int | None = None,
    *,
    host: str = "0.0.0.0",
    max_heartbeat_age: float = DEFAULT_MAX_HEARTBEAT_AGE,
) -> MetricsServer:
    """Serve /metrics and /healthz on ``port``, and /healthz alone on ``liveness_port`` when given.

    ``liveness_port`` equal to ``port`` (or None) serves both paths on one port.

    Each server runs in a daemon thread; port 0 picks a free port (see ``MetricsServer.port``).
    """
    handler = _handler(metrics, max_heartbeat_age)
    servers = [ThreadingHTTPServer((host, port), handler(with_metrics=True))]
    if liveness_port is not None and (liveness_port == 0 or liveness_port != port):
        servers.append(ThreadingHTTPServer((host, liveness_port), handler(with_metrics=False)))
    threads = []
    for server in servers:
        server.daemon_threads = True
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="hpo-metrics-http", daemon=True
        )
        thread.start()
        threads.append(thread)
    return MetricsServer(servers, threads)


def _handler(
    metrics: OperatorMetrics, max_heartbeat_age: float
) -> Callable[..., type[BaseHTTPRequestHandler]]:
    def make(with_metrics: bool) -> type[BaseHTTPRequestHandler]:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    age = metrics.heartbeat_age()
                    if age <= max_heartbeat_age:
                        self._send(200, b"ok\n", "text/plain; charset=utf-8")
                    else:
                        text = f"no heartbeat for {age:.0f}s (limit {max_heartbeat_age:.0f}s)\n"
                        self._send(503, text.encode(), "text/plain; charset=utf-8")
                elif path == "/metrics" and with_metrics:
                    encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                    self._send(200, encoder(metrics.registry), content_type)
                else:
                    self._send(404, b"not found\n", "text/plain; charset=utf-8")

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # a scrape every few seconds is not worth a log line

        return Handler

    return make
