"""The promote variant and the final training in the operator: builders, observe and reconcile."""

from __future__ import annotations

from typing import Any

from hpo_operator.kube.builders import build_claim, build_job, build_trial
from hpo_operator.kube.observe import observe_trial, to_rfc3339
from hpo_operator.kube.reconcile import reconcile
from hpo_operator.kube.resources import RUN_LABEL
from hpo_operator.kube.writes import (
    CreateClaim,
    CreateCleanupJob,
    CreateJob,
    DeleteJob,
    PatchTrialStatus,
    ScaleJobDown,
    World,
)
from hpo_operator.study import StopTrial
from hpo_operator.trials import FINAL_MIN_SECONDS
from tests.support.kube_world import T0, job, pod, study, trial

JSON = dict[str, Any]
PROMOTE: JSON = {
    "asha": {"variant": "promote"},
    "finalTraining": {"enabled": True},
    "checkpoints": {"size": "1Gi", "storageClassName": "fast"},
    "gpusPerTrial": 0,
    "parallelTrials": 1,
}


def promote_study(status: JSON | None = None) -> JSON:
    return study(status, **PROMOTE)


def env_of(manifest: JSON) -> dict[str, str]:
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container["env"]}


def paused(index: int, value: float, at: float) -> JSON:
    t = trial(index, (1, value, at), phase="Paused", startedAt=to_rfc3339(T0 + at - 1))
    t["spec"]["stopAt"] = 1
    return t


def test_first_run_pauses_at_its_rung_with_checkpoints_on_the_claim() -> None:
    s = promote_study()
    t = build_trial(s, 0, {"x": 0.5}, stop_at=1)
    assert t["spec"]["stopAt"] == 1
    manifest = build_job(s, {**t, "metadata": {**t["metadata"], "uid": "t0"}}, None, 0)
    assert manifest["metadata"]["name"] == "s-0"
    env = env_of(manifest)
    assert env["HPO_STOP_RESOURCE"] == "1" and "HPO_START_RESOURCE" not in env
    assert env["HPO_CHECKPOINT_DIR"] == "/hpo-checkpoints/s-u/s-0"
    pod_spec = manifest["spec"]["template"]["spec"]
    assert pod_spec["volumes"] == [
        {"name": "hpo-checkpoints", "persistentVolumeClaim": {"claimName": "s-checkpoints"}}
    ]
    assert pod_spec["containers"][0]["volumeMounts"] == [
        {"name": "hpo-checkpoints", "mountPath": "/hpo-checkpoints"}
    ]
    claim = build_claim(s)
    assert claim is not None and claim["spec"]["storageClassName"] == "fast"
    assert claim["metadata"]["ownerReferences"][0]["uid"] == "u"
    assert build_claim(study(**{**PROMOTE, "checkpoints": {"claimName": "mine"}})) is None


def test_a_resumed_run_is_a_new_job_from_the_same_folder() -> None:
    s = promote_study()
    t = trial(2, (1, 0.5, 3), phase="Pending", run=1, startFrom=1, stopAt=3)
    manifest = build_job(s, t, T0 + 90, T0 + 10)
    assert manifest["metadata"]["name"] == "s-2-run1"
    assert manifest["spec"]["template"]["metadata"]["labels"]["hpo.dev/run"] == "1"
    env = env_of(manifest)
    assert (env["HPO_START_RESOURCE"], env["HPO_STOP_RESOURCE"]) == ("1", "3")
    assert env["HPO_CHECKPOINT_DIR"] == "/hpo-checkpoints/s-u/s-2"


def test_a_run_that_exits_at_its_stop_below_r_is_paused() -> None:
    t = trial(0, (1, 0.5, 2))
    t["spec"]["stopAt"] = 1
    state = observe_trial(t, job("s-0", "Complete"), [pod("s-0", "Succeeded")], T0 + 3, max_resource=9)
    assert state.status["phase"] == "Paused" and state.view.status.value == "Paused"
    # The next run's Job not created yet: the first run's finished pod says nothing about it.
    resumed = trial(0, (1, 0.5, 2), phase="Pending", run=1, startFrom=1, stopAt=3, startedAt=to_rfc3339(T0))
    state = observe_trial(resumed, None, [pod("s-0", "Succeeded")], T0 + 3, max_resource=9)
    assert state.status["phase"] == "Pending" and not state.run_started and state.job_name == "s-0-run1"


