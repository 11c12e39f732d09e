"""`hpo operator`: run the operator in this process, against a kubeconfig or in-cluster."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import kopf
from kubernetes.client import Configuration

from . import handlers  # noqa: F401  (registers the handlers with kopf)
from .api import Api, load_configuration
from .caches import Caches
from .engine import Engine, EngineSettings
from .leader import LeaderElector
from .policy import TrialPolicy
from .prometheus import MetricsServer, OperatorMetrics, serve
from .study_metrics import PrometheusMetrics
from .world import Cluster

log = logging.getLogger("hpo_operator")
RESTART_FIRST_SECONDS = 1.0
RESTART_LONGEST_SECONDS = 30.0
RESTART_STABLE_SECONDS = 60.0  # a run this long starts the delays over
MAX_STUCK_KOPF_THREADS = 5  # runs of kopf left hanging before the process gives up
KOPF_EXIT_GRACE_SECONDS = 6.0  # from kopf's cleanup to the end of kopf.run (it waits 5 s itself)


def connection_info(configuration: Configuration) -> kopf.ConnectionInfo:
    token = configuration.get_api_key_with_prefix("authorization") or configuration.get_api_key_with_prefix(
        "BearerToken"
    )
    scheme, _, value = (token or "").partition(" ")
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        scheme=scheme or None,
        token=value or None,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
    )


@dataclass(frozen=True)
class LeaderSettings:
    namespace: str
    name: str = "hpo-operator"


@dataclass
class Leadership:
    """Runs the engine as the elector says: reconcile while leading; on losing the lead stop taking
    work and end the process (SIGTERM: kopf shuts down cleanly), so that it restarts as a follower."""

    engine: Engine
    metrics: OperatorMetrics
    elector: LeaderElector | None = None
    _task: asyncio.Task[None] | None = field(default=None, init=False)

    async def start(self) -> None:
        self.metrics.set_leader(self.elector is None)
        await self.engine.start(leading=self.elector is None)
        if self.elector is not None:
            self._task = asyncio.create_task(self.elector.run(self._started, self._stopped))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.engine.stop()
        if self.elector is not None:
            await asyncio.to_thread(self.elector.release)

    def _started(self) -> None:
        self.metrics.set_leader(True)
        self.engine.begin_leading()

    def _stopped(self) -> None:
        self.engine.stop_leading()
        self.metrics.set_leader(False)
        os.kill(os.getpid(), signal.SIGTERM)


def default_lease_namespace() -> str:
    """POD_NAMESPACE (the chart sets it), else the in-cluster ServiceAccount's, else default."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
            return f.read().strip() or "default"
    except OSError:
        return "default"


def run_operator(
    namespaces: Sequence[str] = (),
    kubeconfig: str | None = None,
    liveness_port: int | None = None,
    metrics_port: int | None = None,
    settings: EngineSettings | None = None,
    leader: LeaderSettings | None = None,
    policy: TrialPolicy | None = None,
    watch_caches: bool = True,
) -> None:
    """Serve every namespace (or the given ones) until SIGTERM or SIGINT; with ``leader``, reconcile
    only while holding that Lease (no kopf peering either way). ``watch_caches``: reconciles read
    the watch-fed caches (caches.py), else the API each time.

    ``metrics_port`` serves /metrics and /healthz, ``liveness_port`` /healthz alone (given alone, it
    serves /metrics too); both from the operator's own metrics, whose heartbeat the engine beats.
    kopf's own liveness endpoint is not started. kopf runs in a thread of its own; when it ends
    without being asked to, it is run again (see :func:`supervise`), with a fresh engine and the
    same metrics.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # kopf warns at each start that it ignores signals outside the main thread: this process
    # handles them and hands kopf a stop flag.
    logging.getLogger("kopf._core.reactor.running").addFilter(
        lambda record: not record.getMessage().startswith("OS signals are ignored")
    )
    configuration = load_configuration(kubeconfig)
    metrics = OperatorMetrics()
    seam = PrometheusMetrics(metrics)
    api = Api(configuration, timer=metrics)
    # Kept across runs of kopf: the informers go on. They also start the reconciles of the studies
    # whose trials, Jobs or pods change, so they run even when the reconciles read the API.
    caches = Caches(api, tuple(namespaces))
    cluster = Cluster(
        api, metrics=seam, policy=policy or TrialPolicy(), caches=caches, cached_reads=watch_caches
    )
    log.info("trial templates may use: %s", cluster.policy.describe())
    # One identity for the process: after a restart of kopf it renews its own Lease at once.
    identity = f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"
    lease_api = Api(configuration, timer=metrics)
    stopping = threading.Event()  # a signal came: kopf's stop flag, and the end of the process
    left_behind = LeftBehind()

    def serve_once() -> None:
        if stopping.is_set():
            return
        # The engine's queue and events belong to one event loop, and each kopf.run makes its own.
        engine = Engine(cluster, tuple(namespaces), settings or EngineSettings(), metrics=seam)
        elector = None
        if leader is not None:
            elector = LeaderElector(lease_api, leader.namespace, leader.name, identity)
        ending = threading.Event()
        memo = kopf.Memo(
            leadership=Leadership(engine, metrics, elector),
            connection=connection_info(configuration),
            ending=ending,
        )

        def run() -> None:
            kopf.run(
                standalone=True,
                clusterwide=not namespaces,
                namespaces=list(namespaces),
                memo=memo,
                stop_flag=stopping,
            )

        try:
            run_in_thread(run, stopping, ending)
        except KopfStuck as stuck:
            if not left_behind.add(stuck.thread):
                log.error("%d runs of kopf never ended; exiting", left_behind.alive())
                raise SystemExit(1) from stuck
            raise

    def failed(error: Exception, delay: float) -> None:
        metrics.watches_failed()
        log.error("kopf ended on %s: %s; starting it again in %.0f s", type(error).__name__, error, delay)

    def on_signal(number: int, _: object) -> None:
        if stopping.is_set():  # a second signal: no more waiting for a clean exit
            raise SystemExit(128 + number)
        log.info("%s: stopping", signal.Signals(number).name)
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = start_server(metrics, metrics_port, liveness_port)
    try:
        supervise(serve_once, failed, sleep=stopping.wait)
    finally:
        if server is not None:
            server.close()


def supervise(
    run: Callable[[], None],
    failed: Callable[[Exception, float], None],
    sleep: Callable[[float], object] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Call ``run`` until it returns; when it raises, tell ``failed`` and call it again after a delay
    that doubles from RESTART_FIRST_SECONDS to RESTART_LONGEST_SECONDS, and starts over after a run
    of RESTART_STABLE_SECONDS.

    kopf treats a watch that answers 404 (an API server that restarts serves a custom resource a
    moment after it listens), or that keeps failing past its retries, as the end of the operator.
    Every state lives in the API, so a new run carries on where the last one stopped; a restart in
    the process keeps the pod out of CrashLoopBackOff, whose delays grow to 5 minutes.
    """
    delay = RESTART_FIRST_SECONDS
    while True:
        started = clock()
        try:
            run()
            return
        except Exception as error:  # whatever ended kopf: logged, and kopf runs again
            if clock() - started >= RESTART_STABLE_SECONDS:
                delay = RESTART_FIRST_SECONDS
            failed(error, delay)
            sleep(delay)
            delay = min(delay * 2, RESTART_LONGEST_SECONDS)


