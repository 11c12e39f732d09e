"""A reconcile's writes (kube/world.py): in the order that keeps a crash harmless, and the writes of
different trials at once."""

from __future__ import annotations

import threading
from typing import Any, cast

from hpo_operator.kube.api import Api
from hpo_operator.kube.resources import job_name, job_trial
from hpo_operator.kube.world import Cluster, trial_of, write_stages
from hpo_operator.kube.writes import (
    CreateClaim,
    CreateCleanupJob,
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
from tests.support.kube_world import study

JSON = dict[str, Any]
STARTED = Event("TrialStarted", "started")


def trial_manifest(name: str) -> JSON:
    return {"metadata": {"name": name, "namespace": "ns"}, "spec": {}}


def test_stages_keep_verdicts_before_deletions_before_creates_one_group_per_trial() -> None:
    writes: list[Write] = [
        CreateClaim({"metadata": {"name": "claim"}}),
        PatchTrialStatus("s-0", {"phase": "Pruned"}, verdict={"phase": "Pruned"}),
        ScaleJobDown("s-0", "now"),
        CreateTrial(trial_manifest("s-2"), None, STARTED),
        PatchTrialStatus("s-1", {"phase": "Stopped"}),
        DeleteJob("s-1-run2"),  # the Job of s-1's second run
        DeleteJob("s-0"),
        CreateJob("s-3", {"metadata": {"name": "s-3"}}),
        PatchJobDeadline("s-4-run1", 30),
        CreateCleanupJob({"metadata": {"name": "cleanup"}}, STARTED),
    ]
    stages = write_stages(writes)
    assert stages == [
        [[writes[0]]],
        [[writes[1], writes[2], writes[6]], [writes[4], writes[5]], [writes[8]]],
        [[writes[3]], [writes[7]]],
        [[writes[9]]],
    ]
    assert trial_of(writes[8]) == "s-4"
    assert trial_of(writes[0]) == ""
    # Nothing lost, nothing twice.
    assert sorted(map(id, (w for stage in stages for group in stage for w in group))) == sorted(
        map(id, writes)
    )
    assert write_stages([]) == []


def test_a_jobs_trial_is_the_inverse_of_its_name() -> None:
    for trial in ("s-0", "study-run-12", "a-run1-3"):
        for run in (0, 1, 12):
            assert job_trial(job_name(trial, run)) == trial


class SlowApi:
    """Patches that wait until two are in flight at once (a barrier: only concurrent writes pass it),
    and a record of each trial's writes in the order they were made."""

    def __init__(self, parties: int) -> None:
        self.barrier = threading.Barrier(parties, timeout=10)
        self.order: list[str] = []
        self.lock = threading.Lock()

    def patch(self, path: str, body: Any, content_type: str = "") -> JSON:
        name = path.split("/hpotrials/")[1].split("/")[0]
        kind = "verdict" if path.endswith(name) else "status"
        if kind == "verdict":
            self.barrier.wait()
        with self.lock:
            self.order.append(f"{name} {kind}")
        return {}

    def create(self, path: str, body: JSON) -> JSON | None:  # events, posted in the background
        return None


def test_two_trials_verdicts_are_written_at_once_each_in_its_own_order() -> None:
    api = SlowApi(parties=2)
    cluster = Cluster(cast(Api, api))
    writes: list[Write] = [
        PatchTrialStatus(name, {"phase": "Pruned"}, verdict={"phase": "Pruned"}) for name in ("s-0", "s-1")
    ]
    # Made one after the other, the first verdict would wait at the barrier for a second that never
    # comes, and the barrier would break after its timeout.
    cluster.apply(World(study=study()), Outcome(writes=writes))
    for name in ("s-0", "s-1"):
        mine = [entry for entry in api.order if entry.startswith(f"{name} ")]
        assert mine == [f"{name} verdict", f"{name} status"]


def test_with_one_write_thread_the_writes_are_made_in_order() -> None:
    api = SlowApi(parties=1)
    cluster = Cluster(cast(Api, api), write_threads=1)
    writes: list[Write] = [
        PatchTrialStatus(name, {"phase": "Pruned"}, verdict={"phase": "Pruned"}) for name in ("s-0", "s-1")
    ]
    cluster.apply(World(study=study()), Outcome(writes=writes))
    assert api.order == ["s-0 verdict", "s-0 status", "s-1 verdict", "s-1 status"]
