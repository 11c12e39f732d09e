"""The reconcile's pure part: a world read from the API -> the writes and the study status.

Each case states the world in a sentence and asserts the resulting writes, not the calls made.
"""

from __future__ import annotations

from typing import Any

import pytest

from hpo_operator.kube.observe import observe_trial, to_rfc3339
from hpo_operator.kube.policy import parse_policy
from hpo_operator.kube.reconcile import (
    ACCESS_RETRY_SECONDS,
    FIRST_MIRROR_SECONDS,
    PROGRESS_SECONDS,
    reconcile,
)
from hpo_operator.kube.status import COUNTS_EVERY_SECONDS, RESYNC_SECONDS, condition, counts_wait
from hpo_operator.kube.stopping import JOB_CONTROLLER_WAIT_SECONDS, SCALED_DOWN_AT
from hpo_operator.kube.writes import (
    CreateIdentity,
    CreateJob,
    CreateTrial,
    DeleteJob,
    PatchTrialStatus,
    ScaleJobDown,
)
from hpo_operator.trials import TrialPhase
from tests.support.kube_world import JSON, T0, job, merge_patch, pod, running, study, trial, world

# --- validation -------------------------------------------------------------------------------------


def test_an_invalid_spec_fails_the_study_naming_every_problem_and_starts_nothing() -> None:
    s = study(
        hpSpace={
            "a": {"paramType": "loguniform", "range": [0, 1]},
            "b": {"paramType": "quniform", "range": [4, 2, 1]},
        }
    )
    outcome = reconcile(world(s), T0)
    assert outcome.writes == []
    assert outcome.status is not None and outcome.status["phase"] == "Failed"
    invalid = next(c for c in outcome.status["conditions"] if c["type"] == "Invalid")
    assert (invalid["status"], invalid["reason"]) == ("True", "InvalidSpec")
    assert "spec.hpSpace.a" in invalid["message"] and "spec.hpSpace.b" in invalid["message"]


def test_a_budget_smaller_than_one_training_fails_the_study() -> None:
    s = study(budget={"trainTime": "10m", "timeRatio": 0.5})
    outcome = reconcile(world(s), T0)
    assert outcome.status is not None and outcome.status["phase"] == "Failed"
    assert any(c["reason"] == "BudgetTooSmall" for c in outcome.status["conditions"])
    assert not any(isinstance(w, CreateTrial) for w in outcome.writes)


# --- starting trials ----------------------------------------------------------------------------------


def test_a_new_study_records_its_start_first_and_creates_trials_with_their_own_identity() -> None:
    s = study(status={})
    outcome = reconcile(world(s, free=2), T0)
    assert outcome.first_status == {"budget": {"startedAt": to_rfc3339(T0, micro=True)}}
    created = [w for w in outcome.writes if isinstance(w, CreateTrial)]
    assert [w.identity for w in created] == [True, True]
    accounts = [w.job["spec"]["template"]["spec"]["serviceAccountName"] for w in created if w.job]
    assert accounts == ["s-0", "s-1"]


def test_before_1_24_a_new_trials_job_waits_for_its_identitys_token() -> None:
    outcome = reconcile(world(study(status={}), free=1, token_secrets=True), T0)
    created = [w for w in outcome.writes if isinstance(w, CreateTrial)]
    assert len(created) == 1 and created[0].job is None and created[0].identity
    assert outcome.requeue_after == ACCESS_RETRY_SECONDS
    # Next time: the trial exists without a Job; its account waits for the token, then is ready.
    waiting = reconcile(world(study(), trial(0), free=1, identities={"s-0": "waiting"}), T0 + 0.1)
    assert not any(isinstance(w, CreateJob) for w in waiting.writes)
    assert waiting.requeue_after == ACCESS_RETRY_SECONDS
    ready = reconcile(world(study(), trial(0), free=1, identities={"s-0": "ready"}), T0 + 0.2)
    assert [w.trial for w in ready.writes if isinstance(w, CreateJob)] == ["s-0"]


def test_a_trial_without_its_identity_gets_it_before_its_job() -> None:
    outcome = reconcile(world(study(), trial(0), free=1, identities={"s-0": "missing"}), T0)
    made = [w for w in outcome.writes if isinstance(w, CreateIdentity)]
    assert [w.trial for w in made] == ["s-0"] and not any(isinstance(w, CreateJob) for w in outcome.writes)
    role, binding, account = made[0].objects
    assert role["rules"][0]["resourceNames"] == ["s-0"]
    assert binding["subjects"][0]["name"] == account["metadata"]["name"] == "s-0"
    assert account["metadata"]["ownerReferences"][0]["uid"] == "t0"


def test_an_account_of_the_trials_name_that_is_not_its_own_fails_the_trial_instead_of_running_as_it() -> None:
    outcome = reconcile(world(study(), trial(0), free=1, identities={"s-0": "foreign"}), T0)
    assert not any(isinstance(w, CreateJob | CreateIdentity) for w in outcome.writes)
    patch = next(w for w in outcome.writes if isinstance(w, PatchTrialStatus) and w.trial == "s-0")
    assert patch.verdict is not None and patch.verdict["phase"] == "Failed"
    assert patch.verdict["reason"] == "IdentityTaken"


def test_a_study_with_its_access_ready_starts_as_many_trials_as_free_gpus() -> None:
    outcome = reconcile(world(study(), free=3), T0)
    created = [w for w in outcome.writes if isinstance(w, CreateTrial)]
    assert [w.trial["metadata"]["name"] for w in created] == ["s-0", "s-1", "s-2"]
    assert all(w.job["spec"]["activeDeadlineSeconds"] == 90 for w in created)
    assert outcome.status is not None and outcome.status["phase"] == "Running"
    assert outcome.status["trials"]["pending"] == 3 and outcome.status["plan"]["parallelism"] == 4