def test_the_best_paused_trial_is_resumed_by_a_second_job() -> None:
    trials = (paused(0, 0.2, 2), paused(1, 0.9, 3), paused(2, 0.5, 4))
    out = reconcile(World(promote_study(), trials, claim_exists=True), T0 + 10)
    patch = next(w for w in out.writes if isinstance(w, PatchTrialStatus) and w.trial == "s-1")
    assert patch.patch["phase"] == "Pending" and patch.patch["run"] == 1
    assert (patch.patch["startFrom"], patch.patch["stopAt"]) == (1, 3)
    created = [w for w in out.writes if isinstance(w, CreateJob)]
    assert [w.job["metadata"]["name"] for w in created] == ["s-1-run1"]
    # Repeated with the status written and no Job yet (a crash between): the same Job again.
    again = trial(1, (1, 0.9, 3), phase="Pending", run=1, startFrom=1, stopAt=3, startedAt=to_rfc3339(T0))
    out = reconcile(World(promote_study(), (trials[0], again, trials[2])), T0 + 10)
    assert [w.job["metadata"]["name"] for w in out.writes if isinstance(w, CreateJob)] == ["s-1-run1"]


def test_the_operator_creates_the_claim_when_it_is_missing() -> None:
    out = reconcile(World(promote_study(), claim_exists=False), T0)
    assert isinstance(out.writes[0], CreateClaim)
    assert out.writes[0].claim["metadata"]["name"] == "s-checkpoints"


def test_promote_without_checkpoints_is_invalid() -> None:
    out = reconcile(World(study(asha={"variant": "promote"})), T0)
    assert out.status is not None and out.status["phase"] == "Failed"
    assert "spec.checkpoints: required" in out.status["message"]


def test_the_final_training_runs_past_the_deadline_and_ends_in_status_final() -> None:
    status = {
        "budget": {"startedAt": to_rfc3339(T0, micro=True)},
        "final": {"trial": "s-1", "index": 1, "phase": "Running", "startedAt": to_rfc3339(T0 + 90)},
    }
    running = trial(
        1, (1, 0.9, 3), (3, 0.95, 6), phase="Running", run=2, startFrom=3, stopAt=9, final=True,
        startedAt=to_rfc3339(T0), runStartedAt=to_rfc3339(T0 + 91),
    )  # fmt: skip
    # Long past the HPO deadline: nothing is stopped, and no reconcile every few milliseconds.
    out = reconcile(World(promote_study(status), (paused(0, 0.2, 2), running), {"s-1-run2": job("s-1-run2")},
                          {"s-1": (pod("s-1"),)}), T0 + 200)  # fmt: skip
    assert not any(isinstance(w, StopTrial) for w in out.writes)
    assert out.decision is not None and out.decision.finalize is None
    assert out.requeue_after is not None and out.requeue_after >= 1
    # Without status.final on the study (a crash before it was written) the trial says it.
    out = reconcile(
        World(
            promote_study({"budget": status["budget"]}),
            (paused(0, 0.2, 2), running),
            {"s-1-run2": job("s-1-run2")},
        ),
        T0 + 200,
    )
    assert out.decision is not None and out.decision.finalize is None
    done = trial(
        1, (1, 0.9, 3), (3, 0.95, 6), (9, 0.99, 100), phase="Completed", run=2, startFrom=3, stopAt=9,
        final=True, startedAt=to_rfc3339(T0),
    )  # fmt: skip
    out = reconcile(World(promote_study(status), (paused(0, 0.2, 2), done)), T0 + 200)
    assert out.status is not None and out.status["phase"] == "Succeeded"
    final = out.status["final"]
    assert final["phase"] == "Succeeded" and (final["value"], final["resource"]) == (0.99, 9)
    assert final["checkpoint"] == {"claimName": "s-checkpoints", "path": "s-u/s-1"}


def test_the_final_trainings_job_has_its_own_bound() -> None:
    # HPO over (all trials paused, no time for more): the best is resumed for the final training.
    trials = (paused(0, 0.2, 2), paused(1, 0.9, 3), paused(2, 0.5, 4))
    out = reconcile(World(promote_study(), trials), T0 + 89.5)
    created = [w for w in out.writes if isinstance(w, CreateJob)]
    assert len(created) == 1 and created[0].job["metadata"]["name"] == "s-1-run1"
    assert env_of(created[0].job)["HPO_STOP_RESOURCE"] == "9"
    assert created[0].job["spec"]["activeDeadlineSeconds"] >= FINAL_MIN_SECONDS
    assert out.status is not None and out.status["final"]["trial"] == "s-1"