class KopfStuck(RuntimeError):
    """kopf ran its cleanup but its tasks did not end; ``thread`` is where they still run."""

    def __init__(self, message: str, thread: threading.Thread) -> None:
        super().__init__(message)
        self.thread = thread


@dataclass
class LeftBehind:
    """The threads of runs of kopf that did not end. Each holds an event loop and its connections,
    so past ``limit`` still alive the process should end (a pod's restart starts clean)."""

    limit: int = MAX_STUCK_KOPF_THREADS
    threads: list[threading.Thread] = field(default_factory=list)

    def add(self, thread: threading.Thread) -> bool:
        """Keep ``thread``; False once more than ``limit`` are alive."""
        self.threads = [t for t in [*self.threads, thread] if t.is_alive()]
        return len(self.threads) <= self.limit

    def alive(self) -> int:
        return sum(t.is_alive() for t in self.threads)


def run_in_thread(
    run: Callable[[], None],
    stopping: threading.Event,
    ending: threading.Event,
    grace: float = KOPF_EXIT_GRACE_SECONDS,
) -> None:
    """Run ``run`` (kopf.run) in a daemon thread; return or raise as it does.

    ``ending`` is set by kopf's cleanup handler (and here when ``run`` ends). kopf's exit after a
    failed watch can hang for minutes (a watcher waits for credentials that nobody renews), so once
    ``ending`` or ``stopping`` is set ``run`` gets ``grace`` seconds: after a stop this returns
    anyway, the process is about to end; else this raises :class:`KopfStuck` and the thread is
    left to its tasks, which can do nothing (the engine they would wake is stopped).
    """
    outcome: list[BaseException] = []
    finished = threading.Event()

    def body() -> None:
        try:
            run()
        except BaseException as error:  # handed to the caller's thread
            outcome.append(error)
        finally:
            finished.set()
            ending.set()

    thread = threading.Thread(target=body, name="kopf", daemon=True)
    thread.start()
    # A stop may come while kopf is still in its startup handlers, before any cleanup.
    while not ending.wait(0.2) and not stopping.is_set():
        pass
    if not finished.wait(grace):
        if stopping.is_set():
            log.warning("kopf did not end within %.0f s of its stop; exiting without it", grace)
            return
        raise KopfStuck(f"kopf ended its handlers but not its tasks within {grace:.0f} s", thread)
    if outcome:
        raise outcome[0]
    if not stopping.is_set():
        raise RuntimeError("kopf returned without being stopped")


def start_server(
    metrics: OperatorMetrics, metrics_port: int | None, liveness_port: int | None
) -> MetricsServer | None:
    if metrics_port is not None:
        return serve(metrics, metrics_port, liveness_port)
    if liveness_port is not None:
        return serve(metrics, liveness_port)
    return None