def test_parallel_trials_one_starts_one() -> None:
    outcome = reconcile(world(study(parallelTrials=1)), T0)
    assert len([w for w in outcome.writes if isinstance(w, CreateTrial)]) == 1


def test_a_trial_created_but_not_yet_running_holds_its_gpu_in_the_count() -> None:
    # Capacity says 4 free, but s-0 has no pod yet: only 3 more may start.
    outcome = reconcile(world(study(), trial(0)), T0)
    created = [w.trial["metadata"]["name"] for w in outcome.writes if isinstance(w, CreateTrial)]
    assert created == ["s-1", "s-2", "s-3"]
    assert any(isinstance(w, CreateJob) and w.trial == "s-0" for w in outcome.writes)


# --- reports and verdicts -----------------------------------------------------------------------------


def test_a_report_below_the_rung_cutoff_marks_the_trial_pruned_then_scales_its_job_down() -> None:
    t0, t1 = trial(0, (1, 0.9, 2)), trial(1, (1, 0.5, 3))
    outcome = reconcile(world(study(parallelTrials=2), t0, t1, **running(t0, t1)), T0 + 4)
    verdict = next(
        i for i, w in enumerate(outcome.writes) if isinstance(w, PatchTrialStatus) and w.trial == "s-1"
    )
    scale = next(i for i, w in enumerate(outcome.writes) if isinstance(w, ScaleJobDown))
    assert verdict < scale
    patch = outcome.writes[verdict]
    assert isinstance(patch, PatchTrialStatus)
    assert patch.patch["phase"] == "Pruned" and patch.patch["rung"] == 0 and patch.patch["cutoff"] == 0.9
    assert patch.event is not None and patch.event.reason == "TrialPruned"
    # The Job controller deletes the pod: nothing else deletes it while the controller may replace it.
    assert outcome.writes[scale] == ScaleJobDown("s-1", to_rfc3339(T0 + 4, micro=True))
    assert not any(isinstance(w, DeleteJob) for w in outcome.writes)
    # The freed slot goes to a new trial in the same reconcile.
    assert [w.trial["metadata"]["name"] for w in outcome.writes if isinstance(w, CreateTrial)] == ["s-2"]
    assert patch.patch["message"] == "0.5 at resource 1 missed rung 0's cut-off 0.9"


def test_a_value_equal_to_the_cutoff_is_pruned_as_a_tie_and_the_message_says_so() -> None:
    t0, t1 = trial(0, (1, 0.9, 2)), trial(1, (1, 0.9, 3))
    outcome = reconcile(world(study(parallelTrials=2), t0, t1, **running(t0, t1)), T0 + 4)
    patch = next(w for w in outcome.writes if isinstance(w, PatchTrialStatus) and w.trial == "s-1")
    assert patch.patch["phase"] == "Pruned" and patch.patch["cutoff"] == 0.9
    assert patch.patch["message"] == (
        "0.9 at resource 1 missed rung 0's cut-off 0.9 (a tie: the value recorded first continues)"
    )


def test_a_pruned_trial_whose_job_survived_a_restart_loses_its_job_and_nothing_else() -> None:
    t1 = trial(1, (1, 0.5, 3), phase="Pruned", rung=0, cutoff=0.9, resource=1, lastValue=0.5,
               startedAt=to_rfc3339(T0 + 1))  # fmt: skip
    t0 = trial(0, (1, 0.9, 2))
    outcome = reconcile(world(study(parallelTrials=2), t0, t1, **running(t0, t1)), T0 + 4)
    assert [w for w in outcome.writes if not isinstance(w, PatchTrialStatus | CreateTrial)] == [
        ScaleJobDown("s-1", to_rfc3339(T0 + 4, micro=True))
    ]
    assert not any(isinstance(w, PatchTrialStatus) and w.trial == "s-1" for w in outcome.writes)


def scaled_down(name: str, at: float) -> JSON:
    body = job(name)
    body["metadata"]["annotations"] = {SCALED_DOWN_AT: to_rfc3339(at, micro=True)}
    body["spec"]["parallelism"] = 0
    return body


def test_a_scaled_down_job_stays_and_goes_by_name_only_if_its_controller_never_acts() -> None:
    t1 = trial(1, (1, 0.5, 3), phase="Pruned", rung=0, cutoff=0.9, resource=1, lastValue=0.5,
               startedAt=to_rfc3339(T0 + 1))  # fmt: skip
    t0 = trial(0, (1, 0.9, 2))
    jobs = [job("s-0"), scaled_down("s-1", T0 + 4)]

    def stops(pods: dict[str, list[JSON]], now: float) -> tuple[list[object], float | None]:
        outcome = reconcile(world(study(parallelTrials=2), t0, t1, jobs=jobs, pods=pods), now)
        return [w for w in outcome.writes if isinstance(w, ScaleJobDown | DeleteJob)], outcome.requeue_after

    # The Job controller has not yet stopped the pod: the operator leaves it to it, and looks again
    # when the controller's time is up.
    writes, requeue = stops({"s-0": [pod("s-0")], "s-1": [pod("s-1")]}, T0 + 5)
    assert writes == []
    assert requeue is not None and requeue <= T0 + 4 + JOB_CONTROLLER_WAIT_SECONDS - (T0 + 5) + 0.1
    # It did: the scaled-down Job stays as the run's record, now and after the controller's time.
    deleting = pod("s-1")
    deleting["metadata"]["deletionTimestamp"] = to_rfc3339(T0 + 4.1)
    late = T0 + 4 + JOB_CONTROLLER_WAIT_SECONDS + 0.01
    for now in (T0 + 5, late):
        assert stops({"s-0": [pod("s-0")], "s-1": [deleting]}, now)[0] == []
        assert stops({"s-0": [pod("s-0")], "s-1": []}, now)[0] == []
        assert stops({"s-0": [pod("s-0")], "s-1": [pod("s-1", "Failed", exit_code=143)]}, now)[0] == []
    # It never did: the Job and the pod by name.
    assert stops({"s-0": [pod("s-0")], "s-1": [pod("s-1")]}, late)[0] == [DeleteJob("s-1", ("s-1-pod",))]


