"""Shared pytest configuration. Each concern keeps its fixtures in its own section or module."""

# --- the local Kubernetes cluster (tests/cluster): fixtures `cluster`, `namespace`, `kube`,
# `k8s_api_client`, `core_v1`; the `e2e` marker. A skipped e2e test fails unless HPO_SKIP_E2E=1, and the
# summary counts the e2e tests that ran, passed and were skipped.
from tests.cluster.fixtures import (  # noqa: F401
    cluster,
    core_v1,
    k8s_api_client,
    kube,
    namespace,
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_runtest_makereport,
    pytest_terminal_summary,
    real_cluster,
    real_namespace,
)

# `pytester`, for the tests of those session hooks (tests/unit/test_e2e_rule.py).
pytest_plugins = ["pytester"]
