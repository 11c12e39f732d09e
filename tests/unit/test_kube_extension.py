"""A finished study whose budget is patched: it continues, or it says why not (kube/extension.py).

The studies end as the reconcile ends them (at the deadline, from the reports), their status is
applied as the API server applies the operator's merge patches, and then their spec changes.
"""

from __future__ import annotations

import copy
import math

from hpo_operator.kube.observe import to_rfc3339
from hpo_operator.kube.reconcile import reconcile
from hpo_operator.kube.writes import (
    CreateJob,
    CreateTrial,
    Outcome,
    PatchJobDeadline,
    PatchTrialStatus,
    ScaleJobDown,
    World,
)
from tests.support.kube_world import JSON, T0, job, merge_patch, running, study, trial, world

STOP_VARIANT = {"parallelTrials": 2}
PROMOTE = {
    "asha": {"variant": "promote"},
    "finalTraining": {"enabled": True},
    "checkpoints": {"size": "1Gi"},
    "gpusPerTrial": 0,
    "parallelTrials": 1,
}


def applied(s: JSON, outcome: Outcome) -> JSON:
    """The study once the outcome's status writes have landed."""
    out = copy.deepcopy(s)
    for patch in (outcome.first_status, outcome.status):
        out["status"] = merge_patch(out.get("status") or {}, patch or {})
    return out


def changed(s: JSON, **spec: object) -> JSON:
    """``s`` after a `kubectl patch` of its spec: the API server bumps the generation."""
    out = copy.deepcopy(s)
    out["spec"] |= spec
    out["metadata"]["generation"] += 1
    return out


def conditions(status: JSON) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status.get("conditions") or []}


def finished_stop_study() -> tuple[JSON, tuple[JSON, ...]]:
    """A 90 s study of the stop variant that ended at its deadline: s-0 trained to R, s-1 pruned,
    s-2 stopped at the deadline."""
    t0 = trial(0, (1, 0.9, 2), (3, 0.92, 4), (9, 0.95, 10))
    t1 = trial(1, (1, 0.5, 3))
    t2 = trial(2, (1, 0.93, 20), (3, 0.94, 40))
    s = study(**STOP_VARIANT)
    live = (t0, t1, t2)
    end = reconcile(world(s, *live, **running(*live)), T0 + 87)
    assert end.status is not None and end.status["phase"] == "Succeeded", end.status
    done = (
        trial(0, (1, 0.9, 2), (3, 0.92, 4), (9, 0.95, 10), phase="Completed", resource=9, lastValue=0.95),
        trial(1, (1, 0.5, 3), phase="Pruned", resource=1, lastValue=0.5),
        trial(2, (1, 0.93, 20), (3, 0.94, 40), phase="Stopped", resource=3, lastValue=0.94),
    )
    return applied(s, end), done


def test_a_raised_budget_continues_a_succeeded_study_with_new_trials_only() -> None:
    s, trials = finished_stop_study()
    before = s["status"]
    raised = changed(s, budget={"trainTime": "9s", "timeRatio": 20})  # 90 s -> 180 s from the start
    out = reconcile(world(raised, *trials), T0 + 100)
    status = out.status
    assert status is not None and status["phase"] == "Running"
    assert status["observedGeneration"] == 2
    assert status["budget"]["deadline"] == to_rfc3339(T0 + 180)
    assert status["budget"]["previousDeadline"] == before["budget"]["deadline"] == to_rfc3339(T0 + 90)
    assert status["budget"]["finishedAt"] is None and status["budget"]["finishedInsideSeconds"] is None
    wanted = {
        "Ready": ("True", "Extended"),
        "Complete": ("False", "Extended"),
        "Extended": ("True", "BudgetRaised"),
    }
    assert {k: conditions(status)[k] for k in wanted} == wanted
    assert out.events[0].reason == "Extended"
    assert to_rfc3339(T0 + 90) in out.events[0].message and to_rfc3339(T0 + 180) in out.events[0].message
    # Only new trials: none of the finished three is written to or given a Job again.
    created = [w.trial["spec"]["index"] for w in out.writes if isinstance(w, CreateTrial)]
    assert created and min(created) == 3, out.writes
    assert not [w for w in out.writes if isinstance(w, PatchTrialStatus | CreateJob)]
    # The best stands until a better one is found.
    assert "best" not in status

    # Level-based: once the status says Running at generation 2, the next reconcile is an ordinary
    # one, with no second Extended event.
    later = applied(raised, out)
    again = reconcile(world(later, *trials), T0 + 101)
    assert "Extended" not in [e.reason for e in again.events]
    assert again.status is None or again.status.get("phase") in (None, "Running")
    assert conditions(applied(later, again)["status"])["Ready"] == ("True", "Extended")


def test_a_spec_change_that_does_not_raise_the_budget_changes_nothing_but_says_so_once() -> None:
    s, trials = finished_stop_study()
    other = changed(s, parallelTrials=3)
    out = reconcile(world(other, *trials), T0 + 100)
    assert out.writes == []
    assert out.status is not None and set(out.status) == {"observedGeneration", "conditions"}
    assert conditions(out.status)["Extended"] == ("False", "BudgetNotRaised")
    assert [(e.reason, e.type) for e in out.events] == [("NotExtended", "Normal")]
    settled = reconcile(world(applied(other, out), *trials), T0 + 101)
    assert settled.writes == [] and settled.status is None and settled.events == []


