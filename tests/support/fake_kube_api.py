"""A small Kubernetes API server for the SDK's cluster transport: it serves one HPOTrial's status and
applies JSON patches as Kubernetes does, in a thread of the test process."""

from __future__ import annotations

import copy
import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

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


@contextmanager
def serving(api: FakeApi) -> Iterator[str]:
    """The fake API server's URL while the block runs (plain HTTP)."""
    server, url = serve(api)
    try:
        yield url
    finally:
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


def make_sa_dir(tmp_path: Path) -> Path:
    """A service-account folder with a token, as the kubelet mounts it."""
    folder = tmp_path / "serviceaccount"
    folder.mkdir()
    (folder / "token").write_text("token-1\n")
    return folder