def test_a_trial_whose_pod_exited_zero_is_completed_before_its_job_says_so() -> None:
    t0 = trial(0, (9, 0.9, 5))
    ended = {"s-0": [pod("s-0", "Succeeded", 0)]}
    outcome = reconcile(world(study(parallelTrials=1), t0, jobs=[job("s-0")], pods=ended), T0 + 6)
    patch = next(w for w in outcome.writes if isinstance(w, PatchTrialStatus))
    assert patch.patch["phase"] == "Completed" and patch.patch["exitCode"] == 0
    assert patch.patch["resource"] == 9 and patch.patch["lastValue"] == 0.9


def test_a_running_trial_s_progress_to_its_last_level_waits_a_moment_for_its_verdict() -> None:
    # Trial 0 runs alone (1 slot), started at T0 + 1 (recorded). R is 9 with the default eta 3 (rungs
    # 1 and 3). Its progress to a rung is written at once.
    shown = {"startedAt": to_rfc3339(T0 + 1)}

    def progress_writes(t0: JSON, now: float, pods: list[JSON] | None = None) -> Any:
        ran = {"s-0": pods or [pod("s-0")]}
        outcome = reconcile(world(study(parallelTrials=1), t0, jobs=[job("s-0")], pods=ran, free=0), now)
        return [w for w in outcome.writes if isinstance(w, PatchTrialStatus)], outcome.requeue_after

    (rung,), _ = progress_writes(trial(0, (1, 0.5, 3), phase="Running", **shown), T0 + 3.1)
    assert (rung.patch, rung.verdict) == ({"resource": 1, "lastValue": 0.5}, None)
    # At R (the report made at T0 + 4) it waits for the verdict, and without one it is written.
    at_r = trial(0, (1, 0.5, 3), (9, 0.8, 4), phase="Running", resource=1, lastValue=0.5, **shown)
    writes, requeue = progress_writes(at_r, T0 + 5)
    assert writes == [] and requeue == pytest.approx(PROGRESS_SECONDS - 1 + 0.02)
    (late,), _ = progress_writes(at_r, T0 + 4 + PROGRESS_SECONDS)
    assert (late.patch, late.verdict) == ({"resource": 9, "lastValue": 0.8}, None)
    # The run ends within the wait: one verdict write carries its progress.
    (completed,), _ = progress_writes(at_r, T0 + 5, [pod("s-0", "Succeeded", 0)])
    assert completed.patch["phase"] == "Completed" and completed.patch["resource"] == 9
    # A report stamped ahead of the operator's clock does not hold the progress back.
    ahead = trial(0, (1, 0.5, 3), (9, 0.8, 40), phase="Running", resource=1, lastValue=0.5, **shown)
    (now,), _ = progress_writes(ahead, T0 + 5)
    assert now.patch == {"resource": 9, "lastValue": 0.8}


def test_a_failed_job_marks_the_trial_failed_with_its_exit_code() -> None:
    t0 = trial(0)
    w = world(study(parallelTrials=1), t0, jobs=[job("s-0", "Failed", "BackoffLimitExceeded")],
              pods={"s-0": [pod("s-0", "Failed", 3)]})  # fmt: skip
    patch = next(x for x in reconcile(w, T0 + 6).writes if isinstance(x, PatchTrialStatus))
    assert (patch.patch["phase"], patch.patch["exitCode"]) == ("Failed", 3)
    assert patch.event is not None and patch.event.type == "Warning"


def test_a_trial_that_ran_and_lost_its_job_is_failed_not_rerun() -> None:
    t0 = trial(0, startedAt=to_rfc3339(T0 + 1))
    outcome = reconcile(world(study(parallelTrials=1), t0), T0 + 6)
    assert not any(isinstance(w, CreateJob) for w in outcome.writes)
    patch = next(w for w in outcome.writes if isinstance(w, PatchTrialStatus))
    assert patch.patch["reason"] == "JobDeleted"


def test_an_unschedulable_pod_keeps_its_trial_pending_and_the_study_says_why() -> None:
    t0 = trial(0)
    outcome = reconcile(world(study(parallelTrials=1), t0, jobs=[job("s-0")],
                              pods={"s-0": [pod("s-0", unschedulable=True)]}), T0 + 2)  # fmt: skip
    assert outcome.status is not None
    ready = next(c for c in outcome.status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "Unschedulable")
    assert "s-0: 0/2 nodes" in ready["message"]
    assert outcome.status["trials"]["pending"] == 1


# --- the deadline and the end -------------------------------------------------------------------------


