"""The operator, as its Helm chart installs it, running against the local cluster (the helpers are in
tests/support/operator_process.py; these are the fixtures).

The CRDs and the chart's RBAC are applied with kubectl; the operator runs as a subprocess
(`hpo operator`) with a kubeconfig that holds a TokenRequest token of the chart's ServiceAccount, so
it has exactly the rights the chart grants and none of the test's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.cluster import LocalCluster
from tests.cluster.rest import Kube
from tests.support.operator_process import OperatorProcess, install_chart_without_operator


@pytest.fixture(scope="session")
def operator_kubeconfig(cluster: LocalCluster, kube: Kube) -> Path:
    return install_chart_without_operator(cluster)


@pytest.fixture(scope="session")
def hpo_operator(cluster: LocalCluster, operator_kubeconfig: Path) -> Iterator[OperatorProcess]:
    process = OperatorProcess(operator_kubeconfig, cluster.log_dir / "hpo-operator.log")
    process.start()
    yield process
    process.stop()


@pytest.fixture
def operator(hpo_operator: OperatorProcess) -> OperatorProcess:
    """The session's operator, running (a test that killed it leaves it restarted or dead)."""
    if not hpo_operator.alive():
        hpo_operator.start()
    return hpo_operator
