"""`hpo run`'s backend with real trial processes (the fake trainer) and a stop condition: a goal ends
the study as soon as a report reaches it, a trial limit after exactly that many trials, both long
before the deadline."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from tests.support.local_study import fake_config, run_study

pytestmark = pytest.mark.timeout(60)

DEADLINE = 30.0


def test_a_reached_goal_stops_the_running_trials_and_ends_the_study_long_before_its_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_EPOCH_SECONDS", "0.3")
    # Trial 0 (x = 0.5) scores 0.96 x 0.75 = 0.72 at resource 2, four epochs before R.
    config = replace(fake_config(max_resource=6, eta=2, deadline=DEADLINE), goal=0.7, goal_resource=2)
    result, doc = run_study(tmp_path, config)

    assert result.state == "Succeeded" and result.exit_code == 0
    found = re.fullmatch(r"goal reached: trial (\d+) reported (\S+) at resource (\S+)", doc["reason"])
    assert found, doc["reason"]
    index, value, resource = int(found[1]), float(found[2]), float(found[3])
    assert value >= 0.7 and resource >= 2
    reaching = [
        (r["time"], t["index"])
        for t in doc["trials"]
        for r in t["reports"]
        if r["resource"] >= 2 and r["value"] >= 0.7
    ]
    # The first report to reach the goal is the one named, and it ended the study at once.
    first_time, first_index = min(reaching)
    assert first_index == index
    assert doc["finishedAt"] - first_time < 5
    assert doc["budget"]["finishedInsideSeconds"] > DEADLINE / 2
    # Every trial still training was stopped for it (the goal's own trial too: it had not reached R).
    stopped = [t for t in doc["trials"] if t["status"] == "Stopped"]
    assert any(t["index"] == index for t in stopped), doc["trials"]
    assert all(t["reason"] == "goal reached" for t in stopped)
    assert all(t["status"] in ("Completed", "Pruned", "Stopped") for t in doc["trials"])
    assert all(t["endedAt"] is not None and t["endedAt"] <= doc["finishedAt"] for t in doc["trials"])


def test_a_trial_limit_ends_the_study_after_exactly_that_many_trials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_EPOCH_SECONDS", "0.1")
    config = replace(fake_config(max_resource=3, eta=2, deadline=DEADLINE), max_trials=3)
    result, doc = run_study(tmp_path, config)

    assert result.state == "Succeeded" and result.exit_code == 0
    assert doc["reason"] == "all 3 trials finished"
    assert [t["index"] for t in doc["trials"]] == [0, 1, 2]
    assert all(t["status"] in ("Completed", "Pruned") for t in doc["trials"]), doc["trials"]
    assert doc["budget"]["finishedInsideSeconds"] > DEADLINE / 2
    assert (doc["plan"]["plannedTrials"], doc["plan"]["maxTrials"]) == (3, 3)
