"""A small JSON client for the Kubernetes API.

Credentials come from the kubernetes package's config loaders (kubeconfig or in-cluster); requests
are plain JSON over urllib3, so objects stay dicts exactly as the API server sends them, with no
generated models between the operator and a 1.20 or a current server. Thread-safe. Every request
is timed by the ``timer`` given (the operator's metrics) under its verb and resource.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol

import urllib3
from kubernetes import config as kube_config
from kubernetes.client import Configuration

JSON = dict[str, Any]
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


class RequestTimer(Protocol):
    def time_api(self, verb: str, resource: str) -> AbstractContextManager[None]:
        """Time the request made in the block; an exception it raises is counted and propagates."""
        ...


def verb_and_resource(method: str, path: str) -> tuple[str, str]:
    """The metric labels of a request: ``("list", "pods")`` for a GET of a collection, else the
    lower-case method (get, create, patch, delete) and the plural the path names.

    /api/v1/nodes, /api/v1/namespaces/NS/pods/NAME/status, /apis/G/V/namespaces/NS/PLURAL, /version.
    """
    parts = [p for p in path.split("?", 1)[0].split("/") if p]
    if parts[:1] == ["api"]:
        rest = parts[2:]
    elif parts[:1] == ["apis"]:
        rest = parts[3:]
    else:
        return {"POST": "create"}.get(method, method.lower()), parts[0] if parts else ""
    if rest[:1] == ["namespaces"] and len(rest) >= 3:
        rest = rest[2:]  # a namespaced resource; /namespaces and /namespaces/NS stay namespaces
    resource = rest[0] if rest else ""
    if method == "GET":
        return ("list" if len(rest) == 1 else "get"), resource
    return {"POST": "create"}.get(method, method.lower()), resource


class ApiError(Exception):
    """A non-2xx answer; ``status`` is the HTTP status (409 conflict, 404 not found, ...)."""

    def __init__(self, status: int, method: str, path: str, body: str) -> None:
        super().__init__(f"{method} {path}: {status}: {body[:400]}")
        self.status = status
        self.body = body


def load_configuration(kubeconfig: str | None = None, context: str | None = None) -> Configuration:
    """The in-cluster configuration inside a pod, else the kubeconfig ($KUBECONFIG or ~/.kube/config);
    a kubeconfig or a context given is always the kubeconfig's."""
    configuration = Configuration()
    if kubeconfig is None and context is None:
        try:
            kube_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            return configuration
        except kube_config.ConfigException:
            pass
    kube_config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=kubeconfig, context=context, client_configuration=configuration
    )
    return configuration


class Api:
    def __init__(
        self, configuration: Configuration, timeout: float = 30.0, timer: RequestTimer | None = None
    ) -> None:
        self.configuration = configuration
        self.timer = timer
        self.host = configuration.host.rstrip("/")
        self.timeout = timeout
        tls: dict[str, Any] = {}
        if self.host.startswith("https"):
            tls = {
                "cert_reqs": "CERT_REQUIRED" if configuration.verify_ssl else "CERT_NONE",
                "ca_certs": configuration.ssl_ca_cert,
                "cert_file": configuration.cert_file,
                "key_file": configuration.key_file,
            }
        self._pool = urllib3.PoolManager(maxsize=16, **tls)  # a reconcile writes up to 8 at once
        # Watches hold their connection for minutes: never the ones the requests need.
        self._watch_pool = urllib3.PoolManager(maxsize=16, **tls)

    def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        token = self.configuration.get_api_key_with_prefix(
            "authorization"
        ) or self.configuration.get_api_key_with_prefix("BearerToken")
        if token:
            headers["Authorization"] = token
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: Mapping[str, str | int] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        url = self.host + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        data = None if body is None else json.dumps(body).encode()
        timed = self.timer.time_api(*verb_and_resource(method, path)) if self.timer else nullcontext()
        with timed:
            response = self._pool.request(
                method,
                url,
                body=data,
                headers=self._headers(content_type if data is not None else None),
                timeout=self.timeout,
                retries=False,
            )
            text = response.data.decode(errors="replace")
            if response.status >= 300:
                raise ApiError(response.status, method, path, text)
        return json.loads(text) if text else None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def get_or_none(self, path: str) -> Any:
        try:
            return self.get(path)
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    def list(self, path: str, **query: str | int) -> list[JSON]:
        items: list[JSON] = self.list_page(path, **query).get("items") or []
        return items

    def create(self, path: str, body: JSON) -> JSON | None:
        """The created object, or None when it exists already (409): creates are idempotent."""
        try:
            created: JSON = self.request("POST", path, body)
            return created
        except ApiError as err:
            if err.status == 409:
                return None
            raise

    def patch(self, path: str, body: Any, content_type: str = MERGE_PATCH) -> Any:
        return self.request("PATCH", path, body, content_type=content_type)

    def delete(self, path: str, propagation: str = "Background") -> bool:
        """True when this call deleted it; False when it was gone already."""
        return self.remove(path, propagation) is not None

    def remove(self, path: str, propagation: str = "Background") -> JSON | None:
        """Delete; the API's answer (the object while it is being deleted, or a Status), None when
        it was gone already."""
        try:
            answer: JSON | None = self.request("DELETE", path, {"propagationPolicy": propagation})
        except ApiError as err:
            if err.status == 404:
                return None
            raise
        return answer or {"kind": "Status"}

    def list_page(self, path: str, **query: str | int) -> JSON:
        """One page of a listing, as the API answers it (items, metadata.resourceVersion and
        metadata.continue); without a resourceVersion the read is consistent (from etcd)."""
        page: JSON = self.request("GET", path, query=query or None)
        return page

    def watch(self, path: str, query: Mapping[str, str | int], timeout: float) -> Iterator[JSON]:
        """The events of a watch (``watch=1`` is added), one JSON object per line, until the API
        server ends the stream; an error answer raises ApiError. Not timed: a watch is long."""
        url = self.host + path + "?" + urllib.parse.urlencode({**query, "watch": "1"})
        response = self._watch_pool.request(
            "GET",
            url,
            headers=self._headers(None),
            timeout=urllib3.Timeout(connect=10.0, read=timeout),
            retries=False,
            preload_content=False,
        )
        try:
            if response.status >= 300:
                raise ApiError(response.status, "GET", path, response.read().decode(errors="replace"))
            pending = b""
            for chunk in response.stream(64 * 1024):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
            if pending.strip():
                yield json.loads(pending)
        finally:
            response.release_conn()

    def version(self) -> tuple[int, int]:
        info = self.get("/version")
        minor = "".join(ch for ch in str(info.get("minor", "0")) if ch.isdigit()) or "0"
        return int(info.get("major", "1")), int(minor)


def ns_path(group: str, version: str, namespace: str, plural: str, name: str = "") -> str:
    """The path of a namespaced collection or object; group "" is the core API, namespace "" the
    collection across every namespace."""
    base = f"/api/{version}" if not group else f"/apis/{group}/{version}"
    path = f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"
    return f"{path}/{name}" if name else path
