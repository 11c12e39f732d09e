"""pytest fixtures and hooks of the local cluster; tests/conftest.py imports them.

* ``cluster`` (session): a :class:`LocalCluster`, brought up once, on first use.
* ``namespace`` (function): a fresh namespace; its pods are gone when the test's teardown ends.
* ``kube`` (session): the harness's JSON client as admin.
* ``k8s_api_client`` / ``core_v1`` (session): the official Python client as admin.
* ``real_cluster`` (session): a second cluster whose one node is real (kubelet with dockershim,
  kube-proxy, dockerd), with the images built from the project's Dockerfiles (realnode.py, images.py).
* ``real_namespace`` (function): a fresh namespace in it.

A skipped e2e test is a failure: when the cluster cannot start, every e2e test fails with the reason
and how to get what is missing. ``HPO_SKIP_E2E=1`` skips them instead, without starting anything. The
terminal summary says how many e2e tests ran, passed, failed and were skipped.
"""

from __future__ import annotations

import os
import re
import secrets
import tempfile
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import kubernetes
import pytest

from .binaries import node_bin_dir
from .cluster import ClusterSpec, LocalCluster
from .controlplane import Timings
from .images import DockerEngine, Images, build_images
from .realnode import environment_problem
from .rest import ApiError, Kube
from .waiting import wait_for

SKIP_ENV = "HPO_SKIP_E2E"
# Read by tests that need a tool of scripts/install-cluster-tools (helm, promtool): "1" makes a missing
# tool a failure. The session sets it from HPO_SKIP_E2E, so they follow the same rule.
REQUIRED_ENV = "HPO_E2E_REQUIRED"
HOW_TO_SKIP = f"{SKIP_ENV}=1 skips the e2e tests"
_state: dict[str, LocalCluster] = {}


@dataclass
class E2ETally:
    """The e2e tests of one session: each one's outcome, and those whose test function ran."""

    outcomes: dict[str, str] = field(default_factory=dict)  # nodeid -> passed / failed / skipped
    called: set[str] = field(default_factory=set)

    def add(self, report: pytest.TestReport) -> None:
        if report.when == "call" and not report.skipped:
            self.called.add(report.nodeid)
        previous = self.outcomes.get(report.nodeid)
        if report.failed or previous is None or (previous == "passed" and report.skipped):
            self.outcomes[report.nodeid] = report.outcome

    def summary(self, skipped_by_user: bool) -> str | None:
        """The line ``e2e: 36 ran, 36 passed, 0 skipped``, or None when no e2e test was selected."""
        if not self.outcomes:
            return None
        outcomes = list(self.outcomes.values())
        failed, skipped = outcomes.count("failed"), outcomes.count("skipped")
        line = f"e2e: {len(self.called)} ran, {outcomes.count('passed')} passed, "
        line += f"{failed} failed, " if failed else ""
        line += f"{skipped} skipped"
        return line + f" ({SKIP_ENV}=1)" if skipped and skipped_by_user else line


_tally_key = pytest.StashKey[E2ETally]()


def e2e_skipped_by_user() -> bool:
    return os.environ.get(SKIP_ENV) == "1"


def e2e_required() -> bool:
    return not e2e_skipped_by_user()


def _unavailable(reason: str) -> None:
    how_to_skip = "" if SKIP_ENV in reason else f" ({HOW_TO_SKIP})"
    pytest.fail(f"local cluster unavailable: {reason}{how_to_skip}", pytrace=False)


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
    failure = ""
    try:
        c.up()
    except Exception as e:
        failure = f"{type(e).__name__}: {e}"
    if failure:  # outside the except clause, so the report is the message alone
        _unavailable(failure)
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


def _own_namespace(kube: Kube, name: str) -> Iterator[str]:
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


