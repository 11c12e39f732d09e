"""List-then-watch (kube/informer.py) against a scripted fake API: what it asks for, when it lists
again, and what it hands on. The informer runs in a thread; the tests wait on conditions."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import urllib3

from hpo_operator.kube.api import ApiError
from hpo_operator.kube.informer import Informer
from hpo_operator.kube.store import Change, Store
from tests.cluster.waiting import wait_for

JSON = dict[str, Any]
PATH = "/api/v1/namespaces/ns/pods"
SELECTOR = {"labelSelector": "hpo.dev/study"}
Script = list[JSON | BaseException]  # a watch stream: events, or an error raised at that point


def pod(name: str, version: int) -> JSON:
    return {"metadata": {"name": name, "namespace": "ns", "resourceVersion": str(version)}}


def event(kind: str, name: str, version: int) -> JSON:
    return {"type": kind, "object": {"kind": "Pod", "apiVersion": "v1", **pod(name, version)}}


def bookmark(version: int) -> JSON:
    return {"type": "BOOKMARK", "object": {"kind": "Pod", "metadata": {"resourceVersion": str(version)}}}


def page(*items: JSON, version: int, more: str = "") -> JSON:
    meta: JSON = {"resourceVersion": str(version), **({"continue": more} if more else {})}
    return {"kind": "PodList", "apiVersion": "v1", "metadata": meta, "items": [dict(i) for i in items]}


@dataclass
class FakeSource:
    """Answers each list_page with the next scripted page (or raises it) and each watch with the next
    scripted stream; with no script left, a watch is a quiet stream the server ends soon."""

    pages: deque[JSON | BaseException] = field(default_factory=deque)
    streams: deque[Script] = field(default_factory=deque)
    calls: list[tuple[str, dict[str, str | int], float]] = field(default_factory=list)  # (verb, query, when)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _closed: threading.Event = field(default_factory=threading.Event)

    def list_page(self, path: str, **query: str | int) -> JSON:
        assert path == PATH
        with self._lock:
            self.calls.append(("list", dict(query), time.monotonic()))
            answer = self.pages.popleft() if self.pages else ApiError(500, "GET", path, "no page scripted")
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def watch(self, path: str, query: Mapping[str, str | int], timeout: float) -> Iterator[JSON]:
        assert path == PATH
        with self._lock:
            self.calls.append(("watch", dict(query), time.monotonic()))
            script = self.streams.popleft() if self.streams else None
        if script is None:
            self._closed.wait(0.01)  # the server's timeoutSeconds, shortened
            return
        for item in script:
            if isinstance(item, BaseException):
                raise item
            yield item

    def queries(self, verb: str) -> list[dict[str, str | int]]:
        with self._lock:
            return [q for v, q, _ in self.calls if v == verb]

    def verbs(self) -> list[str]:
        with self._lock:
            return [v for v, _, _ in self.calls]

    def close(self) -> None:
        self._closed.set()


@dataclass
class Run:
    source: FakeSource
    informer: Informer
    store: Store
    changes: list[tuple[str, str, str]]  # (type, name, resourceVersion) as on_change got them

    def watched_from(self) -> list[str | int]:
        return [q["resourceVersion"] for q in self.source.queries("watch")]

    def wait(self, condition: Any, message: str) -> Any:
        return wait_for(
            condition, timeout=5.0, interval=0.005, message=lambda: f"{message}: {self.source.calls}"
        )


@contextmanager
def running(source: FakeSource, retry_first: float = 0.001) -> Iterator[Run]:
    """An informer over ``source`` running in a thread; afterwards stop() must end run() at once."""
    store = Store()
    changes: list[tuple[str, str, str]] = []
    lock = threading.Lock()

    def on_change(change: Change) -> None:
        meta = change.obj["metadata"]
        with lock:
            changes.append((change.type, meta["name"], meta["resourceVersion"]))

    informer = Informer(
        source,
        PATH,
        store,
        SELECTOR,
        on_change,
        "pods",
        watch_seconds=7,
        retry_first=retry_first,
        retry_longest=0.01,
    )
    thread = threading.Thread(target=informer.run, daemon=True)
    thread.start()
    try:
        yield Run(source, informer, store, changes)
    finally:
        informer.stop()
        thread.join(timeout=5.0)
        source.close()
        assert not thread.is_alive(), "stop() did not end run()"


def names(store: Store) -> dict[str, str]:
    return {o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in store.items()}


def test_it_lists_page_by_page_then_watches_from_the_listings_version_with_bookmarks() -> None:
    source = FakeSource(
        pages=deque([page(pod("a", 3), version=10, more="next"), page(pod("b", 4), version=10)])
    )
    with running(source) as run:
        run.wait(lambda: source.queries("watch"), "a watch")
        assert source.queries("list") == [
            {**SELECTOR, "limit": 500},
            {**SELECTOR, "limit": 500, "continue": "next"},
        ]
        first = source.queries("watch")[0]
        assert first == {
            **SELECTOR,
            "resourceVersion": "10",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": 7,
        }
        assert names(run.store) == {"a": "3", "b": "4"}
        assert run.store.synced
        stored = run.store.get("ns", "a")
        assert stored is not None and (stored["kind"], stored["apiVersion"]) == ("Pod", "v1")
        assert sorted(run.changes) == [("ADDED", "a", "3"), ("ADDED", "b", "4")]


def test_a_bookmark_moves_where_the_next_watch_starts_and_an_ended_stream_is_resumed_without_listing() -> (
    None
):
    source = FakeSource(
        pages=deque([page(pod("a", 3), version=10)]),
        streams=deque([[event("MODIFIED", "a", 11), bookmark(15)], [event("ADDED", "b", 17)]]),
    )
    with running(source) as run:
        run.wait(lambda: len(source.queries("watch")) >= 3, "three watches")
        assert run.watched_from()[:3] == ["10", "15", "17"]
        assert source.verbs()[:4] == ["list", "watch", "watch", "watch"]
        assert run.informer.lists == 1
        assert names(run.store) == {"a": "11", "b": "17"}


def test_a_watch_broken_half_way_goes_on_from_the_last_event_it_delivered() -> None:
    source = FakeSource(
        pages=deque([page(pod("a", 3), version=10)]),
        streams=deque(
            [
                [event("MODIFIED", "a", 12), ConnectionResetError("reset by peer")],
                [event("ADDED", "b", 13), urllib3.exceptions.ProtocolError("connection broken")],
            ]
        ),
    )
    with running(source) as run:
        run.wait(lambda: len(source.queries("watch")) >= 3, "three watches")
        assert run.watched_from()[:3] == ["10", "12", "13"]
        assert run.informer.lists == 1  # a connection error is no reason to list again
        assert names(run.store) == {"a": "12", "b": "13"}


def test_a_connection_error_before_the_listing_is_retried() -> None:
    source = FakeSource(pages=deque([ConnectionRefusedError("refused"), page(pod("a", 3), version=10)]))
    with running(source) as run:
        run.wait(lambda: source.queries("watch"), "a watch")
        assert source.verbs()[:3] == ["list", "list", "watch"]
        assert run.watched_from()[0] == "10"
        assert names(run.store) == {"a": "3"}


def test_a_410_error_event_lists_again_and_the_listing_removes_what_was_deleted_meanwhile() -> None:
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old resource version"}}
    source = FakeSource(
        pages=deque(
            [page(pod("a", 3), pod("b", 4), version=10), page(pod("a", 3), pod("c", 30), version=40)]
        ),
        streams=deque([[gone]]),
    )
    with running(source) as run:
        run.wait(lambda: len(source.queries("watch")) >= 2, "a watch after the re-list")
        assert source.verbs()[:4] == ["list", "watch", "list", "watch"]
        assert run.watched_from()[:2] == ["10", "40"]
        assert run.informer.lists == 2
        assert names(run.store) == {"a": "3", "c": "30"}
        assert sorted(run.changes) == [
            ("ADDED", "a", "3"),
            ("ADDED", "b", "4"),
            ("ADDED", "c", "30"),
            ("DELETED", "b", "4"),
        ]


def test_an_http_410_lists_again() -> None:
    source = FakeSource(
        pages=deque([page(pod("a", 3), version=10), page(version=40)]),
        streams=deque([[ApiError(410, "GET", PATH, "Gone")]]),
    )
    with running(source) as run:
        run.wait(lambda: len(source.queries("watch")) >= 2, "a watch after the re-list")
        assert source.verbs()[:4] == ["list", "watch", "list", "watch"]
        assert run.watched_from()[:2] == ["10", "40"]
        assert names(run.store) == {}
        assert ("DELETED", "a", "3") in run.changes


def test_a_404_lists_again_after_a_delay() -> None:
    delay = 0.1
    source = FakeSource(
        pages=deque([page(pod("a", 3), version=10), page(pod("a", 3), version=20)]),
        streams=deque([[ApiError(404, "GET", PATH, "the server could not find the requested resource")]]),
    )
    with running(source, retry_first=delay) as run:
        run.wait(lambda: len(source.queries("watch")) >= 2, "a watch after the re-list")
        assert source.verbs()[:4] == ["list", "watch", "list", "watch"]
        assert run.watched_from()[:2] == ["10", "20"]
        failed_at, listed_at = source.calls[1][2], source.calls[2][2]
        assert listed_at - failed_at >= delay


def test_an_error_event_other_than_410_is_retried_from_the_same_version() -> None:
    broken = {"type": "ERROR", "object": {"kind": "Status", "code": 500, "message": "internal error"}}
    source = FakeSource(pages=deque([page(version=10)]), streams=deque([[bookmark(12), broken]]))
    with running(source) as run:
        run.wait(lambda: len(source.queries("watch")) >= 2, "a second watch")
        assert run.watched_from()[:2] == ["10", "12"]
        assert run.informer.lists == 1


def test_on_change_gets_each_change_once() -> None:
    source = FakeSource(
        pages=deque(
            [page(pod("a", 3), pod("b", 4), version=10), page(pod("a", 12), pod("c", 11), version=20)]
        ),
        streams=deque(
            [
                [event("ADDED", "c", 11), event("MODIFIED", "a", 12), event("DELETED", "b", 13)],
                # A server replaying what was delivered already (as after a restart of the watch).
                [
                    event("ADDED", "c", 11),
                    event("MODIFIED", "a", 12),
                    event("DELETED", "b", 13),
                    bookmark(14),
                ],
                [{"type": "ERROR", "object": {"code": 410}}],  # the re-list finds nothing new
            ]
        ),
    )
    with running(source) as run:
        run.wait(lambda: len(source.queries("watch")) >= 4, "the watch after the re-list")
        assert run.informer.lists == 2
        assert sorted(run.changes[:2]) == [("ADDED", "a", "3"), ("ADDED", "b", "4")]  # the listing's
        # A deletion hands on the object as it was last stored.
        assert run.changes[2:] == [("ADDED", "c", "11"), ("MODIFIED", "a", "12"), ("DELETED", "b", "4")]


def test_stop_ends_run_while_it_waits_to_retry() -> None:
    source = FakeSource(pages=deque([ApiError(503, "GET", PATH, "unavailable")]))
    with running(source, retry_first=60.0):  # the context's exit asserts that run() ended at once
        wait_for(lambda: source.verbs(), timeout=5.0, interval=0.005, message="a listing")
    assert source.verbs() == ["list"]
