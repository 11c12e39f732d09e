"""`hpo operator`: run the operator in this process, against a kubeconfig or in-cluster."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import kopf
from kubernetes.client import Configuration

from ..metrics import MetricsServer, OperatorMetrics, serve
from . import handlers  # noqa: F401  (registers the handlers with kopf)
from .api import Api, load_configuration
from .engine import Engine, EngineSettings
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


def run_operator(
    namespaces: Sequence[str] = (),
    kubeconfig: str | None = None,
    liveness_port: int | None = None,
    metrics_port: int | None = None,
    settings: EngineSettings | None = None,
) -> None:
    """Serve every namespace (or the given ones) until interrupted; no peering, no leader election.

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
    server = start_server(metrics, metrics_port, liveness_port)
    try:
        kopf.run(
            standalone=True,
            clusterwide=not namespaces,
            namespaces=list(namespaces),
            memo=kopf.Memo(engine=engine, connection=connection_info(configuration)),
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