def test_at_the_deadline_running_trials_are_stopped_and_the_study_succeeds_from_its_reports() -> None:
    t0, t1 = trial(0, (1, 0.9, 2), (3, 0.95, 10)), trial(1, (1, 0.95, 3))
    # A 90 s budget: the trials are stopped 1 s (the writes' lead) + 3% of it (2.7 s) early.
    before = reconcile(world(study(parallelTrials=2), t0, t1, **running(t0, t1)), T0 + 86.2)
    assert before.status is not None and before.status["phase"] == "Running"
    assert before.status["budget"]["stopMarginSeconds"] == 3.7
    assert before.requeue_after == pytest.approx(0.12)
    outcome = reconcile(world(study(parallelTrials=2), t0, t1, **running(t0, t1)), T0 + 86.4)
    stops = [
        w for w in outcome.writes if isinstance(w, PatchTrialStatus) and w.patch.get("phase") == "Stopped"
    ]
    assert {w.trial for w in stops} == {"s-0", "s-1"}
    assert {w.name for w in outcome.writes if isinstance(w, ScaleJobDown)} == {"s-0", "s-1"}
    assert not any(isinstance(w, CreateTrial) for w in outcome.writes)
    status = outcome.status
    assert status is not None and status["phase"] == "Succeeded"
    assert status["best"]["trial"] == "s-0" and status["best"]["value"] == 0.95
    assert status["best"]["hyperparameters"] == {"x": 0.0}
    assert status["budget"]["finishedInsideSeconds"] == 3.6
    assert [e.reason for e in outcome.events] == ["StudySucceeded"]
    assert outcome.requeue_after is None


def test_a_finished_study_writes_nothing() -> None:
    s = study(status={"phase": "Succeeded"})
    t0 = trial(0, (9, 0.9, 5), phase="Completed")
    assert reconcile(world(s, t0, jobs=[job("s-0", "Complete")]), T0 + 100).writes == []


def test_the_same_world_gives_the_same_outcome() -> None:
    t0, t1 = trial(0, (1, 0.9, 2)), trial(1, (1, 0.5, 3))
    w = world(study(parallelTrials=2), t0, t1, **running(t0, t1))
    assert reconcile(w, T0 + 4) == reconcile(w, T0 + 4)


def test_a_study_status_that_only_aged_a_little_is_not_rewritten() -> None:
    t0 = trial(0, (1, 0.9, 2))
    first = reconcile(world(study(parallelTrials=1), t0, **running(t0)), T0 + 3)
    assert first.status is not None
    written = study(
        status={"budget": {"startedAt": to_rfc3339(T0, micro=True)}} | first.status, parallelTrials=1
    )
    again = reconcile(world(written, t0, **running(t0)), T0 + 4)
    assert again.status is None


# --- pieces -------------------------------------------------------------------------------------------


def test_a_condition_keeps_its_transition_time_while_its_status_holds() -> None:
    old = [{"type": "Ready", "status": "True", "lastTransitionTime": "then"}]
    assert condition(old, "Ready", True, "Running", "m", T0)["lastTransitionTime"] == "then"
    assert condition(old, "Ready", False, "Unschedulable", "m", T0)["lastTransitionTime"] == to_rfc3339(T0)


def test_a_job_complete_by_a_deleted_pod_that_exited_0_follows_the_pod_in_its_place() -> None:
    # Kubernetes 1.20: someone deletes the running pod, its trainer exits 0 on SIGTERM, the Job counts
    # that as its success and becomes Complete, and the pod it made in the meantime runs on.
    t0 = trial(0, (1, 0.5, 1))
    old = pod("s-0", phase="Succeeded", exit_code=0)
    old["metadata"] |= {"name": "s-0-old", "deletionTimestamp": to_rfc3339(T0 + 5)}
    new = pod("s-0")
    new["metadata"] |= {"name": "s-0-new", "creationTimestamp": "2027-01-01T00:00:05Z"}
    state = observe_trial(t0, job("s-0", "Complete"), [old, new], T0 + 10)
    assert state.view.status is TrialPhase.RUNNING
    # The run ends as that pod ends.
    new["status"]["phase"] = "Succeeded"
    state = observe_trial(t0, job("s-0", "Complete"), [old, new], T0 + 20)
    assert state.view.status is TrialPhase.COMPLETED
    # Without a pod in its place, the Job's Complete still ends the run.
    state = observe_trial(t0, job("s-0", "Complete"), [old], T0 + 10)
    assert state.view.status is TrialPhase.COMPLETED


def test_retried_reports_count_once_and_the_pod_start_is_the_trial_start() -> None:
    t0 = trial(0, (1, 0.5, 2))
    t0["status"]["reports"].append(dict(t0["status"]["reports"][0]))  # a retry: the same report again
    state = observe_trial(t0, job("s-0"), [pod("s-0")], T0 + 10)
    assert state.view.status is TrialPhase.RUNNING
    assert len(state.view.reports) == 1 and state.view.started_at == T0 + 1
    # A second process of the trial counts seq from 0 again, at a new time: a new report.
    t0["status"]["reports"].append({**t0["status"]["reports"][0], "resource": 2, "time": T0 + 9})
    assert len(observe_trial(t0, job("s-0"), [pod("s-0")], T0 + 10).view.reports) == 2
    assert state.status["startedAt"] == to_rfc3339(T0 + 1)


def test_plan_estimates_that_moved_a_little_are_not_rewritten() -> None:
    from hpo_operator.kube.status import only_estimates_moved

    plan = {"plannedTrials": 9, "rungs": [1, 3], "epochSeconds": 10.0, "predictedSeconds": 300.0}
    assert only_estimates_moved(plan, {**plan, "epochSeconds": 10.4, "predictedSeconds": 310.0})
    assert only_estimates_moved(plan, {**plan, "epochSeconds": 10.1, "plannedTrials": 10})
    assert not only_estimates_moved(plan, {**plan, "epochSeconds": 11.0})
    assert not only_estimates_moved(plan, {**plan, "plannedTrials": 11})
    assert not only_estimates_moved(plan, {**plan, "rungs": [1, 3, 9]})
    assert not only_estimates_moved({}, plan)


