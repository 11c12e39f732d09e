"""Shared pytest configuration. Each concern keeps its fixtures in its own section or module."""

# --- the local Kubernetes cluster (tests/cluster): fixtures `cluster`, `namespace`, `kube`,
# `k8s_api_client`, `core_v1`; the `e2e` marker; HPO_E2E_REQUIRED=1 turns "no cluster" into a failure.
from tests.cluster.fixtures import (  # noqa: F401
    cluster,
    core_v1,
    k8s_api_client,
    kube,
    namespace,
    pytest_collection_modifyitems,
    pytest_runtest_makereport,
    pytest_terminal_summary,
)