@pytest.fixture
def namespace(cluster: LocalCluster, kube: Kube, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace of the test's own; on teardown it is deleted and its pods are waited out."""
    yield from _own_namespace(kube, _namespace_name(request.node.name))


# --- the real node ----------------------------------------------------------------------------------

REAL_NODE_GPUS = 4
# A real kubelet renews its Lease every 10 s and posts its status as often: upstream's grace periods.
# (Node loss is tested on the process kubelet's nodes, whose heartbeat is every second.)
REAL_NODE_TIMINGS = Timings(
    node_monitor_period_s=5, node_monitor_grace_period_s=40, not_ready_toleration_s=300
)


@dataclass
class RealCluster:
    """The cluster of the real node, and the images its pods run."""

    cluster: LocalCluster
    images: Images
    engine: DockerEngine

    def admin(self) -> Kube:
        return self.cluster.admin()


@pytest.fixture(scope="session")
def real_cluster(request: pytest.FixtureRequest) -> Iterator[RealCluster]:
    problem = environment_problem()
    if problem is not None:
        _unavailable(problem)
    root = Path(tempfile.mkdtemp(prefix="hpo-real-cluster-"))
    engine = DockerEngine(root / "logs")
    c: LocalCluster | None = None
    failure = ""
    started = time.monotonic()
    try:
        engine.ensure()
        images = build_images(root / "logs", pause_binary=node_bin_dir() / "pause")
        built = time.monotonic() - started
        spec = ClusterSpec(
            nodes=0,
            real_node=True,
            gpus_per_node=REAL_NODE_GPUS,
            pause_image=images.pause.name if images.pause else "",
            timings=REAL_NODE_TIMINGS,
        )
        c = LocalCluster(spec, root=root)
        c.up(timeout=120)
    except Exception as e:
        failure = f"{type(e).__name__}: {e}"
        if c is not None:
            c.down()
        engine.stop()
    if failure:
        _unavailable(f"real node: {failure}")
    assert c is not None
    _state["real_cluster"] = c
    print(
        f"\nreal-node cluster up in {c.bring_up_s:.1f}s at {c.root} (images in {built:.1f}s: "
        + ", ".join(f"{i.name} {i.size_mb:.0f} MB {i.seconds:.0f}s" for i in (images.operator, images.trial))
        + ")"
    )
    yield RealCluster(c, images, engine)
    took = c.down()
    engine.stop()
    print(f"\nreal-node cluster down in {took:.1f}s")
    if request.session.testsfailed == 0 and not os.environ.get("HPO_KEEP_CLUSTER"):
        c.remove()
        _state.pop("real_cluster", None)


@pytest.fixture
def real_namespace(real_cluster: RealCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace of the test's own in the real node's cluster."""
    kube = real_cluster.admin()
    try:
        yield from _own_namespace(kube, _namespace_name(request.node.name))
    finally:
        kube.close()


def pytest_configure(config: pytest.Config) -> None:
    os.environ[REQUIRED_ENV] = "1" if e2e_required() else "0"
    config.stash[_tally_key] = E2ETally()


def _skip_reason(report: pytest.TestReport) -> str:
    reason = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
    return reason.removeprefix("Skipped: ")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if item.get_closest_marker("e2e") is not None:
        _fail_unasked_skip(report)
        item.config.stash[_tally_key].add(report)
    fixtures = getattr(item, "fixturenames", ())
    key = "real_cluster" if "real_cluster" in fixtures else "cluster"
    c = _state.get(key)
    if report.failed and c is not None and key in fixtures:
        lines = [f"state folder: {c.root}"]
        lines += [f"{name}: {path}" for name, path in c.process_logs().items()]
        ns = getattr(item, "funcargs", {}).get("namespace")
        if isinstance(ns, str):
            lines += [f"container log: {p}" for p in sorted((c.log_dir / "containers").glob(f"{ns}_*.log"))]
        report.sections.append(("local cluster logs", "\n".join(lines)))
    return report


def _fail_unasked_skip(report: pytest.TestReport) -> None:
    # A missing tool or binary must not pass for a green run: only HPO_SKIP_E2E=1 may skip an e2e test.
    if report.skipped and not hasattr(report, "wasxfail") and not e2e_skipped_by_user():
        report.outcome = "failed"
        reason = _skip_reason(report)
        report.longrepr = f"e2e test skipped: {reason}; a skipped e2e test fails ({HOW_TO_SKIP})"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Whatever uses the cluster is an e2e test, so `-m "not e2e"` leaves it out.
    skip = pytest.mark.skip(reason=f"{SKIP_ENV}=1")
    for item in items:
        if {"cluster", "real_cluster"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)
        if e2e_skipped_by_user() and item.get_closest_marker("e2e") is not None:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    tally = terminalreporter.config.stash.get(_tally_key, None)
    summary = tally.summary(e2e_skipped_by_user()) if tally is not None else None
    if summary is not None:
        terminalreporter.write_sep("-", summary)
    for key, c in _state.items():
        if c.root.exists():
            label = "local cluster" if key == "cluster" else "real-node cluster"
            terminalreporter.write_line(f"{label} state and logs kept at {c.root}")