def test_reports_that_only_move_the_plan_figures_do_not_rewrite_the_study_status() -> None:
    # Four trials running on four slots; 0-2 passed rungs 1 and 3, trial 3 passed rung 1. Trials 0-2
    # then report epochs 4-6 between the rungs, each a little slower than 1 s: every report
    # re-measures the epoch time, which moves the plan's figures, and nothing else.
    def reports(i: int, upto: int) -> list[tuple[float, float, float]]:
        return [(r, 0.5 + r * 0.03 + i * 0.01, 0.5 + r + i * 0.01) for r in range(1, upto + 1)]

    history = {i: reports(i, 3 if i < 3 else 2) for i in range(4)}
    s = study()

    def step(now: float) -> Any:
        trials = [trial(i, *history[i], phase="Running") for i in range(4)]
        outcome = reconcile(world(s, *trials, **running(*trials), free=0), now)
        if outcome.status is not None:
            s["status"] = merge_patch(s["status"], outcome.status)
        return outcome

    first = step(T0 + 3.6)
    assert first.status is not None and first.status["plan"]["epochSeconds"] == 1.0
    assert (first.status["trials"]["running"], first.status["trials"]["pruned"]) == (4, 0)
    jitter = [0.03, 0.04, 0.02, 0.04, 0.03, 0.02, 0.04, 0.03, 0.04]  # a little slower now
    measured = set()
    for k, delta in enumerate(jitter):
        i = k % 3
        resource, _, last = history[i][-1]
        history[i].append((resource + 1, 0.6, last + 1 + delta))
        outcome = step(T0 + max(r[2] for h in history.values() for r in h) + 0.1)
        assert outcome.status is None, f"report {k}: {outcome.status}"
        assert outcome.decision is not None and outcome.decision.plan is not None
        measured.add(outcome.decision.plan.epoch_seconds)
    assert len(measured) >= 2 and max(measured) > 1.0  # the figures moved, unwritten
    # A report that changes the best (trial 1 at R) is written at once, the plan with it.
    history[1].append((9, 0.95, history[1][-1][2] + 3))
    best = step(T0 + history[1][-1][2] + 0.1)
    assert best.status is not None and best.status["best"]["trial"] == "s-1"
    assert best.status["plan"]["epochSeconds"] != 1.0
    # So is a verdict, on its HPOTrial: trial 3 reaches rung 3 last and worst of four, and is pruned.
    # The study's counts follow within COUNTS_EVERY_SECONDS of its last status write.
    history[3].append((3, 0.1, history[1][-1][2] + 0.5))
    at = T0 + history[3][-1][2] + 0.1
    pruned = step(at)
    assert any(isinstance(w, PatchTrialStatus) and w.patch.get("phase") == "Pruned" for w in pruned.writes)
    assert pruned.status is None and pruned.requeue_after is not None
    assert 0 < pruned.requeue_after <= COUNTS_EVERY_SECONDS
    counted = step(at + pruned.requeue_after)
    assert counted.status is not None and counted.status["trials"]["pruned"] == 1


def test_a_new_trial_s_status_is_first_written_when_its_pod_runs_or_after_a_while_pending() -> None:
    fresh = trial(0)
    fresh["metadata"]["creationTimestamp"] = to_rfc3339(T0)
    assert "phase" not in fresh["status"]
    waiting = {
        "metadata": {"name": "s-0-pod", "creationTimestamp": to_rfc3339(T0)},
        "status": {"phase": "Pending"},
    }

    def trial_writes(pods: list[JSON], now: float) -> tuple[list[PatchTrialStatus], float | None]:
        outcome = reconcile(world(study(), fresh, jobs=[job("s-0")], pods={"s-0": pods}, free=0), now)
        patches = [w for w in outcome.writes if isinstance(w, PatchTrialStatus) and w.trial == "s-0"]
        return patches, outcome.requeue_after

    patches, requeue = trial_writes([waiting], T0 + 1.0)
    assert patches == [] and requeue is not None and requeue <= FIRST_MIRROR_SECONDS - 1.0 + 0.05
    # Still pending once the wait is over: written then.
    (late,), _ = trial_writes([waiting], T0 + FIRST_MIRROR_SECONDS + 0.1)
    assert late.patch["phase"] == "Pending" and late.verdict is None
    # Running within the wait: one write of the verdict and the status, which says Running.
    (started,), _ = trial_writes([pod("s-0")], T0 + 1.5)
    assert started.patch["phase"] == "Running" and started.verdict is not None
    assert started.verdict["startedAt"] == started.patch["startedAt"] == to_rfc3339(T0 + 1)
    # A trial whose status was written once is never held back.
    shown = {**fresh, "status": {**fresh["status"], "phase": "Running"}}
    outcome = reconcile(world(study(), shown, jobs=[job("s-0")], pods={"s-0": [waiting]}, free=0), T0 + 1.0)
    assert any(isinstance(w, PatchTrialStatus) and w.patch.get("phase") == "Pending" for w in outcome.writes)


