"""`hpo status STUDY`: what it prints from a study and its trials."""

from __future__ import annotations

from hpo_operator.kube.show import render_study
from tests.support.kube_world import study, trial


def test_a_finished_study_shows_its_plan_budget_best_final_training_and_trials() -> None:
    status = {
        "phase": "Succeeded",
        "plan": {"plannedTrials": 9, "parallelism": 2, "eta": 3, "rungs": [1, 3], "maximumResource": 9},
        "budget": {"usedSeconds": 80.5, "budgetSeconds": 90, "finishedInsideSeconds": 9.5},
        "best": {"trial": "s-1", "value": 0.91, "resource": 9, "hyperparameters": {"x": 0.1}},
        "final": {
            "trial": "s-1",
            "phase": "Succeeded",
            "value": 0.93,
            "resource": 9,
            "checkpoint": {"claimName": "s-checkpoints", "path": "s-u/s-1"},
        },
    }
    trials = [
        trial(1, (9, 0.93, 20), phase="Completed", resource=9, lastValue=0.93),
        trial(0, (1, 0.5, 1), phase="Paused", resource=1, lastValue=0.5),
    ]
    lines = render_study(study(status), trials)
    assert lines[0] == "HPOStudy ns/s: Succeeded"
    assert "  plan: 9 trials, 2 at once, eta 3, rungs 1, 3, R 9" in lines
    assert "  budget: used 80.5s of 90s, finished 9.5s inside" in lines
    assert "  best: s-1 accuracy 0.91 at resource 9" in lines and "    x: 0.1" in lines
    final = (
        "  final training: s-1 Succeeded, accuracy 0.93 at resource 9; "
        "model in claim s-checkpoints, path s-u/s-1"
    )
    assert final in lines
    rows = [line.split()[:2] for line in lines if line.startswith("  s-")]
    assert rows == [["s-0", "Paused"], ["s-1", "Completed"]]