def test_a_budget_no_larger_than_the_time_used_does_not_continue_the_study() -> None:
    s, trials = finished_stop_study()
    # 135 s from the start, 200 s after it: raised, but already used up.
    raised = changed(s, budget={"trainTime": "9s", "timeRatio": 15})
    out = reconcile(world(raised, *trials), T0 + 200)
    assert out.writes == []
    assert out.status is not None and "phase" not in out.status
    assert conditions(out.status)["Extended"] == ("False", "BudgetUsed")
    assert [(e.reason, e.type) for e in out.events] == [("NotExtended", "Warning")]
    assert "200s of it are used" in out.events[0].message


def test_an_invalid_patch_leaves_the_finished_study_as_it_was_and_names_the_problem() -> None:
    s, trials = finished_stop_study()
    bad = changed(s, budget={"deadline": "soon"})
    out = reconcile(world(bad, *trials), T0 + 100)
    assert out.status is not None and "phase" not in out.status
    status, reason = conditions(out.status)["Extended"]
    assert (status, reason) == ("False", "InvalidSpec")
    assert "spec.budget.deadline" in out.events[0].message


def test_a_study_failed_at_its_deadline_without_a_result_continues_and_one_failed_as_invalid_does_not() -> (
    None
):
    t0 = trial(0, (1, math.nan, 2))
    s = study(**STOP_VARIANT)
    end = reconcile(world(s, t0, **running(t0)), T0 + 87)
    assert end.status is not None and end.status["phase"] == "Failed", end.status
    failed = applied(s, end)
    stopped = trial(0, (1, math.nan, 2), phase="Stopped")
    out = reconcile(world(changed(failed, budget={"deadline": "3m"}), stopped), T0 + 100)
    assert out.status is not None and out.status["phase"] == "Running"
    assert [w.trial["spec"]["index"] for w in out.writes if isinstance(w, CreateTrial)] == [1, 2]

    invalid = study(hpSpace={"a": {"paramType": "loguniform", "range": [0, 1]}})
    refused = applied(invalid, reconcile(world(invalid), T0))
    assert refused["status"]["phase"] == "Failed" and refused["status"]["observedGeneration"] == 1
    fixed = changed(refused, hpSpace={"a": {"paramType": "loguniform", "range": [0.1, 1]}})
    out = reconcile(world(fixed), T0 + 100)
    assert out.status is not None and conditions(out.status)["Extended"] == ("False", "FailedInvalid")
    assert not [w for w in out.writes if isinstance(w, CreateTrial)]


def test_a_budget_lowered_below_the_time_used_stops_a_running_study_as_at_its_deadline() -> None:
    t0, t1 = trial(0, (1, 0.9, 2), (3, 0.95, 10)), trial(1, (1, 0.95, 3))
    s = study(**STOP_VARIANT)
    first = reconcile(world(s, t0, t1, **running(t0, t1)), T0 + 40)
    assert first.status is not None and first.status["phase"] == "Running"
    lowered = changed(applied(s, first), budget={"deadline": "30s"})
    out = reconcile(world(lowered, t0, t1, **running(t0, t1)), T0 + 41)
    stops = {
        w.trial for w in out.writes if isinstance(w, PatchTrialStatus) and w.patch.get("phase") == "Stopped"
    }
    assert stops == {"s-0", "s-1"}
    assert {w.name for w in out.writes if isinstance(w, ScaleJobDown)} == {"s-0", "s-1"}
    assert out.status is not None and out.status["phase"] == "Succeeded"
    assert out.status["budget"]["deadline"] == to_rfc3339(T0 + 30)
    assert out.status["observedGeneration"] == 2
    assert [e.reason for e in out.events] == ["BudgetChanged", "StudySucceeded"]
    assert to_rfc3339(T0 + 90) in out.events[0].message and to_rfc3339(T0 + 30) in out.events[0].message


def test_a_budget_raised_while_trials_run_lets_their_jobs_run_to_the_new_deadline() -> None:
    t0 = trial(0, (1, 0.9, 2))
    s = study(**STOP_VARIANT, budget={"deadline": "3m"})
    started = job("s-0")
    started["spec"]["activeDeadlineSeconds"] = 89  # made for the 90 s budget, started at T0 + 1
    started["status"]["startTime"] = to_rfc3339(T0 + 1)
    w = world(s, t0, jobs=[started], pods=running(t0)["pods"])
    out = reconcile(w, T0 + 10)
    assert [x for x in out.writes if isinstance(x, PatchJobDeadline)] == [PatchJobDeadline("s-0", 179)]
    started["spec"]["activeDeadlineSeconds"] = 179
    assert not [x for x in reconcile(w, T0 + 11).writes if isinstance(x, PatchJobDeadline)]


# --- the promote variant: paused trials and the final training ------------------------------------