def test_a_running_study_s_trial_counts_wait_for_the_next_status_write_and_nothing_else_does() -> None:
    budget = {"startedAt": "2027-01-15T08:00:00Z", "usedSeconds": 20.0, "deadline": "2027-01-15T08:05:00Z"}
    current = {"phase": "Running", "progress": "2/9", "trials": {"running": 4, "pruned": 2}, "budget": budget}
    counts = {"progress": "3/9", "trials": {"running": 3, "pruned": 3}}
    started = T0 - 20.0  # usedSeconds 20: the status was last written at T0
    assert counts_wait(current, counts, started, T0 + 1.5) == pytest.approx(COUNTS_EVERY_SECONDS - 1.5)
    assert counts_wait(current, counts, started, T0 + COUNTS_EVERY_SECONDS) is None  # due now
    # With the clock: it moves at every write anyway.
    clocked = {**counts, "budget": {**budget, "usedSeconds": 21.0}}
    assert counts_wait(current, clocked, started, T0 + 1.0) == pytest.approx(COUNTS_EVERY_SECONDS - 1.0)
    # Anything else in the patch is written at once, the counts with it.
    for other in (
        {"best": {"trial": "s-1", "value": 0.9}},
        {"phase": "Succeeded"},
        {"conditions": [{"type": "Ready", "status": "False", "reason": "Unschedulable"}]},
        {"budget": {**budget, "deadline": "2027-01-15T08:06:00Z"}},
    ):
        assert counts_wait(current, {**counts, **other}, started, T0 + 1.0) is None, other
    assert counts_wait({**current, "phase": "Pending"}, counts, started, T0 + 1.0) is None
    assert counts_wait({k: v for k, v in current.items() if k != "budget"}, counts, started, T0 + 1.0) is None


def test_a_running_study_s_clock_alone_is_written_every_30_s_not_at_every_resync() -> None:
    # One trial runs and nothing happens for a minute: the resyncs every 5 s find only the clock moved.
    t0 = trial(0, (1, 0.9, 2))
    s = study(parallelTrials=1)
    writes: list[tuple[float, JSON]] = []
    now = T0 + 3
    while now <= T0 + 63:
        outcome = reconcile(world(s, t0, **running(t0)), now)
        for patch in (outcome.first_status, outcome.status):
            if patch:
                before = s["status"].get("budget") or {}
                writes.append((now - T0, patch))
                s = {**s, "status": merge_patch(s["status"], patch)}
                if len(writes) > 1:  # the clock alone: the budget's other fields as they were
                    assert set(patch) == {"budget"}, patch
                    assert {k: v for k, v in patch["budget"].items() if before.get(k) != v} == {
                        "usedSeconds": now - T0
                    }
        now += RESYNC_SECONDS
    assert [at for at, _ in writes] == [3, 33, 63], writes
    assert s["status"]["budget"]["usedSeconds"] == 63


def test_a_finished_study_writes_its_plan_figures_however_little_they_moved() -> None:
    from hpo_operator.kube.status import without_plan_noise

    plan = {"plannedTrials": 9, "rungs": [1, 3], "epochSeconds": 10.0}
    current = {"phase": "Running", "plan": plan, "progress": "2/9", "message": "all 9 planned trials started"}
    noise = {"plan": {**plan, "epochSeconds": 10.1, "plannedTrials": 10}, "progress": "2/10",
             "message": "all 10 planned trials started"}  # fmt: skip
    assert without_plan_noise(current, noise) == {}
    assert without_plan_noise(current, {**noise, "phase": "Succeeded"}) == {**noise, "phase": "Succeeded"}
    # Noise written with a change that matters: another finished trial, or another message.
    assert without_plan_noise(current, {**noise, "progress": "3/10"}) == {**noise, "progress": "3/10"}
    other = {**noise, "message": "no time left for another trial to reach its first rung"}
    assert without_plan_noise(current, other) == other
    # The clock alone is left to only_the_clock_moved; another budget field is a change.
    budget = {"usedSeconds": 30.0, "deadline": "2027-01-15T08:01:30Z"}
    running_budget = {**current, "budget": {**budget, "usedSeconds": 20.0}}
    assert without_plan_noise(running_budget, {**noise, "budget": budget}) == {"budget": budget}
    moved = {**budget, "deadline": "2027-01-15T08:02:00Z"}
    assert without_plan_noise(running_budget, {**noise, "budget": moved}) == {**noise, "budget": moved}


# --- the trial policy -------------------------------------------------------------------------------


def test_the_reconcile_refuses_a_hostile_template_before_any_trial_and_says_why() -> None:
    s = study()
    s["spec"]["trialTemplate"]["spec"] |= {"serviceAccountName": "admin", "hostPID": True}
    outcome = reconcile(world(s), T0)
    assert outcome.writes == []
    assert outcome.status is not None and outcome.status["phase"] == "Failed"
    invalid = next(c for c in outcome.status["conditions"] if c["type"] == "Invalid")
    assert (invalid["status"], invalid["reason"]) == ("True", "TemplateRefused")
    assert "serviceAccountName" in invalid["message"] and "hostPID" in invalid["message"]
    # With the admin's allowance the same study runs, as the account it names.
    allowed = reconcile(world(s), T0, parse_policy(["ns/admin"], ["hostNamespaces"]))
    created = [w for w in allowed.writes if isinstance(w, CreateTrial)]
    assert created and all(not w.identity for w in created)
    assert all(w.job and w.job["spec"]["template"]["spec"]["serviceAccountName"] == "admin" for w in created)


# --- verdicts trials cannot forge -----------------------------------------------------------------------


def test_a_phase_forged_into_a_trials_status_changes_nothing_and_is_written_back() -> None:
    t0 = trial(0, (1, 0.9, 2), phase="Running", startedAt=to_rfc3339(T0 + 1))
    t0["status"] |= {"phase": "Failed", "reason": "Forged", "exitCode": 1}  # the status only
    outcome = reconcile(world(study(parallelTrials=1), t0, **running(t0)), T0 + 3)
    write = next(w for w in outcome.writes if isinstance(w, PatchTrialStatus) and w.trial == "s-0")
    assert write.verdict is None  # the record says Running: nothing to change there
    assert (
        write.patch["phase"] == "Running"
        and write.patch["reason"] is None
        and write.patch["exitCode"] is None
    )
    assert outcome.status is not None and outcome.status["phase"] == "Running"
    assert outcome.status["trials"]["running"] == 1 and outcome.status["trials"]["failed"] == 0


