"""The SDK's cluster transport against a small API server that applies JSON patches as Kubernetes does."""

from __future__ import annotations

import copy
import json
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from hpo_trial.reporting import Reporter, RetryPolicy
from hpo_trial.transports import ClusterTransport, transport_from_env

STATUS_PATH = "/apis/hpo.dev/v1alpha1/namespaces/team-a/hpotrials/flowers-2/status"
FAST = RetryPolicy(total_seconds=5.0, initial_delay=0.001, max_delay=0.01, request_timeout=2.0)

_MISSING = object()


class PatchFailed(Exception):
    pass


def _parent(doc: Any, pointer: str) -> tuple[Any, str]:
    *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:]]
    for part in parents:
        if isinstance(doc, list):
            doc = doc[int(part)]
        elif isinstance(doc, dict) and part in doc:
            doc = doc[part]
        else:
            raise PatchFailed(f"missing path {pointer}")
    return doc, last


def apply_patch(doc: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """`add` and `test` of RFC 6902, with the API server's rule that a test for null passes on a
    missing member. All or nothing: a failing op leaves the document as it was."""
    result = copy.deepcopy(doc)
    for op in ops:
        container, key = _parent(result, op["path"])
        if op["op"] == "test":
            current = container.get(key, None) if isinstance(container, dict) else container[int(key)]
            if current != op["value"]:
                raise PatchFailed(f"test of {op['path']} failed")
        elif op["op"] == "add":
            if isinstance(container, list):
                container.insert(len(container) if key == "-" else int(key), op["value"])
            else:
                container[key] = op["value"]
        else:
            raise PatchFailed(f"unsupported op {op['op']}")
    return result


@dataclass
class FakeApi:
    """One HPOTrial, a queue of scripted failures, and a log of what each request carried."""

    token: str = "token-1"
    obj: dict[str, Any] = field(default_factory=lambda: {"metadata": {"name": "flowers-2"}, "spec": {}})
    fail_next: list[int] = field(default_factory=list)
    # Answered "404 page not found" in plain text, as the API server does for a path it does not
    # serve (a custom resource a moment after a restart), not with a Status.
    not_served_next: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> int:
        with self.lock:
            self.requests.append({"method": method, "path": path, "headers": headers, "body": body})
            if self.fail_next:
                return self.fail_next.pop(0)
            if method != "PATCH" or path != STATUS_PATH:
                return 404
            if headers.get("authorization") != f"Bearer {self.token}":
                return 401
            if headers.get("content-type") != "application/json-patch+json":
                return 415
            try:
                self.obj = apply_patch(self.obj, json.loads(body))
            except PatchFailed:
                return 422
            return 200

    @property
    def reports(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.obj.get("status", {}).get("reports", []))


def serve(api: FakeApi, context: ssl.SSLContext | None = None) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        def do_PATCH(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            with api.lock:
                not_served = api.not_served_next > 0
                api.not_served_next -= not_served
            if not_served:
                api.requests.append({"method": "PATCH", "path": self.path, "headers": headers, "body": body})
                status, payload, kind = 404, b"404 page not found\n", "text/plain; charset=utf-8"
            else:
                status = api.handle("PATCH", self.path, headers, body)
                payload, kind = json.dumps({"kind": "Status", "code": status}).encode(), "application/json"
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    scheme = "http"
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    return server, f"{scheme}://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def sa_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "serviceaccount"
    folder.mkdir()
    (folder / "token").write_text("token-1\n")
    return folder


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


@pytest.fixture
def api_url(api: FakeApi) -> Iterator[str]:
    server, url = serve(api)
    yield url
    server.shutdown()
    server.server_close()


def cluster_reporter(api_url: str, sa_dir: Path, policy: RetryPolicy = FAST) -> Reporter:
    environ = {
        "HPO_TRIAL": "flowers-2",
        "HPO_NAMESPACE": "team-a",
        "HPO_API_URL": api_url,
        "HPO_SA_DIR": str(sa_dir),
    }
    transport = transport_from_env(environ)
    assert isinstance(transport, ClusterTransport)
    return Reporter(transport, policy)


def test_reports_are_appended_to_the_trial_status(api: FakeApi, api_url: str, sa_dir: Path) -> None:
    reporter = cluster_reporter(api_url, sa_dir)
    assert reporter.report(1, 0.5, loss=1.2)
    assert reporter.report(2, 0.75)
    assert [(r["seq"], r["resource"], r["value"]) for r in api.reports] == [(0, 1, 0.5), (1, 2, 0.75)]
    assert api.reports[0]["extra"] == {"loss": 1.2}
    last = api.requests[-1]
    assert last["headers"]["content-type"] == "application/json-patch+json"
    assert last["headers"]["authorization"] == "Bearer token-1"
    assert json.loads(last["body"]) == [{"op": "add", "path": "/status/reports/-", "value": api.reports[1]}]


def test_a_missing_status_is_created_with_a_guarded_init_then_the_report_appended(
    api: FakeApi, api_url: str, sa_dir: Path
) -> None:
    assert "status" not in api.obj
    assert cluster_reporter(api_url, sa_dir).report(1, 0.5)
    assert [r["seq"] for r in api.reports] == [0]
    bodies = [json.loads(r["body"]) for r in api.requests]
    assert [b[0]["op"] for b in bodies] == ["add", "test", "test", "add"]  # 422, 422, init, append
    assert bodies[2] == [
        {"op": "test", "path": "/status", "value": None},
        {"op": "add", "path": "/status", "value": {"reports": []}},
    ]


def test_an_existing_status_without_reports_gets_the_list(api: FakeApi, api_url: str, sa_dir: Path) -> None:
    api.obj["status"] = {"phase": "Running"}
    assert cluster_reporter(api_url, sa_dir).report(1, 0.5)
    assert api.obj["status"]["phase"] == "Running"
    assert [r["seq"] for r in api.reports] == [0]
    assert json.loads(api.requests[1]["body"]) == [
        {"op": "test", "path": "/status/reports", "value": None},
        {"op": "add", "path": "/status/reports", "value": []},
    ]


def test_an_init_racing_with_another_writer_keeps_its_reports(
    api: FakeApi, api_url: str, sa_dir: Path
) -> None:
    # The list appears between the failed append and the init: the guarded init must not wipe it.
    earlier = {"seq": 0, "resource": 1, "value": 0.1, "time": 1.0, "extra": {}}
    original = api.handle

    def racing(method: str, path: str, headers: dict[str, str], body: bytes) -> int:
        ops = json.loads(body)
        if ops[0]["op"] == "test" and "status" not in api.obj:
            api.obj["status"] = {"reports": [earlier]}
        return original(method, path, headers, body)

    api.handle = racing  # type: ignore[method-assign]
    assert cluster_reporter(api_url, sa_dir).report(2, 0.5)
    assert [r["value"] for r in api.reports] == [0.1, 0.5]


def test_transient_failures_are_retried_with_the_same_report(
    api: FakeApi, api_url: str, sa_dir: Path
) -> None:
    api.obj["status"] = {"reports": []}
    api.fail_next = [503, 500, 429]
    assert cluster_reporter(api_url, sa_dir).report(1, 0.5)
    assert len(api.reports) == 1
    bodies = [r["body"] for r in api.requests]
    assert len(bodies) == 4
    assert len(set(bodies)) == 1  # identical retries: same seq and time


def test_a_path_not_served_for_a_while_is_retried_but_a_deleted_trial_is_not(
    api: FakeApi, api_url: str, sa_dir: Path
) -> None:
    api.obj["status"] = {"reports": []}
    api.not_served_next = 2
    assert cluster_reporter(api_url, sa_dir).report(1, 0.5)
    assert len(api.requests) == 3 and [r["value"] for r in api.reports] == [0.5]
    api.fail_next = [404]  # a Status: the HPOTrial itself is gone
    assert cluster_reporter(api_url, sa_dir).report(2, 0.6) is False
    assert len(api.requests) == 4


def test_a_forbidden_report_after_a_delivered_one_is_retried(
    api: FakeApi, api_url: str, sa_dir: Path
) -> None:
    api.obj["status"] = {"reports": []}
    reporter = cluster_reporter(api_url, sa_dir)
    assert reporter.report(1, 0.5)
    api.fail_next = [403, 403]  # a restarted API server whose authorizer has not loaded RBAC yet
    assert reporter.report(2, 0.6)
    assert [r["value"] for r in api.reports] == [0.5, 0.6] and len(api.requests) == 4


def test_a_first_report_forbidden_by_a_server_that_just_came_back_is_delivered(
    api: FakeApi, api_url: str, sa_dir: Path
) -> None:
    # The process started while the server was away; it answers 403 until it has loaded RBAC.
    api.obj["status"] = {"reports": []}
    api.fail_next = [503, 403, 403]
    assert cluster_reporter(api_url, sa_dir).report(1, 0.5)
    assert [r["value"] for r in api.reports] == [0.5] and len(api.requests) == 4


def test_a_forbidden_report_is_given_up_after_the_grace_and_later_ones_at_once(
    api: FakeApi, api_url: str, sa_dir: Path
) -> None:
    api.obj["status"] = {"reports": []}
    policy = RetryPolicy(total_seconds=5.0, initial_delay=0.01, max_delay=0.01, forbidden_grace=0.2)
    reporter = cluster_reporter(api_url, sa_dir, policy)
    api.fail_next = [403] * 1000  # the trial lacks the right
    started = time.monotonic()
    assert reporter.report(1, 0.5) is False
    assert 0.2 <= time.monotonic() - started < 5.0  # the grace, not the whole retry window
    assert len(api.requests) > 2
    before = len(api.requests)
    assert reporter.report(2, 0.6) is False
    assert len(api.requests) == before + 1  # given up at once: one grace per process
    api.fail_next = []  # the right is granted; a later 403 is a server changing its mind again
    assert reporter.report(3, 0.7)
    api.fail_next = [403, 403]
    assert reporter.report(4, 0.8)
    assert [r["value"] for r in api.reports] == [0.7, 0.8]


def test_the_token_is_read_again_for_every_request(api: FakeApi, api_url: str, sa_dir: Path) -> None:
    api.obj["status"] = {"reports": []}
    reporter = cluster_reporter(api_url, sa_dir)
    assert reporter.report(1, 0.5)
    (sa_dir / "token").write_text("token-2")
    api.token = "token-2"
    assert reporter.report(2, 0.6)
    assert [r["headers"]["authorization"] for r in api.requests] == ["Bearer token-1", "Bearer token-2"]


def test_an_unreachable_api_is_given_up_after_the_bound(sa_dir: Path) -> None:
    environ = {"HPO_TRIAL": "t-0", "HPO_NAMESPACE": "ns", "HPO_API_URL": "http://127.0.0.1:9"}
    transport = transport_from_env({**environ, "HPO_SA_DIR": str(sa_dir)})
    policy = RetryPolicy(total_seconds=0.3, initial_delay=0.01, max_delay=0.05, request_timeout=0.2)
    assert Reporter(transport, policy).report(1, 0.5) is False


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a test certificate")
def test_https_verifies_the_server_with_the_service_account_ca(api: FakeApi, sa_dir: Path) -> None:
    key, cert = sa_dir / "server.key", sa_dir / "ca.crt"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server, url = serve(api, context)
    try:
        assert cluster_reporter(url, sa_dir).report(1, 0.5)
        assert [r["seq"] for r in api.reports] == [0]
        cert.unlink()  # without the cluster CA the server is not trusted
        untrusted = Reporter(cluster_reporter(url, sa_dir).transport, RetryPolicy(total_seconds=0.2))
        assert untrusted.report(2, 0.5) is False
        assert len(api.reports) == 1
    finally:
        server.shutdown()
        server.server_close()


def test_a_status_written_by_the_operator_during_the_init_does_not_lose_the_report(
    api: FakeApi, api_url: str, sa_dir: Path
) -> None:
    # The append fails (no status), the list init fails (no status), and just before the status
    # init the operator writes a status without the list: the report must still land.
    original = api.handle

    def racing(method: str, path: str, headers: dict[str, str], body: bytes) -> int:
        ops = json.loads(body)
        if ops[0] == {"op": "test", "path": "/status", "value": None} and "status" not in api.obj:
            api.obj["status"] = {"phase": "Running"}
        return original(method, path, headers, body)

    api.handle = racing  # type: ignore[method-assign]
    assert cluster_reporter(api_url, sa_dir).report(1, 0.5)
    assert [r["seq"] for r in api.reports] == [0]
    assert api.obj["status"]["phase"] == "Running"
