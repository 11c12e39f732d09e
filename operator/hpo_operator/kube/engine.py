"""The work queue that runs reconciles: one study at a time per key, as soon as something changes.

Watch events (studies, their HPOTrials, Jobs and pods) enqueue the study's key; a key already
queued is not queued twice, and a key that changes while it is being reconciled runs once more
right after. Each reconcile says when it wants to run again (the deadline, a resync); a periodic
listing of every study catches anything a watch missed. The queue holds no state of a study: a
fresh engine after a restart reconciles the same studies to the same result.

The metrics hear of every reconcile, every failed one and every study that is gone; the periodic
listing and each successful reconcile beat the heartbeat that the liveness probe checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import urllib3

from .api import ApiError
from .core_cache import CoreCache
from .observe import to_timestamp
from .reconcile import reconcile, reconcile_failed
from .study_metrics import Metrics, NullMetrics
from .world import Cluster, study_path
from .writes import Event

log = logging.getLogger("hpo_operator")
Key = tuple[str, str]  # (namespace, study name)
# What an unreachable or restarting API server raises: logged in one line and retried, never fatal.
TRANSIENT_ERRORS = (ApiError, OSError, urllib3.exceptions.HTTPError)
SLOW_SECONDS = 0.5  # a reconcile slower than this is logged: it delays pruning and the deadline


@dataclass
class EngineSettings:
    workers: int = 4
    """Studies reconciled at once (each reconcile runs in a thread: the API client is blocking)."""
    resync_seconds: float = 30.0
    """How often every study is listed and reconciled, whatever the watches said."""
    error_backoff_seconds: float = 1.0
    """Delay before a reconcile that raised is tried again."""


@dataclass
class Engine:
    cluster: Cluster
    namespaces: tuple[str, ...] = ()  # () = every namespace
    settings: EngineSettings = field(default_factory=EngineSettings)
    clock: Callable[[], float] = time.time
    metrics: Metrics = field(default_factory=NullMetrics)
    _queue: asyncio.Queue[Key] = field(default_factory=asyncio.Queue, init=False)
    _queued: set[Key] = field(default_factory=set, init=False)
    _running: set[Key] = field(default_factory=set, init=False)
    _dirty: set[Key] = field(default_factory=set, init=False)
    _timers: dict[Key, asyncio.TimerHandle] = field(default_factory=dict, init=False)
    _generations: dict[Key, Any] = field(default_factory=dict, init=False)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list, init=False)
    # Set while this replica may reconcile: always without leader election, else while it leads.
    _leading: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _failed: dict[Key, str] = field(default_factory=dict, init=False)  # the last error each study gave
    _unserved: set[str] = field(default_factory=set, init=False)  # uids of studies told they are not served
    # Each study's decision core, kept between its reconciles (core_cache.py), and its uid by key.
    cores: CoreCache = field(default_factory=CoreCache)
    _uids: dict[Key, str] = field(default_factory=dict, init=False)
    _listener: Callable[[str, str], None] | None = field(default=None, init=False)

    # --- triggers -------------------------------------------------------------------------------

    def enqueue(self, key: Key) -> None:
        if key in self._running:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    def enqueue_after(self, key: Key, delay: float) -> None:
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        timer = self._timers.get(key)
        if timer is not None and not timer.cancelled() and timer.when() <= when:
            return
        if timer is not None:
            timer.cancel()
        self._timers[key] = loop.call_at(when, self._fire, key)

    def _fire(self, key: Key) -> None:
        self._timers.pop(key, None)
        self.enqueue(key)

    def study_event(self, kind: str | None, body: Any) -> None:
        """A study changed: reconcile it unless only its status did (the operator's own write)."""
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        if self.cluster.caches is not None:
            self.cluster.caches.study_seen(kind, {k: body[k] for k in body})
        if kind == "DELETED":
            self._generations.pop(key, None)
            self.metrics.forget(*key)
            return
        if self._generations.get(key) != meta.get("generation") or kind is None:
            self._generations[key] = meta.get("generation")
            self.enqueue(key)

    def child_event(self, namespace: str | None, study: str | None) -> None:
        if namespace and study:
            self.enqueue((namespace, study))

    # --- running --------------------------------------------------------------------------------

    async def start(self, leading: bool = True) -> None:
        """Start the workers and the resync; ``leading`` False: queue keys, reconcile nothing until
        ``begin_leading``."""
        caches = self.cluster.caches
        if caches is not None:
            loop = asyncio.get_running_loop()

            def changed(namespace: str, study: str) -> None:  # from the informers' threads
                with contextlib.suppress(RuntimeError):  # the loop closed: this engine is done
                    loop.call_soon_threadsafe(self.child_event, namespace, study)

            self._listener = changed
            caches.listen(changed)
        if leading:
            self._leading.set()
            self._start_caches()
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self.settings.workers)]
        self._tasks.append(asyncio.create_task(self._resync()))

    def begin_leading(self) -> None:
        """This replica now leads: reconcile every study, whatever the queue holds."""
        self._leading.set()
        self._start_caches()
        self._tasks.append(asyncio.create_task(self._enqueue_all()))

    def stop_leading(self) -> None:
        """Another replica may lead now: take no key from the queue from here on."""
        self._leading.clear()

    def _start_caches(self) -> None:
        """The informers list and watch from now (caches.py: a new leader lists after the last one
        stopped writing); a later engine of the same process keeps them running."""
        if self.cluster.caches is not None:
            self.cluster.caches.start()

    async def stop(self) -> None:
        if self.cluster.caches is not None and self._listener is not None:
            self.cluster.caches.unlisten(self._listener)
        for timer in self._timers.values():
            timer.cancel()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _worker(self) -> None:
        while True:
            await self._leading.wait()
            key = await self._queue.get()
            if not self._leading.is_set():  # lost the lead while waiting: keep the key queued
                self._queue.put_nowait(key)
                continue
            self._queued.discard(key)
            self._running.add(key)
            try:
                again = await asyncio.to_thread(self.reconcile_once, key)
            except Exception as err:  # a failed reconcile is retried; the operator keeps going
                log.warning(
                    "reconcile of %s/%s failed: %s", *key, err, exc_info=not isinstance(err, TRANSIENT_ERRORS)
                )
                self.metrics.failed(*key, err)
                again = self.settings.error_backoff_seconds
            finally:
                self._running.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                self.enqueue(key)
            elif again is not None:
                self.enqueue_after(key, again)

    def reconcile_once(self, key: Key) -> float | None:
        """Read, decide, write; returns when to look again (None: only when something changes)."""
        started = time.monotonic()
        world = self.cluster.read(*key)
        if world is None:
            self.metrics.forget(*key)
            gone = self._uids.pop(key, None)
            if gone is not None:
                self.cores.forget(gone)
            return None
        uid = world.study["metadata"]["uid"]
        if self._uids.get(key, uid) != uid:
            self.cores.forget(self._uids[key])  # deleted and made again under the same name
        self._uids[key] = uid
        try:
            outcome = reconcile(world, self.clock(), self.cluster.policy, self.cores)
        except Exception as err:  # the pure reconcile: the same world would fail the same way again
            self.cores.forget(uid)  # a core that raised half-way is not trusted again
            text = f"{type(err).__name__}: {err}"
            if self._failed.get(key) != text:
                log.exception("reconcile of %s/%s failed; the study is marked Failed", *key)
            self._failed[key] = text
            outcome = reconcile_failed(world, err, self.clock())
        self.cluster.apply(world, outcome)
        took = time.monotonic() - started
        self.metrics.observe(world, outcome, took)
        self.metrics.heartbeat()
        if took > SLOW_SECONDS:
            log.info("reconcile of %s/%s took %.2fs (%d writes)", *key, took, len(outcome.writes))
        return outcome.requeue_after

    async def _resync(self) -> None:
        while True:
            # The loop runs only while the event loop does: a stalled engine stops beating.
            self.metrics.heartbeat()
            await self._enqueue_all()
            await asyncio.sleep(self.settings.resync_seconds)

    async def _enqueue_all(self) -> None:
        try:
            for key in await asyncio.to_thread(self._list_studies):
                self.enqueue(key)
            if self.namespaces:
                await asyncio.to_thread(self._tell_unserved)
        except TRANSIENT_ERRORS as err:
            log.warning("listing studies failed: %s", err)

    def _tell_unserved(self) -> None:
        """A study in a namespace this operator does not serve, that no operator has taken up (no
        status) a resync after its creation, gets one Warning event that says so: otherwise its
        user sees nothing at all."""
        now = self.clock()
        for study in self.cluster.api.list(study_path("")):
            meta = study["metadata"]
            created = to_timestamp(meta.get("creationTimestamp"))
            if (
                meta["namespace"] in self.namespaces
                or study.get("status")
                or meta["uid"] in self._unserved
                or created is None
                or now - created < self.settings.resync_seconds
            ):
                continue
            self._unserved.add(meta["uid"])
            served = ", ".join(self.namespaces)
            message = (
                f"no hpo-operator has taken up this study: the operator that sees it serves only {served} "
                "(`hpo operator -n`, the chart's watchNamespaces)"
            )
            log.warning("%s/%s: %s", meta["namespace"], meta["name"], message)
            self.cluster.event(study, Event("NotServed", message, "Warning"))

    def _list_studies(self) -> list[Key]:
        paths = [study_path(ns) for ns in self.namespaces or ("",)]  # "": every namespace
        pages = [self.cluster.api.list_page(path) for path in paths]
        studies = [study for page in pages for study in page.get("items") or []]
        if self.cluster.caches is not None:
            # The earliest listing's resourceVersion: what is newer in the cache stays.
            versions = [str((page.get("metadata") or {}).get("resourceVersion") or "") for page in pages]
            numbers = [int(v) for v in versions if v.isdigit()]
            version = str(min(numbers)) if len(numbers) == len(versions) and numbers else ""
            self.cluster.caches.studies_listed(studies, version)
        return [(study["metadata"]["namespace"], study["metadata"]["name"]) for study in studies]
