"""`hpo operator`: run the operator in this process, against a kubeconfig or in-cluster."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import kopf
from kubernetes.client import Configuration

from ..metrics import MetricsServer, OperatorMetrics, serve
from . import handlers  # noqa: F401  (registers the handlers with kopf)
from .api import Api, load_configuration
from .engine import Engine, EngineSettings
from .leader import LeaderElector
from .metrics import PrometheusMetrics
from .world import Cluster


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
) -> None:
    """Serve every namespace (or the given ones) until interrupted; with ``leader``, reconcile only
    while holding that Lease (no kopf peering either way).

    ``metrics_port`` serves /metrics and /healthz, ``liveness_port`` /healthz alone (given alone, it
    serves /metrics too); both from the operator's own metrics, whose heartbeat the engine beats.
    kopf's own liveness endpoint is not started.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    configuration = load_configuration(kubeconfig)
    metrics = OperatorMetrics()
    seam = PrometheusMetrics(metrics)
    cluster = Cluster(Api(configuration, timer=metrics), metrics=seam)
    engine = Engine(cluster, tuple(namespaces), settings or EngineSettings(), metrics=seam)
    elector = None
    if leader is not None:
        identity = f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"
        elector = LeaderElector(Api(configuration, timer=metrics), leader.namespace, leader.name, identity)
    leadership = Leadership(engine, metrics, elector)
    server = start_server(metrics, metrics_port, liveness_port)
    try:
        kopf.run(
            standalone=True,
            clusterwide=not namespaces,
            namespaces=list(namespaces),
            memo=kopf.Memo(leadership=leadership, connection=connection_info(configuration)),
        )
    finally:
        if server is not None:
            server.close()


def start_server(
    metrics: OperatorMetrics, metrics_port: int | None, liveness_port: int | None
) -> MetricsServer | None:
    if metrics_port is not None:
        return serve(metrics, metrics_port, liveness_port)
    if liveness_port is not None:
        return serve(metrics, liveness_port)
    return None
