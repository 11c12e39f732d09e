"""Where a report goes: a file the local runner watches, the trial's HPOTrial status, or the log.

A transport sends one report once and raises :class:`SendError` when that failed; retrying is the
reporter's job (reporting.py).
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from hpo_trial import env

log = logging.getLogger("hpo_trial")

#: Overrides of the in-cluster configuration, for tests and for clusters that need them.
HPO_API_URL = "HPO_API_URL"
HPO_SA_DIR = "HPO_SA_DIR"
DEFAULT_SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")

API_GROUP_VERSION = "hpo.dev/v1alpha1"
JSON_PATCH = "application/json-patch+json"

# 401 is retried because the token file may have rotated between reading and sending;
# 408/429/5xx are the API server's ways of saying "later".
_RETRYABLE_STATUS = frozenset({401, 408, 429, 500, 502, 503, 504})
_UNPROCESSABLE = 422
_NOT_FOUND = 404
# Rounds of append-then-create: missing /status, then a missing list, then the append itself.
_INIT_ROUNDS = 4


class SendError(Exception):
    """A report was not delivered; ``retryable`` says whether trying again may help, ``status`` is
    the HTTP status of the answer, if one came."""

    def __init__(self, message: str, *, retryable: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status


class Transport(Protocol):
    def send(self, report: Mapping[str, Any], *, timeout: float) -> None: ...

    def describe(self) -> str: ...


def send_all(transport: Transport, reports: Sequence[Mapping[str, Any]], *, timeout: float) -> None:
    """Sends reports in order: in one request where the transport has ``send_many``, else one by
    one (a retry then sends again the ones already delivered: the operator reads each seq once)."""
    many = getattr(transport, "send_many", None)
    if many is not None:
        many(reports, timeout=timeout)
        return
    for report in reports:
        transport.send(report, timeout=timeout)


class NullTransport:
    """Outside any study: the report is logged and goes nowhere else."""

    def send(self, report: Mapping[str, Any], *, timeout: float) -> None:
        log.info("report (no study, not sent): %s", json.dumps(report, sort_keys=True))

    def send_many(self, reports: Sequence[Mapping[str, Any]], *, timeout: float) -> None:
        for report in reports:
            self.send(report, timeout=timeout)

    def describe(self) -> str:
        return "log only (no study)"


@dataclass(frozen=True)
class FileTransport:
    """Local backend: one JSON line appended to the file the runner watches."""

    path: Path

    def send(self, report: Mapping[str, Any], *, timeout: float) -> None:
        self.send_many([report], timeout=timeout)

    def send_many(self, reports: Sequence[Mapping[str, Any]], *, timeout: float) -> None:
        text = "".join(json.dumps(report, allow_nan=False) + "\n" for report in reports)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # One write of whole lines to a file opened for appending, so a watcher never sees two
            # reports interleaved; opened per write so the file may be rotated or recreated.
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
        except OSError as exc:
            raise SendError(f"cannot append to {self.path}: {exc}", retryable=True) from exc

    def describe(self) -> str:
        return f"file {self.path}"


@dataclass(frozen=True)
class ClusterTransport:
    """Cluster: a JSON patch that appends the report to the trial's HPOTrial ``status.reports``."""

    api_url: str
    namespace: str
    trial: str
    sa_dir: Path

    @property
    def status_url(self) -> str:
        ns = urllib.parse.quote(self.namespace, safe="")
        name = urllib.parse.quote(self.trial, safe="")
        return f"{self.api_url.rstrip('/')}/apis/{API_GROUP_VERSION}/namespaces/{ns}/hpotrials/{name}/status"

    def describe(self) -> str:
        return f"HPOTrial {self.namespace}/{self.trial} status at {self.api_url}"

    def send(self, report: Mapping[str, Any], *, timeout: float) -> None:
        self.send_many([report], timeout=timeout)

    def send_many(self, reports: Sequence[Mapping[str, Any]], *, timeout: float) -> None:
        """One JSON patch appends them all: one write through the API server and etcd, and one
        event to every watcher of the HPOTrial, however many reports it carries."""
        append = [{"op": "add", "path": "/status/reports/-", "value": report} for report in reports]
        # The list (or the whole status) may not exist yet: create it, then append. The operator
        # may create /status between two steps, so a few rounds can be needed.
        for _ in range(_INIT_ROUNDS):
            status = self._patch(append, timeout)
            if status != _UNPROCESSABLE:
                break
            self._init_reports(timeout)
        self._raise_for(status, "append report")

    def _init_reports(self, timeout: float) -> None:
        # A `test` for null passes only while the member is missing (or null), so an init racing
        # with another writer's never replaces a list that already holds reports.
        init_list: list[dict[str, Any]] = [
            {"op": "test", "path": "/status/reports", "value": None},
            {"op": "add", "path": "/status/reports", "value": []},
        ]
        status = self._patch(init_list, timeout)
        if status == _UNPROCESSABLE:
            # Either /status itself is missing or someone else created the list first.
            init_status: list[dict[str, Any]] = [
                {"op": "test", "path": "/status", "value": None},
                {"op": "add", "path": "/status", "value": {"reports": []}},
            ]
            status = self._patch(init_status, timeout)
            if status == _UNPROCESSABLE:
                return  # /status exists now (with or without the list): the caller tries again
        self._raise_for(status, "create status.reports")

    def _raise_for(self, status: int, what: str) -> None:
        if 200 <= status < 300:
            return
        retryable = status in _RETRYABLE_STATUS
        raise SendError(f"{what}: HTTP {status} from {self.status_url}", retryable=retryable, status=status)

    def _patch(self, ops: list[dict[str, Any]], timeout: float) -> int:
        """Sends one JSON patch; returns the HTTP status, raises SendError when no answer came or the
        path is not served."""
        request = urllib.request.Request(
            self.status_url,
            data=json.dumps(ops, allow_nan=False).encode(),
            method="PATCH",
            headers={"Content-Type": JSON_PATCH, "Accept": "application/json", **self._auth_header()},
        )
        try:
            with self._opener().open(request, timeout=timeout) as response:
                response.read()
                return int(response.status)
        except urllib.error.HTTPError as exc:
            body = exc.read()
            if exc.code == _NOT_FOUND and not _is_status(body):
                # A deleted trial's 404 is a Status naming it. A bare "404 page not found" is the
                # path's: the API server does not serve HPOTrials right now, as for a moment after
                # it restarts, so the report is worth sending again.
                text = body[:80].decode(errors="replace").strip()
                message = f"PATCH {self.status_url}: HTTP 404 ({text}), not served"
                raise SendError(message, retryable=True) from exc
            return int(exc.code)
        except (OSError, ValueError) as exc:  # URLError, timeouts, TLS errors are OSErrors
            raise SendError(f"PATCH {self.status_url}: {exc}", retryable=True) from exc

    def _auth_header(self) -> dict[str, str]:
        # Re-read on every request: projected service-account tokens are rotated by the kubelet.
        try:
            token = (self.sa_dir / "token").read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SendError(f"cannot read the service-account token: {exc}", retryable=True) from exc
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _opener(self) -> urllib.request.OpenerDirector:
        # No proxy: the API server is the cluster's own service address, and an HTTP(S)_PROXY set
        # for outbound traffic (data downloads) must not capture it.
        handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
        if self.api_url.startswith("https:"):
            ca_file = self.sa_dir / "ca.crt"
            context = ssl.create_default_context(cafile=str(ca_file) if ca_file.is_file() else None)
            handlers.append(urllib.request.HTTPSHandler(context=context))
        return urllib.request.build_opener(*handlers)