def promote_trial(index: int, value: float, *more: tuple[float, float, float], **status: object) -> JSON:
    t = trial(index, (1, value, index + 1), *more, **({"phase": "Paused"} | status))  # type: ignore[arg-type]
    t["spec"]["stopAt"] = 1
    return t


def finished_promote_study(**checkpoints: str) -> tuple[JSON, tuple[JSON, ...]]:
    """Six trials paused at rung 1 (resource 1); s-1, the best, promoted and trained to R by the
    final training; the study Succeeded with s-1's model."""
    final = promote_trial(
        1, 0.9, (3, 0.92, 20), (9, 0.95, 40), phase="Completed", run=2, startFrom=3, stopAt=9, final=True
    )
    trials = (
        promote_trial(0, 0.2),
        final,
        promote_trial(2, 0.8),
        promote_trial(3, 0.3),
        promote_trial(4, 0.4),
        promote_trial(5, 0.1),
    )
    s = study(**{**PROMOTE, "checkpoints": {"size": "1Gi", **checkpoints}})
    final_status = {
        "trial": "s-1",
        "index": 1,
        "phase": "Succeeded",
        "startedAt": to_rfc3339(T0 + 25),
        "value": 0.95,
        "resource": 9,
        "checkpoint": {"claimName": "s-checkpoints", "path": "s-u/s-1"},
    }
    s["status"] = {
        "phase": "Succeeded",
        "observedGeneration": 1,
        "best": {"trial": "s-1", "index": 1, "value": 0.95, "resource": 9, "hyperparameters": {"x": 0.1}},
        "final": final_status,
        "budget": {
            "startedAt": to_rfc3339(T0, micro=True),
            "deadline": to_rfc3339(T0 + 90),
            "budgetSeconds": 90,
            "finishedAt": to_rfc3339(T0 + 41),
        },
        "conditions": [
            {"type": "Ready", "status": "False", "reason": "Finished", "lastTransitionTime": "t"},
            {"type": "Complete", "status": "True", "reason": "Succeeded", "lastTransitionTime": "t"},
        ],
    }
    return s, trials


def test_after_an_extension_a_paused_trial_is_resumed_and_the_final_training_stands() -> None:
    s, trials = finished_promote_study()
    raised = changed(s, budget={"trainTime": "9s", "timeRatio": 20})
    out = reconcile(World(raised, trials, claim_exists=True), T0 + 100)
    assert out.status is not None and out.status["phase"] == "Running"
    # s-2, second of six at rung 1, is promoted from its checkpoint; no other trial is written.
    resumed = [w for w in out.writes if isinstance(w, PatchTrialStatus) and "phase" in w.patch]
    assert [(w.trial, w.patch["phase"], w.patch["run"], w.patch["startFrom"]) for w in resumed] == [
        ("s-2", "Pending", 1, 1)
    ]
    assert [w.job["metadata"]["name"] for w in out.writes if isinstance(w, CreateJob)] == ["s-2-run1"]
    # The earlier final training stands while HPO runs again.
    assert "final" not in out.status and "best" not in out.status

    # HPO ends again with nothing better than s-1's model: the final training is not run again.
    running_again = applied(raised, out)
    s2 = promote_trial(2, 0.8, (3, 0.85, 110), phase="Paused", run=1, startFrom=1, stopAt=3)
    ended = (*trials[:2], s2, *trials[3:])
    end = reconcile(World(running_again, ended, claim_exists=True), T0 + 190)
    assert end.status is not None and end.status["phase"] == "Succeeded", end.status
    assert not [w for w in end.writes if isinstance(w, CreateJob)]
    final = applied(running_again, end)["status"]["final"]
    assert final == s["status"]["final"]


def test_once_the_checkpoints_are_deleted_the_budget_can_no_longer_be_raised() -> None:
    s, trials = finished_promote_study(keepFor="10s")
    raised = changed(s, budget={"trainTime": "9s", "timeRatio": 20})
    kept = reconcile(World(raised, trials, claim_exists=True), T0 + 45)  # 4 s after the end
    assert kept.status is not None and kept.status["phase"] == "Running"
    out = reconcile(World(raised, trials, claim_exists=True), T0 + 60)
    assert out.status is not None and conditions(out.status)["Extended"] == ("False", "CheckpointsDeleted")
    assert not [w for w in out.writes if isinstance(w, PatchTrialStatus | CreateJob | CreateTrial)]


def test_keep_for_takes_a_duration_or_zero_and_names_itself_when_it_is_not_one() -> None:
    for keep in ("0s", "0", "90m"):
        ok = reconcile(world(study(**{**PROMOTE, "checkpoints": {"size": "1Gi", "keepFor": keep}})), T0)
        assert ok.status is not None and ok.status["phase"] == "Running", (keep, ok.status)
    bad = reconcile(world(study(**{**PROMOTE, "checkpoints": {"size": "1Gi", "keepFor": "soon"}})), T0)
    assert bad.status is not None and bad.status["phase"] == "Failed"
    assert "spec.checkpoints.keepFor" in bad.status["message"], bad.status
