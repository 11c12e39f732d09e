"""What the reconciles read, kept in memory: the operator's watch-fed caches.

* HPOTrials, trial Jobs, trial pods and the trials' own ServiceAccounts (those with the study label)
  of the served namespaces, and
  the Nodes and every pod that may hold GPUs (not Succeeded or Failed, cluster-wide), each kept by
  an informer (informer.py). The last two keep only what the GPU count reads (capacity.py).
* HPOStudies: kopf watches them (handlers.py hands each event to ``study_seen``) and the engine's
  periodic listing replaces them (``studies_listed``), so a study deleted while kopf was not
  watching is gone at the next listing.

Freshness: a reconcile must never decide on a cache older than a write it depends on (a trial
created but not seen yet would be created twice). Three rules give that: every write the operator
makes puts the API's answer into the cache at once (``written``, ``deleted``); nothing is read
until every informer has listed once (consistent reads, so a restarted operator sees every write
made before it started); informers start when the replica begins to lead, so a new leader lists
after the last one stopped. What others write (the trials' reports, the Job controller's pods)
arrives by watch, as fast as it did to kopf.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .api import Api, ApiError, ns_path
from .capacity import TERMINAL_POD_PHASES
from .informer import Informer
from .resources import GROUP, STUDY_LABEL, STUDY_PLURAL, TRIAL_PLURAL, VERSION
from .store import UNKNOWN, Change, Store, key_of, label_index, version_of

log = logging.getLogger("hpo_operator")
JSON = dict[str, Any]
Listener = Callable[[str, str], None]  # (namespace, study name) that changed
SYNC_TIMEOUT_SECONDS = 10.0
TRIALS, JOBS, PODS, GPU_PODS, NODES = "hpotrials", "jobs", "pods", "gpupods", "nodes"
ACCOUNTS = "serviceaccounts"
CHILDREN = (TRIALS, JOBS, PODS, ACCOUNTS)  # a change of one starts its study's reconcile
ACTIVE = ",".join(f"status.phase!={phase}" for phase in sorted(TERMINAL_POD_PHASES))


class NotSynced(ApiError):
    """The caches have not listed everything yet (a transient error: the reconcile is retried)."""

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__(503, "CACHE", ",".join(names), "not listed yet")


def gpu_pod(pod: JSON) -> JSON:
    """What the GPU count reads of a pod (capacity.pod_gpus, pod_terminal, nodeName)."""
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}

    def resources(containers: Iterable[JSON] | None) -> list[JSON]:
        return [{"resources": c.get("resources") or {}} for c in containers or []]

    return {
        "metadata": {k: meta[k] for k in ("name", "namespace", "resourceVersion") if k in meta},
        "spec": {
            "nodeName": spec.get("nodeName"),
            "containers": resources(spec.get("containers")),
            "initContainers": resources(spec.get("initContainers")),
        },
        "status": {"phase": (pod.get("status") or {}).get("phase")},
    }


def gpu_node(node: JSON) -> JSON:
    """What the GPU count reads of a Node (capacity.node_ready, node_gpus)."""
    meta, status = node.get("metadata") or {}, node.get("status") or {}
    return {
        "metadata": {k: meta[k] for k in ("name", "resourceVersion") if k in meta},
        "spec": {"unschedulable": (node.get("spec") or {}).get("unschedulable")},
        "status": {
            "allocatable": status.get("allocatable") or {},
            "conditions": [c for c in status.get("conditions") or [] if c.get("type") == "Ready"],
        },
    }


@dataclass
class Caches:
    api: Api
    namespaces: tuple[str, ...] = ()  # () = every namespace
    sync_timeout: float = SYNC_TIMEOUT_SECONDS
    studies: Store = field(default_factory=Store)
    _stores: dict[tuple[str, str], Store] = field(default_factory=dict, init=False)  # (kind, namespace)
    _informers: list[Informer] = field(default_factory=list, init=False)
    _listeners: list[Listener] = field(default_factory=list, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        by_study = label_index(STUDY_LABEL)
        scopes = self.namespaces or ("",)
        for namespace in scopes:
            for kind in CHILDREN:
                self._stores[(kind, namespace)] = Store(index=by_study)
        self._stores[(GPU_PODS, "")] = Store(transform=gpu_pod)
        self._stores[(NODES, "")] = Store(transform=gpu_node)

    # --- running ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Start every informer (once; later calls do nothing)."""
        with self._lock:
            if self._informers:
                return
            labelled = {"labelSelector": STUDY_LABEL}
            for namespace in self.namespaces or ("",):  # "": every namespace
                self._add(TRIALS, namespace, ns_path(GROUP, VERSION, namespace, TRIAL_PLURAL), {})
                self._add(JOBS, namespace, ns_path("batch", "v1", namespace, "jobs"), labelled)
                self._add(PODS, namespace, ns_path("", "v1", namespace, "pods"), labelled)
                self._add(ACCOUNTS, namespace, ns_path("", "v1", namespace, ACCOUNTS), labelled)
            self._add(GPU_PODS, "", ns_path("", "v1", "", "pods"), {"fieldSelector": ACTIVE})
            self._add(NODES, "", "/api/v1/nodes", {})
            for informer in self._informers:
                informer.start()

    def _add(self, kind: str, namespace: str, path: str, query: dict[str, str]) -> None:
        store = self._stores[(kind, namespace)]
        name = f"{kind} in {namespace}" if namespace else kind
        notify = self._child_changed if kind in CHILDREN else _ignore
        self._informers.append(Informer(self.api, path, store, query, notify, name))

    def stop(self) -> None:
        for informer in self._informers:
            informer.stop()

    def listen(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def unlisten(self, listener: Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def _child_changed(self, change: Change) -> None:
        meta = change.obj.get("metadata") or {}
        study = (meta.get("labels") or {}).get(STUDY_LABEL) or (change.obj.get("spec") or {}).get("study")
        namespace = meta.get("namespace")
        if not study or not namespace:
            return
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(namespace, str(study))
            except Exception:  # an informer must go on whatever a listener does
                log.exception("a listener failed on a change of %s/%s", namespace, study)

    def wait_synced(self) -> None:
        """Return once every cache has been listed; raise NotSynced after ``sync_timeout``."""
        deadline = time.monotonic() + self.sync_timeout
        stores = {"hpostudies": self.studies} | {
            f"{k}/{ns}" if ns else k: s for (k, ns), s in self._stores.items()
        }
        for name, store in stores.items():
            if not store.wait_synced(max(0.0, deadline - time.monotonic())):
                raise NotSynced([n for n, s in stores.items() if not s.synced] or [name])

    # --- studies ----------------------------------------------------------------------------------

    def study_seen(self, kind: str | None, body: JSON) -> None:
        """A study as kopf's watch saw it (kind None: kopf's own listing)."""
        self.studies.apply("DELETED" if kind == "DELETED" else "MODIFIED", body)

    def studies_listed(self, studies: Iterable[JSON], version: str = "") -> None:
        """Every study served, listed (consistently) from the API at resourceVersion ``version``."""
        self.studies.replace(studies, version)

    # --- reads ------------------------------------------------------------------------------------

    def _store(self, kind: str, namespace: str) -> Store:
        store = self._stores.get((kind, namespace))  # (a Store is falsy while empty: no `or`)
        if store is None:
            store = self._stores.get((kind, ""))
        if store is None:
            raise KeyError(f"{namespace} is not a served namespace")
        return store

    def study(self, namespace: str, name: str) -> JSON | None:
        return self.studies.get(namespace, name)

    def trial(self, namespace: str, name: str) -> JSON | None:
        return self._store(TRIALS, namespace).get(namespace, name)

    def account(self, namespace: str, name: str) -> JSON | None:
        """A trial's own ServiceAccount (or one of the same name the operator was refused, see
        ``written``)."""
        return self._store(ACCOUNTS, namespace).get(namespace, name)

    def children(self, kind: str, namespace: str, study: str) -> list[JSON]:
        """The study's HPOTrials, Jobs or pods (kind: hpotrials, jobs, pods)."""
        return self._store(kind, namespace).select(namespace, study)

    def nodes(self) -> list[JSON]:
        return self._stores[(NODES, "")].items()

    def gpu_pods(self) -> list[JSON]:
        return self._stores[(GPU_PODS, "")].items()

    # --- the operator's own writes ----------------------------------------------------------------

    def written(self, kind: str, obj: JSON | None) -> None:
        """The API's answer to the operator's create or update (kind: hpostudies, hpotrials, jobs,
        pods, serviceaccounts), or an object it read; None (the object existed) changes nothing."""
        if not obj or not (obj.get("metadata") or {}).get("resourceVersion"):
            return
        if kind == STUDY_PLURAL:
            self.studies.written(obj)
            return
        self._store(kind, key_of(obj)[0]).written(obj)

    def deleted(self, kind: str, namespace: str, name: str, answer: JSON | None) -> None:
        """The operator deleted the object; ``answer`` is the API's (the object while it is still
        being deleted, else a Status)."""
        shown = answer if answer and answer.get("kind") != "Status" else None  # the object, if any
        if shown is not None and (shown.get("metadata") or {}).get("deletionTimestamp"):
            self.written(kind, shown)  # still there, being deleted (a pod holds its GPUs until gone)
            return
        version = version_of(shown) if shown is not None else UNKNOWN
        self._store(kind, namespace).deleted(namespace, name, version)


def _ignore(change: Change) -> None:
    """Nodes and other namespaces' pods change the GPU count, read at each reconcile, and trigger
    none: the studies that wait for GPUs are reconciled at their own events and at the resync."""
