"""A small JSON client for the Kubernetes API, used by the harness itself.

The harness speaks plain JSON over HTTPS so that its agents start fast and do not depend on how a
given release of the generated Python client models a 1.20 server's objects.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from typing import Any

JSON = dict[str, Any]

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"


class ApiError(Exception):
    """A non-2xx answer from the apiserver."""

    def __init__(self, status: int, reason: str, body: str) -> None:
        super().__init__(f"{status} {reason}: {body[:500]}")
        self.status = status
        self.reason = reason
        self.body = body


class Kube:
    """One apiserver, one bearer token; safe to share between threads (a connection per thread)."""

    def __init__(self, server: str, token: str, ca_file: str, timeout: float = 30.0) -> None:
        url = urllib.parse.urlsplit(server)
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or 443
        self.token = token
        self.timeout = timeout
        self._ssl = ssl.create_default_context(cafile=ca_file)
        self._local = threading.local()

    def _connection(self, timeout: float | None = None) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            self.host, self.port, context=self._ssl, timeout=timeout or self.timeout
        )

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: Mapping[str, str | int] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        if query:
            path = f"{path}?{urllib.parse.urlencode(query)}"
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = content_type
        for attempt in range(2):
            conn: http.client.HTTPSConnection | None = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._connection()
                self._local.conn = conn
            try:
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
            except (http.client.HTTPException, OSError):
                # A kept-alive connection may have been closed by the server: retry once, fresh.
                conn.close()
                self._local.conn = None
                if attempt == 1:
                    raise
                continue
            if resp.status >= 300:
                raise ApiError(resp.status, resp.reason, raw.decode(errors="replace"))
            if not raw:
                return None
            if resp.getheader("Content-Type", "").startswith("application/json"):
                return json.loads(raw)
            return raw.decode(errors="replace")
        raise AssertionError("unreachable")

    def get(self, path: str, **query: str | int) -> Any:
        return self.request("GET", path, query=query)

    def get_or_none(self, path: str) -> Any:
        try:
            return self.get(path)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def create(self, path: str, body: JSON, retry_seconds: float = 10.0) -> Any:
        """POST; an answer that asks to retry (a 1.20 apiserver creating a pod before its
        ServiceAccount's token exists says so with a 500 and retryAfterSeconds) is retried."""
        deadline = time.monotonic() + retry_seconds
        while True:
            try:
                return self.request("POST", path, body)
            except ApiError as e:
                wait = _retry_after(e)
                if wait is None or time.monotonic() + wait > deadline:
                    raise
                time.sleep(wait)

    def patch(self, path: str, body: Any, content_type: str = MERGE_PATCH) -> Any:
        return self.request("PATCH", path, body, content_type=content_type)

    def put(self, path: str, body: JSON) -> Any:
        return self.request("PUT", path, body)

    def delete(self, path: str, body: JSON | None = None) -> Any:
        try:
            return self.request("DELETE", path, body)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def watch(self, path: str, timeout_seconds: int = 60, **query: str | int) -> Iterator[JSON]:
        """Yield watch events ({"type": ..., "object": ...}) until the server ends the stream."""
        q: dict[str, str | int] = {"watch": "1", "timeoutSeconds": timeout_seconds, **query}
        conn = self._connection(timeout=timeout_seconds + 15)
        try:
            conn.request(
                "GET",
                f"{path}?{urllib.parse.urlencode(q)}",
                headers={"Authorization": f"Bearer {self.token}", "Accept": "application/json"},
            )
            resp = conn.getresponse()
            if resp.status >= 300:
                raise ApiError(resp.status, resp.reason, resp.read().decode(errors="replace"))
            while True:
                try:
                    line = resp.readline()
                except TimeoutError:
                    return
                if not line:
                    return
                if line.strip():
                    yield json.loads(line)
        finally:
            conn.close()

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def _retry_after(error: ApiError) -> float | None:
    """Seconds the apiserver asked to wait before retrying, if it asked."""
    if error.status not in (429, 500, 503):
        return None
    try:
        details = json.loads(error.body).get("details") or {}
    except (ValueError, AttributeError):
        return None
    seconds = details.get("retryAfterSeconds")
    return float(seconds) if isinstance(seconds, int | float) and seconds > 0 else None