def _is_status(body: bytes) -> bool:
    """The body is a Kubernetes Status object, as the API server sends for an object it serves."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return False
    return isinstance(parsed, dict) and parsed.get("kind") == "Status"


def _in_cluster_api_url(environ: Mapping[str, str]) -> str | None:
    override = environ.get(HPO_API_URL, "").strip()
    if override:
        return override
    host = environ.get("KUBERNETES_SERVICE_HOST", "").strip()
    port = environ.get("KUBERNETES_SERVICE_PORT", "").strip()
    if not host or not port:
        return None
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    return f"https://{host}:{port}"


def transport_from_env(environ: Mapping[str, str] | None = None) -> Transport:
    """The transport the environment asks for: report file, then in-cluster, then log only."""
    environ = os.environ if environ is None else environ
    report_file = environ.get(env.HPO_REPORT_FILE, "").strip()
    if report_file:
        return FileTransport(Path(report_file))
    trial, namespace = env.trial_name(environ), env.namespace(environ)
    if trial and namespace:
        sa_dir = Path(environ.get(HPO_SA_DIR, "").strip() or DEFAULT_SA_DIR)
        api_url = _in_cluster_api_url(environ)
        if api_url and (sa_dir / "token").is_file():
            return ClusterTransport(api_url=api_url, namespace=namespace, trial=trial, sa_dir=sa_dir)
        log.warning(
            "HPO_TRIAL and HPO_NAMESPACE are set but there is no in-cluster API access "
            "(KUBERNETES_SERVICE_HOST/PORT or %s, and %s/token): reports are only logged",
            HPO_API_URL,
            sa_dir,
        )
    return NullTransport()
