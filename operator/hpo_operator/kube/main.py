"""`hpo operator`: run the operator in this process, against a kubeconfig or in-cluster."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import kopf
from kubernetes.client import Configuration

from . import handlers  # noqa: F401  (registers the handlers with kopf)
from .api import Api, load_configuration
from .engine import Engine, EngineSettings
from .metrics import serve
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
    """Serve every namespace (or the given ones) until interrupted; no peering, no leader election."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    configuration = load_configuration(kubeconfig)
    engine = Engine(Cluster(Api(configuration)), tuple(namespaces), settings or EngineSettings())
    if metrics_port:
        serve(metrics_port)
    kopf.run(
        standalone=True,
        clusterwide=not namespaces,
        namespaces=list(namespaces),
        liveness_endpoint=f"http://0.0.0.0:{liveness_port}/healthz" if liveness_port else None,
        memo=kopf.Memo(engine=engine, connection=connection_info(configuration)),
    )
