"""The operator's stop conditions on the local cluster: a study whose goal is reached ends Succeeded
with reason GoalReached long before its deadline, its running trials stopped; a study with maxTrials
ends after exactly that many trials."""

from __future__ import annotations

import re

import pytest

from tests.cluster.rest import Kube
from tests.cluster.waiting import wait_for
from tests.support.e2e_study import (
    PodWatch,
    create_study,
    study_manifest,
    trials_of,
    wait_phase,
)
from tests.support.operator_process import OperatorProcess

pytestmark = pytest.mark.e2e

DEADLINE_SECONDS = 90


def test_a_study_that_reaches_its_goal_ends_with_goal_reached_and_its_trials_stopped(
    operator: OperatorProcess, kube: Kube, namespace: str
) -> None:
    manifest = study_manifest("goal", deadline=f"{DEADLINE_SECONDS}s", epoch_seconds=0.5)
    # The fake trainer reports (1 - (x - 0.3)^2) * (1 - 0.5^r): 0.4 at resource 2 needs x within
    # 0.3 +- 0.68, so the first trials reach it at their second report, seven epochs before R.
    manifest["spec"] |= {"goal": 0.4, "goalResource": 2}
    with PodWatch(kube, namespace) as watch:
        create_study(kube, namespace, manifest)
        study = wait_phase(kube, namespace, "goal", {"Succeeded", "Failed"}, DEADLINE_SECONDS + 30)
        wait_for(
            lambda: all(p.gone or p.ended for p in watch.pods.values()), 30, 0.2, "every trial pod ended"
        )
    status = study["status"]
    assert status["phase"] == "Succeeded", status
    complete = next(c for c in status["conditions"] if c["type"] == "Complete")
    assert (complete["status"], complete["reason"]) == ("True", "GoalReached"), complete
    found = re.fullmatch(r"goal reached: trial (\d+) reported (\S+) at resource (\S+)", complete["message"])
    assert found, complete["message"]
    assert float(found[2]) >= 0.4 and float(found[3]) >= 2
    assert status["budget"]["finishedInsideSeconds"] > DEADLINE_SECONDS / 2, status["budget"]

    trials = trials_of(kube, namespace, "goal")
    named = next(t for t in trials if t["spec"]["index"] == int(found[1]))
    assert any(
        r["resource"] == float(found[3]) and r["value"] == float(found[2]) for r in named["status"]["reports"]
    ), named["status"]
    # The trials still training were stopped for the goal, and none runs on.
    stopped = [t for t in trials if t["status"].get("phase") == "Stopped"]
    assert stopped, [(t["metadata"]["name"], t["status"].get("phase")) for t in trials]
    assert all(t["status"]["reason"] == "GoalReached" for t in stopped), [t["status"] for t in stopped]
    assert all(t["status"].get("phase") in ("Completed", "Pruned", "Stopped") for t in trials)
    print(
        f"\ngoal: {complete['message']}; {len(trials)} trials, {len(stopped)} stopped; "
        f"budget {status['budget']}"
    )


def test_a_study_with_max_trials_ends_after_exactly_that_many(
    operator: OperatorProcess, kube: Kube, namespace: str
) -> None:
    manifest = study_manifest("limit", deadline=f"{DEADLINE_SECONDS}s", max_resource=3)
    manifest["spec"]["maxTrials"] = 3
    create_study(kube, namespace, manifest)
    study = wait_phase(kube, namespace, "limit", {"Succeeded", "Failed"}, DEADLINE_SECONDS + 30)
    status = study["status"]
    assert status["phase"] == "Succeeded", status
    assert status["message"] == "all 3 trials finished", status
    assert (status["plan"]["plannedTrials"], status["plan"]["maxTrials"]) == (3, 3), status["plan"]
    assert status["progress"] == "3/3"
    assert status["budget"]["finishedInsideSeconds"] > DEADLINE_SECONDS / 2, status["budget"]
    trials = trials_of(kube, namespace, "limit")
    assert [t["metadata"]["name"] for t in trials] == ["limit-0", "limit-1", "limit-2"]
    assert all(t["status"].get("phase") in ("Completed", "Pruned") for t in trials)
    print(f"\nmaxTrials 3: {status['message']}; budget {status['budget']}")