def test_reports_appended_after_a_verdict_never_count() -> None:
    # s-1 was pruned on its report at resource 1; a report appended later claims it is the best.
    pruned = trial(1, (1, 0.2, 3), phase="Pruned", startedAt=to_rfc3339(T0 + 1))
    pruned["status"]["reports"].append({"seq": 1, "resource": 9, "value": 100.0, "time": T0 + 4})
    t0 = trial(0, (1, 0.9, 2), (3, 0.95, 4), startedAt=to_rfc3339(T0 + 1))
    outcome = reconcile(world(study(parallelTrials=2), t0, pruned, **running(t0)), T0 + 5)
    assert outcome.status is not None and outcome.status["best"]["trial"] == "s-0"
    assert not any(isinstance(w, PatchTrialStatus) and w.trial == "s-1" and w.verdict for w in outcome.writes)


def test_a_settled_trials_verdict_records_the_reports_it_was_made_on() -> None:
    t0 = trial(0, (1, 0.9, 2), (9, 0.95, 4), startedAt=to_rfc3339(T0 + 1))
    jobs = [job("s-0", "Complete")]
    outcome = reconcile(
        world(study(parallelTrials=1), t0, jobs=jobs, pods={"s-0": [pod("s-0", "Succeeded")]}), T0 + 5
    )
    write = next(w for w in outcome.writes if isinstance(w, PatchTrialStatus) and w.trial == "s-0")
    assert write.verdict is not None and write.verdict["phase"] == "Completed"
    assert write.verdict["reportsCounted"] == 2 and "reportsCounted" not in write.patch


def test_a_trial_of_an_earlier_operator_is_read_from_its_status_once_and_recorded() -> None:
    legacy = trial(0, (1, 0.9, 2), phase="Running", legacy=True, startedAt=to_rfc3339(T0 + 1))
    outcome = reconcile(world(study(parallelTrials=1), legacy, **running(legacy)), T0 + 3)
    write = next(w for w in outcome.writes if isinstance(w, PatchTrialStatus) and w.trial == "s-0")
    assert write.verdict is not None and write.verdict["phase"] == "Running"
    assert not any(isinstance(w, CreateJob | CreateTrial) for w in outcome.writes)


def test_a_trial_of_an_earlier_operator_cannot_have_its_reports_cut_through_its_status() -> None:
    from hpo_operator.kube.observe import reports_of

    legacy = trial(0, (1, 0.9, 2), phase="Running", legacy=True, reportsCounted=0)
    assert len(reports_of(legacy)) == 1
    outcome = reconcile(world(study(parallelTrials=1), legacy, **running(legacy)), T0 + 3)
    write = next(w for w in outcome.writes if isinstance(w, PatchTrialStatus) and w.trial == "s-0")
    assert write.verdict is not None and "reportsCounted" not in write.verdict


def test_reports_outside_0_r_are_refused_counted_and_never_the_best() -> None:
    t0 = trial(0, (1, 0.5, 2), startedAt=to_rfc3339(T0 + 1))
    t1 = trial(1, (1, 0.4, 2), (-3, 50.0, 3), (12, 60.0, 4), startedAt=to_rfc3339(T0 + 1))
    outcome = reconcile(world(study(parallelTrials=2), t0, t1, **running(t0, t1)), T0 + 5)
    assert outcome.status is not None and outcome.status["best"]["trial"] == "s-0"
    write = next(w for w in outcome.writes if isinstance(w, PatchTrialStatus) and w.trial == "s-1")
    assert write.patch["refusedReports"] == 2 and "12" in write.patch["refusedReason"]


# --- trials that report nothing -----------------------------------------------------------------------


def _verdict_patch(outcome: Any, name: str = "s-0") -> PatchTrialStatus:
    return next(w for w in outcome.writes if isinstance(w, PatchTrialStatus) and w.trial == name)


def test_a_trial_that_exits_zero_without_a_report_is_failed_with_no_reports() -> None:
    t0 = trial(0, startedAt=to_rfc3339(T0 + 1))
    silent = pod("s-0", "Succeeded", 0)
    # The metrics collector says in its termination message what it looked for.
    said = "the command exited 0 and reported nothing: looked for accuracy with epoch or step in output lines"
    silent["status"]["containerStatuses"][0]["state"]["terminated"]["message"] = said + "\n"
    w = world(study(parallelTrials=1), t0, jobs=[job("s-0", "Complete")], pods={"s-0": [silent]})
    patch = _verdict_patch(reconcile(w, T0 + 6))
    assert (patch.patch["phase"], patch.patch["reason"], patch.patch["exitCode"]) == (
        "Failed",
        "NoReports",
        0,
    )
    assert patch.patch["message"] == f"the trial exited with status 0 without a report that counts; {said}"
    assert patch.event is not None and patch.event.type == "Warning"
    assert patch.verdict is not None and patch.verdict["phase"] == "Failed"