def test_a_finished_study_deletes_every_checkpoint_but_the_models_once_keep_for_has_passed() -> None:
    done = {
        "phase": "Succeeded",
        "final": {"trial": "s-1"},
        "best": {"trial": "s-1"},
        "budget": {"startedAt": to_rfc3339(T0), "finishedAt": to_rfc3339(T0 + 20)},
    }
    trials = (
        trial(0, (1, 0.5, 1), phase="Paused"),
        trial(1, (9, 0.9, 20), phase="Completed"),
        trial(2, (1, 0.4, 3), phase="Paused"),
    )
    s = promote_study(done)
    s["spec"]["checkpoints"]["keepFor"] = "10s"
    s["spec"]["trialTemplate"]["spec"] |= {
        "nodeSelector": {"pool": "gpu"},
        "securityContext": {"runAsUser": 7},
    }
    # Kept for 10 s after the end, so that a raised budget could resume the paused trials; the
    # reconcile comes back when they expire.
    early = reconcile(World(study=s, trials=trials), T0 + 26)
    assert early.writes == [] and early.requeue_after == 4
    outcome = reconcile(World(study=s, trials=trials), T0 + 30)
    [cleanup] = [w for w in outcome.writes if isinstance(w, CreateCleanupJob)]
    job_spec = cleanup.job["spec"]["template"]["spec"]
    command = job_spec["containers"][0]["command"]
    assert command[:4] == ["sh", "-c", 'rm -rf -- "$@"', "cleanup"]
    assert command[4:] == ["/hpo-checkpoints/s-u/s-0", "/hpo-checkpoints/s-u/s-2"]  # s-1's model stays
    assert job_spec["volumes"] == [
        {"name": "hpo-checkpoints", "persistentVolumeClaim": {"claimName": "s-checkpoints"}}
    ]
    assert job_spec["nodeSelector"] == {"pool": "gpu"} and job_spec["securityContext"] == {"runAsUser": 7}
    assert "resources" not in job_spec["containers"][0]  # no GPU for deleting files
    assert cleanup.job["metadata"]["ownerReferences"][0]["uid"] == "u"
    # Level-based: once the Job exists nothing more is written; while a trial's pod runs, it waits.
    named = {cleanup.job["metadata"]["name"]: job(cleanup.job["metadata"]["name"])}
    assert reconcile(World(study=s, trials=trials, jobs=named), T0 + 31).writes == []
    running = World(study=s, trials=trials, pods={"s-2": (pod("s-2"),)}, jobs={"s-2": job("s-2", "Complete")})
    assert not [w for w in reconcile(running, T0 + 31).writes if isinstance(w, CreateCleanupJob)]
    # Without spec.checkpoints there is nothing to clean; without keepFor they stay until the study
    # is deleted.
    plain = study(done)
    assert not [w for w in reconcile(World(study=plain, trials=trials), T0 + 30).writes]
    del s["spec"]["checkpoints"]["keepFor"]
    kept = reconcile(World(study=s, trials=trials), T0 + 10**6)
    assert kept.writes == [] and kept.requeue_after is None


def test_a_finished_study_keeps_the_job_of_a_run_that_paused_before_its_job_said_complete() -> None:
    done = {"phase": "Succeeded", "final": {"trial": "s-1"}, "best": {"trial": "s-1"}}
    # s-0's promoted run paused at resource 3: its pod exited 0, its Job has no Complete condition yet.
    again = trial(0, (1, 0.5, 1), (3, 0.6, 5), phase="Paused", run=1, startFrom=1, stopAt=3)
    exited = pod("s-0-run1", "Succeeded", exit_code=0)
    exited["metadata"]["labels"] = {RUN_LABEL: "1"}
    final = trial(1, (9, 0.9, 20), phase="Completed")
    stopped = trial(2, (1, 0.4, 3), phase="Stopped")  # its run still going
    world = World(
        promote_study(done),
        (again, final, stopped),
        {"s-0-run1": job("s-0-run1"), "s-2": job("s-2")},
        {"s-0": (exited,), "s-2": (pod("s-2"),)},
    )
    outcome = reconcile(world, T0 + 30)
    stops = [w.name for w in outcome.writes if isinstance(w, ScaleJobDown | DeleteJob)]
    assert stops == ["s-2"], outcome.writes
    assert not any(isinstance(w, PatchTrialStatus) and w.trial == "s-0" for w in outcome.writes)
