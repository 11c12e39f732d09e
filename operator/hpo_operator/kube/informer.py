"""List-then-watch: keeps a Store (store.py) equal to one collection of the API, in a thread.

The collection is listed once (a consistent read, page by page), then watched from the listing's
resourceVersion, with bookmarks so that a quiet watch still moves its resourceVersion on. A watch the
API server ends is started again from the last resourceVersion seen; one it refuses as too old
(410 Gone, after an API server restart or a long outage) and a collection that is not served (404,
e.g. while the CRDs are re-registered) are listed again, and the listing replaces the store, so an
object deleted meanwhile is gone from it too. Other failures are retried after a delay that doubles
up to a limit. Every change is handed to ``on_change`` (the engine enqueues the study).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import urllib3

from .api import ApiError
from .store import Change, Store, version_of

log = logging.getLogger("hpo_operator")
JSON = dict[str, Any]
PAGE_SIZE = 500
WATCH_SECONDS = 300  # the API server ends each watch after this; it is started again at once
RETRY_FIRST_SECONDS = 0.5
RETRY_LONGEST_SECONDS = 5.0  # a collection not served (404) is looked at again at least this often
FAILURES = (ApiError, OSError, urllib3.exceptions.HTTPError, ValueError)


class Source(Protocol):
    """What an informer reads from: the API (api.Api), or a fake in the unit tests."""

    def list_page(self, path: str, **query: str | int) -> JSON: ...

    def watch(self, path: str, query: Mapping[str, str | int], timeout: float) -> Iterator[JSON]: ...


class Relist(Exception):
    """The watch cannot go on from its resourceVersion: list again."""


@dataclass
class Informer:
    source: Source
    path: str
    store: Store
    query: Mapping[str, str] = field(default_factory=dict)
    on_change: Callable[[Change], None] = lambda change: None
    name: str = ""
    watch_seconds: int = WATCH_SECONDS
    retry_first: float = RETRY_FIRST_SECONDS
    retry_longest: float = RETRY_LONGEST_SECONDS
    _stopping: threading.Event = field(default_factory=threading.Event, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)
    lists: int = field(default=0, init=False)  # listings made (the first, and each re-list)
    # Where the next watch starts: the last resourceVersion seen (None: list first). Kept per event,
    # so that a watch broken half-way goes on after what it delivered instead of from its start.
    _version: str | None = field(default=None, init=False)

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.run, name=f"informer {self.name or self.path}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop after the current watch event (a watch that waits ends at its timeout at the latest;
        the thread is a daemon)."""
        self._stopping.set()

    def run(self) -> None:
        self._version = None
        delay = self.retry_first
        problem: tuple[str, int | None] | None = None  # the last failure's kind, logged once
        while not self._stopping.is_set():
            try:
                if self._version is None:
                    self._version = self._list()
                self._watch(self._version)
                delay, problem = self.retry_first, None
            except Relist:
                self._version = None
            except Exception as err:  # the thread must not end: the caches would stop moving
                if isinstance(err, ApiError) and err.status in (404, 410):
                    self._version = None
                elif not isinstance(err, FAILURES):
                    self._version = None  # something unforeseen: start again from a listing
                    log.exception("watching %s failed", self.name or self.path)
                kind = (type(err).__name__, err.status if isinstance(err, ApiError) else None)
                if kind != problem:  # once per kind of failure, not once per try
                    log.warning("watching %s failed: %s; trying again", self.name or self.path, err)
                problem = kind
                self._stopping.wait(delay)
                delay = min(delay * 2, self.retry_longest)

    def _list(self) -> str:
        items: list[JSON] = []
        query: dict[str, str | int] = {**self.query, "limit": PAGE_SIZE}
        while True:
            page = self.source.list_page(self.path, **query)
            kind = str(page.get("kind") or "").removesuffix("List")
            for item in page.get("items") or []:
                # Items of a listing of built-in kinds have no kind and apiVersion; events need them.
                item.setdefault("kind", kind)
                item.setdefault("apiVersion", page.get("apiVersion"))
                items.append(item)
            meta = page.get("metadata") or {}
            if not meta.get("continue"):
                break
            query = {**self.query, "limit": PAGE_SIZE, "continue": meta["continue"]}
        self.lists += 1
        version = str(meta.get("resourceVersion") or "")
        for change in self.store.replace(items, version):
            self.on_change(change)
        return version

    def _watch(self, version: str) -> None:
        query: dict[str, str | int] = {
            **self.query,
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": self.watch_seconds,
        }
        for event in self.source.watch(self.path, query, timeout=self.watch_seconds + 30):
            if self._stopping.is_set():
                break
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                code = int(obj.get("code") or 500)
                if code == 410:
                    raise Relist(obj.get("message"))
                raise ApiError(code, "WATCH", self.path, str(obj.get("message")))
            self._version = version_of(obj) or self._version
            if kind == "BOOKMARK":
                continue
            change = self.store.apply(str(kind), obj)
            if change is not None:
                self.on_change(change)
