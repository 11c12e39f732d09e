"""The reconcile's I/O: read a study's world from the API, and apply an Outcome's writes.

Writes go in an order that keeps a crash at any point harmless: the budget's start first, then
trial verdicts before the Job deletions they cause, then creates (409 is "already done"), the
study's status last. The writes of different trials do not depend on each other, so within each of
those steps they are made at once, a thread per trial (write_stages).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .api import Api, ApiError, ns_path
from .builders import build_claim, build_trial_identity, owner_reference
from .caches import ACCOUNTS, ACTIVE, JOBS, PODS, TRIALS, Caches
from .capacity import gpu_capacity
from .observe import to_rfc3339
from .policy import TrialPolicy
from .reconcile import needs_identity
from .resources import (
    GROUP,
    STUDY_LABEL,
    STUDY_PLURAL,
    TRIAL_LABEL,
    TRIAL_PLURAL,
    VERSION,
    job_trial,
    trial_identity_name,
)
from .stopping import SCALED_DOWN_AT
from .study_metrics import Metrics, NullMetrics
from .verdict import VERDICT_ANNOTATION, verdict_text
from .writes import (
    CreateClaim,
    CreateCleanupJob,
    CreateIdentity,
    CreateJob,
    CreateTrial,
    DeleteJob,
    Event,
    Outcome,
    PatchJobDeadline,
    PatchTrialStatus,
    ScaleJobDown,
    World,
    Write,
)

log = logging.getLogger("hpo_operator")
JSON = dict[str, Any]
Parts = tuple[JSON, list[JSON], list[JSON], list[JSON], list[JSON], list[JSON]]
COMPONENT = "hpo-operator"
WRITE_THREADS = 8
CREATES = (CreateIdentity, CreateTrial, CreateJob)


def trial_of(write: Write) -> str:
    """The trial a write is for ("" for the study's own: its claim, its cleanup Job)."""
    if isinstance(write, CreateTrial):
        return str(write.trial["metadata"]["name"])
    if isinstance(write, (CreateIdentity, CreateJob, PatchTrialStatus)):
        return write.trial
    if isinstance(write, (ScaleJobDown, DeleteJob, PatchJobDeadline)):
        return job_trial(write.name)
    return ""


def write_stages(writes: list[Write]) -> list[list[list[Write]]]:
    """The writes in the order that keeps a crash harmless (module docstring), as stages run one
    after the other: the claim; every trial's verdicts, scale-downs and deletions; every trial's
    creates; the cleanup Job. Within a stage, one group per trial, in the order the reconcile gave."""
    first: list[Write] = [w for w in writes if isinstance(w, CreateClaim)]
    last: list[Write] = [w for w in writes if isinstance(w, CreateCleanupJob)]
    settle: dict[str, list[Write]] = {}
    create: dict[str, list[Write]] = {}
    for write in writes:
        if isinstance(write, (CreateClaim, CreateCleanupJob)):
            continue
        stage = create if isinstance(write, CREATES) else settle
        stage.setdefault(trial_of(write), []).append(write)
    return [s for s in ([first], list(settle.values()), list(create.values()), [last]) if s and s[0]]


def study_path(namespace: str, name: str = "") -> str:
    return ns_path(GROUP, VERSION, namespace, STUDY_PLURAL, name)


def trial_path(namespace: str, name: str = "") -> str:
    return ns_path(GROUP, VERSION, namespace, TRIAL_PLURAL, name)


def job_path(namespace: str, name: str = "") -> str:
    return ns_path("batch", "v1", namespace, "jobs", name)


@dataclass
class Cluster:
    """Reads and writes for the reconciles of every study; one per operator."""

    api: Api
    clock: Callable[[], float] = time.time
    metrics: Metrics = field(default_factory=NullMetrics)
    policy: TrialPolicy = field(default_factory=TrialPolicy)  # what trial templates may ask for
    _needs_token_secret: bool | None = field(default=None, init=False)
    # Trials (by uid) whose ServiceAccount was seen ready: a cache of an API fact, never re-checked.
    _identity_ready: set[str] = field(default_factory=set, init=False)
    # Checkpoint claims seen to exist, by (namespace, name): likewise never re-checked.
    _claims: set[tuple[str, str]] = field(default_factory=set, init=False)
    _events: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, "events"), init=False)
    # Watch-fed copies of what the reconciles read (caches.py); None: every reconcile lists.
    caches: Caches | None = None
    write_threads: int = WRITE_THREADS  # requests of one reconcile's writes in flight at once
    _writers: ThreadPoolExecutor | None = field(default=None, init=False)
    cached_reads: bool = True  # False: the reconciles read the API even with caches

    def needs_token_secret(self) -> bool:
        """Before 1.24 a pod is admitted only once its ServiceAccount has a token Secret."""
        if self._needs_token_secret is None:
            self._needs_token_secret = self.api.version() < (1, 24)
        return self._needs_token_secret

    def read(self, namespace: str, name: str) -> World | None:
        cached = self.caches is not None and self.cached_reads
        parts = self._cached(namespace, name) if cached else self._listed(namespace, name)
        if parts is None:
            return None
        study, jobs_list, pods_list, trials, nodes, active = parts
        jobs = {j["metadata"]["name"]: j for j in jobs_list}
        pods: dict[str, list[JSON]] = defaultdict(list)
        for pod in pods_list:
            pods[pod["metadata"].get("labels", {}).get(TRIAL_LABEL, "")].append(pod)
        return World(
            study=study,
            trials=tuple(trials),
            jobs=jobs,
            pods={k: tuple(v) for k, v in pods.items()},
            capacity=gpu_capacity(nodes, active),
            identities={t["metadata"]["name"]: self._identity(t) for t in trials if needs_identity(t, jobs)},
            token_secrets=self.needs_token_secret(),
            claim_exists=self._claim_exists(study),
        )

    def _cached(self, namespace: str, name: str) -> Parts | None:
        """The study's world from the watch-fed caches (caches.py): no request."""
        caches = self.caches
        assert caches is not None
        caches.wait_synced()
        study = caches.study(namespace, name)
        if study is None:
            return None
        # Jobs and pods before the trials, as from the API (see _listed).
        jobs = caches.children(JOBS, namespace, name)
        pods = caches.children(PODS, namespace, name)
        trials = caches.children(TRIALS, namespace, name)
        return study, jobs, pods, trials, caches.nodes(), caches.gpu_pods()

    def _listed(self, namespace: str, name: str) -> Parts | None:
        """The study's world read from the API (an operator without caches: tests, tools)."""
        study = self.api.get_or_none(study_path(namespace, name))
        if study is None:
            return None
        # resourceVersion "0": served from the API server's watch cache, not read through to etcd.
        # Every reconcile follows a watch event, and the cache has applied that event before any
        # watcher sees it, so the lists are at least as new as what triggered the reconcile.
        cached = {"resourceVersion": "0"}
        selector = {"labelSelector": f"{STUDY_LABEL}={name}", **cached}
        # Jobs and pods before the trials: a trial reports before its pod ends, so the trials read
        # after a pod that ended hold its reports (observe.REPORT_SETTLE_SECONDS covers the caches).
        jobs = self.api.list(job_path(namespace), **selector)
        pods = self.api.list(ns_path("", "v1", namespace, "pods"), **selector)
        trials = self.api.list(trial_path(namespace), **selector)
        nodes = self.api.list("/api/v1/nodes", **cached)
        active = self.api.list("/api/v1/pods", fieldSelector=ACTIVE, **cached)
        return study, jobs, pods, trials, nodes, active

    def _claim_exists(self, study: JSON) -> bool:
        """Whether the checkpoint claim the operator creates for the study exists (True: none wanted)."""
        claim = build_claim(study)
        if claim is None:
            return True
        key = (claim["metadata"]["namespace"], claim["metadata"]["name"])
        if key in self._claims:
            return True
        if self.api.get_or_none(ns_path("", "v1", key[0], "persistentvolumeclaims", key[1])) is None:
            return False
        self._claims.add(key)
        return True

    def _identity(self, trial: JSON) -> str:
        """The state of the trial's own ServiceAccount (World.identities)."""
        meta = trial["metadata"]
        if meta["uid"] in self._identity_ready:
            return "ready"
        namespace, name = meta["namespace"], trial_identity_name(meta["name"])
        if self.caches is not None and self.cached_reads:
            account = self.caches.account(namespace, name)
        else:
            account = self.api.get_or_none(ns_path("", "v1", namespace, ACCOUNTS, name))
        if account is None:
            return "missing"
        owners = (account.get("metadata") or {}).get("ownerReferences") or []
        if not any(o.get("uid") == meta["uid"] for o in owners):
            return "foreign"
        if self.needs_token_secret() and not account.get("secrets"):
            return "waiting"
        self._identity_ready.add(meta["uid"])
        return "ready"

    def _create_identity(self, namespace: str, objects: list[JSON]) -> None:
        """Creates the objects; 409 (they exist) is fine: _identity checks whose the account is. An
        account that existed is read once into the cache, which watches only accounts with the study
        label: one of the same name without it is the user's, and the trial must not take it."""
        plural = {"ServiceAccount": ACCOUNTS, "Role": "roles", "RoleBinding": "rolebindings"}
        for obj in objects:
            group, _, version = obj["apiVersion"].rpartition("/")
            path = ns_path(group, version, namespace, plural[obj["kind"]])
            created = self.api.create(path, obj)
            if obj["kind"] != "ServiceAccount" or self.caches is None:
                continue
            if created is None:
                created = self.api.get_or_none(f"{path}/{obj['metadata']['name']}")
            self._seen(ACCOUNTS, created)

    def apply(self, world: World, outcome: Outcome) -> None:
        study = world.study
        namespace, name = study["metadata"]["namespace"], study["metadata"]["name"]
        if outcome.first_status:
            self._seen(
                STUDY_PLURAL,
                self.api.patch(study_path(namespace, name) + "/status", {"status": outcome.first_status}),
            )
        for stage in write_stages(outcome.writes):
            self._write_stage(world, stage)
        if outcome.status:
            self._seen(
                STUDY_PLURAL,
                self.api.patch(study_path(namespace, name) + "/status", {"status": outcome.status}),
            )
        for event in outcome.events:
            self.event(study, event)

    def _write_stage(self, world: World, groups: list[list[Write]]) -> None:
        """Each group's writes in order; the groups at once (each is one trial's, independent of the
        others'), so a reconcile of a large study waits for its slowest trial, not for their sum."""

        def run(group: list[Write]) -> None:
            for write in group:
                if self._write(world.study, write):
                    self.metrics.written(world, write, self.clock())

        if len(groups) == 1 or self.write_threads <= 1:
            for group in groups:
                run(group)
            return
        if self._writers is None:
            self._writers = ThreadPoolExecutor(self.write_threads, "writes")
        for done in [self._writers.submit(run, group) for group in groups]:
            done.result()  # the first failure is raised once every group has ended

    def _write(self, study: JSON, write: Write) -> bool:
        """Make one write; False when it changed nothing (the object existed, or was gone)."""
        namespace = study["metadata"]["namespace"]
        if isinstance(write, CreateIdentity):
            self._create_identity(namespace, list(write.objects))
        elif isinstance(write, CreateClaim):
            claims = ns_path("", "v1", namespace, "persistentvolumeclaims")
            return self.api.create(claims, write.claim) is not None
        elif isinstance(write, CreateCleanupJob):
            if self._seen(JOBS, self.api.create(job_path(namespace), write.job)) is None:
                return False
            self.event(study, write.event)
        elif isinstance(write, CreateTrial):
            created = self._seen(TRIALS, self.api.create(trial_path(namespace), write.trial))
            if created is None:
                return False  # it existed: the next reconcile makes its Job from the trial as stored
            if write.identity:
                self._create_identity(namespace, build_trial_identity(created))
            made = write.job is None or self._create_job(namespace, created, write.job)
            log.info("%s/%s: %s", namespace, study["metadata"]["name"], write.event.message)
            self.event(study, write.event)
            return made
        elif isinstance(write, CreateJob):
            return self._create_job(namespace, self._trial(namespace, write.trial), write.job)
        elif isinstance(write, PatchTrialStatus):
            if write.verdict is not None:  # the record first: the status only mirrors it
                record = {VERDICT_ANNOTATION: verdict_text(write.verdict)}
                body = {"metadata": {"annotations": record}}
                self._seen(TRIALS, self.api.patch(trial_path(namespace, write.trial), body))
            if write.patch:
                body = {"status": write.patch}
                self._seen(TRIALS, self.api.patch(trial_path(namespace, write.trial) + "/status", body))
            if write.event is not None:
                log.info("%s/%s: %s", namespace, study["metadata"]["name"], write.event.message)
                self.event(study, write.event)
        elif isinstance(write, ScaleJobDown):
            scale: JSON = {
                "metadata": {"annotations": {SCALED_DOWN_AT: write.at}},
                # The kept Job has no pod left to bound; with its deadline it would turn Failed
                # (DeadlineExceeded, a Warning event) at the study's deadline.
                "spec": {"parallelism": 0, "activeDeadlineSeconds": None},
            }
            try:
                self._seen(JOBS, self.api.patch(job_path(namespace, write.name), scale))
            except ApiError as err:
                if err.status != 404:  # gone already: nothing left to scale
                    raise
        elif isinstance(write, DeleteJob):
            answer = self.api.remove(job_path(namespace, write.name), propagation="Background")
            self._gone(JOBS, namespace, write.name, answer)
            for pod in write.pods:
                answer = self.api.remove(ns_path("", "v1", namespace, "pods", pod))
                self._gone(PODS, namespace, pod, answer)
        elif isinstance(write, PatchJobDeadline):
            deadline = {"spec": {"activeDeadlineSeconds": write.seconds}}
            self._seen(JOBS, self.api.patch(job_path(namespace, write.name), deadline))
        return True

    def _create_job(self, namespace: str, trial: JSON, job: JSON) -> bool:
        """True when this call created the Job; False when it existed."""
        owned = {**job, "metadata": {**job["metadata"], "ownerReferences": [owner_reference(trial)]}}
        return self._seen(JOBS, self.api.create(job_path(namespace), owned)) is not None

    def _trial(self, namespace: str, name: str) -> JSON:
        cached = self.caches.trial(namespace, name) if self.caches is not None else None
        trial: JSON = cached if cached is not None else self.api.get(trial_path(namespace, name))
        return trial

    def _seen(self, kind: str, answer: Any) -> Any:
        """The API's answer to a write, also put into the caches (the next reconcile reads it)."""
        if self.caches is not None and isinstance(answer, dict):
            self.caches.written(kind, answer)
        return answer

    def _gone(self, kind: str, namespace: str, name: str, answer: JSON | None) -> None:
        if self.caches is not None:
            self.caches.deleted(kind, namespace, name, answer)

    def event(self, study: JSON, event: Event) -> None:
        """A core/v1 Event on the study, for humans (`kubectl describe hpo`), posted in the background:
        it never delays or fails a reconcile."""
        meta = study["metadata"]
        stamp = to_rfc3339(self.clock())
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": study["apiVersion"],
                "kind": study["kind"],
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "reason": event.reason,
            "message": event.message[:1000],
            "type": event.type,
            "count": 1,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "source": {"component": COMPONENT},
        }
        self._events.submit(self._post_event, meta["namespace"], body)

    def _post_event(self, namespace: str, body: JSON) -> None:
        try:
            self.api.create(ns_path("", "v1", namespace, "events"), body)
        except (ApiError, OSError) as err:
            log.warning("cannot post event %s: %s", body["reason"], err)
