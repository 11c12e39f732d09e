"""What one reconcile of a study reads (``World``) and what it returns (``Outcome``): the writes
to make, each a value that world.py carries out. A create meets 409 where the object exists, so a
repeated write is harmless."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..study import (
    Decision,
)
from .capacity import Capacity

JSON = dict[str, Any]


@dataclass(frozen=True)
class World:
    """Everything one reconcile of a study reads."""

    study: JSON
    trials: tuple[JSON, ...] = ()
    jobs: Mapping[str, JSON] = field(default_factory=dict)  # by name (= the trial's name)
    pods: Mapping[str, tuple[JSON, ...]] = field(default_factory=dict)  # by trial name
    capacity: Capacity = field(default_factory=lambda: Capacity(0, 0))
    # The identity (ServiceAccount) of each trial that may need a new Job (needs_identity): "missing",
    # "waiting" (for its token Secret), "ready", or "foreign" (an account of that name that is not
    # the trial's own); a trial not named is looked at again next time.
    identities: Mapping[str, str] = field(default_factory=dict)
    token_secrets: bool = False  # before 1.24 a pod is admitted only once its account has a token
    claim_exists: bool = True  # the checkpoint claim the operator creates (spec.checkpoints.size)


# --- the writes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    reason: str
    message: str
    type: str = "Normal"


@dataclass(frozen=True)
class CreateIdentity:
    """A trial's ServiceAccount, Role and RoleBinding, owned by its HPOTrial (409: they exist)."""

    trial: str
    objects: tuple[JSON, ...]


@dataclass(frozen=True)
class CreateClaim:
    """The study's checkpoint PersistentVolumeClaim (409: it exists)."""

    claim: JSON


@dataclass(frozen=True)
class CreateCleanupJob:
    """The Job that deletes the checkpoints no trial will resume from (409: it exists)."""

    job: JSON
    event: Event


@dataclass(frozen=True)
class CreateTrial:
    """Create the HPOTrial (409: it exists), then its identity (unless the template names an allowed
    account) and its Job, owned by it; the event only if new. No Job where the cluster must first
    make the identity's token: a later reconcile makes it."""

    trial: JSON
    job: JSON | None
    event: Event
    identity: bool = True


@dataclass(frozen=True)
class CreateJob:
    trial: str
    job: JSON


@dataclass(frozen=True)
class PatchTrialStatus:
    """``verdict``: the operator's record of the trial (verdict.py), written first when it changed;
    ``patch``: a merge patch of the HPOTrial's status, which mirrors it."""

    trial: str
    patch: JSON
    event: Event | None = None
    verdict: JSON | None = None


@dataclass(frozen=True)
class ScaleJobDown:
    """``spec.parallelism: 0`` on a stopped trial's Job, stamped with ``at``, and its deadline
    removed: the Job controller deletes the pod, and having seen parallelism 0 before the pod's
    deletion it never replaces it. A pod deleted by anyone else is replaced by a controller whose
    cache still wants one, and the replacement takes a GPU until the garbage collector removes it.
    The Job is kept, with no pod, as the run's record (stopping.py)."""

    name: str
    at: str


@dataclass(frozen=True)
class DeleteJob:
    """The Job goes (background propagation), and the pods named are deleted right after instead of
    waiting for the garbage collector: a Job whose controller did not act on ``ScaleJobDown`` in
    time, or a pod whose Job is already gone."""

    name: str
    pods: tuple[str, ...] = ()


@dataclass(frozen=True)
class PatchJobDeadline:
    name: str
    seconds: int


Write = (
    CreateIdentity
    | CreateClaim
    | CreateCleanupJob
    | CreateTrial
    | CreateJob
    | PatchTrialStatus
    | ScaleJobDown
    | DeleteJob
    | PatchJobDeadline
)


@dataclass(frozen=True)
class Outcome:
    writes: list[Write] = field(default_factory=list)
    status: JSON | None = None  # a merge patch of the study's status, None when nothing changed
    first_status: JSON | None = None  # written before anything else: the budget's start
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    decision: Decision | None = None