def test_a_silent_exit_is_judged_only_once_the_reports_cache_has_caught_up() -> None:
    t0 = trial(0, startedAt=to_rfc3339(T0 + 1))
    ended = pod("s-0", "Succeeded", 0)
    ended["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"] = to_rfc3339(T0 + 5)
    w = world(study(parallelTrials=1), t0, jobs=[job("s-0", "Complete")], pods={"s-0": [ended]})
    soon = reconcile(w, T0 + 6)
    assert not any(isinstance(x, PatchTrialStatus) and x.patch.get("phase") == "Failed" for x in soon.writes)
    assert soon.requeue_after is not None and soon.requeue_after <= 5
    # Its report arrived in the meantime: Completed, not Failed.
    reported = trial(0, (9, 0.8, 4.5), startedAt=to_rfc3339(T0 + 1))
    w = world(study(parallelTrials=1), reported, jobs=[job("s-0", "Complete")], pods={"s-0": [ended]})
    assert _verdict_patch(reconcile(w, T0 + 6)).patch["phase"] == "Completed"
    # Still nothing once the settle time has passed: Failed.
    w = world(study(parallelTrials=1), t0, jobs=[job("s-0", "Complete")], pods={"s-0": [ended]})
    assert _verdict_patch(reconcile(w, T0 + 9)).patch["reason"] == "NoReports"


def test_a_trial_whose_only_reports_were_refused_is_failed_naming_the_refusal() -> None:
    t0 = trial(0, (0, 0.5, 2), startedAt=to_rfc3339(T0 + 1))  # epochs counted from 0
    w = world(study(parallelTrials=1), t0, jobs=[job("s-0")], pods={"s-0": [pod("s-0", "Succeeded", 0)]})
    patch = _verdict_patch(reconcile(w, T0 + 6))
    assert patch.patch["reason"] == "NoReports"
    assert "(1 refused, the last: resource 0 is not above 0)" in patch.patch["message"]


def test_failed_silent_trials_count_toward_max_failed_trials() -> None:
    t0, t1 = trial(0, startedAt=to_rfc3339(T0 + 1)), trial(1, (1, 0.5, 2), startedAt=to_rfc3339(T0 + 1))
    w = world(
        study(parallelTrials=2, maxFailedTrials=1), t0, t1,
        jobs=[job("s-0", "Complete"), job("s-1")],
        pods={"s-0": [pod("s-0", "Succeeded", 0)], "s-1": [pod("s-1")]},
    )  # fmt: skip
    outcome = reconcile(w, T0 + 6)
    assert _verdict_patch(outcome, "s-0").patch["reason"] == "NoReports"
    assert _verdict_patch(outcome, "s-1").patch["phase"] == "Stopped"
    assert outcome.status is not None and outcome.status["phase"] == "Failed"
    assert not any(isinstance(w, CreateTrial) for w in outcome.writes)


def test_promote_a_paused_run_has_reported_and_a_resumed_run_must_report_beyond_its_start() -> None:
    first = trial(0, (1, 0.5, 2), startedAt=to_rfc3339(T0 + 1))
    first["spec"]["stopAt"] = 1
    state = observe_trial(first, job("s-0", "Complete"), [pod("s-0", "Succeeded", 0)], T0 + 3, max_resource=9)
    assert state.status["phase"] == "Paused"
    silent_first = trial(0, startedAt=to_rfc3339(T0 + 1))
    silent_first["spec"]["stopAt"] = 1
    state = observe_trial(
        silent_first, job("s-0", "Complete"), [pod("s-0", "Succeeded", 0)], T0 + 3, max_resource=9
    )
    assert (state.status["phase"], state.status["reason"]) == ("Failed", "NoReports")

    def resumed(*reports: tuple[float, float, float]) -> JSON:
        t = trial(0, *reports, phase="Running", run=1, startFrom=1, stopAt=3, startedAt=to_rfc3339(T0 + 1))
        t["status"]["runStartedAt"] = to_rfc3339(T0 + 5)
        return t

    run_pod = pod("s-0-run1", "Succeeded", 0)
    run_pod["metadata"]["labels"] = {"hpo.dev/run": "1"}
    state = observe_trial(
        resumed((1, 0.5, 2), (3, 0.7, 8)), job("s-0-run1", "Complete"), [run_pod], T0 + 9, 9
    )
    assert state.status["phase"] == "Paused"
    # The resumed run sent nothing beyond resource 1: its first run's report is not its result.
    state = observe_trial(resumed((1, 0.5, 2)), job("s-0-run1", "Complete"), [run_pod], T0 + 9, 9)
    assert (state.status["phase"], state.status["reason"]) == ("Failed", "NoReports")
    assert "beyond resource 1, where it resumed" in state.status["message"]


def test_an_unknown_name_in_the_trial_command_fails_the_study_before_any_trial() -> None:
    template = {"spec": {"containers": [{"name": "t", "image": "i", "command": ["python", "train.py"],
                                         "args": ["--x", "${x}", "--lr", "${lr}"]}]}}  # fmt: skip
    outcome = reconcile(world(study(trialTemplate=template)), T0)
    assert outcome.writes == []
    assert outcome.status is not None and outcome.status["phase"] == "Failed"
    invalid = next(c for c in outcome.status["conditions"] if c["type"] == "Invalid")
    assert invalid["reason"] == "InvalidSpec"
    assert invalid["message"].startswith(
        "spec.trialTemplate.spec.containers[0].args[3]: ${lr} is not a hyper"
    )
    # Known names only: the study starts, and each trial's Job carries its own value.
    template["spec"]["containers"][0]["args"] = ["--x", "${x}"]
    started = reconcile(world(study(trialTemplate=template), free=2), T0)
    jobs = [w.job for w in started.writes if isinstance(w, CreateTrial) and w.job is not None]
    assert len(jobs) == 2
    for created, j in zip([w for w in started.writes if isinstance(w, CreateTrial)], jobs, strict=True):
        x = created.trial["spec"]["hyperparameters"]["x"]
        assert j["spec"]["template"]["spec"]["containers"][0]["args"] == ["--x", repr(x)]
