"""pytest fixtures and hooks of the local cluster; tests/conftest.py imports them.

* ``cluster`` (session): a :class:`LocalCluster`, brought up once, on first use.
* ``namespace`` (function): a fresh namespace; its pods are gone when the test's teardown ends.
* ``kube`` (session): the harness's JSON client as admin.
* ``k8s_api_client`` / ``core_v1`` (session): the official Python client as admin.

When the cluster cannot start, e2e tests are skipped with the reason, unless ``HPO_E2E_REQUIRED=1``
(set by .ci/run), in which case they fail.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Generator, Iterator
from pathlib import Path

import kubernetes
import pytest

from .cluster import LocalCluster
from .rest import ApiError, Kube
from .waiting import wait_for

REQUIRED_ENV = "HPO_E2E_REQUIRED"
_state: dict[str, LocalCluster] = {}


def e2e_required() -> bool:
    return os.environ.get(REQUIRED_ENV) == "1"


def _unavailable(reason: str) -> None:
    if e2e_required():
        pytest.fail(f"local cluster required ({REQUIRED_ENV}=1) but unavailable: {reason}", pytrace=False)
    pytest.skip(f"local cluster unavailable: {reason}")


def api_client(kubeconfig: Path) -> kubernetes.client.ApiClient:
    """The official client for a kubeconfig (the admin's, or one from ``service_account_kubeconfig``)."""
    client: kubernetes.client.ApiClient = kubernetes.config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig)
    )
    return client


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    if os.geteuid() != 0:
        _unavailable("the process kubelet needs root (mount namespaces for pod volumes)")
    c = LocalCluster()
    try:
        c.up()
    except Exception as e:
        _unavailable(f"{type(e).__name__}: {e}")
    _state["cluster"] = c
    print(f"\nlocal cluster up in {c.bring_up_s:.1f}s at {c.root} ({c.server})")
    yield c
    took = c.down()
    print(f"\nlocal cluster down in {took:.1f}s")
    if request.session.testsfailed == 0 and not os.environ.get("HPO_KEEP_CLUSTER"):
        c.remove()
        _state.pop("cluster", None)


@pytest.fixture(scope="session")
def kube(cluster: LocalCluster) -> Kube:
    return cluster.admin()


@pytest.fixture(scope="session")
def k8s_api_client(cluster: LocalCluster) -> Iterator[kubernetes.client.ApiClient]:
    client = api_client(cluster.kubeconfig)
    yield client
    client.close()  # type: ignore[no-untyped-call]


@pytest.fixture(scope="session")
def core_v1(k8s_api_client: kubernetes.client.ApiClient) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(k8s_api_client)


def _namespace_name(test_name: str) -> str:
    base = re.sub(r"[^a-z0-9-]+", "-", test_name.lower()).strip("-")[:40].strip("-")
    return f"{base or 't'}-{secrets.token_hex(3)}"


@pytest.fixture
def namespace(cluster: LocalCluster, kube: Kube, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace of the test's own; on teardown it is deleted and its pods are waited out."""
    name = _namespace_name(request.node.name)
    kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    # A pod is admitted only once the namespace's default ServiceAccount has its token Secret.
    wait_for(
        lambda: (kube.get_or_none(f"/api/v1/namespaces/{name}/serviceaccounts/default") or {}).get("secrets"),
        30,
        message=f"default ServiceAccount of {name} with its token",
    )
    yield name
    kube.delete(f"/api/v1/namespaces/{name}")
    # The namespace controller gets to pods after a while; deleting them now (a Terminating namespace
    # admits no new ones) lets their agents end them at once.
    kube.delete(f"/api/v1/namespaces/{name}/pods")
    # The next test must find the GPUs free: wait until this one's pods are gone (the namespace
    # object itself may linger a little; nothing waits for that).
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if not kube.get(f"/api/v1/namespaces/{name}/pods")["items"]:
                return
        except ApiError:
            return
        time.sleep(0.2)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    c = _state.get("cluster")
    if report.failed and c is not None and "cluster" in getattr(item, "fixturenames", ()):
        lines = [f"state folder: {c.root}"]
        lines += [f"{name}: {path}" for name, path in c.process_logs().items()]
        ns = getattr(item, "funcargs", {}).get("namespace")
        if isinstance(ns, str):
            lines += [f"container log: {p}" for p in sorted((c.log_dir / "containers").glob(f"{ns}_*.log"))]
        report.sections.append(("local cluster logs", "\n".join(lines)))
    return report


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Whatever uses the cluster is an e2e test, so `-m "not e2e"` leaves it out.
    for item in items:
        if "cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.e2e)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    c = _state.get("cluster")
    if c is not None and c.root.exists():
        terminalreporter.write_line(f"local cluster state and logs kept at {c.root}")
